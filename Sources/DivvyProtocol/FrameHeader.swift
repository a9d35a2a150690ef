/// The 24-byte header that starts every frame, as raw fields (little-endian on the wire).
///
/// | offset | type | field |
/// |---|---|---|
/// | 0 | u32 | magic `0x50595644` ("DVYP") |
/// | 4 | u16 | version |
/// | 6 | u16 | message type |
/// | 8 | u64 | request id |
/// | 16 | u32 | payload length |
/// | 20 | u32 | flags (reserved, 0) |
public struct FrameHeader: Hashable, Sendable {
    /// Must be `ProtocolLimits.magic`.
    public var magic: UInt32
    /// The protocol version the frame is encoded in.
    public var version: UInt16
    /// The payload's message type.
    public var type: MessageType
    /// Chosen by the client for a request and echoed by its reply; 0 for unsolicited daemon messages.
    public var requestID: UInt64
    /// Bytes after the header; the frame's length is `headerSize + payloadLength`.
    public var payloadLength: UInt32
    /// Reserved; must be 0.
    public var flags: UInt32

    /// Creates a header from its fields.
    public init(
        magic: UInt32 = ProtocolLimits.magic, version: UInt16 = ProtocolVersion.current, type: MessageType,
        requestID: UInt64, payloadLength: UInt32, flags: UInt32 = 0
    ) {
        self.magic = magic
        self.version = version
        self.type = type
        self.requestID = requestID
        self.payloadLength = payloadLength
        self.flags = flags
    }

    /// Reads the header fields from the first 24 bytes, without validating any of them.
    ///
    /// - Returns: nil if `bytes` is shorter than `ProtocolLimits.headerSize`.
    /// - Complexity: O(1).
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> FrameHeader? {
        guard bytes.count >= ProtocolLimits.headerSize else { return nil }
        return FrameHeader(
            magic: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)),
            version: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self)),
            type: MessageType(rawValue: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self))),
            requestID: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            payloadLength: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt32.self)),
            flags: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
    }

    /// Appends the header's 24 bytes to `buffer`.
    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLE(magic)
        buffer.appendLE(version)
        buffer.appendLE(type.rawValue)
        buffer.appendLE(requestID)
        buffer.appendLE(payloadLength)
        buffer.appendLE(flags)
    }
}
