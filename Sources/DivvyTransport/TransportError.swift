import DivvySystem
import SystemPackage

/// An error from a Unix-socket operation: what failed, on which path or peer, and the `errno` behind it.
///
/// A struct with a code (not an enum) so that codes can be added without breaking users.
public struct TransportError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate let name: String
        /// Nothing listens at the socket path (`ENOENT` / `ECONNREFUSED`): no daemon is running there.
        public static let noListener = Code(name: "noListener")
        /// The socket path or the socket refused us (`EACCES` / `EPERM`).
        public static let permissionDenied = Code(name: "permissionDenied")
        /// Another process already listens on the socket path.
        public static let addressInUse = Code(name: "addressInUse")
        /// The socket path does not fit `sockaddr_un` (107 bytes).
        public static let pathTooLong = Code(name: "pathTooLong")
        /// The peer closed the connection (EOF, `EPIPE`, `ECONNRESET`).
        public static let closed = Code(name: "closed")
        /// A receive timed out.
        public static let timedOut = Code(name: "timedOut")
        /// Any other system-call failure.
        public static let systemCallFailed = Code(name: "systemCallFailed")
        /// The code's name.
        public var description: String { name }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened, to what, and what to do.
    public var message: String
    /// The `errno` value, 0 if none.
    public var errno: Int32

    /// Creates an error.
    public init(_ code: Code, _ message: String, errno: Int32 = 0) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    /// Creates an error caused by a failed system call.
    ///
    /// - Parameters:
    ///   - code: what kind of failure this is.
    ///   - message: what happened, to what, and what to do.
    ///   - cause: the system call's errno, as swift-system's `Errno` (stored in `errno`).
    public init(_ code: Code, _ message: String, cause: Errno) {
        self.init(code, message, errno: cause.rawValue)
    }

    /// The `errno` as swift-system's `Errno` (the type every Divvy system call reports), or nil if none.
    public var cause: Errno? { errno == 0 ? nil : Errno(rawValue: errno) }

    /// The message, with the system's text for `errno` when there is one.
    public var description: String {
        errno == 0 ? message : "\(message): \(systemErrorDescription(errno)) (errno \(errno))"
    }
}
