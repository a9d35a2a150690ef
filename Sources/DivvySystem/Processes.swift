// Process calls: posix_spawn(3) with descriptors placed at 3, 4, … (as a service manager passes them), and
// waitpid(2). One thin wrapper per call, failures as swift-system's `Errno`, EINTR retried (see Errno.swift).
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// posix_spawn(3) of `path` with `arguments` (the first is `argv[0]`) and exactly `environment` (`KEY=value`
/// strings), the child inheriting standard input, output and error, and `descriptors[i]` as descriptor `3 + i`
/// (without close-on-exec: what `LISTEN_FDS` passes). Every other descriptor of this process is expected to be
/// close-on-exec, as every descriptor Divvy opens is.
///
/// The descriptors are first duplicated above the target range, so that a source that is itself in `3..<3 + n`
/// is not overwritten before it is placed; the duplicates are closed again here after the spawn.
///
/// - Returns: the child's pid.
package func systemSpawn(
    path: String, arguments: [String], environment: [String], descriptors: [Int32] = []
) -> Result<pid_t, Errno> {
    let firstTarget: Int32 = 3
    // Duplicates at or above 3 + n, close-on-exec in this process (the child gets its own dup2 copies).
    var duplicates: [Int32] = []
    defer { for duplicate in duplicates { systemClose(duplicate) } }
    for descriptor in descriptors {
        switch systemFcntl(descriptor, F_DUPFD_CLOEXEC, firstTarget + Int32(descriptors.count)) {
        case .success(let duplicate): duplicates.append(duplicate)
        case .failure(let error): return .failure(error)
        }
    }
    var actions = posix_spawn_file_actions_t()
    guard posix_spawn_file_actions_init(&actions) == 0 else { return .failure(.noMemory) }
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (index, duplicate) in duplicates.enumerated() {
        let status = posix_spawn_file_actions_adddup2(&actions, duplicate, firstTarget + Int32(index))
        guard status == 0 else { return .failure(Errno(rawValue: status)) }
    }
    // C strings for argv and envp, freed after the spawn (posix_spawn copies nothing it needs later).
    func cStrings(_ strings: [String]) -> [UnsafeMutablePointer<CChar>?] { strings.map { strdup($0) } + [nil] }
    let argv = cStrings(arguments)
    let envp = cStrings(environment)
    defer { for pointer in argv + envp { free(pointer) } }
    var pid: pid_t = 0
    let status = posix_spawn(&pid, path, &actions, nil, argv, envp)
    return status == 0 ? .success(pid) : .failure(Errno(rawValue: status))
}

/// How a child process ended (`waitpid(2)`'s status, decoded).
package enum ChildExit: Equatable, Sendable, CustomStringConvertible {
    /// It called exit with this status.
    case exited(Int32)
    /// A signal ended it.
    case signaled(Int32)

    /// "exit status 1" / "signal 9".
    package var description: String {
        switch self {
        case .exited(let status): "exit status \(status)"
        case .signaled(let signal): "signal \(signal)"
        }
    }
}

/// waitpid(2) for `pid`: nil when it is still running (with `blocking: false`), else how it ended (a stopped or
/// continued child is waited for again).
package func systemWaitPid(_ pid: pid_t, blocking: Bool) -> Result<ChildExit?, Errno> {
    while true {
        var status: Int32 = 0
        switch valueOrErrno("waitpid", { waitpid(pid, &status, blocking ? 0 : WNOHANG) }) {
        case .failure(let error): return .failure(error)
        case .success(0): return .success(nil)
        case .success:
            // The <sys/wait.h> macros, spelled out (Swift does not import them).
            let signal = status & 0x7F
            if signal == 0 { return .success(.exited((status >> 8) & 0xFF)) }
            if signal != 0x7F { return .success(.signaled(signal)) }
            // Stopped (0x7F) or continued: not an end.
            if !blocking { return .success(nil) }
        }
    }
}

/// sigaction(2): runs `handler` for `signal` from now on, restarting interrupted system calls (`SA_RESTART`). The
/// handler runs in signal context: it may only do async-signal-safe things (atomic loads and stores, kill(2),
/// write(2)).
package func systemInstallSignalHandler(
    _ signal: Int32, _ handler: @escaping @convention(c) (Int32) -> Void
) -> Result<Void, Errno> {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = handler
    action.sa_flags = SA_RESTART
    sigemptyset(&action.sa_mask)
    return nothingOrErrno("sigaction") { sigaction(signal, &action, nil) }
}
