/// Why a request failed: the 16-bit code of an `error` reply, of a `ProtocolError`, and (from 2 up) of a
/// per-handle `FreedStatus`.
///
/// A struct rather than an enum so that codes added by a newer daemon still decode. Codes for which
/// `closesConnection` is true are fatal: the daemon sends the error reply and then closes the connection.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The code on the wire.
    public let rawValue: UInt16

    /// Wraps any code; use `isKnown` to ask whether this module understands it.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// The frame could not be parsed (short header, bad magic, nonzero flags, wrong length, truncated or
    /// trailing payload, bad UTF-8, a field out of range). Closes the connection.
    public static let malformedFrame = ErrorCode(rawValue: 1)
    /// No common protocol version (hello's range, or a frame header's version). Closes the connection.
    public static let unsupportedVersion = ErrorCode(rawValue: 2)
    /// The frame's message type is unknown, or is not a request the daemon accepts.
    public static let unknownMessageType = ErrorCode(rawValue: 3)
    /// The datagram is longer than `ProtocolLimits.maxFrameSize`. Closes the connection.
    public static let frameTooLarge = ErrorCode(rawValue: 4)
    /// The peer's credentials are not admitted by the daemon's policy. Closes the connection.
    public static let notAuthorized = ErrorCode(rawValue: 5)
    /// A request arrived before the handshake finished, or a second `hello` arrived.
    public static let handshakeRequired = ErrorCode(rawValue: 6)
    /// The request is not available in this client's mode (e.g. `join` from a mediated client), or a direct
    /// mode was asked for but not permitted.
    public static let wrongMode = ErrorCode(rawValue: 7)
    /// Granting the request would exceed the client's byte or page quota.
    public static let quotaExceeded = ErrorCode(rawValue: 8)
    /// The shared heap has no room for the request.
    public static let heapFull = ErrorCode(rawValue: 9)
    /// The requested size is zero or larger than the largest size class.
    public static let unsupportedSize = ErrorCode(rawValue: 10)
    /// The handle does not name a block in the data area.
    public static let invalidHandle = ErrorCode(rawValue: 11)
    /// The handle's offset is not the start of a block.
    public static let misalignedHandle = ErrorCode(rawValue: 12)
    /// The handle's generation is old: the block was freed (and maybe reused) since.
    public static let staleHandle = ErrorCode(rawValue: 13)
    /// The block is already free.
    public static let doubleFree = ErrorCode(rawValue: 14)
    /// The block is live but this client does not hold it.
    public static let notHolder = ErrorCode(rawValue: 15)
    /// A batch count is 0 or larger than `ProtocolLimits.maxBatchCount`.
    public static let batchTooLarge = ErrorCode(rawValue: 16)
    /// The admin operation needs an admin client (policy uid/gid).
    public static let adminRequired = ErrorCode(rawValue: 17)
    /// The admin operation names a client id that is not connected.
    public static let noSuchClient = ErrorCode(rawValue: 18)
    /// The daemon serves as many clients as its configuration allows. Closes the connection.
    public static let tooManyClients = ErrorCode(rawValue: 19)
    /// The daemon is shutting down and takes no new work.
    public static let shuttingDown = ErrorCode(rawValue: 20)
    /// The daemon failed in a way that is not the client's fault; the request had no effect.
    public static let internalError = ErrorCode(rawValue: 21)
    /// The participant slot in `join` is out of range, taken, or not joined by this client; or a direct-mode
    /// request (`lease`, `returnPages`) came before `join`.
    public static let invalidParticipant = ErrorCode(rawValue: 22)
    /// Direct mode was asked for explicitly, and the policy allows it, but every participant slot of the heap is
    /// taken (or promised to a direct client that has not joined yet). Mode `any` falls back to mediated instead.
    /// The connection stays open: send `hello` again with mode `mediated` or `any`, or retry later.
    public static let directUnavailable = ErrorCode(rawValue: 23)
    /// `adopt` of a block this client already holds: a client holds a block once (its holding is freed by one
    /// `free`), so a block's holders are clients, never repeated holdings. Nothing changed.
    public static let alreadyHolder = ErrorCode(rawValue: 24)
    /// The handle was issued by another heap (its heap id is not this heap's): typically a handle kept from before
    /// the daemon restarted and formatted a new heap. Nothing changed; the block it named is gone.
    public static let foreignHandle = ErrorCode(rawValue: 25)
    /// `adopt` by a mediated client whose share token is not a live token for this handle: never issued (a guess
    /// or 0), already redeemed, issued for another handle (another block, or an earlier generation of this one),
    /// or dead because the client that got it from `share` no longer holds the block or has disconnected.
    /// Nothing changed.
    public static let badShareToken = ErrorCode(rawValue: 26)

    /// Every code this module knows, in code order.
    public static let allKnown: [ErrorCode] = [
        .malformedFrame, .unsupportedVersion, .unknownMessageType, .frameTooLarge, .notAuthorized,
        .handshakeRequired, .wrongMode, .quotaExceeded, .heapFull, .unsupportedSize, .invalidHandle,
        .misalignedHandle, .staleHandle, .doubleFree, .notHolder, .batchTooLarge, .adminRequired, .noSuchClient,
        .tooManyClients, .shuttingDown, .internalError, .invalidParticipant, .directUnavailable,
        .alreadyHolder, .foreignHandle, .badShareToken,
    ]

    /// Whether the daemon closes the connection after sending this error.
    public var closesConnection: Bool {
        switch rawValue {
        case 1, 2, 4, 5, 19: true
        default: false
        }
    }

    /// The code's name as written in the spec (`"staleHandle"`), or nil for a code this module does not know.
    public var name: String? {
        switch rawValue {
        case 1: "malformedFrame"
        case 2: "unsupportedVersion"
        case 3: "unknownMessageType"
        case 4: "frameTooLarge"
        case 5: "notAuthorized"
        case 6: "handshakeRequired"
        case 7: "wrongMode"
        case 8: "quotaExceeded"
        case 9: "heapFull"
        case 10: "unsupportedSize"
        case 11: "invalidHandle"
        case 12: "misalignedHandle"
        case 13: "staleHandle"
        case 14: "doubleFree"
        case 15: "notHolder"
        case 16: "batchTooLarge"
        case 17: "adminRequired"
        case 18: "noSuchClient"
        case 19: "tooManyClients"
        case 20: "shuttingDown"
        case 21: "internalError"
        case 22: "invalidParticipant"
        case 23: "directUnavailable"
        case 24: "alreadyHolder"
        case 25: "foreignHandle"
        case 26: "badShareToken"
        default: nil
        }
    }

    /// Whether this module knows the code's meaning.
    public var isKnown: Bool { name != nil }

    /// The spec name, or `unknown(N)` for an unknown code.
    public var description: String {
        name ?? "unknown(\(rawValue))"
    }
}
