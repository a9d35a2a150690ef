import DivvyProtocol

/// Who gets a connection slot, as a pure value: it counts open connections (in total and per uid) and decides
/// each new one from the peer's uid and admin right, so one user's connections cannot take every slot and an
/// administrator can always get in. The server carries the decisions out; tested on its own.
///
/// - Ordinary peers share `maxClients` slots, and one uid may hold at most `maxConnectionsPerUID` of them.
/// - Peers the policy lets administer are exempt from the per-uid limit and may also use
///   `reservedAdminConnections` slots beyond `maxClients`, so `divvyctl status` works when ordinary peers fill
///   the daemon.
///
/// Every refusal names the setting that would have allowed the connection.
public struct ConnectionAdmission: Hashable, Sendable {
    /// The limits.
    public struct Limits: Hashable, Sendable {
        /// Slots for every peer (`max-clients`).
        public var maxClients: Int
        /// Slots beyond `maxClients` that only admin peers may use (`reserved-admin-connections`).
        public var reservedAdminConnections: Int
        /// Connections one non-admin uid may hold at once (`max-connections-per-uid`); 0: no limit.
        public var maxConnectionsPerUID: Int

        /// Creates limits.
        public init(maxClients: Int, reservedAdminConnections: Int, maxConnectionsPerUID: Int) {
            self.maxClients = maxClients
            self.reservedAdminConnections = reservedAdminConnections
            self.maxConnectionsPerUID = maxConnectionsPerUID
        }
    }

    /// What to do with a new connection.
    public enum Decision: Hashable, Sendable {
        /// Give it a slot (then call `opened(uid:)`).
        case admit
        /// Refuse it with this error (the connection is closed after the reply).
        case refuse(ErrorCode, String)
    }

    /// The limits in force. Changing them (a configuration reload) decides new connections by the new limits and
    /// closes none of the open ones.
    public var limits: Limits
    /// Open connections.
    public private(set) var total = 0
    /// Open connections per uid (uids with none are absent).
    public private(set) var perUID: [UInt32: Int] = [:]

    /// No connections yet.
    public init(_ limits: Limits) {
        self.limits = limits
    }

    /// Decides a new connection from `uid` (`isAdmin`: the policy lets it administer).
    public func decide(uid: UInt32, isAdmin: Bool) -> Decision {
        if isAdmin {
            let slots = limits.maxClients + limits.reservedAdminConnections
            guard total < slots else {
                return .refuse(
                    .tooManyClients,
                    "the daemon serves \(total) connections, all of its max-clients (\(limits.maxClients)) and "
                        + "reserved-admin-connections (\(limits.reservedAdminConnections)) slots: raise "
                        + "reserved-admin-connections or max-clients, or disconnect clients")
            }
            return .admit
        }
        guard total < limits.maxClients else {
            return .refuse(
                .tooManyClients,
                "the daemon serves \(total) connections, its max-clients (\(limits.maxClients)): raise max-clients "
                    + "in divvyd.conf, or wait for clients to leave")
        }
        let mine = perUID[uid] ?? 0
        guard limits.maxConnectionsPerUID == 0 || mine < limits.maxConnectionsPerUID else {
            return .refuse(
                .tooManyClients,
                "uid \(uid) has \(mine) connections open, its max-connections-per-uid (\(limits.maxConnectionsPerUID))"
                    + ": close some, raise max-connections-per-uid, or list the uid in admin-uids (exempt)")
        }
        return .admit
    }

    /// Records an admitted connection from `uid`.
    public mutating func opened(uid: UInt32) {
        total += 1
        perUID[uid, default: 0] += 1
    }

    /// Records the end of a connection `opened(uid:)` recorded.
    public mutating func closed(uid: UInt32) {
        precondition(total > 0, "ConnectionAdmission.closed without a matching opened")
        total -= 1
        if let count = perUID[uid], count > 1 { perUID[uid] = count - 1 } else { perUID[uid] = nil }
    }
}

/// The deadlines of connections that have not said `hello`, earliest first, as a pure value. The timeout is the
/// same for every connection and the clock is monotonic, so deadlines arrive in order and a queue suffices:
/// `expired(at:)` pops the ones due; the caller ignores ids that said hello (or left) meanwhile.
public struct HandshakeDeadlines: Sendable {
    private var queue: [(id: UInt32, deadline: ContinuousClock.Instant)] = []
    private var head = 0

    /// No deadlines.
    public init() {}

    /// Deadlines still queued (some may belong to connections that completed their handshake).
    public var count: Int { queue.count - head }

    /// Queues connection `id`'s deadline (later than or equal to every queued one).
    public mutating func add(_ id: UInt32, deadline: ContinuousClock.Instant) {
        queue.append((id, deadline))
    }

    /// Removes and returns the ids whose deadline is at or before `now`, in deadline order.
    public mutating func expired(at now: ContinuousClock.Instant) -> [UInt32] {
        var due: [UInt32] = []
        while head < queue.count, queue[head].deadline <= now {
            due.append(queue[head].id)
            head += 1
        }
        // Compact once the consumed prefix dominates (amortized O(1) per deadline).
        if head > 64, head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return due
    }
}
