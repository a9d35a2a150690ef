import DivvySystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// The sockets a service manager passed to this process (socket activation, `sd_listen_fds(3)`), read natively
/// (no libsystemd).
///
/// systemd binds the sockets of a `.socket` unit itself, starts the service when the first client connects (or
/// at boot), and passes them as descriptors 3, 4, … (`SD_LISTEN_FDS_START`) with `LISTEN_FDS` (how many),
/// `LISTEN_PID` (the process they are for: a variable inherited by a child is not the child's) and, optionally,
/// `LISTEN_FDNAMES` (colon-separated `FileDescriptorName=`s). Clients can connect before divvyd runs and while
/// it restarts: the socket stays open in systemd, connections wait in its backlog.
///
/// ```swift
/// import Logging
///
/// let logger = Logger(label: "divvyd")
/// let listener = try SocketActivation.fromProcessEnvironment()?.onlyListener()   // nil: not socket-activated
/// let server = try DivvyServer(configuration: .init(), logger: logger, listenerDescriptor: listener?.descriptor)
/// ```
public struct SocketActivation: Hashable, Sendable {
    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// The environment variables this reads (and `fromProcessEnvironment` unsets).
    public static let environmentVariables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]

    /// One passed socket.
    public struct Socket: Hashable, Sendable {
        /// Its descriptor (3, 4, …).
        public var descriptor: Int32
        /// Its name (`FileDescriptorName=`, by default the socket unit's name), or `"unknown"` when the manager
        /// passed no names (as `sd_listen_fds_with_names(3)` reports).
        public var name: String

        /// Creates a socket record.
        public init(descriptor: Int32, name: String) {
            self.descriptor = descriptor
            self.name = name
        }
    }

    /// The passed sockets, in descriptor order.
    public var sockets: [Socket]

    /// Creates an activation record.
    public init(sockets: [Socket]) {
        self.sockets = sockets
    }

    /// Reads the `LISTEN_*` variables as `sd_listen_fds_with_names(3)` does, without touching any descriptor.
    ///
    /// Nil (not socket-activated) when `LISTEN_PID` is unset or names another process, or `LISTEN_FDS` is unset
    /// or 0.
    ///
    /// - Throws: `SystemdError.invalidEnvironment` when `LISTEN_PID` or `LISTEN_FDS` is not a number, or
    ///   `LISTEN_FDNAMES` names a different number of sockets than `LISTEN_FDS` counts.
    public static func parse(environment: [String: String], processID: pid_t = getpid()) throws(SystemdError)
        -> SocketActivation?
    {
        guard let pidText = environment["LISTEN_PID"], !pidText.isEmpty else { return nil }
        guard let pid = pid_t(pidText), pid > 0 else {
            throw SystemdError(.invalidEnvironment, "LISTEN_PID='\(pidText)' is not a process id")
        }
        guard pid == processID else { return nil }
        guard let countText = environment["LISTEN_FDS"], !countText.isEmpty else { return nil }
        // Invariant: descriptors are Int32 counted from 3, so at most Int32.max - 3 of them.
        guard let count = Int32(countText), count >= 0, count <= Int32.max - firstDescriptor else {
            throw SystemdError(.invalidEnvironment, "LISTEN_FDS='\(countText)' is not a count of descriptors")
        }
        guard count > 0 else { return nil }
        let names: [String]
        if let namesText = environment["LISTEN_FDNAMES"] {
            names = namesText.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard names.count == Int(count) else {
                throw SystemdError(
                    .invalidEnvironment,
                    "LISTEN_FDNAMES='\(namesText)' names \(names.count) sockets but LISTEN_FDS=\(count)")
            }
        } else {
            names = Array(repeating: "unknown", count: Int(count))
        }
        return SocketActivation(
            sockets: names.enumerated().map { Socket(descriptor: firstDescriptor + Int32($0.offset), name: $0.element) })
    }

    /// Reads this process's `LISTEN_*` variables (see `parse(environment:processID:)`), checks that every passed
    /// descriptor is open, and marks them close-on-exec (as `sd_listen_fds(3)` does).
    ///
    /// - Parameter unsetEnvironment: remove the `LISTEN_*` variables afterwards, whatever the outcome (as
    ///   `sd_listen_fds(3)`'s `unset_environment` does), so that processes started later do not see them. Call it
    ///   early, before other threads read the environment (`unsetenv(3)` is not thread-safe).
    /// - Throws: `SystemdError.invalidEnvironment` (see `parse`), `.badDescriptor` when a counted descriptor is
    ///   not open.
    public static func fromProcessEnvironment(unsetEnvironment: Bool = true) throws(SystemdError)
        -> SocketActivation?
    {
        var environment: [String: String] = [:]
        for name in environmentVariables {
            if let value = getenv(name) { environment[name] = String(cString: value) }
            if unsetEnvironment { unsetenv(name) }
        }
        guard let activation = try parse(environment: environment) else { return nil }
        for socket in activation.sockets {
            // Inherited, not ours yet: a closed one is the environment's mistake, reported rather than trapped on.
            let flags: Int32
            switch systemFcntl(socket.descriptor, F_GETFD, trapOnProgrammerError: false) {
            case .success(let value): flags = value
            case .failure(let error):
                throw SystemdError(
                    .badDescriptor,
                    "LISTEN_FDS=\(activation.sockets.count) but descriptor \(socket.descriptor) is not open "
                        + "(\(systemErrorDescription(error.rawValue)))")
            }
            _ = systemFcntl(socket.descriptor, F_SETFD, flags | FD_CLOEXEC)
        }
        return activation
    }

    /// The names of descriptors a previous divvyd put in the service manager's store (`SystemdNotifier.StoredName`):
    /// systemd passes them back with the sockets, and they are not listeners.
    public static let storedNames: Set<String> = [SystemdNotifier.StoredName.region, SystemdNotifier.StoredName.regionData]

    /// The passed descriptors that are listening sockets: all but the stored ones (`storedNames`).
    public var listeners: [Socket] { sockets.filter { !Self.storedNames.contains($0.name) } }

    /// The region a previous divvyd stored (`SystemdNotifier.storeDescriptors(_:name:)`): its own object and its
    /// data object, when both came back; nil when neither did.
    ///
    /// - Throws: `SystemdError.badDescriptor` when only one of the two came back (a store that lost one cannot be
    ///   re-attached: the operator decides), or one name came twice.
    public func storedRegion() throws(SystemdError) -> (region: Int32, data: Int32)? {
        let region = sockets.filter { $0.name == SystemdNotifier.StoredName.region }
        let data = sockets.filter { $0.name == SystemdNotifier.StoredName.regionData }
        if region.isEmpty, data.isEmpty { return nil }
        guard region.count == 1, data.count == 1 else {
            throw SystemdError(
                .badDescriptor,
                "the service manager passed \(region.count) '\(SystemdNotifier.StoredName.region)' and \(data.count) "
                    + "'\(SystemdNotifier.StoredName.regionData)' descriptors; a stored region needs one of each. "
                    + "Clear the store (systemctl clean --what=fdstore divvyd, or stop the unit) to start afresh")
        }
        return (region[0].descriptor, data[0].descriptor)
    }

    /// The one passed listening socket, for a daemon that serves exactly one; nil when only stored descriptors
    /// were passed (the daemon then binds its configured socket itself).
    ///
    /// - Throws: `SystemdError.unexpectedSocketCount` naming the sockets when there are several.
    public func onlyListener() throws(SystemdError) -> Socket? {
        let listeners = listeners
        guard listeners.count <= 1 else {
            throw SystemdError(
                .unexpectedSocketCount,
                "divvyd serves one socket but was passed \(listeners.count) ("
                    + listeners.map { "fd \($0.descriptor) '\($0.name)'" }.joined(separator: ", ")
                    + "); give the .socket unit a single ListenSequentialPacket= line")
        }
        return listeners.first
    }

    /// The filesystem path a Unix socket is bound to (`getsockname(2)`), or nil for an unbound, abstract or
    /// non-Unix socket.
    public static func boundPath(of descriptor: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard result == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let pathLength = Int(length) - MemoryLayout<sa_family_t>.size
        let bytes = withUnsafeBytes(of: &address.sun_path) { raw in Array(raw.prefix(max(0, pathLength))) }
        guard let first = bytes.first, first != 0 else { return nil }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
}
