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

/// A block handle as it travels in messages: 128 bits, two little-endian `u64`s (`low` then `high`).
///
/// See `Protocol/PROTOCOL.md`, section 8 "Handles". The layout:
/// - `low` bits 0–47: the block's offset from the start of the data area, in 16-byte units;
/// - `low` bits 48–63: generation bits 0–15;
/// - `high` bits 0–31: generation bits 16–47;
/// - `high` bits 32–63: the heap id (random per heap, never 0).
///
/// Clients use only `dataOffset` (to find the block in their mapping); everything else is the daemon's to check.
/// The zero handle (`low` 0, `high` 0) is never valid. This type mirrors the heap's `SharedHeapHandle` bit for bit
/// without depending on it: the protocol target knows nothing of shared memory.
public struct WireHandle: Hashable, Sendable, CustomStringConvertible {
    /// Bits 0–63: the data offset in 16-byte units (bits 0–47) and generation bits 0–15 (bits 48–63).
    public var low: UInt64
    /// Bits 64–127: generation bits 16–47 (bits 0–31) and the heap id (bits 32–63).
    public var high: UInt64

    /// The zero handle: never issued, always refused (`invalidHandle`).
    public static let zero = WireHandle(low: 0, high: 0)

    /// Wraps the two words exactly as they travel.
    @inlinable
    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// Builds a handle from its parts, or nil if `dataOffset` is not a multiple of 16, is 2^52 bytes (4 PiB) or
    /// more (beyond 48 bits of 16-byte units), or `generation` needs more than 48 bits.
    @inlinable
    public init?(heapID: UInt32, dataOffset: UInt64, generation: UInt64) {
        guard dataOffset % 16 == 0, dataOffset >> 52 == 0, generation >> 48 == 0 else { return nil }
        // Safe: each part was checked to fit its bits above.
        low = dataOffset / 16 | (generation & 0xFFFF) << 48
        high = generation >> 16 | UInt64(heapID) << 32
    }

    /// The byte offset of the block from the start of the data area: `(low & 0xFFFF_FFFF_FFFF) * 16`.
    @inlinable
    public var dataOffset: UInt64 {
        // Safe: a 48-bit index times 16 fits in 52 bits.
        (low & 0xFFFF_FFFF_FFFF) &* 16
    }

    /// The block's generation (48 bits): `low >> 48 | (high & 0xFFFF_FFFF) << 16`.
    @inlinable
    public var generation: UInt64 {
        low >> 48 | (high & 0xFFFF_FFFF) << 16
    }

    /// The id of the heap that issued the handle: `high >> 32`.
    @inlinable
    public var heapID: UInt32 {
        UInt32(truncatingIfNeeded: high >> 32)
    }

    /// Whether this is the zero handle (never valid).
    @inlinable
    public var isZero: Bool { low == 0 && high == 0 }

    /// The handle as one 128-bit number, `low | high << 64`, in hexadecimal (`0x` and 32 digits), for logs and
    /// error messages.
    public var description: String {
        func padded(_ word: UInt64) -> String {
            let digits = String(word, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return "0x" + padded(high) + padded(low)
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
    public var handle: WireHandle
    /// The block's offset from the start of the data area.
    public var offset: UInt64
    /// The block's usable size in bytes.
    public var blockSize: UInt64
    /// How many clients hold the block now (each client once, whatever mode it holds the block in).
    public var holders: UInt32
    /// The share token: a random, never-zero number that lets one other client `adopt` this handle, once
    /// (PROTOCOL.md section 6.4). Pass it to the adopter with the handle; it dies when it is redeemed, when the
    /// client that got it stops holding the block, or when that client disconnects.
    public var token: UInt64

    /// Creates a shared-block description.
    public init(handle: WireHandle, offset: UInt64, blockSize: UInt64, holders: UInt32, token: UInt64) {
        self.handle = handle
        self.offset = offset
        self.blockSize = blockSize
        self.holders = holders
        self.token = token
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
