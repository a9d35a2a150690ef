#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A process's identity that survives pid reuse: its id and its start time.
///
/// A pid alone names a process only while it runs: after it exits, the kernel hands the same number to the next
/// process (`pid_max` is 32768 on many machines, so that happens within minutes under churn). The start time
/// (field 22 of `/proc/PID/stat`, in clock ticks since boot) does not repeat for a pid within one boot, so the pair
/// names exactly one process.
internal enum ProcessIdentity {
    /// The start time of process `pid` in clock ticks since boot, or nil when it does not exist (or /proc cannot
    /// be read).
    static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let text = readSmallTextFile("/proc/\(pid)/stat") else { return nil }
        return parseStartTime(stat: text)
    }

    /// Field 22 (`starttime`) of a `/proc/PID/stat` line, or nil when the text is not such a line.
    ///
    /// The second field (`comm`, in parentheses) may contain spaces and parentheses itself, so the fields are
    /// counted from the *last* `)`: the text after it starts with field 3 (`state`), so `starttime` is its
    /// 20th word. See proc(5).
    static func parseStartTime(stat text: String) -> UInt64? {
        guard let close = text.utf8.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let rest = text.utf8[text.utf8.index(after: close)...]
        let words = rest.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        guard words.count >= 20 else { return nil }
        return UInt64(String(decoding: words[19], as: UTF8.self).filter { !$0.isWhitespace })
    }

    /// Whether the process recorded as `pid` with start time `startTime` (0 = not recorded) still runs.
    ///
    /// Dead when `kill(pid, 0)` fails with `ESRCH`, or when a process with that pid runs but started at another
    /// time (the pid was reused). A zombie counts as running (its pid is not free yet). When the start time was
    /// not recorded, or cannot be read now, the pid alone decides.
    static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        if kill(pid, 0) == -1 && errno == ESRCH { return false }
        guard startTime != 0, let now = self.startTime(of: pid) else { return true }
        return now & ParticipantWord.startTimeMask == startTime
    }
}
