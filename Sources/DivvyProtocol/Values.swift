/// How a client wants to (or was granted to) use the shared heap.
public enum ClientMode: UInt8, Hashable, Sendable {
    /// In `hello` only: let the daemon pick (direct if policy allows, else mediated). Never granted in `welcome`.
    case any = 0
    /// Fast path: the client maps the whole region and allocates in shared memory itself.
    case direct = 1
    /// Isolated path: the client maps only the data area and allocates through the daemon.
    case mediated = 2
}

/// The kind of pages backing the shared region (`Welcome.pageKind`).
public enum PageKind: UInt8, Hashable, Sendable {
    /// The system's base pages (4 KiB on x86_64).
    case base = 0
    /// Base pages with transparent huge pages requested (madvise).
    case transparentHuge = 1
    /// Explicit 2 MiB huge pages (hugetlb).
    case huge2M = 2
    /// Explicit 1 GiB huge pages (hugetlb).
    case huge1G = 3
}

/// An administrative operation (`Message.admin`).
public enum AdminOperation: UInt8, Hashable, Sendable {
    /// Daemon and heap summary.
    case status = 1
    /// Per-size-class usage.
    case classes
    /// Connected clients, one page at a time: those whose id is above the argument (see `Message.admin`).
    case clients
    /// Runs the heap audit.
    case verify
    /// The effective configuration.
    case config
    /// Disconnects the client whose id is the argument.
    case disconnect
    /// Metrics snapshot.
    case metrics
}

/// The encoding of an admin reply's body.
public enum AdminFormat: UInt8, Hashable, Sendable {
    /// UTF-8 JSON.
    case json = 0
    /// UTF-8 plain text.
    case text = 1
}

/// The rule that maps a block handle to its place in the data area (see `Protocol/PROTOCOL.md`, "Handles").
///
/// A handle is a `UInt64`: the low 32 bits are the block's index in 16-byte units from the start of the data
/// area, the high 32 bits are the block's generation (bumped each time the block is reused, so stale handles are
/// detected). The protocol treats handles as opaque otherwise; the daemon validates them.
public enum BlockHandle {
    /// The byte offset of the handle's block from the start of the data area: `(handle & 0xFFFF_FFFF) * 16`.
    @inlinable
    public static func dataOffset(_ handle: UInt64) -> UInt64 {
        // Safe: a 32-bit index times 16 fits in 36 bits.
        (handle & 0xFFFF_FFFF) &* 16
    }

    /// The handle's generation: `handle >> 32`.
    @inlinable
    public static func generation(_ handle: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: handle >> 32)
    }

    /// Builds a handle from a data-area offset and a generation, or nil if the offset is not a multiple of 16 or
    /// is 2^36 or more (beyond what 32 bits of 16-byte units can address).
    @inlinable
    public static func make(dataOffset: UInt64, generation: UInt32) -> UInt64? {
        guard dataOffset % 16 == 0, dataOffset >> 36 == 0 else { return nil }
        return UInt64(generation) << 32 | dataOffset / 16
    }
}

/// The client's handshake opener (`hello`, 0x0001).
public struct Hello: Hashable, Sendable {
    /// The oldest protocol version the client speaks.
    public var minVersion: UInt16
    /// The newest protocol version the client speaks.
    public var maxVersion: UInt16
    /// The mode the client asks for.
    public var mode: ClientMode
    /// Capability bits the client offers. None are defined: send 0; the daemon ignores bits it does not know.
    public var capabilities: UInt32
    /// A name for logs and admin listings, at most `ProtocolLimits.maxNameLength` UTF-8 bytes.
    public var name: String

    /// Creates a hello.
    public init(minVersion: UInt16, maxVersion: UInt16, mode: ClientMode, capabilities: UInt32, name: String) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.mode = mode
        self.capabilities = capabilities
        self.name = name
    }
}

/// The daemon's handshake answer (`welcome`, 0x8001): the agreed version, the granted mode and the region layout.
public struct Welcome: Hashable, Sendable {
    /// The protocol version both sides use from now on (the highest common one).
    public var version: UInt16
    /// The granted mode: `.direct` or `.mediated` (never `.any`).
    public var mode: ClientMode
    /// The daemon's id for this client (admin listings, `disconnect`).
    public var clientID: UInt32
    /// The most bytes this client may hold at once.
    public var quotaBytes: UInt64
    /// The size of the whole shared region in bytes.
    public var regionSize: UInt64
    /// Where the heap metadata starts in the region.
    public var metadataOffset: UInt64
    /// The metadata's size in bytes.
    public var metadataSize: UInt64
    /// Where the data area (the blocks handles point into) starts in the region.
    public var dataOffset: UInt64
    /// The data area's size in bytes.
    public var dataSize: UInt64
    /// The heap's page size in bytes.
    public var pageSize: UInt32
    /// The kind of pages backing the region.
    public var pageKind: PageKind
    /// The block sizes the heap serves, in bytes, ascending.
    public var sizeClasses: [UInt32]

    /// Creates a welcome.
    public init(
        version: UInt16, mode: ClientMode, clientID: UInt32, quotaBytes: UInt64, regionSize: UInt64,
        metadataOffset: UInt64, metadataSize: UInt64, dataOffset: UInt64, dataSize: UInt64, pageSize: UInt32,
        pageKind: PageKind, sizeClasses: [UInt32]
    ) {
        self.version = version
        self.mode = mode
        self.clientID = clientID
        self.quotaBytes = quotaBytes
        self.regionSize = regionSize
        self.metadataOffset = metadataOffset
        self.metadataSize = metadataSize
        self.dataOffset = dataOffset
        self.dataSize = dataSize
        self.pageSize = pageSize
        self.pageKind = pageKind
        self.sizeClasses = sizeClasses
    }
}

/// What to map from the file descriptor passed with a `region` reply (0x8002).
public struct RegionGrant: Hashable, Sendable {
    /// The access granted: 1 is read-write (the only value defined; clients refuse others).
    public var access: UInt8
    /// The offset in the passed file where the mapping starts.
    public var offset: UInt64
    /// The number of bytes to map: the whole region for direct clients, the data area for mediated ones.
    public var length: UInt64

    /// The only access value defined: read-write.
    public static let readWrite: UInt8 = 1

    /// Creates a grant.
    public init(access: UInt8, offset: UInt64, length: UInt64) {
        self.access = access
        self.offset = offset
        self.length = length
    }
}

/// The outcome of one handle in a `freedBatch` reply: released, still held by others, or an error code.
///
/// The raw values 0 and 1 are `released` and `stillHeld`; every other value is the `ErrorCode` for that handle.
/// (Error codes 0 and 1 are therefore never per-handle statuses; `malformedFrame` concerns whole frames.)
public struct FreedStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The status on the wire.
    public let rawValue: UInt16

    /// Wraps any status value.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// The block went back to the heap.
    public static let released = FreedStatus(rawValue: 0)
    /// This client's hold was dropped; other holders remain.
    public static let stillHeld = FreedStatus(rawValue: 1)

    /// The status for a handle that failed with `error`.
    ///
    /// - Precondition: `error.rawValue >= 2` (codes 0 and 1 would read as `released` / `stillHeld`).
    public init(error: ErrorCode) {
        precondition(error.rawValue >= 2, "FreedStatus cannot carry error codes 0 and 1")
        self.rawValue = error.rawValue
    }

    /// The error for this handle, or nil if it was released or is still held.
    public var error: ErrorCode? {
        rawValue >= 2 ? ErrorCode(rawValue: rawValue) : nil
    }

    /// `released`, `stillHeld`, or the error code's name.
    public var description: String {
        switch rawValue {
        case 0: "released"
        case 1: "stillHeld"
        default: ErrorCode(rawValue: rawValue).description
        }
    }
}

/// A block prepared for passing to another client (`shared`, 0x800A).
public struct SharedInfo: Hashable, Sendable {
    /// The block's handle (what the other client passes to `adopt`).
    public var handle: UInt64
    /// The block's offset from the start of the data area.
    public var offset: UInt64
    /// The block's usable size in bytes.
    public var blockSize: UInt64
    /// How many clients hold the block now.
    public var holders: UInt32

    /// Creates a shared-block description.
    public init(handle: UInt64, offset: UInt64, blockSize: UInt64, holders: UInt32) {
        self.handle = handle
        self.offset = offset
        self.blockSize = blockSize
        self.holders = holders
    }
}

/// A client's accounting and the heap's totals (`statsReply`, 0x800C).
public struct ClientStats: Hashable, Sendable {
    /// Bytes this client holds (block sizes).
    public var bytesHeld: UInt64
    /// Blocks this client holds.
    public var blocksHeld: UInt64
    /// The most bytes this client may hold.
    public var quotaBytes: UInt64
    /// Pages this client's participant may own (direct clients; 0 for mediated ones).
    public var pageAllowance: UInt32
    /// Bytes in use in the whole heap.
    public var heapBytesUsed: UInt64
    /// Bytes free in the whole heap.
    public var heapBytesFree: UInt64
    /// Clients connected to the daemon.
    public var clients: UInt32

    /// Creates a stats value.
    public init(
        bytesHeld: UInt64, blocksHeld: UInt64, quotaBytes: UInt64, pageAllowance: UInt32, heapBytesUsed: UInt64,
        heapBytesFree: UInt64, clients: UInt32
    ) {
        self.bytesHeld = bytesHeld
        self.blocksHeld = blocksHeld
        self.quotaBytes = quotaBytes
        self.pageAllowance = pageAllowance
        self.heapBytesUsed = heapBytesUsed
        self.heapBytesFree = heapBytesFree
        self.clients = clients
    }
}

/// The result of an admin operation (`adminReply`, 0x800F).
public struct AdminReply: Hashable, Sendable {
    /// The operation this answers.
    public var operation: AdminOperation
    /// How `body` is encoded.
    public var format: AdminFormat
    /// UTF-8 text or JSON (shapes documented in docs/daemon.md, "divvyctl"), at most
    /// `ProtocolLimits.maxAdminBodyLength` bytes.
    public var body: [UInt8]

    /// Creates an admin reply.
    public init(operation: AdminOperation, format: AdminFormat, body: [UInt8]) {
        self.operation = operation
        self.format = format
        self.body = body
    }
}

/// A failed request (`error`, 0x80FF).
public struct ErrorReply: Hashable, Sendable {
    /// Why it failed.
    public var code: ErrorCode
    /// The type of the request this answers; `MessageType(rawValue: 0)` if unknown.
    public var requestType: MessageType
    /// Details for people, at most `ProtocolLimits.maxMessageLength` UTF-8 bytes (longer ones are cut when
    /// encoded).
    public var message: String

    /// Creates an error reply.
    public init(code: ErrorCode, requestType: MessageType, message: String) {
        self.code = code
        self.requestType = requestType
        self.message = message
    }
}
