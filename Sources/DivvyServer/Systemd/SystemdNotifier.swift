#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DivvySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Tells the service manager about the daemon's life with the `sd_notify(3)` protocol, spoken natively (no
/// libsystemd): one `AF_UNIX` `SOCK_DGRAM` datagram of newline-separated `KEY=value` assignments per notification,
/// sent with `sendto(2)` to the socket named by `$NOTIFY_SOCKET`.
///
/// divvyd sends `READY=1` once the region is mapped and the socket listens (what `Type=notify` waits for),
/// `STATUS=` lines when its one-line status changes (shown by `systemctl status`), `WATCHDOG=1` keep-alive pings
/// when `WatchdogSec=` is set, and `STOPPING=1` when a graceful shutdown begins. `serverHooks()` wires all four to
/// `DivvyServer`'s hooks.
///
/// ```swift
/// import Logging
///
/// let logger = Logger(label: "divvyd")
/// let notifier = SystemdNotifier.fromProcessEnvironment(logger: logger)   // nil: not under systemd
/// let hooks = notifier?.serverHooks() ?? ServerHooks()
/// let server = try DivvyServer(configuration: .init(), logger: logger, hooks: hooks)
/// ```
///
/// ## Never in the way
/// Nothing here throws or traps: a missing or malformed `$NOTIFY_SOCKET` means "not started by a service
/// manager" (no notifier), and a failed send is counted (`failedSends`), logged once, and otherwise ignored — the
/// daemon's job matters more than its reports. Sends that only keep systemd informed (`STATUS=`, `WATCHDOG=1`)
/// never block (`MSG_DONTWAIT`: dropped if the manager's queue is full); the ones systemd acts on (`READY=1`,
/// `STOPPING=1`, `MAINPID=`) wait at most one second (`SO_SNDTIMEO`).
///
/// ## Watchdog
/// With `WatchdogSec=` set, systemd exports `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this process) and
/// kills the service if no `WATCHDOG=1` arrives within that interval after start-up completed. Pings are driven by
/// the event loop's tick (`pingWatchdogIfDue(at:)`), never by a timer thread of their own, so a stuck event loop
/// stops pinging and systemd restarts the daemon: that is the point. A ping goes out on the first tick at least
/// half the interval after the previous one; the loop ticks about every 200–250 ms, so `WatchdogSec=` should be
/// at least 1 s (the shipped unit uses 10 s).
///
/// ## Threading
/// Thread-safe: the hooks run on the event-loop thread, and `stopping()` may also be called from a signal path.
/// The socket is created once and only used with `sendto(2)` (itself thread-safe); the little mutable state (last
/// ping, whether `STOPPING=1` went out, failures) is behind a lock.
public final class SystemdNotifier: @unchecked Sendable {
    /// Where notifications go: a socket file, or a name in Linux's abstract socket namespace.
    public enum Destination: Hashable, Sendable, CustomStringConvertible {
        /// A socket file (`NOTIFY_SOCKET=/run/systemd/notify`).
        case path(String)
        /// An abstract socket (`NOTIFY_SOCKET=@name`), without the `@`.
        case abstract(String)

        /// Parses a `$NOTIFY_SOCKET` value: an absolute path, or `@` and an abstract name. Nil for anything else
        /// (a relative path, an empty value, a name too long for `sockaddr_un`, other address families such as
        /// `vsock:` that this implementation does not speak).
        public init?(_ value: String) {
            let bytes = Array(value.utf8)
            guard bytes.count >= 2, !bytes.contains(0) else { return nil }
            // Invariant: sun_path holds 108 bytes: a path and its terminating NUL, or a leading NUL (written in
            // place of the `@`) and the abstract name.
            switch bytes[0] {
            case UInt8(ascii: "/") where bytes.count < SystemdNotifier.sunPathCapacity: self = .path(value)
            case UInt8(ascii: "@") where bytes.count <= SystemdNotifier.sunPathCapacity:
                self = .abstract(String(value.dropFirst()))
            default: return nil
            }
        }

        /// The `$NOTIFY_SOCKET` spelling (`/path` or `@name`).
        public var description: String {
            switch self {
            case .path(let path): path
            case .abstract(let name): "@" + name
            }
        }
    }

    /// What the environment says: where to notify, and whether (and how often) to ping the watchdog.
    public struct Settings: Hashable, Sendable {
        /// Where notifications go.
        public var destination: Destination
        /// The watchdog timeout (`WATCHDOG_USEC`), or nil when the watchdog is off or meant for another process.
        public var watchdogInterval: Duration?

        /// Creates settings.
        public init(destination: Destination, watchdogInterval: Duration? = nil) {
            self.destination = destination
            self.watchdogInterval = watchdogInterval
        }

        /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as `sd_notify(3)` and
        /// `sd_watchdog_enabled(3)` do. Nil when `NOTIFY_SOCKET` is unset or malformed (not under a service
        /// manager). The watchdog is on when `WATCHDOG_USEC` is a positive number of microseconds and
        /// `WATCHDOG_PID`, if set, is `processID` (a variable inherited from a parent is not ours to honour).
        public init?(environment: [String: String], processID: pid_t = getpid()) {
            guard let value = environment["NOTIFY_SOCKET"], let destination = Destination(value) else { return nil }
            self.destination = destination
            self.watchdogInterval = nil
            if let text = environment["WATCHDOG_USEC"], let microseconds = UInt64(text), microseconds > 0,
                microseconds <= UInt64(Int64.max)
            {
                if let owner = environment["WATCHDOG_PID"], !owner.isEmpty {
                    guard pid_t(owner) == processID else { return }
                }
                watchdogInterval = .microseconds(Int64(microseconds))
            }
        }
    }

    /// The environment variables this reads (and `fromProcessEnvironment` unsets).
    public static let environmentVariables = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]

    /// Where notifications go.
    public let destination: Destination
    /// The watchdog timeout, or nil when systemd does not watch this process.
    public let watchdogInterval: Duration?
    /// How often the watchdog is pinged: half its timeout (nil without a watchdog).
    public var pingInterval: Duration? { watchdogInterval.map { $0 / 2 } }

    /// The datagram socket notifications leave through (closed once, when the notifier is destroyed).
    private let socket: OwnedDescriptor
    private let logger: Logger?
    private let lock = ProcessLock()
    // Guarded by `lock`.
    private var lastPing: ContinuousClock.Instant?
    private var stoppingSent = false
    private var failures = 0

    fileprivate static let sunPathCapacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)

    /// A notifier for `settings`; nil if no datagram socket can be created (out of descriptors), which is
    /// logged and otherwise treated like running without a service manager.
    ///
    /// - Parameter logger: where the first failed send (and a failure to create the socket) is reported.
    public init?(settings: Settings, logger: Logger? = nil) {
        let type = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd: OwnedDescriptor
        switch systemSocket(domain: AF_UNIX, type: type) {
        case .success(let opened): fd = OwnedDescriptor(taking: opened)
        case .failure(let error):
            logger?.warning(
                "cannot create the sd_notify socket; systemd will not hear from divvyd",
                metadata: ["error": "\(systemErrorDescription(error.rawValue)) (errno \(error.rawValue))"])
            return nil
        }
        // Bounds the wait of the notifications systemd acts on (see `notify(_:)`); the others never wait.
        _ = systemSetSendTimeout(fd.rawValue, milliseconds: 1000)
        self.socket = fd
        self.logger = logger
        self.destination = settings.destination
        self.watchdogInterval = settings.watchdogInterval
    }

    /// A notifier from an environment (see `Settings.init(environment:processID:)`); nil when not under a service
    /// manager.
    public convenience init?(environment: [String: String], processID: pid_t = getpid(), logger: Logger? = nil) {
        guard let settings = Settings(environment: environment, processID: processID) else { return nil }
        self.init(settings: settings, logger: logger)
    }

    /// A notifier from this process's environment; nil when not under a service manager.
    ///
    /// - Parameter unsetEnvironment: remove `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` afterwards (as
    ///   `sd_notify(3)`'s `unset_environment` does), so that processes started later do not inherit them. Call
    ///   it early, before other threads read the environment (`unsetenv(3)` is not thread-safe).
    public static func fromProcessEnvironment(unsetEnvironment: Bool = true, logger: Logger? = nil)
        -> SystemdNotifier?
    {
        var environment: [String: String] = [:]
        for name in environmentVariables {
            if let value = getenv(name) { environment[name] = String(cString: value) }
            if unsetEnvironment { unsetenv(name) }
        }
        return SystemdNotifier(environment: environment, logger: logger)
    }

    /// Sends that failed so far (no listener, queue full, …).
    public var failedSends: Int {
        lock.lock()
        defer { lock.unlock() }
        return failures
    }

    // MARK: Notifications

    /// Sends one notification of newline-separated `KEY=value` assignments, waiting at most one second for room
    /// in the receiver's queue (`sendto(2)`).
    ///
    /// - Returns: whether the datagram was queued for the service manager.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        send(state, nonBlocking: false)
    }

    /// `READY=1`: start-up is complete (the socket accepts). systemd starts `Type=notify` dependants and arms the
    /// watchdog.
    @discardableResult
    public func ready() -> Bool {
        notify("READY=1")
    }

    /// `STATUS=…`: a one-line status for `systemctl status` (newlines become spaces). After `stopping()` the
    /// status reads `stopping: …`. Never blocks (dropped if the manager's queue is full).
    @discardableResult
    public func status(_ text: String) -> Bool {
        lock.lock()
        let prefix = stoppingSent ? "stopping: " : ""
        lock.unlock()
        let line = text.map { $0.isNewline ? " " : $0 }
        return send("STATUS=" + prefix + String(line), nonBlocking: true)
    }

    /// `STOPPING=1`: a graceful shutdown has begun. Sent once however often it is called (from any thread).
    @discardableResult
    public func stopping() -> Bool {
        lock.lock()
        let first = !stoppingSent
        stoppingSent = true
        lock.unlock()
        guard first else { return true }
        return notify("STOPPING=1\nSTATUS=shutting down")
    }

    /// `WATCHDOG=1`: a keep-alive ping, now. Never blocks.
    @discardableResult
    public func watchdog() -> Bool {
        send("WATCHDOG=1", nonBlocking: true)
    }

    /// `MAINPID=`: tells systemd which process is the service's main process. divvyd does not need it (systemd
    /// starts divvyd itself, so it is the main process already); for a launcher that forks the daemon.
    @discardableResult
    public func mainPID(_ pid: pid_t) -> Bool {
        notify("MAINPID=\(pid)")
    }

    /// Pings the watchdog when it is on and half its interval has passed since the last ping (or none was sent
    /// yet). Call it from the loop whose liveness systemd should watch.
    ///
    /// - Parameter now: the current instant (tests pass their own).
    /// - Returns: whether a ping was sent. A failed ping is retried at the next call.
    @discardableResult
    public func pingWatchdogIfDue(at now: ContinuousClock.Instant = .now) -> Bool {
        guard let pingInterval else { return false }
        lock.lock()
        let due = lastPing.map { now - $0 >= pingInterval } ?? true
        lock.unlock()
        guard due, watchdog() else { return false }
        lock.lock()
        lastPing = now
        lock.unlock()
        return true
    }

    /// Hooks that report the server's life to systemd: `ready` → `READY=1`, `status` → `STATUS=`, `tick` →
    /// `WATCHDOG=1` when due, `stopping` → `STOPPING=1`.
    public func serverHooks() -> ServerHooks {
        ServerHooks(
            ready: { self.ready() }, status: { self.status($0) }, tick: { self.pingWatchdogIfDue() },
            stopping: { self.stopping() })
    }

    // MARK: The file-descriptor store

    /// The names divvyd stores its region's descriptors under (`FDNAME=`), and finds them by in `LISTEN_FDNAMES`
    /// on the next start.
    public enum StoredName {
        /// The region's own object (header and heap metadata).
        public static let region = "divvy-region"
        /// The region's separate data object (what mediated clients map).
        public static let regionData = "divvy-region-data"
    }

    /// `FDSTORE=1`: hands duplicates of `descriptors` to the service manager's file-descriptor store under
    /// `name` (`FDNAME=`), replacing what was stored under that name; systemd passes them back on the service's
    /// next start (`LISTEN_FDS`, `LISTEN_FDNAMES`), after a crash or `systemctl restart`, and drops them when the
    /// unit is stopped. Needs `FileDescriptorStoreMax=` in the unit (the shipped one sets it). `FDPOLL=0`:
    /// the descriptors are memfds, which systemd cannot poll for hang-ups. Waits at most one second.
    ///
    /// - Parameters:
    ///   - descriptors: at most 8, still owned by the caller (the store keeps its own duplicates).
    ///   - name: the store name, at most 255 characters of `[A-Za-z0-9_.-]` (systemd's rule for `FDNAME=`).
    /// - Returns: whether the datagram (and so the descriptors) was queued for the service manager.
    @discardableResult
    public func storeDescriptors(_ descriptors: [Int32], name: String) -> Bool {
        precondition(!descriptors.isEmpty && descriptors.count <= 8, "store 1…8 descriptors at a time")
        precondition(
            !name.isEmpty && name.count <= 255
                && name.utf8.allSatisfy { $0 == 0x2D || $0 == 0x2E || $0 == 0x5F || (0x30...0x39).contains($0)
                    || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) },
            "FDNAME '\(name)' must be 1…255 characters of [A-Za-z0-9_.-]")
        let state = "FDSTORE=1\nFDNAME=\(name)\nFDPOLL=0"
        // sendmsg(2) with SCM_RIGHTS goes through a connected socket: a short-lived one, so that the notifier's
        // own (unconnected) socket stays usable from any thread.
        let type = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let connected: OwnedDescriptor
        switch systemSocket(domain: AF_UNIX, type: type) {
        case .success(let opened): connected = OwnedDescriptor(taking: opened)
        case .failure(let error): return noteFailure(state, error.rawValue)
        }
        _ = systemSetSendTimeout(connected.rawValue, milliseconds: 1000)
        let fd = connected.rawValue
        let connection = withDestinationAddress { address, length in systemConnect(fd, address, length) }
        if case .failure(let error) = connection { return noteFailure(state, error.rawValue) }
        let payload = Array(state.utf8)
        let result = payload.withUnsafeBytes { bytes in
            descriptors.withUnsafeBufferPointer { fds in
                systemSendWithDescriptors(fd, bytes, descriptors: fds, flags: Int32(MSG_NOSIGNAL))
            }
        }
        if case .failure(let error) = result { return noteFailure(state, error.rawValue) }
        return true
    }

    /// `FDSTOREREMOVE=1`: drops the descriptors stored under `name` (a clean stop that ends the heap for good).
    ///
    /// - Returns: whether the datagram was queued for the service manager.
    @discardableResult
    public func removeStoredDescriptors(name: String) -> Bool {
        notify("FDSTOREREMOVE=1\nFDNAME=\(name)")
    }

    // MARK: Sending

    /// Calls `body` with the destination's `sockaddr_un` and its length.
    private func withDestinationAddress<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let name: [UInt8]
        switch destination {
        case .path(let path): name = Array(path.utf8) + [0]
        case .abstract(let abstract): name = [0] + Array(abstract.utf8)  // Abstract: no terminating NUL.
        }
        // Invariant: `Destination.init` admits only names that fit (`name.count <= sunPathCapacity`).
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + name.count)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    private func send(_ state: String, nonBlocking: Bool) -> Bool {
        let payload = Array(state.utf8)
        let flags = Int32(MSG_NOSIGNAL) | (nonBlocking ? Int32(MSG_DONTWAIT) : 0)
        let fd = socket.rawValue
        let result = withDestinationAddress { socketAddress, length in
            payload.withUnsafeBytes { bytes in
                systemSendTo(fd, bytes, flags: flags, to: socketAddress, length: length)
            }
        }
        guard case .failure(let failure) = result else { return true }
        return noteFailure(state, failure.rawValue)
    }

    /// Counts a failed send, logs the first one, and returns false.
    private func noteFailure(_ state: String, _ error: Int32) -> Bool {
        lock.lock()
        failures += 1
        let first = failures == 1
        lock.unlock()
        if first {
            logger?.warning(
                "could not notify the service manager (further failures are not logged)",
                metadata: [
                    "notify_socket": "\(destination)", "message": "\(state.prefix(while: { $0 != "=" }))",
                    "error": "\(systemErrorDescription(error)) (errno \(error))",
                ])
        }
        return false
    }
}
