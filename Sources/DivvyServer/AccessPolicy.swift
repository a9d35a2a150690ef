import DivvyTransport

#if canImport(Glibc)
import Glibc
#endif

/// Who may connect to the daemon, who gets direct (shared-memory) access, and who may run admin operations —
/// decided from the peer's kernel-recorded credentials (`SO_PEERCRED`), which a client cannot forge.
///
/// A peer matches a rule when its uid is in the rule's uid set, or its gid or one of its supplementary groups
/// (`SO_PEERGROUPS`) is in the rule's gid set; nobody is
/// special-cased (so a policy can exclude even root). The defaults admit the daemon's own uid and root for
/// everything. Naming a peer as admin admits it too (`admin-uids` alone lets an operator run `divvyctl`); direct
/// access still needs admission (`allow-uids`/`allow-gids`, or an admin rule).
public struct AccessPolicy: Hashable, Sendable {
    /// Uids that may connect.
    public var allowedUIDs: Set<UInt32>
    /// Gids that may connect.
    public var allowedGIDs: Set<UInt32>
    /// Uids that get direct access (must also be allowed to connect); others are mediated.
    public var directUIDs: Set<UInt32>
    /// Gids that get direct access.
    public var directGIDs: Set<UInt32>
    /// Uids that may run admin operations (`divvyctl`); they may connect without being in `allowedUIDs`.
    public var adminUIDs: Set<UInt32>
    /// Gids that may run admin operations.
    public var adminGIDs: Set<UInt32>

    /// The default policy: the daemon's own uid (and root) may connect, use direct access and administer.
    public init() {
        let me: Set<UInt32> = [getuid(), 0]
        allowedUIDs = me
        allowedGIDs = []
        directUIDs = me
        directGIDs = []
        adminUIDs = me
        adminGIDs = []
    }

    /// Creates a policy from explicit sets.
    public init(
        allowedUIDs: Set<UInt32>, allowedGIDs: Set<UInt32> = [], directUIDs: Set<UInt32> = [],
        directGIDs: Set<UInt32> = [], adminUIDs: Set<UInt32> = [], adminGIDs: Set<UInt32> = []
    ) {
        self.allowedUIDs = allowedUIDs
        self.allowedGIDs = allowedGIDs
        self.directUIDs = directUIDs
        self.directGIDs = directGIDs
        self.adminUIDs = adminUIDs
        self.adminGIDs = adminGIDs
    }

    private static func matches(_ peer: PeerCredentials, _ uids: Set<UInt32>, _ gids: Set<UInt32>) -> Bool {
        uids.contains(peer.uid) || gids.contains(peer.gid) || peer.groups.contains { gids.contains($0) }
    }

    /// Whether `peer` may connect at all: it matches the allow rules or the admin rules.
    public func admits(_ peer: PeerCredentials) -> Bool {
        Self.matches(peer, allowedUIDs, allowedGIDs) || Self.matches(peer, adminUIDs, adminGIDs)
    }

    /// Whether `peer` may use direct (shared-memory) access.
    public func allowsDirect(_ peer: PeerCredentials) -> Bool {
        admits(peer) && Self.matches(peer, directUIDs, directGIDs)
    }

    /// Whether `peer` may run admin operations (which admits it, see `admits`).
    public func allowsAdmin(_ peer: PeerCredentials) -> Bool { Self.matches(peer, adminUIDs, adminGIDs) }
}
