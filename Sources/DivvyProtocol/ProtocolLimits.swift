/// Sizes and bounds of the divvyd wire protocol (see `Protocol/PROTOCOL.md`, "Limits").
///
/// Decoders reject frames that break these bounds (`Frame.decode(_:)`); senders should stay inside them.
public enum ProtocolLimits {
    /// The frame header's size in bytes: every frame starts with exactly this many header bytes.
    public static let headerSize = 24
    /// The largest frame (header + payload) a peer accepts, in bytes. Longer datagrams are rejected with
    /// `ErrorCode.frameTooLarge`.
    public static let maxFrameSize = 65536
    /// The buffer size to receive datagrams into: `maxFrameSize + 1`. A datagram that fills it (`recv` returned
    /// this many bytes, or reported more with `MSG_TRUNC`) is too long; passing the received bytes to
    /// `Frame.decode(_:)` reports exactly that (`frameTooLarge`, with the header's request id).
    public static let receiveBufferSize = maxFrameSize + 1
    /// The largest payload a frame can carry: `maxFrameSize - headerSize`.
    public static let maxPayloadSize = maxFrameSize - headerSize
    /// The bytes of one handle on the wire: two `u64`s (`WireHandle`).
    public static let handleSize = 16
    /// The most handles one `allocateBatch`, `allocatedBatch`, `freeBatch` or `freedBatch` may carry (at least 1):
    /// the most `allocatedBatch` (12 fixed bytes, then 16 bytes a handle) fits in one frame,
    /// `(maxPayloadSize - 12) / handleSize` = 4093. (Version 1's 8-byte handles allowed 4096.)
    public static let maxBatchCount = (maxPayloadSize - 12) / handleSize
    /// The longest client name in `hello`, in UTF-8 bytes.
    public static let maxNameLength = 255
    /// The longest error message or shutdown reason, in UTF-8 bytes.
    public static let maxMessageLength = 4096
    /// The largest `ping`/`pong` payload, in bytes.
    public static let maxPingPayload = 60000
    /// The largest `adminReply` body that fits one frame, in bytes: `maxPayloadSize` minus the reply's 6 fixed
    /// bytes (op, format, body length). Longer bodies cannot be sent; the daemon must shorten them.
    public static let maxAdminBodyLength = maxPayloadSize - 6
    /// The frame header's magic number: the bytes `"DVYP"` read as a little-endian `UInt32`.
    public static let magic: UInt32 = 0x5059_5644
    /// Bytes of the data area addressed by one unit of a handle's offset field (see `WireHandle`).
    public static let handleGranularity: UInt64 = 16
}
