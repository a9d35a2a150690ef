/// The JSON documents in the bodies of `adminReply` frames (format `json`), one type per admin operation. The
/// daemon encodes them and `divvyctl` decodes them, so both sides share one declaration; their shapes are part of
/// the daemon's interface (fields are only ever added) and are documented in docs/daemon.md ("divvyctl").
///
/// Plain `Codable` values: this module has no JSON coder of its own (no Foundation); callers bring one.
public enum AdminDocument {
    /// `status`: the daemon, its region and heap, and how many clients are connected.
    public struct Status: Codable, Hashable, Sendable {
        /// Where the region lives and how big it is.
        public struct Region: Codable, Hashable, Sendable {
            /// The POSIX shared-memory name, or nil for an anonymous memfd.
            public var name: String?
            /// `memfd` or `/dev/shm`.
            public var backing: String
            /// Bytes of the whole region, of its metadata area and of its data area.
            public var totalBytes: Int, metadataBytes: Int, dataBytes: Int
            /// The pages backing it (`base`, `transparent`, …).
            public var pageKind: String
            /// Whether the data area is committed lazily.
            public var lazy: Bool

            /// Creates a value; see the properties.
            public init(
                name: String?, backing: String, totalBytes: Int, metadataBytes: Int, dataBytes: Int, pageKind: String,
                lazy: Bool
            ) {
                self.name = name
                self.backing = backing
                self.totalBytes = totalBytes
                self.metadataBytes = metadataBytes
                self.dataBytes = dataBytes
                self.pageKind = pageKind
                self.lazy = lazy
            }
        }

        /// The heap's pages and bytes.
        public struct Heap: Codable, Hashable, Sendable {
            /// The small page size, and the pages of both tiers.
            public var pageSize: Int, pages: Int
            /// The span page size (0 without a span tier), the span pages, and those in their pool.
            public var spanPageSize: Int, spanPages: Int, freeSpanPages: Int
            /// Pages (both tiers) in the pools, owned by a participant, and orphaned.
            public var freePages: Int, ownedPages: Int, orphanPages: Int
            /// Bytes in blocks in use, and page capacity not in use.
            public var bytesUsed: Int, bytesFree: Int

            /// Creates a value; see the properties.
            public init(
                pageSize: Int, pages: Int, spanPageSize: Int, spanPages: Int, freeSpanPages: Int, freePages: Int,
                ownedPages: Int, orphanPages: Int, bytesUsed: Int, bytesFree: Int
            ) {
                self.pageSize = pageSize
                self.pages = pages
                self.spanPageSize = spanPageSize
                self.spanPages = spanPages
                self.freeSpanPages = freeSpanPages
                self.freePages = freePages
                self.ownedPages = ownedPages
                self.orphanPages = orphanPages
                self.bytesUsed = bytesUsed
                self.bytesFree = bytesFree
            }
        }

        /// The daemon's version and protocol version.
        public var version: String, protocolVersion: Int
        /// The daemon's process id and how long it has run.
        public var pid: Int, uptimeSeconds: Double
        /// The socket it listens on.
        public var socket: String
        /// The region.
        public var region: Region
        /// The heap.
        public var heap: Heap
        /// Clients connected.
        public var clients: Int

        /// Creates a value; see the properties.
        public init(
            version: String, protocolVersion: Int, pid: Int, uptimeSeconds: Double, socket: String, region: Region,
            heap: Heap, clients: Int
        ) {
            self.version = version
            self.protocolVersion = protocolVersion
            self.pid = pid
            self.uptimeSeconds = uptimeSeconds
            self.socket = socket
            self.region = region
            self.heap = heap
            self.clients = clients
        }
    }

    /// One row of `classes`.
    public struct SizeClass: Codable, Hashable, Sendable {
        /// The class's block size, and the pages dedicated to it.
        public var blockSize: Int, pages: Int
        /// Blocks in use and free in those pages.
        public var blocksUsed: Int, blocksFree: Int
        /// The share of the class's carved capacity not in use (0…1): internal fragmentation of its pages.
        public var fragmentation: Double

        /// Creates a value; see the properties.
        public init(blockSize: Int, pages: Int, blocksUsed: Int, blocksFree: Int, fragmentation: Double) {
            self.blockSize = blockSize
            self.pages = pages
            self.blocksUsed = blocksUsed
            self.blocksFree = blocksFree
            self.fragmentation = fragmentation
        }
    }

    /// One row of `clients` (and the body of `disconnect`). `clients` is paged: see `Protocol/PROTOCOL.md`,
    /// "Admin paging".
    public struct Client: Codable, Hashable, Sendable {
        /// The client id the daemon gave the connection.
        public var id: UInt32
        /// The peer's kernel-recorded pid, uid and gid.
        public var pid: Int32, uid: UInt32, gid: UInt32
        /// The name from `hello`, and the granted mode (`direct`, `mediated`, or `handshake` before `hello`).
        public var name: String, mode: String
        /// Bytes and blocks held through the daemon.
        public var bytesHeld: Int, blocksHeld: Int
        /// The client's quota, and the pages it has leased (direct clients).
        public var quotaBytes: Int, pageAllowance: Int
        /// The heap participant of a direct client.
        public var participant: Int?
        /// How long it has been connected, and how many requests it sent.
        public var connectedSeconds: Double, requests: Int

        /// Creates a value; see the properties.
        public init(
            id: UInt32, pid: Int32, uid: UInt32, gid: UInt32, name: String, mode: String, bytesHeld: Int,
            blocksHeld: Int, quotaBytes: Int, pageAllowance: Int, participant: Int?, connectedSeconds: Double,
            requests: Int
        ) {
            self.id = id
            self.pid = pid
            self.uid = uid
            self.gid = gid
            self.name = name
            self.mode = mode
            self.bytesHeld = bytesHeld
            self.blocksHeld = blocksHeld
            self.quotaBytes = quotaBytes
            self.pageAllowance = pageAllowance
            self.participant = participant
            self.connectedSeconds = connectedSeconds
            self.requests = requests
        }
    }

    /// `verify`: the heap audit.
    public struct Verify: Codable, Hashable, Sendable {
        /// Whether no invariant is violated, every violation in words, and the audit's summary.
        public var clean: Bool, violations: [String], summary: String
        /// Pages pooled, owned and orphaned.
        public var pooledPages: Int, ownedPages: Int, orphanPages: Int
        /// Blocks allocated, and held-list entries.
        public var allocatedBlocks: Int, holdings: Int
        /// Participants alive and dead, and operations in flight.
        public var liveParticipants: Int, deadParticipants: Int, operationsInFlight: Int
        /// Violations left out of `violations` so that the document fits one frame (the first ones are kept;
        /// `summary` and `clean` count them all). Nil from a daemon that predates the field.
        public var violationsOmitted: Int?

        /// Creates a value; see the properties.
        public init(
            clean: Bool, violations: [String], summary: String, pooledPages: Int, ownedPages: Int, orphanPages: Int,
            allocatedBlocks: Int, holdings: Int, liveParticipants: Int, deadParticipants: Int, operationsInFlight: Int,
            violationsOmitted: Int? = nil
        ) {
            self.clean = clean
            self.violations = violations
            self.summary = summary
            self.pooledPages = pooledPages
            self.ownedPages = ownedPages
            self.orphanPages = orphanPages
            self.allocatedBlocks = allocatedBlocks
            self.holdings = holdings
            self.liveParticipants = liveParticipants
            self.deadParticipants = deadParticipants
            self.operationsInFlight = operationsInFlight
            self.violationsOmitted = violationsOmitted
        }
    }

    /// `config`: the running configuration as config-file settings.
    public struct Config: Codable, Hashable, Sendable {
        /// One `key = value` setting.
        public struct Setting: Codable, Hashable, Sendable {
            /// The config-file key and its value.
            public var key: String, value: String

            /// Creates a setting.
            public init(key: String, value: String) {
                self.key = key
                self.value = value
            }
        }

        /// Every setting, in the order the daemon renders them.
        public var settings: [Setting]

        /// Creates a value.
        public init(settings: [Setting]) { self.settings = settings }
    }

    /// `disconnect`: the client that was disconnected, as it was, and how its process was stopped.
    ///
    /// A direct client writes shared memory itself, so the daemon kills its process (SIGKILL) before it ends the
    /// session; when that fails the request fails (`internalError`) and nothing changes. The new fields are nil
    /// from a daemon that predates them.
    public struct Disconnected: Codable, Hashable, Sendable {
        /// The client's row.
        public var disconnected: Client
        /// Whether the daemon killed the client's process (direct clients); false for a mediated client, whose
        /// memory the daemon alone touches.
        public var killed: Bool?
        /// How the kill reached the process: `pidfd` (a pidfd for the process that connected: never a process
        /// that reused the pid) or `pid` (a kernel without pidfds); nil when nothing was killed (or the process
        /// had already exited).
        public var killedThrough: String?
        /// What happens to a direct client's heap participant and its leased pages (recovered when its process has
        /// exited: "when process N exits", or the recovery's report); nil for a mediated client.
        public var recovery: String?

        /// Creates a value.
        public init(disconnected: Client, killed: Bool? = nil, killedThrough: String? = nil, recovery: String? = nil) {
            self.disconnected = disconnected
            self.killed = killed
            self.killedThrough = killedThrough
            self.recovery = recovery
        }
    }
}
