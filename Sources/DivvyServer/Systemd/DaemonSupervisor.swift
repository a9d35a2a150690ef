import Atomics
import DivvySystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `divvyd --supervise`: a small stand-in for the parts of systemd a restart without loss needs, for hosts without
/// it (and for tests). It runs divvyd as its child and, like a service manager:
///
/// - binds a notification socket and gives the child `NOTIFY_SOCKET` (`sd_notify(3)`), logging `READY=1`,
///   `STOPPING=1` and `STATUS=`;
/// - keeps a **file-descriptor store**: descriptors the child sends with `FDSTORE=1` and `FDNAME=` are kept (a name
///   sent again replaces its descriptors, `FDSTOREREMOVE=1` drops them), and passed to the next child as
///   `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`, from descriptor 3 on;
/// - restarts the child when it dies by a signal or exits with a non-zero status (`Restart=on-failure`), after
///   `restartDelay`, at most `restartBurst` times within `restartInterval` (`StartLimitBurst=`,
///   `StartLimitIntervalSec=`), then gives up with status 1;
/// - forwards SIGTERM, SIGINT and SIGHUP to the child; after SIGTERM or SIGINT, the child's exit ends the
///   supervisor with the child's status (0 for a clean exit), and the store goes with it, as `systemctl stop`
///   empties systemd's.
///
/// `LISTEN_PID` must name the child, which a spawn cannot know in advance: the child starts as
/// `/bin/sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"' divvyd ARGS…`, so that the shell's pid, which
/// `exec` keeps, is the one in the variable.
public final class DaemonSupervisor {
    /// What to run and how to restart it.
    public struct Settings: Sendable {
        /// The program to run (an absolute path).
        public var executable: String
        /// Its arguments, without `argv[0]`.
        public var arguments: [String]
        /// The environment for the child (`NOTIFY_SOCKET` and `LISTEN_*` are replaced).
        public var environment: [String: String]
        /// The wait before a restart (`RestartSec=`). Default 100 ms.
        public var restartDelay: Duration = .milliseconds(100)
        /// Restarts allowed within `restartInterval` before giving up (`StartLimitBurst=`). Default 5.
        public var restartBurst = 5
        /// The window `restartBurst` counts in (`StartLimitIntervalSec=`). Default 10 s.
        public var restartInterval: Duration = .seconds(10)
        /// Descriptors the store keeps at most (`FileDescriptorStoreMax=`); more are closed and logged. Default 16.
        public var storeCapacity = 16
        /// The shell that sets `LISTEN_PID` before `exec`ing the program. Default `/bin/sh`.
        public var shell = "/bin/sh"
        /// Install handlers that forward SIGTERM, SIGINT and SIGHUP to the child (default true; they are process-
        /// wide: a program embedding the supervisor for something else may want its own).
        public var forwardSignals = true

        /// Settings for running `executable` with `arguments` in `environment`.
        public init(executable: String, arguments: [String], environment: [String: String]) {
            self.executable = executable
            self.arguments = arguments
            self.environment = environment
        }
    }

    /// The settings it runs with.
    public let settings: Settings
    /// The `NOTIFY_SOCKET` path the children get.
    public let notifySocketPath: String
    private let directory: String
    private let socket: OwnedDescriptor
    /// Waits for the notification socket and the child's pidfd at once, so a child's exit is seen at once.
    private let epoll: OwnedDescriptor
    private let logger: Logger
    /// The store: names in the order they were first stored, each with its descriptors (owned here).
    private var stored: [(name: String, descriptors: [Int32])] = []

    /// Creates the supervisor's notification socket in a new private directory (`$TMPDIR` or /tmp).
    ///
    /// - Throws: `SystemdError.badDescriptor` when the directory or socket cannot be made.
    public init(settings: Settings, logger: Logger) throws(SystemdError) {
        self.settings = settings
        self.logger = logger
        let template = (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp") + "/divvyd-supervise.XXXXXX"
        switch systemMakeTemporaryDirectory(template) {
        case .success(let made): directory = made
        case .failure(let error):
            throw SystemdError(.badDescriptor, "could not create a directory for the notification socket: \(error)")
        }
        notifySocketPath = directory + "/notify"
        let type = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd: OwnedDescriptor
        switch systemSocket(domain: AF_UNIX, type: type) {
        case .success(let opened): fd = OwnedDescriptor(taking: opened)
        case .failure(let error):
            _ = systemRemoveDirectory(directory)
            throw SystemdError(.badDescriptor, "could not create the notification socket: \(error)")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(notifySocketPath.utf8) + [0]
        guard path.count <= MemoryLayout.size(ofValue: address.sun_path) else {
            _ = systemRemoveDirectory(directory)
            throw SystemdError(.badDescriptor, "the notification socket path \(notifySocketPath) is too long; set a "
                + "shorter TMPDIR")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        let raw = fd.rawValue
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { systemBind(raw, $0, length) }
        }
        if case .failure(let error) = bound {
            _ = systemRemoveDirectory(directory)
            throw SystemdError(.badDescriptor, "could not bind the notification socket \(notifySocketPath): \(error)")
        }
        switch systemEpollCreate() {
        case .success(let created): epoll = OwnedDescriptor(taking: created)
        case .failure(let error):
            _ = systemUnlink(notifySocketPath)
            _ = systemRemoveDirectory(directory)
            throw SystemdError(.badDescriptor, "could not create an epoll instance: \(error)")
        }
        _ = systemEpollCtl(epoll.rawValue, EpollFlags.add, raw, events: EpollFlags.readable, data: 0)
        socket = fd
    }

    deinit {
        for entry in stored { for descriptor in entry.descriptors { systemClose(descriptor) } }
        _ = systemUnlink(notifySocketPath)
        _ = systemRemoveDirectory(directory)
    }

    /// Names and descriptor counts in the store now (for tests and logs).
    public var storedNames: [String: Int] {
        Dictionary(stored.map { ($0.name, $0.descriptors.count) }, uniquingKeysWith: +)
    }

    /// Runs the child until it stops for good; returns the exit status for the supervisor's process.
    public func run() -> Int32 {
        // (The stop flag is process-wide, for the signal handler: a supervisor run after an earlier one's stop
        // starts clear.)
        stopRequested.store(0, ordering: .sequentiallyConsistent)
        if settings.forwardSignals { installSignalForwarding() }
        var restarts: [ContinuousClock.Instant] = []
        while true {
            let pid: pid_t
            switch spawnChild() {
            case .success(let child): pid = child
            case .failure(let error):
                logger.critical("could not start \(settings.executable): \(error)")
                return 1
            }
            supervisedChild.store(pid, ordering: .sequentiallyConsistent)
            // A stop requested between two children reaches the new one.
            if stopRequested.load(ordering: .sequentiallyConsistent) != 0 { _ = systemKill(pid, SIGTERM) }
            let exit = superviseUntilExit(pid)
            supervisedChild.store(0, ordering: .sequentiallyConsistent)
            if stopRequested.load(ordering: .sequentiallyConsistent) != 0 {
                logger.info("divvyd stopped (\(exit)); the supervisor ends and its store with it")
                if case .exited(let status) = exit { return status }
                return 0
            }
            if case .exited(0) = exit {
                logger.info("divvyd exited cleanly; not restarting")
                return 0
            }
            let now = ContinuousClock.now
            restarts = restarts.filter { now - $0 < settings.restartInterval } + [now]
            guard restarts.count <= settings.restartBurst else {
                let message = "divvyd ended with \(exit), \(restarts.count) times within \(settings.restartInterval): "
                    + "giving up (at most \(settings.restartBurst) restarts in that time)"
                logger.critical("\(message)")
                return 1
            }
            logger.warning(
                "divvyd ended with \(exit); restarting",
                metadata: [
                    "stored_descriptors": "\(stored.map { "\($0.name)×\($0.descriptors.count)" }.joined(separator: ","))",
                    "delay": "\(settings.restartDelay)",
                ])
            let (seconds, attoseconds) = settings.restartDelay.components
            usleep(UInt32(clamping: seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
        }
    }

    /// Ends supervision from another thread: the child gets `signal` (default SIGTERM, as a forwarded SIGTERM
    /// would be), is not restarted, and `run()` returns once it has exited. Idempotent.
    public func stop(signal: Int32 = SIGTERM) {
        stopRequested.store(1, ordering: .sequentiallyConsistent)
        let child = supervisedChild.load(ordering: .sequentiallyConsistent)
        if child > 0 { _ = systemKill(child, signal) }
    }

    // MARK: The child

    private func spawnChild() -> Result<pid_t, Errno> {
        var environment = settings.environment
        for name in SocketActivation.environmentVariables + SystemdNotifier.environmentVariables {
            environment[name] = nil
        }
        environment["NOTIFY_SOCKET"] = notifySocketPath
        let descriptors = stored.flatMap(\.descriptors)
        var arguments = [settings.executable] + settings.arguments
        var path = settings.executable
        if !descriptors.isEmpty {
            environment["LISTEN_FDS"] = "\(descriptors.count)"
            environment["LISTEN_FDNAMES"] = stored.flatMap { entry in entry.descriptors.map { _ in entry.name } }
                .joined(separator: ":")
            path = settings.shell
            arguments = [settings.shell, "-c", #"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#]
                + [settings.executable] + settings.arguments
        }
        let result = systemSpawn(
            path: path, arguments: arguments, environment: environment.map { "\($0.key)=\($0.value)" },
            descriptors: descriptors)
        if case .success(let pid) = result {
            logger.info(
                "started divvyd", metadata: ["pid": "\(pid)", "passed_descriptors": "\(descriptors.count)"])
        }
        return result
    }

    /// Serves the notification socket until the child ends; returns how it ended.
    private func superviseUntilExit(_ pid: pid_t) -> ChildExit {
        // The child's pidfd turns readable when it exits (Linux 5.3); without one, look every 100 ms.
        let pidfd = try? systemPidfdOpen(pid).get()
        if let pidfd { _ = systemEpollCtl(epoll.rawValue, EpollFlags.add, pidfd, events: EpollFlags.readable, data: 1) }
        defer {
            if let pidfd {
                _ = systemEpollCtl(epoll.rawValue, EpollFlags.delete, pidfd, events: 0, data: 0)
                systemClose(pidfd)
            }
        }
        var data = [UInt64](repeating: 0, count: 2)
        var events = [UInt32](repeating: 0, count: 2)
        while true {
            _ = data.withUnsafeMutableBufferPointer { data in
                events.withUnsafeMutableBufferPointer { events in
                    systemEpollWait(
                        epoll.rawValue, data: data, events: events, timeoutMilliseconds: pidfd == nil ? 100 : 1000)
                }
            }
            while receiveNotification(from: pid) {}
            switch systemWaitPid(pid, blocking: false) {
            case .success(let exit?):
                // What the child sent before it ended is queued: take it all (a store sent just before a crash
                // must reach the next child).
                while receiveNotification(from: pid) {}
                return exit
            case .success(nil): continue
            case .failure(let error):
                logger.error("waitpid(\(pid)) failed: \(error)")
                return .exited(1)
            }
        }
    }

    /// Receives and handles one queued notification, without waiting; returns whether one came.
    @discardableResult
    private func receiveNotification(from pid: pid_t) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let (result, ancillary) = buffer.withUnsafeMutableBytes {
            systemReceiveWithDescriptors(socket.rawValue, into: $0, capacity: 8, flags: Int32(MSG_DONTWAIT))
        }
        guard case .success(let count) = result else {
            for descriptor in ancillary.descriptors { systemClose(descriptor) }
            return false
        }
        handle(String(decoding: buffer[..<count], as: UTF8.self), ancillary.descriptors, from: pid)
        return true
    }

    /// One notification: keeps stored descriptors, logs the state changes, closes descriptors that came with
    /// anything else.
    private func handle(_ message: String, _ descriptors: [Int32], from pid: pid_t) {
        let lines = message.split(separator: "\n").map(String.init)
        let name = lines.first { $0.hasPrefix("FDNAME=") }.map { String($0.dropFirst(7)) } ?? "stored"
        var kept = false
        if lines.contains("FDSTORE=1"), !descriptors.isEmpty {
            let others = stored.filter { $0.name != name }.reduce(0) { $0 + $1.descriptors.count }
            if others + descriptors.count <= settings.storeCapacity {
                if let index = stored.firstIndex(where: { $0.name == name }) {
                    for old in stored[index].descriptors { systemClose(old) }
                    stored[index].descriptors = descriptors
                } else {
                    stored.append((name, descriptors))
                }
                kept = true
                logger.debug("stored descriptors", metadata: ["name": "\(name)", "count": "\(descriptors.count)"])
            } else {
                logger.error(
                    "the descriptor store is full; dropping what divvyd sent",
                    metadata: ["name": "\(name)", "capacity": "\(settings.storeCapacity)"])
            }
        }
        if !kept { for descriptor in descriptors { systemClose(descriptor) } }
        if lines.contains("FDSTOREREMOVE=1"), let index = stored.firstIndex(where: { $0.name == name }) {
            for old in stored[index].descriptors { systemClose(old) }
            stored.remove(at: index)
        }
        if lines.contains("READY=1") { logger.info("divvyd is ready", metadata: ["pid": "\(pid)"]) }
        if lines.contains("STOPPING=1") { logger.info("divvyd is stopping", metadata: ["pid": "\(pid)"]) }
        if let status = lines.first(where: { $0.hasPrefix("STATUS=") }) {
            logger.debug("divvyd status", metadata: ["status": "\(status.dropFirst(7))"])
        }
    }

    // MARK: Signals

    private func installSignalForwarding() {
        for signalNumber in [SIGTERM, SIGINT, SIGHUP] {
            let installed = systemInstallSignalHandler(signalNumber) { received in
                if received != SIGHUP { stopRequested.store(1, ordering: .sequentiallyConsistent) }
                // Async-signal-safe: atomic loads and stores, and kill(2) itself (not the wrapper, which reads
                // errno and may trap).
                let child = supervisedChild.load(ordering: .sequentiallyConsistent)
                if child > 0 { kill(child, received) }
            }
            if case .failure(let error) = installed {
                logger.error("could not forward signal \(signalNumber) to divvyd: \(error)")
            }
        }
    }
}

/// The running child (0: none), for the signal handler.
private let supervisedChild = ManagedAtomic<pid_t>(0)
/// Set by SIGTERM / SIGINT: the next exit of the child ends the supervisor.
private let stopRequested = ManagedAtomic<Int32>(0)
