import DivvyProtocol

/// The protocol state of one connection, as a pure value: it decides what a request may do given the handshake
/// so far and the peer's rights, and the server carries the decision out. Tested on its own.
///
/// States: `awaitingHello` → (`hello` accepted) → `ready` → (`goodbye`, a closing error, or shutdown) → `closed`.
public struct SessionStateMachine: Hashable, Sendable {
    /// Where the connection is.
    public enum State: Hashable, Sendable {
        /// Connected; the only acceptable request is `hello`.
        case awaitingHello
        /// Handshake done with this version and mode.
        case ready(version: UInt16, mode: ClientMode)
        /// The connection is ending; nothing more is handled.
        case closed
    }

    /// What to do with a request.
    public enum Decision: Hashable, Sendable {
        /// Carry it out.
        case handle
        /// Refuse it with this error; close the connection after the reply when the code says so.
        case reject(ErrorCode, String)
    }

    /// What the handshake settled.
    public enum HelloOutcome: Hashable, Sendable {
        /// Welcome the client with this version and mode.
        case welcome(version: UInt16, mode: ClientMode)
        /// Refuse (and close when the code says so).
        case reject(ErrorCode, String)
    }

    /// The current state.
    public private(set) var state: State = .awaitingHello
    /// Whether the peer may use direct access (from the policy).
    public let mayUseDirect: Bool
    /// Whether the peer may run admin operations (from the policy).
    public let mayAdminister: Bool

    /// A connection that has not said hello yet.
    public init(mayUseDirect: Bool, mayAdminister: Bool) {
        self.mayUseDirect = mayUseDirect
        self.mayAdminister = mayAdminister
    }

    /// The granted mode, once ready.
    public var mode: ClientMode? {
        if case .ready(_, let mode) = state { return mode }
        return nil
    }

    /// Handles `hello`: negotiates the version (the highest both speak) and the mode (`any` → direct when the
    /// policy allows it and a participant slot is available, else mediated; `direct` without the right →
    /// `wrongMode`; `direct` with the right but no slot → `directUnavailable`).
    ///
    /// - Parameters:
    ///   - hello: the client's hello.
    ///   - directSlotAvailable: whether the heap has a participant slot for one more direct client (free, and not
    ///     promised to another direct client that has not joined yet). The caller reserves it when the outcome is
    ///     a direct welcome.
    public mutating func hello(_ hello: Hello, directSlotAvailable: Bool = true) -> HelloOutcome {
        guard case .awaitingHello = state else {
            return .reject(.handshakeRequired, "hello was already exchanged on this connection")
        }
        // Plain comparisons, never a Range: the bounds come from the peer and may be in any order.
        let lowest = max(hello.minVersion, ProtocolVersion.supported.lowerBound)
        let highest = min(hello.maxVersion, ProtocolVersion.supported.upperBound)
        guard hello.minVersion <= hello.maxVersion, lowest <= highest else {
            state = .closed
            return .reject(
                .unsupportedVersion,
                "client speaks protocol \(hello.minVersion)…\(hello.maxVersion); this daemon speaks "
                    + "\(ProtocolVersion.supported.lowerBound)…\(ProtocolVersion.supported.upperBound)")
        }
        let mode: ClientMode
        switch hello.mode {
        case .direct:
            guard mayUseDirect else {
                return .reject(
                    .wrongMode, "direct access is not granted to this user by the daemon's policy; "
                        + "connect in mediated mode (or ask the operator to add your uid/gid to direct-uids)")
            }
            guard directSlotAvailable else {
                return .reject(
                    .directUnavailable, "every participant slot of the daemon's heap is taken by direct clients; "
                        + "connect in mode any (it falls back to mediated) or mediated, retry when a direct client "
                        + "has left, or ask the operator to raise participant-capacity")
            }
            mode = .direct
        case .mediated: mode = .mediated
        case .any: mode = mayUseDirect && directSlotAvailable ? .direct : .mediated
        }
        state = .ready(version: highest, mode: mode)
        return .welcome(version: highest, mode: mode)
    }

    /// Decides whether a request (other than `hello`) may be handled now.
    public func admit(_ message: Message) -> Decision {
        switch state {
        case .closed:
            return .reject(.shuttingDown, "the connection is closing")
        case .awaitingHello:
            if case .hello = message { return .handle }
            return .reject(.handshakeRequired, "send hello first")
        case .ready(_, let mode):
            switch message {
            case .hello:
                return .reject(.handshakeRequired, "hello was already exchanged on this connection")
            case .join, .lease, .returnPages:
                return mode == .direct
                    ? .handle : .reject(.wrongMode, "\(message.type) is for direct clients; this one is mediated")
            case .admin:
                return mayAdminister
                    ? .handle
                    : .reject(.adminRequired, "admin operations are allowed only to the admin uids/gids in the "
                        + "daemon's policy: its operator can add this uid to admin-uids (or a group to admin-gids)")
            case .mapRegion, .allocate, .free, .allocateBatch, .freeBatch, .share, .adopt, .stats, .ping, .goodbye:
                return .handle
            default:
                return .reject(.unknownMessageType, "\(message.type) is not a request")
            }
        }
    }

    /// Marks the connection closed (after goodbye, a closing error, or shutdown).
    public mutating func close() { state = .closed }
}
