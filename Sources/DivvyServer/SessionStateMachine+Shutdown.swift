import DivvyProtocol

extension SessionStateMachine {
    /// What the daemon does with a request that arrives after it sent `shutdown` (PROTOCOL.md 6.5): `goodbye`,
    /// `free` and `freeBatch` are served, so a client can give its blocks back and leave; everything else is
    /// refused with `shuttingDown` (the connection stays open until the client leaves or the grace period ends).
    /// A `.handle` decision goes on to the usual checks (`admit(_:)`).
    public static func duringShutdown(_ message: Message) -> Decision {
        switch message {
        case .goodbye, .free, .freeBatch: return .handle
        default:
            return .reject(
                .shuttingDown,
                "divvyd is shutting down: it serves only free, freeBatch and goodbye now; free what you hold and "
                    + "send goodbye")
        }
    }
}
