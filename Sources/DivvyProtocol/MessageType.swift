/// The 16-bit type code of a frame (header offset 6).
///
/// Requests (sent by clients) have the high bit clear (`0x00xx`); replies and daemon notices have it set
/// (`0x80xx`). A request's reply type is the request's code with the high bit set, except that any request may
/// instead be answered by `error`. The type is a struct rather than an enum so that unknown codes can be carried
/// (for example in `ErrorReply.requestType`) and new ones added without breaking users.
public struct MessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The code on the wire.
    public let rawValue: UInt16

    /// Wraps any code; use `isKnown` to ask whether this module understands it.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// Client → daemon: the handshake opener (`Hello`).
    public static let hello = MessageType(rawValue: 0x0001)
    /// Daemon → client: the handshake answer (`Welcome`).
    public static let welcome = MessageType(rawValue: 0x8001)
    /// Client → daemon: asks for the region's file descriptor. Empty payload.
    public static let mapRegion = MessageType(rawValue: 0x0002)
    /// Daemon → client: the byte range to map (`RegionGrant`); one fd travels as SCM_RIGHTS data.
    public static let region = MessageType(rawValue: 0x8002)
    /// Client → daemon (direct only): the client joined a heap participant slot.
    public static let join = MessageType(rawValue: 0x0003)
    /// Daemon → client: the participant's page allowance after a join.
    public static let joined = MessageType(rawValue: 0x8003)
    /// Client → daemon: asks for more page allowance.
    public static let lease = MessageType(rawValue: 0x0004)
    /// Daemon → client: the new total page allowance after a lease.
    public static let leased = MessageType(rawValue: 0x8004)
    /// Client → daemon: gives page allowance back.
    public static let returnPages = MessageType(rawValue: 0x0005)
    /// Daemon → client: the page allowance after returning pages.
    public static let returned = MessageType(rawValue: 0x8005)
    /// Client → daemon: allocate one block.
    public static let allocate = MessageType(rawValue: 0x0006)
    /// Daemon → client: the allocated block's handle and size.
    public static let allocated = MessageType(rawValue: 0x8006)
    /// Client → daemon: free (release this client's hold on) one block.
    public static let free = MessageType(rawValue: 0x0007)
    /// Daemon → client: whether the block went back to the heap.
    public static let freed = MessageType(rawValue: 0x8007)
    /// Client → daemon: allocate several blocks of one size, all or nothing.
    public static let allocateBatch = MessageType(rawValue: 0x0008)
    /// Daemon → client: the handles of a batch allocation.
    public static let allocatedBatch = MessageType(rawValue: 0x8008)
    /// Client → daemon: free several blocks, each on its own.
    public static let freeBatch = MessageType(rawValue: 0x0009)
    /// Daemon → client: one status per freed handle.
    public static let freedBatch = MessageType(rawValue: 0x8009)
    /// Client → daemon: prepare a held block to be passed to another client.
    public static let share = MessageType(rawValue: 0x000A)
    /// Daemon → client: the shared block's description (`SharedInfo`).
    public static let shared = MessageType(rawValue: 0x800A)
    /// Client → daemon: become a holder of a block another client shared.
    public static let adopt = MessageType(rawValue: 0x000B)
    /// Daemon → client: the adopted block's handle and size.
    public static let adopted = MessageType(rawValue: 0x800B)
    /// Client → daemon: asks for this client's accounting. Empty payload.
    public static let stats = MessageType(rawValue: 0x000C)
    /// Daemon → client: this client's accounting (`ClientStats`).
    public static let statsReply = MessageType(rawValue: 0x800C)
    /// Client → daemon: echo request.
    public static let ping = MessageType(rawValue: 0x000D)
    /// Daemon → client: the echo of a ping's payload.
    public static let pong = MessageType(rawValue: 0x800D)
    /// Client → daemon: the client is leaving. Empty payload.
    public static let goodbye = MessageType(rawValue: 0x000E)
    /// Daemon → client: acknowledges goodbye; the daemon then closes the connection. Empty payload.
    public static let farewell = MessageType(rawValue: 0x800E)
    /// Client → daemon: an administrative operation (admin clients only).
    public static let admin = MessageType(rawValue: 0x000F)
    /// Daemon → client: the result of an administrative operation (`AdminReply`).
    public static let adminReply = MessageType(rawValue: 0x800F)
    /// Daemon → client, unsolicited (request id 0): the daemon is shutting down.
    public static let shutdown = MessageType(rawValue: 0x8010)
    /// Daemon → client: a request failed (`ErrorReply`).
    public static let error = MessageType(rawValue: 0x80FF)

    /// Every type this module knows, requests and replies interleaved in code order.
    public static let allKnown: [MessageType] = [
        .hello, .welcome, .mapRegion, .region, .join, .joined, .lease, .leased, .returnPages, .returned,
        .allocate, .allocated, .free, .freed, .allocateBatch, .allocatedBatch, .freeBatch, .freedBatch,
        .share, .shared, .adopt, .adopted, .stats, .statsReply, .ping, .pong, .goodbye, .farewell,
        .admin, .adminReply, .shutdown, .error,
    ]

    /// The type's name as written in the spec (`"allocateBatch"`), or nil for a code this module does not know.
    public var name: String? {
        switch rawValue {
        case 0x0001: "hello"
        case 0x8001: "welcome"
        case 0x0002: "mapRegion"
        case 0x8002: "region"
        case 0x0003: "join"
        case 0x8003: "joined"
        case 0x0004: "lease"
        case 0x8004: "leased"
        case 0x0005: "returnPages"
        case 0x8005: "returned"
        case 0x0006: "allocate"
        case 0x8006: "allocated"
        case 0x0007: "free"
        case 0x8007: "freed"
        case 0x0008: "allocateBatch"
        case 0x8008: "allocatedBatch"
        case 0x0009: "freeBatch"
        case 0x8009: "freedBatch"
        case 0x000A: "share"
        case 0x800A: "shared"
        case 0x000B: "adopt"
        case 0x800B: "adopted"
        case 0x000C: "stats"
        case 0x800C: "statsReply"
        case 0x000D: "ping"
        case 0x800D: "pong"
        case 0x000E: "goodbye"
        case 0x800E: "farewell"
        case 0x000F: "admin"
        case 0x800F: "adminReply"
        case 0x8010: "shutdown"
        case 0x80FF: "error"
        default: nil
        }
    }

    /// Whether this module can decode frames of this type.
    public var isKnown: Bool { name != nil }

    /// Whether this is a known request type (sent by clients; high bit clear).
    public var isRequest: Bool { isKnown && rawValue & 0x8000 == 0 }

    /// The type of the successful reply to this request (`allocate.replyType == allocated`), or nil if this is
    /// not a known request. Any request may also be answered by `error`.
    public var replyType: MessageType? {
        isRequest ? MessageType(rawValue: rawValue | 0x8000) : nil
    }

    /// The spec name, or `unknown(0xABCD)` for an unknown code.
    public var description: String {
        if let name { return name }
        return "unknown(0x\(hex4(rawValue)))"
    }
}

/// Four uppercase hex digits, zero-padded (no Foundation).
internal func hex4(_ value: UInt16) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: 4 - digits.count) + digits
}
