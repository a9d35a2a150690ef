import DivvyProtocol

/// The daemon's counters since start (what `divvyctl metrics` exports).
public struct ServerCounters: Hashable, Sendable {
    /// Connections accepted.
    public var connections = 0
    /// Connections refused (policy, too many clients, shutting down).
    public var refusedConnections = 0
    /// Connections ended (any reason).
    public var disconnections = 0
    /// Blocks allocated for mediated clients.
    public var allocations = 0
    /// Mediated holdings dropped by free.
    public var frees = 0
    /// Blocks adopted by mediated clients.
    public var adoptions = 0
    /// Page leases granted to direct clients (joins and leases).
    public var leases = 0
    /// Participants recovered after a client's death or disconnect.
    public var recoveries = 0
    /// Times holes punched in the data object were found and re-committed (`HoleRepair`).
    public var holesRepaired = 0
    /// Bytes of backing store those repairs re-committed.
    public var bytesRecommitted = 0
    /// Error replies, by error code name.
    public var errors: [String: Int] = [:]
    /// Clients connected now (set when published).
    public var clients = 0
    /// Heap walks `stats` and `admin status` requests caused (`HeapUsageSnapshot.requestWalks`); for tests.
    var heapUsageRequestWalks = 0

    /// Counts one error reply.
    mutating func countError(_ code: ErrorCode) {
        errors["\(code)", default: 0] += 1
    }
}
