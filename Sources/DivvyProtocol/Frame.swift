/// One protocol frame: a message with its request id and header version, as sent in one SOCK_SEQPACKET datagram.
///
/// Encoding is deterministic (same value, same bytes). Decoding validates everything and throws `ProtocolError`
/// for any malformed byte string; it never traps.
public struct Frame: Hashable, Sendable {
    /// Chosen by the client for a request and echoed by the reply; 0 for unsolicited daemon messages.
    public var requestID: UInt64
    /// The header's protocol version (frames before `welcome` use 1).
    public var version: UInt16
    /// The payload.
    public var message: Message

    /// Creates a frame.
    ///
    /// - Parameter version: the header version; by default `ProtocolVersion.handshake` (1) for `hello` and
    ///   `welcome`, which are only ever sent before the handshake completes, and `ProtocolVersion.current` for every
    ///   other message. An `error` answering a `hello` (or any frame before `welcome`) must pass
    ///   `ProtocolVersion.handshake` explicitly (PROTOCOL.md, section 6.1).
    public init(requestID: UInt64, message: Message, version: UInt16? = nil) {
        self.requestID = requestID
        self.message = message
        self.version = version ?? Self.defaultVersion(for: message)
    }

    /// The header version a frame carrying `message` gets when none is given: 1 for the handshake's `hello` and
    /// `welcome`, `ProtocolVersion.current` otherwise.
    public static func defaultVersion(for message: Message) -> UInt16 {
        switch message {
        case .hello, .welcome: ProtocolVersion.handshake
        default: ProtocolVersion.current
        }
    }

    /// The frame's bytes: header then payload.
    ///
    /// See `encode(into:)` for what is and is not checked.
    /// - Complexity: O(payload size); one allocation.
    public func encoded() -> [UInt8] {
        var buffer: [UInt8] = []
        encode(into: &buffer)
        return buffer
    }

    /// Appends the frame's bytes to `buffer` (header then payload), so one buffer can be reused for many frames
    /// (`buffer.removeAll(keepingCapacity: true)` between them).
    ///
    /// Strings longer than their limit (`maxNameLength` for hello's name, `maxMessageLength` for error messages
    /// and shutdown reasons) are cut to the limit at a UTF-8 scalar boundary, so a message built from peer data
    /// can always be sent. Other bounds (batch counts, ping payload, frame size, welcome's mode) are not checked
    /// here: a frame breaking them is rejected by the peer. Call `message.validate()` first to catch that.
    /// - Complexity: O(payload size); no allocation when `buffer` has the capacity.
    public func encode(into buffer: inout [UInt8]) {
        let start = buffer.count
        buffer.reserveCapacity(start + ProtocolLimits.headerSize + message.encodedPayloadSize)
        FrameHeader(version: version, type: message.type, requestID: requestID, payloadLength: 0).encode(into: &buffer)
        message.encodePayload(into: &buffer)
        // Safe: payloads of real messages are far below 4 GiB; an absurd one gets a wrong length and is rejected.
        let length = UInt32(truncatingIfNeeded: buffer.count - start - ProtocolLimits.headerSize)
        buffer[start + 16] = UInt8(truncatingIfNeeded: length)
        buffer[start + 17] = UInt8(truncatingIfNeeded: length >> 8)
        buffer[start + 18] = UInt8(truncatingIfNeeded: length >> 16)
        buffer[start + 19] = UInt8(truncatingIfNeeded: length >> 24)
    }

    /// Decodes one frame from exactly the bytes of one datagram.
    ///
    /// Checks, in this order (the first failure is thrown): at least 24 bytes and the magic (`malformedFrame`);
    /// at most `maxFrameSize` bytes (`frameTooLarge`); a supported header version (`unsupportedVersion`); zero
    /// flags and a payload length equal to the bytes after the header (`malformedFrame`); a known message type
    /// (`unknownMessageType`); then the payload field by field: batch counts of 1...`maxBatchCount`
    /// (`batchTooLarge`), and everything else — truncation, trailing bytes, invalid UTF-8, over-long strings,
    /// invalid enum or bool values, oversized ping payloads, counts that disagree with the bytes present
    /// (`malformedFrame`).
    ///
    /// Receive into a buffer of `ProtocolLimits.receiveBufferSize` bytes and pass what was received: an oversized
    /// datagram then fills the buffer and is reported as `frameTooLarge` rather than as a length mismatch.
    ///
    /// - Throws: `ProtocolError`; its `requestID` and `requestType` come from the header once the header has been
    ///   read (24 bytes with the right magic), else they are 0.
    /// - Complexity: O(bytes.count).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> Frame {
        guard let header = FrameHeader.parse(bytes) else {
            throw ProtocolError(
                code: .malformedFrame,
                message: "frame of \(bytes.count) bytes is shorter than the \(ProtocolLimits.headerSize)-byte header")
        }
        guard header.magic == ProtocolLimits.magic else {
            throw ProtocolError(code: .malformedFrame, message: "bad magic 0x\(String(header.magic, radix: 16))")
        }
        func failure(_ code: ErrorCode, _ message: String) -> ProtocolError {
            ProtocolError(code: code, message: message, requestID: header.requestID, requestType: header.type)
        }
        guard bytes.count <= ProtocolLimits.maxFrameSize else {
            throw failure(
                .frameTooLarge, "frame of \(bytes.count) bytes exceeds the limit of \(ProtocolLimits.maxFrameSize)")
        }
        guard ProtocolVersion.headerVersions.contains(header.version) else {
            let supported = ProtocolVersion.headerVersions
            throw failure(
                .unsupportedVersion,
                "header version \(header.version) is not in \(supported.lowerBound)...\(supported.upperBound)")
        }
        guard header.flags == 0 else {
            throw failure(.malformedFrame, "reserved flags 0x\(String(header.flags, radix: 16)) must be 0")
        }
        let payloadCount = bytes.count - ProtocolLimits.headerSize
        guard Int(header.payloadLength) == payloadCount else {
            throw failure(
                .malformedFrame, "header says \(header.payloadLength) payload bytes but \(payloadCount) follow it")
        }
        var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[ProtocolLimits.headerSize...]))
        let message: Message
        do {
            message = try Message.decodePayload(type: header.type, from: &reader)
            try reader.expectEnd()
        } catch {
            throw failure(error.code, error.message)
        }
        return Frame(requestID: header.requestID, message: message, version: header.version)
    }

    /// Decodes one frame from exactly the bytes of one datagram. See `decode(_: UnsafeRawBufferPointer)`.
    ///
    /// - Throws: `ProtocolError` for any malformed frame.
    public static func decode(_ bytes: [UInt8]) throws(ProtocolError) -> Frame {
        let result: Result<Frame, ProtocolError> = bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) {
                return .success(try decode(raw))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

// MARK: - Payload encoding

extension Message {
    /// The number of payload bytes this message encodes to (after string cutting; the frame adds 24).
    ///
    /// - Complexity: O(1) except for strings that must be cut (O(limit)).
    public var encodedPayloadSize: Int {
        switch self {
        case .hello(let hello): 9 + 2 + cutUTF8Count(hello.name, limit: ProtocolLimits.maxNameLength)
        case .welcome(let welcome): 64 + 4 * welcome.sizeClasses.count
        case .mapRegion, .stats, .goodbye, .farewell: 0
        case .region: 17
        case .join, .joined, .lease, .leased, .returnPages, .returned: 4
        case .allocate: 8
        case .free, .share: 16
        case .adopt: 24
        case .allocated, .adopted: 24
        case .freed: 1
        case .allocateBatch: 12
        case .allocatedBatch(_, let handles): 12 + 16 * handles.count
        case .freeBatch(let handles): 4 + 16 * handles.count
        case .freedBatch(let statuses): 4 + 2 * statuses.count
        case .shared: 44
        case .statsReply: 48
        case .ping(let payload), .pong(let payload): 4 + payload.count
        case .admin: 5
        case .adminReply(let reply): 6 + reply.body.count
        case .shutdown(let reason): 2 + cutUTF8Count(reason, limit: ProtocolLimits.maxMessageLength)
        case .error(let reply): 6 + cutUTF8Count(reply.message, limit: ProtocolLimits.maxMessageLength)
        }
    }

    /// Appends the payload bytes (no header).
    internal func encodePayload(into buffer: inout [UInt8]) {
        switch self {
        case .hello(let hello):
            buffer.appendLE(hello.minVersion)
            buffer.appendLE(hello.maxVersion)
            buffer.append(hello.mode.rawValue)
            buffer.appendLE(hello.capabilities)
            buffer.appendString(hello.name, limit: ProtocolLimits.maxNameLength)
        case .welcome(let welcome):
            buffer.appendLE(welcome.version)
            buffer.append(welcome.mode.rawValue)
            buffer.appendLE(welcome.clientID)
            buffer.appendLE(welcome.quotaBytes)
            buffer.appendLE(welcome.regionSize)
            buffer.appendLE(welcome.metadataOffset)
            buffer.appendLE(welcome.metadataSize)
            buffer.appendLE(welcome.dataOffset)
            buffer.appendLE(welcome.dataSize)
            buffer.appendLE(welcome.pageSize)
            buffer.append(welcome.pageKind.rawValue)
            buffer.appendLE(UInt32(truncatingIfNeeded: welcome.sizeClasses.count))
            for size in welcome.sizeClasses { buffer.appendLE(size) }
        case .mapRegion, .stats, .goodbye, .farewell:
            break
        case .region(let grant):
            buffer.append(grant.access)
            buffer.appendLE(grant.offset)
            buffer.appendLE(grant.length)
        case .join(let value), .joined(let value), .lease(let value), .leased(let value), .returnPages(let value),
            .returned(let value):
            buffer.appendLE(value)
        case .allocate(let size):
            buffer.appendLE(size)
        case .free(let handle), .share(let handle):
            buffer.appendHandle(handle)
        case .adopt(let handle, let token):
            buffer.appendHandle(handle)
            buffer.appendLE(token)
        case .allocated(let handle, let blockSize), .adopted(let handle, let blockSize):
            buffer.appendHandle(handle)
            buffer.appendLE(blockSize)
        case .freed(let released):
            buffer.append(released ? 1 : 0)
        case .allocateBatch(let size, let count):
            buffer.appendLE(size)
            buffer.appendLE(count)
        case .allocatedBatch(let blockSize, let handles):
            buffer.appendLE(blockSize)
            buffer.appendLE(UInt32(truncatingIfNeeded: handles.count))
            buffer.appendHandles(handles)
        case .freeBatch(let handles):
            buffer.appendLE(UInt32(truncatingIfNeeded: handles.count))
            buffer.appendHandles(handles)
        case .freedBatch(let statuses):
            buffer.appendLE(UInt32(truncatingIfNeeded: statuses.count))
            for status in statuses { buffer.appendLE(status.rawValue) }
        case .shared(let info):
            buffer.appendHandle(info.handle)
            buffer.appendLE(info.offset)
            buffer.appendLE(info.blockSize)
            buffer.appendLE(info.holders)
            buffer.appendLE(info.token)
        case .statsReply(let stats):
            buffer.appendLE(stats.bytesHeld)
            buffer.appendLE(stats.blocksHeld)
            buffer.appendLE(stats.quotaBytes)
            buffer.appendLE(stats.pageAllowance)
            buffer.appendLE(stats.heapBytesUsed)
            buffer.appendLE(stats.heapBytesFree)
            buffer.appendLE(stats.clients)
        case .ping(let payload), .pong(let payload):
            buffer.appendLE(UInt32(truncatingIfNeeded: payload.count))
            buffer.append(contentsOf: payload)
        case .admin(let operation, let argument):
            buffer.append(operation.rawValue)
            buffer.appendLE(argument)
        case .adminReply(let reply):
            buffer.append(reply.operation.rawValue)
            buffer.append(reply.format.rawValue)
            buffer.appendLE(UInt32(truncatingIfNeeded: reply.body.count))
            buffer.append(contentsOf: reply.body)
        case .shutdown(let reason):
            buffer.appendString(reason, limit: ProtocolLimits.maxMessageLength)
        case .error(let reply):
            buffer.appendLE(reply.code.rawValue)
            buffer.appendLE(reply.requestType.rawValue)
            buffer.appendString(reply.message, limit: ProtocolLimits.maxMessageLength)
        }
    }
}

// MARK: - Payload decoding

extension Message {
    /// Decodes the payload of a frame of type `type`; the caller checks that nothing trails it.
    internal static func decodePayload(
        type: MessageType, from reader: inout ByteReader
    ) throws(ProtocolError) -> Message {
        // Literal cases so the switch compiles to a jump table; the names are in MessageType.
        switch type.rawValue {
        case 0x0001:
            let minVersion = try reader.u16("minVersion")
            let maxVersion = try reader.u16("maxVersion")
            let mode = try reader.enumeration(ClientMode.self, "mode")
            let capabilities = try reader.u32("capabilities")
            let name = try reader.string(limit: ProtocolLimits.maxNameLength, "name")
            return .hello(
                Hello(
                    minVersion: minVersion, maxVersion: maxVersion, mode: mode, capabilities: capabilities,
                    name: name))
        case 0x8001:
            let version = try reader.u16("version")
            let mode = try reader.enumeration(ClientMode.self, "mode")
            guard mode != .any else { throw reader.malformed("welcome's mode must be direct (1) or mediated (2)") }
            let clientID = try reader.u32("clientID")
            let quotaBytes = try reader.u64("quotaBytes")
            let regionSize = try reader.u64("regionSize")
            let metadataOffset = try reader.u64("metadataOffset")
            let metadataSize = try reader.u64("metadataSize")
            let dataOffset = try reader.u64("dataOffset")
            let dataSize = try reader.u64("dataSize")
            let pageSize = try reader.u32("pageSize")
            let pageKind = try reader.enumeration(PageKind.self, "pageKind")
            let count = try reader.u32("classCount")
            let sizeClasses = try reader.u32Array(count: count, "sizeClasses")
            return .welcome(
                Welcome(
                    version: version, mode: mode, clientID: clientID, quotaBytes: quotaBytes, regionSize: regionSize,
                    metadataOffset: metadataOffset, metadataSize: metadataSize, dataOffset: dataOffset,
                    dataSize: dataSize, pageSize: pageSize, pageKind: pageKind, sizeClasses: sizeClasses))
        case 0x0002:
            return .mapRegion
        case 0x8002:
            let access = try reader.u8("access")
            let offset = try reader.u64("offset")
            let length = try reader.u64("length")
            return .region(RegionGrant(access: access, offset: offset, length: length))
        case 0x0003: return .join(participant: try reader.u32("participant"))
        case 0x8003: return .joined(pageAllowance: try reader.u32("pageAllowance"))
        case 0x0004: return .lease(pages: try reader.u32("pages"))
        case 0x8004: return .leased(pageAllowance: try reader.u32("pageAllowance"))
        case 0x0005: return .returnPages(pages: try reader.u32("pages"))
        case 0x8005: return .returned(pageAllowance: try reader.u32("pageAllowance"))
        case 0x0006: return .allocate(size: try reader.u64("size"))
        case 0x8006:
            let handle = try reader.handle("handle")
            return .allocated(handle: handle, blockSize: try reader.u64("blockSize"))
        case 0x0007: return .free(handle: try reader.handle("handle"))
        case 0x8007: return .freed(released: try reader.bool("released"))
        case 0x0008:
            let size = try reader.u64("size")
            let count = try reader.u32("count")
            try checkBatchCount(count)
            return .allocateBatch(size: size, count: count)
        case 0x8008:
            let blockSize = try reader.u64("blockSize")
            let count = try reader.u32("count")
            try checkBatchCount(count)
            return .allocatedBatch(blockSize: blockSize, handles: try reader.handleArray(count: count, "handles"))
        case 0x0009:
            let count = try reader.u32("count")
            try checkBatchCount(count)
            return .freeBatch(handles: try reader.handleArray(count: count, "handles"))
        case 0x8009:
            let count = try reader.u32("count")
            try checkBatchCount(count)
            let raw = try reader.u16Array(count: count, "statuses")
            return .freedBatch(statuses: raw.map(FreedStatus.init(rawValue:)))
        case 0x000A: return .share(handle: try reader.handle("handle"))
        case 0x800A:
            let handle = try reader.handle("handle")
            let offset = try reader.u64("offset")
            let blockSize = try reader.u64("blockSize")
            let holders = try reader.u32("holders")
            let token = try reader.u64("token")
            return .shared(
                SharedInfo(handle: handle, offset: offset, blockSize: blockSize, holders: holders, token: token))
        case 0x000B:
            let handle = try reader.handle("handle")
            return .adopt(handle: handle, token: try reader.u64("token"))
        case 0x800B:
            let handle = try reader.handle("handle")
            return .adopted(handle: handle, blockSize: try reader.u64("blockSize"))
        case 0x000C: return .stats
        case 0x800C:
            let bytesHeld = try reader.u64("bytesHeld")
            let blocksHeld = try reader.u64("blocksHeld")
            let quotaBytes = try reader.u64("quotaBytes")
            let pageAllowance = try reader.u32("pageAllowance")
            let heapBytesUsed = try reader.u64("heapBytesUsed")
            let heapBytesFree = try reader.u64("heapBytesFree")
            let clients = try reader.u32("clients")
            return .statsReply(
                ClientStats(
                    bytesHeld: bytesHeld, blocksHeld: blocksHeld, quotaBytes: quotaBytes, pageAllowance: pageAllowance,
                    heapBytesUsed: heapBytesUsed, heapBytesFree: heapBytesFree, clients: clients))
        case 0x000D: return .ping(payload: try reader.bytes(limit: ProtocolLimits.maxPingPayload, "payload"))
        case 0x800D: return .pong(payload: try reader.bytes(limit: ProtocolLimits.maxPingPayload, "payload"))
        case 0x000E: return .goodbye
        case 0x800E: return .farewell
        case 0x000F:
            let operation = try reader.enumeration(AdminOperation.self, "op")
            return .admin(operation, argument: try reader.u32("argument"))
        case 0x800F:
            let operation = try reader.enumeration(AdminOperation.self, "op")
            let format = try reader.enumeration(AdminFormat.self, "format")
            let body = try reader.bytes(limit: ProtocolLimits.maxAdminBodyLength, "body")
            return .adminReply(AdminReply(operation: operation, format: format, body: body))
        case 0x8010: return .shutdown(reason: try reader.string(limit: ProtocolLimits.maxMessageLength, "reason"))
        case 0x80FF:
            let code = ErrorCode(rawValue: try reader.u16("code"))
            let requestType = MessageType(rawValue: try reader.u16("requestType"))
            let message = try reader.string(limit: ProtocolLimits.maxMessageLength, "message")
            return .error(ErrorReply(code: code, requestType: requestType, message: message))
        default:
            throw ProtocolError(code: .unknownMessageType, message: "unknown message type \(type)")
        }
    }

    private static func checkBatchCount(_ count: UInt32) throws(ProtocolError) {
        guard count >= 1, count <= ProtocolLimits.maxBatchCount else {
            throw ProtocolError(
                code: .batchTooLarge, message: "batch count \(count) is outside 1...\(ProtocolLimits.maxBatchCount)")
        }
    }
}

/// UTF-8 bytes of `string` kept when it is cut to at most `limit` bytes at a scalar boundary.
internal func cutUTF8Count(_ string: String, limit: Int) -> Int {
    let utf8 = string.utf8
    let count = utf8.count
    guard count > limit else { return count }
    var cut = limit
    var index = utf8.index(utf8.startIndex, offsetBy: cut)
    // The byte at `cut` is the first one dropped; while it continues a scalar, the cut is inside that scalar.
    while cut > 0, utf8[index] & 0xC0 == 0x80 {
        cut -= 1
        index = utf8.index(before: index)
    }
    return cut
}

extension [UInt8] {
    /// Appends `value` in little-endian byte order.
    @inline(__always)
    internal mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Appends a handle field: `low` then `high`, each a little-endian `u64` (16 bytes).
    @inline(__always)
    internal mutating func appendHandle(_ handle: WireHandle) {
        appendLE(handle.low)
        appendLE(handle.high)
    }

    /// Appends every handle as `appendHandle` does: one copy on a little-endian host, where `WireHandle`'s memory
    /// layout (two `UInt64`s, `low` first, stride 16) is exactly the wire's (batches of handles).
    @inline(__always)
    internal mutating func appendHandles(_ handles: [WireHandle]) {
        #if _endian(little)
        // Invariant: checked in debug so a layout change fails loudly instead of sending the wrong bytes.
        assert(MemoryLayout<WireHandle>.stride == 16 && MemoryLayout<WireHandle>.offset(of: \.high) == 8)
        handles.withUnsafeBytes { append(contentsOf: $0) }
        #else
        for handle in handles { appendHandle(handle) }
        #endif
    }

    /// Appends a `string` field (u16 length + UTF-8), cut to `limit` bytes at a scalar boundary.
    internal mutating func appendString(_ string: String, limit: Int) {
        let count = cutUTF8Count(string, limit: limit)
        // Safe: limits are far below UInt16.max.
        appendLE(UInt16(truncatingIfNeeded: count))
        append(contentsOf: string.utf8.prefix(count))
    }
}

/// Reads little-endian fields from a payload, throwing `malformedFrame` (without header fields) on bad input.
internal struct ByteReader {
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0

    internal init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    internal var remaining: Int { bytes.count - offset }

    internal func malformed(_ message: String) -> ProtocolError {
        ProtocolError(code: .malformedFrame, message: message)
    }

    private func need(_ count: Int, _ field: StaticString) throws(ProtocolError) {
        guard count <= remaining else {
            throw malformed("payload truncated: \(field) needs \(count) bytes at offset \(offset), \(remaining) left")
        }
    }

    private mutating func load<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(ProtocolError) -> T {
        try need(MemoryLayout<T>.size, field)
        let value = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return value
    }

    internal mutating func u8(_ field: StaticString) throws(ProtocolError) -> UInt8 { try load(UInt8.self, field) }
    internal mutating func u16(_ field: StaticString) throws(ProtocolError) -> UInt16 { try load(UInt16.self, field) }
    internal mutating func u32(_ field: StaticString) throws(ProtocolError) -> UInt32 { try load(UInt32.self, field) }
    internal mutating func u64(_ field: StaticString) throws(ProtocolError) -> UInt64 { try load(UInt64.self, field) }

    internal mutating func bool(_ field: StaticString) throws(ProtocolError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let value: throw malformed("\(field) is \(value); a bool must be 0 or 1")
        }
    }

    internal mutating func enumeration<T: RawRepresentable>(
        _: T.Type, _ field: StaticString
    ) throws(ProtocolError) -> T where T.RawValue == UInt8 {
        let raw = try u8(field)
        guard let value = T(rawValue: raw) else { throw malformed("\(field) \(raw) is not a valid \(T.self)") }
        return value
    }

    private mutating func array<T: FixedWidthInteger>(
        _: T.Type, count: UInt32, _ field: StaticString
    ) throws(ProtocolError) -> [T] {
        let size = MemoryLayout<T>.size
        // Checked before allocating, so a lying count cannot make us reserve memory.
        guard Int(count) <= remaining / size else {
            throw malformed(
                "\(field): count \(count) needs \(Int(count) * size) bytes at offset \(offset), \(remaining) left")
        }
        let start = offset
        let result = [T](unsafeUninitializedCapacity: Int(count)) { buffer, initialized in
            for index in 0..<Int(count) {
                // Safe: index < count and count * size <= remaining, checked above.
                buffer[index] = T(littleEndian: bytes.loadUnaligned(fromByteOffset: start + index * size, as: T.self))
            }
            initialized = Int(count)
        }
        offset += Int(count) * size
        return result
    }

    internal mutating func u16Array(count: UInt32, _ field: StaticString) throws(ProtocolError) -> [UInt16] {
        try array(UInt16.self, count: count, field)
    }

    internal mutating func u32Array(count: UInt32, _ field: StaticString) throws(ProtocolError) -> [UInt32] {
        try array(UInt32.self, count: count, field)
    }

    /// A handle field: `low` then `high`, 16 bytes.
    internal mutating func handle(_ field: StaticString) throws(ProtocolError) -> WireHandle {
        try need(16, field)
        let low = try u64(field)
        return WireHandle(low: low, high: try u64(field))
    }

    /// `count` handle fields back to back.
    internal mutating func handleArray(count: UInt32, _ field: StaticString) throws(ProtocolError) -> [WireHandle] {
        // Checked before allocating, so a lying count cannot make us reserve memory.
        guard Int(count) <= remaining / 16 else {
            throw malformed(
                "\(field): count \(count) needs \(Int(count) * 16) bytes at offset \(offset), \(remaining) left")
        }
        let start = offset
        let result = [WireHandle](unsafeUninitializedCapacity: Int(count)) { buffer, initialized in
            for index in 0..<Int(count) {
                // Safe: index < count and count * 16 <= remaining, checked above.
                let at = start + index * 16
                buffer[index] = WireHandle(
                    low: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                    high: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)))
            }
            initialized = Int(count)
        }
        offset += Int(count) * 16
        return result
    }

    /// A `bytes` field: u32 length + raw bytes, at most `limit` bytes.
    internal mutating func bytes(limit: Int, _ field: StaticString) throws(ProtocolError) -> [UInt8] {
        let count = try u32(field)
        guard count <= limit else { throw malformed("\(field) of \(count) bytes exceeds the limit of \(limit)") }
        try need(Int(count), field)
        let result = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(count)]))
        offset += Int(count)
        return result
    }

    /// A `string` field: u16 length + UTF-8 bytes, at most `limit` bytes, valid UTF-8.
    internal mutating func string(limit: Int, _ field: StaticString) throws(ProtocolError) -> String {
        let count = Int(try u16(field))
        guard count <= limit else { throw malformed("\(field) of \(count) bytes exceeds the limit of \(limit)") }
        try need(count, field)
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
        guard let string = String(validating: slice, as: UTF8.self) else {
            throw malformed("\(field) is not valid UTF-8")
        }
        offset += count
        return string
    }

    internal func expectEnd() throws(ProtocolError) {
        guard remaining == 0 else { throw malformed("\(remaining) bytes trail the payload at offset \(offset)") }
    }
}
