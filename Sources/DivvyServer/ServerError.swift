/// An error starting or running the daemon: what failed and what to do about it.
public struct ServerError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate let name: String
        /// The configuration is impossible.
        public static let invalidConfiguration = Code(name: "invalidConfiguration")
        /// The shared-memory region could not be created (space, permissions, an existing name).
        public static let region = Code(name: "region")
        /// The listening socket could not be set up (another daemon listens, permissions, path).
        public static let socket = Code(name: "socket")
        /// The event loop failed.
        public static let eventLoop = Code(name: "eventLoop")
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
