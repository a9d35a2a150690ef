/// An error in what the service manager handed the daemon (socket activation's `LISTEN_*` variables and
/// descriptors): what is wrong and how to fix the unit.
///
/// A struct with a code (not an enum) so that codes can be added without breaking users.
public struct SystemdError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate let name: String
        /// A variable is malformed (`LISTEN_PID` or `LISTEN_FDS` not a number, `LISTEN_FDNAMES` of the wrong length).
        public static let invalidEnvironment = Code(name: "invalidEnvironment")
        /// A passed descriptor is not open, or not the kind of socket the daemon serves.
        public static let badDescriptor = Code(name: "badDescriptor")
        /// More (or fewer) sockets were passed than the daemon serves.
        public static let unexpectedSocketCount = Code(name: "unexpectedSocketCount")
        /// The code's name.
        public var description: String { name }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened and what to do.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The message.
    public var description: String { message }
}
