import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process for multi-process tests: an executable built next to the test bundle (the test target depends
/// on it), spawned with `posix_spawn`, with its stdout read line by line, its stdin writable, and its stderr in a
/// file (so a chatty child can never block on a full pipe).
public final class ChildProcess {
    /// The child's pid.
    public let pid: pid_t
    /// Where the child's stderr goes.
    public let stderrPath: String
    private let stdoutFD: Int32
    private var stdinFD: Int32
    private var pending: [UInt8] = []
    private var reaped: ChildExit?

    /// How a child ended.
    public struct ChildExit: Equatable, CustomStringConvertible {
        /// The exit status, when it exited.
        public var status: Int32?
        /// The signal that killed it, when it was killed.
        public var signal: Int32?
        /// An exit with `status`, or a death by `signal`.
        public init(status: Int32?, signal: Int32?) {
            self.status = status
            self.signal = signal
        }
        /// `exit status N` or `killed by signal N`.
        public var description: String { signal.map { "killed by signal \($0)" } ?? "exit status \(status ?? -1)" }
    }

    /// The path of an executable product built next to the test bundle.
    public static func executablePath(_ name: String) -> String {
        let candidates = [
            URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent(),
            Bundle.main.bundleURL.deletingLastPathComponent(), Bundle.main.bundleURL,
        ]
        for directory in candidates {
            let path = directory.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return candidates[0].appendingPathComponent(name).path
    }

    /// Spawns `executable` (a product name, or an absolute path) with `arguments`.
    ///
    /// - Parameters:
    ///   - environment: variables added to (or replacing) the test's environment.
    ///   - inheriting: descriptors the child gets as fd 3, 4, … (close-on-exec cleared), e.g. a listening socket.
    public init(
        _ executable: String, _ arguments: [String], environment extra: [String: String] = [:],
        inheriting: [Int32] = []
    ) throws {
        let path = executable.hasPrefix("/") ? executable : Self.executablePath(executable)
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw NSError(domain: "\(executable) not found at \(path)", code: 1)
        }
        var out: [Int32] = [0, 0]
        var input: [Int32] = [0, 0]
        guard pipe(&out) == 0, pipe(&input) == 0 else { throw NSError(domain: "pipe failed", code: Int(errno)) }
        for fd in out + input { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        stderrPath = NSTemporaryDirectory() + "divvy-child-\(UUID().uuidString).stderr"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // Move inherited descriptors out of the way first: dup2(3, 3) would keep close-on-exec set.
        var temporaries: [Int32] = []
        defer { temporaries.forEach { close($0) } }
        for (index, fd) in inheriting.enumerated() {
            let temporary = fcntl(fd, F_DUPFD_CLOEXEC, 100)
            guard temporary >= 0 else { throw NSError(domain: "dup failed", code: Int(errno)) }
            temporaries.append(temporary)
            posix_spawn_file_actions_adddup2(&actions, temporary, Int32(3 + index))
        }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var variables = ProcessInfo.processInfo.environment
        variables["SWIFT_BACKTRACE"] = "enable=no"
        for (key, value) in extra { variables[key] = value }
        let environment: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { environment.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, nil, argv, environment)
        close(out[1])
        close(input[0])
        guard result == 0 else {
            close(out[0])
            close(input[1])
            throw NSError(domain: "posix_spawn \(path) failed", code: Int(result))
        }
        self.pid = pid
        self.stdoutFD = out[0]
        self.stdinFD = input[1]
    }

    deinit {
        if reaped == nil {
            kill(pid, SIGKILL)
            _ = wait()
        }
        close(stdoutFD)
        if stdinFD >= 0 { close(stdinFD) }
        unlink(stderrPath)
    }

    /// The next line of the child's stdout (without the newline), or nil at EOF.
    public func readLine() -> String? {
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                return line
            }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { read(stdoutFD, $0.baseAddress, $0.count) }
            if count > 0 {
                pending += buffer[..<count]
            } else if count == 0 || errno != EINTR {
                if pending.isEmpty { return nil }
                defer { pending.removeAll() }
                return String(decoding: pending, as: UTF8.self)
            }
        }
    }

    /// Reads lines until one starts with `prefix`; returns it (nil at EOF). Other lines are collected in `skipped`.
    public func readLine(startingWith prefix: String, skipped: inout [String]) -> String? {
        while let line = readLine() {
            if line.hasPrefix(prefix) { return line }
            skipped.append(line)
        }
        return nil
    }

    /// Writes a line to the child's stdin.
    public func writeLine(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
    }

    /// Closes the child's stdin (it reads EOF).
    public func closeStdin() {
        if stdinFD >= 0 {
            close(stdinFD)
            stdinFD = -1
        }
    }

    /// Sends a signal.
    public func signal(_ signal: Int32) {
        if reaped == nil { kill(pid, signal) }
    }

    /// The rest of stdout, then waits for the child to end.
    public func remainingOutput() -> [String] {
        var lines: [String] = []
        while let line = readLine() { lines.append(line) }
        return lines
    }

    /// Waits for the child to end (reaps it once; later calls return the same).
    @discardableResult
    public func wait() -> ChildExit {
        if let reaped { return reaped }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
        let exit =
            status & 0x7f == 0
            ? ChildExit(status: (status >> 8) & 0xff, signal: nil) : ChildExit(status: nil, signal: status & 0x7f)
        reaped = exit
        return exit
    }

    /// Waits up to `seconds` for the child to end; nil if it is still running.
    public func wait(timeout seconds: Double) -> ChildExit? {
        if let reaped { return reaped }
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                let exit =
                    status & 0x7f == 0
                    ? ChildExit(status: (status >> 8) & 0xff, signal: nil) : ChildExit(status: nil, signal: status & 0x7f)
                reaped = exit
                return exit
            }
            usleep(10_000)
        }
        return nil
    }

    /// What the child wrote to stderr so far.
    public var standardError: String {
        (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
    }
}
