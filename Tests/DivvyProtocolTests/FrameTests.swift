import DivvyProtocol
import XCTest

/// Targeted tests of framing, limits, string cutting, validation and the small value types.
final class FrameTests: XCTestCase {
    private func roundTrip(_ message: Message, file: StaticString = #filePath, line: UInt = #line) -> Message? {
        do {
            return try Frame.decode(Frame(requestID: 1, message: message).encoded()).message
        } catch {
            XCTFail("decode threw \(error)", file: file, line: line)
            return nil
        }
    }

    // MARK: Encoding

    func testEncodeIntoAppendsAndReusesTheBuffer() {
        var buffer: [UInt8] = [1, 2, 3]
        let first = Frame(requestID: 9, message: .allocate(size: 64))
        first.encode(into: &buffer)
        XCTAssertEqual(Array(buffer[..<3]), [1, 2, 3])
        XCTAssertEqual(Array(buffer[3...]), first.encoded())
        XCTAssertEqual(first.encoded().count, 32)

        buffer.removeAll(keepingCapacity: true)
        let capacity = buffer.capacity
        let second = Frame(requestID: 10, message: .free(handle: 0x0000_0003_0000_1234))
        second.encode(into: &buffer)
        XCTAssertEqual(buffer, second.encoded())
        XCTAssertEqual(buffer.capacity, capacity, "a reused buffer with room must not reallocate")

        // Two frames back to back in one buffer: each decodes from its own slice.
        buffer.removeAll(keepingCapacity: true)
        first.encode(into: &buffer)
        second.encode(into: &buffer)
        XCTAssertEqual(try Frame.decode(Array(buffer[..<32])), first)
        XCTAssertEqual(try Frame.decode(Array(buffer[32...])), second)
    }

    func testEncodingIsDeterministicAndLittleEndian() {
        let frame = Frame(requestID: 0x0102_0304_0506_0708, message: .allocate(size: 0x1122_3344_5566_7788))
        let bytes = frame.encoded()
        XCTAssertEqual(bytes, frame.encoded())
        XCTAssertEqual(
            bytes,
            [
                0x44, 0x56, 0x59, 0x50, 0x01, 0x00, 0x06, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
            ])
        XCTAssertEqual(Array(bytes[0..<4]), Array("DVYP".utf8))
    }

    func testDecodeReadsFromAnUnalignedSliceOfALargerBuffer() throws {
        let frame = Frame(requestID: 5, message: .allocatedBatch(blockSize: 64, handles: [1, 2, 3]))
        let bytes = [0xEE] + frame.encoded() + [0xEE]
        let decoded = try bytes.withUnsafeBytes { raw in
            try Frame.decode(UnsafeRawBufferPointer(rebasing: raw[1..<(raw.count - 1)]))
        }
        XCTAssertEqual(decoded, frame)
    }

    // MARK: Strings

    func testLongStringsAreCutAtTheirLimitOnAScalarBoundary() throws {
        let name = String(repeating: "a", count: 300)
        let hello = Message.hello(Hello(minVersion: 1, maxVersion: 1, mode: .direct, capabilities: 0, name: name))
        XCTAssertEqual(hello.encodedPayloadSize, 9 + 2 + 255)
        guard case .hello(let decoded)? = roundTrip(hello) else { return XCTFail("not a hello") }
        XCTAssertEqual(decoded.name, String(repeating: "a", count: 255))

        // 2-byte scalars: 255 bytes would split the 128th "é", so 254 bytes (127 scalars) are kept.
        let accented = Message.hello(
            Hello(
                minVersion: 1, maxVersion: 1, mode: .direct, capabilities: 0,
                name: String(repeating: "\u{E9}", count: 200)))
        XCTAssertEqual(accented.encodedPayloadSize, 9 + 2 + 254)
        guard case .hello(let cut)? = roundTrip(accented) else { return XCTFail("not a hello") }
        XCTAssertEqual(cut.name, String(repeating: "\u{E9}", count: 127))

        // 4-byte scalars in an error message: 4096 is a multiple of 4, so exactly 1024 survive; one more "a" in
        // front shifts them and only 1023 fit.
        let emoji = String(repeating: "\u{1F600}", count: 2000)
        let longError = ErrorReply(code: .internalError, requestType: .allocate, message: emoji)
        guard case .error(let reply)? = roundTrip(.error(longError)) else { return XCTFail("not an error") }
        XCTAssertEqual(reply.message, String(repeating: "\u{1F600}", count: 1024))
        guard case .shutdown(let reason)? = roundTrip(.shutdown(reason: "a" + emoji)) else {
            return XCTFail("not a shutdown")
        }
        XCTAssertEqual(reason, "a" + String(repeating: "\u{1F600}", count: 1023))
        XCTAssertEqual(Message.shutdown(reason: "a" + emoji).encodedPayloadSize, 2 + 1 + 4 * 1023)
    }

    func testStringsKeepTheirExactBytes() throws {
        // Canonically equivalent strings compare equal in Swift but must not be normalized on the wire.
        let composed = "\u{E9}"
        let decomposed = "e\u{301}"
        for name in [composed, decomposed, "\u{0}nul", ""] {
            let bytes = Frame(requestID: 1, message: .shutdown(reason: name)).encoded()
            XCTAssertEqual(Array(bytes[26...]), Array(name.utf8))
            guard case .shutdown(let decoded) = try Frame.decode(bytes).message else { return XCTFail() }
            XCTAssertEqual(Array(decoded.utf8), Array(name.utf8))
        }
    }

    // MARK: Limits and validation

    func testValidateAgreesWithTheDecoder() {
        let tooManyHandles = [UInt64](repeating: 7, count: ProtocolLimits.maxBatchCount + 1)
        let welcomeAny = Welcome(
            version: 1, mode: .any, clientID: 1, quotaBytes: 0, regionSize: 0, metadataOffset: 0, metadataSize: 0,
            dataOffset: 0, dataSize: 0, pageSize: 4096, pageKind: .base, sizeClasses: [])
        let cases: [(Message, ErrorCode)] = [
            (.allocateBatch(size: 8, count: 0), .batchTooLarge),
            (.allocateBatch(size: 8, count: UInt32(ProtocolLimits.maxBatchCount + 1)), .batchTooLarge),
            (.allocatedBatch(blockSize: 8, handles: []), .batchTooLarge),
            (.allocatedBatch(blockSize: 8, handles: tooManyHandles), .batchTooLarge),
            (.freeBatch(handles: []), .batchTooLarge),
            (.freeBatch(handles: tooManyHandles), .batchTooLarge),
            (.freedBatch(statuses: []), .batchTooLarge),
            (.freedBatch(statuses: [FreedStatus](repeating: .released, count: 4097)), .batchTooLarge),
            (.ping(payload: [UInt8](repeating: 1, count: ProtocolLimits.maxPingPayload + 1)), .malformedFrame),
            (.pong(payload: [UInt8](repeating: 1, count: ProtocolLimits.maxPingPayload + 1)), .malformedFrame),
            (.welcome(welcomeAny), .malformedFrame),
            (
                .adminReply(
                    AdminReply(
                        operation: .status, format: .json,
                        body: [UInt8](repeating: 0x20, count: ProtocolLimits.maxAdminBodyLength + 1))),
                .frameTooLarge
            ),
        ]
        for (message, code) in cases {
            XCTAssertThrowsError(try message.validate(), "\(message.type)") { error in
                XCTAssertEqual((error as? ProtocolError)?.code, code, "\(message.type)")
                XCTAssertEqual((error as? ProtocolError)?.requestType, message.type)
            }
            let bytes = Frame(requestID: 3, message: message).encoded()
            XCTAssertEqual(decodeError(bytes)?.code, code, "decoding \(message.type)")
            XCTAssertEqual(decodeError(bytes)?.requestID, 3)
        }
    }

    func testFramesAtTheLimitsAreAccepted() throws {
        let maxBatch = [UInt64](repeating: 0xFFFF_FFFF_FFFF_FFFF, count: ProtocolLimits.maxBatchCount)
        let maxBody = [UInt8](repeating: 0x7B, count: ProtocolLimits.maxAdminBodyLength)
        let messages: [Message] = [
            .allocateBatch(size: 8, count: UInt32(ProtocolLimits.maxBatchCount)),
            .allocatedBatch(blockSize: 8, handles: maxBatch),
            .freeBatch(handles: maxBatch),
            .freedBatch(statuses: [FreedStatus](repeating: .stillHeld, count: ProtocolLimits.maxBatchCount)),
            .ping(payload: [UInt8](repeating: 0xFF, count: ProtocolLimits.maxPingPayload)),
            .adminReply(AdminReply(operation: .metrics, format: .text, body: maxBody)),
        ]
        for message in messages {
            XCTAssertNoThrow(try message.validate(), "\(message.type)")
            XCTAssertEqual(roundTrip(message), message, "\(message.type)")
        }
        // The admin body at its limit makes a frame of exactly maxFrameSize bytes.
        XCTAssertEqual(Frame(requestID: 0, message: messages[5]).encoded().count, ProtocolLimits.maxFrameSize)
        XCTAssertEqual(ProtocolLimits.maxPayloadSize, ProtocolLimits.maxFrameSize - ProtocolLimits.headerSize)
    }

    func testAnOversizedDatagramCutToTheReceiveBufferIsFrameTooLarge() {
        // A 70000-byte ping as a receiver with a receiveBufferSize buffer sees it: cut, header intact.
        let ping = Frame(requestID: 12, message: .ping(payload: [UInt8](repeating: 9, count: 70000 - 28))).encoded()
        XCTAssertEqual(ping.count, 70000)
        let received = Array(ping.prefix(ProtocolLimits.receiveBufferSize))
        let error = decodeError(received)
        XCTAssertEqual(error?.code, .frameTooLarge)
        XCTAssertEqual(error?.requestID, 12)
        XCTAssertEqual(error?.requestType, .ping)
        XCTAssertEqual(error?.code.closesConnection, true)
    }

    func testHeaderChecksRunInTheDocumentedOrder() {
        var frame = Frame(requestID: 42, message: .stats).encoded()
        XCTAssertNil(decodeError(frame))
        frame[4] = 2  // unsupported version
        frame[20] = 1  // and nonzero flags: the version wins
        XCTAssertEqual(decodeError(frame)?.code, .unsupportedVersion)
        frame[4] = 1
        XCTAssertEqual(decodeError(frame)?.code, .malformedFrame)
        frame[20] = 0
        frame[6] = 0x77  // unknown type
        XCTAssertEqual(decodeError(frame)?.code, .unknownMessageType)
        XCTAssertEqual(decodeError(frame)?.requestType, MessageType(rawValue: 0x77))
        XCTAssertEqual(decodeError(frame)?.requestID, 42)
        frame[0] = 0  // bad magic: the header is not trusted
        XCTAssertEqual(decodeError(frame), ProtocolError(code: .malformedFrame, message: decodeError(frame)!.message))
    }

    // MARK: Header

    func testHeaderParseReadsFieldsWithoutValidating() {
        let bytes = FrameHeader(
            magic: 0xDEAD_BEEF, version: 9, type: MessageType(rawValue: 0x1234), requestID: .max, payloadLength: 77,
            flags: 5)
        var buffer: [UInt8] = []
        bytes.encode(into: &buffer)
        XCTAssertEqual(buffer.count, ProtocolLimits.headerSize)
        buffer.withUnsafeBytes { raw in
            XCTAssertEqual(FrameHeader.parse(raw), bytes)
            XCTAssertNil(FrameHeader.parse(UnsafeRawBufferPointer(rebasing: raw[..<23])))
        }
    }

    // MARK: Value types

    func testMessageTypesPairRequestsWithReplies() {
        let requests = MessageType.allKnown.filter(\.isRequest)
        XCTAssertEqual(requests.count, 15)
        for request in requests {
            let reply = try? XCTUnwrap(request.replyType)
            XCTAssertEqual(reply?.isKnown, true, "\(request)")
            XCTAssertEqual(reply?.isRequest, false)
            XCTAssertEqual(reply?.rawValue, request.rawValue | 0x8000)
        }
        XCTAssertNil(MessageType.allocated.replyType)
        XCTAssertNil(MessageType(rawValue: 0x0042).replyType)
        XCTAssertFalse(MessageType(rawValue: 0x0042).isRequest)
        XCTAssertEqual(MessageType.allocateBatch.description, "allocateBatch")
        XCTAssertEqual(MessageType(rawValue: 0x00AB).description, "unknown(0x00AB)")
        XCTAssertEqual(MessageType.error.rawValue, 0x80FF)
        XCTAssertEqual(MessageType.shutdown.rawValue, 0x8010)
        XCTAssertTrue(
            Message.hello(Hello(minVersion: 1, maxVersion: 1, mode: .any, capabilities: 0, name: "")).isRequest)
        XCTAssertFalse(Message.shutdown(reason: "").isRequest)
        XCTAssertFalse(Message.error(ErrorReply(code: .heapFull, requestType: .allocate, message: "")).isRequest)
    }

    func testErrorCodes() {
        let closing = ErrorCode.allKnown.filter(\.closesConnection)
        XCTAssertEqual(
            closing, [.malformedFrame, .unsupportedVersion, .frameTooLarge, .notAuthorized, .tooManyClients])
        XCTAssertEqual(ErrorCode.allKnown.map(\.rawValue), Array(1...24))
        XCTAssertEqual(ErrorCode.invalidParticipant.description, "invalidParticipant")
        XCTAssertEqual(ErrorCode.directUnavailable.description, "directUnavailable")
        XCTAssertEqual(ErrorCode(rawValue: 999).description, "unknown(999)")
        XCTAssertFalse(ErrorCode(rawValue: 0).isKnown)
    }

    func testFreedStatus() {
        XCTAssertNil(FreedStatus.released.error)
        XCTAssertNil(FreedStatus.stillHeld.error)
        XCTAssertEqual(FreedStatus(error: .staleHandle).rawValue, 13)
        XCTAssertEqual(FreedStatus(error: .staleHandle).error, .staleHandle)
        XCTAssertEqual(FreedStatus(rawValue: 999).error, ErrorCode(rawValue: 999))
        XCTAssertEqual(FreedStatus.released.description, "released")
        XCTAssertEqual(FreedStatus.stillHeld.description, "stillHeld")
        XCTAssertEqual(FreedStatus(error: .doubleFree).description, "doubleFree")
    }

    func testBlockHandleRule() {
        let handle: UInt64 = 0x0000_0003_0000_1234
        XCTAssertEqual(BlockHandle.dataOffset(handle), 0x12340)
        XCTAssertEqual(BlockHandle.generation(handle), 3)
        XCTAssertEqual(BlockHandle.make(dataOffset: 0x12340, generation: 3), handle)
        XCTAssertEqual(BlockHandle.dataOffset(.max), 0xF_FFFF_FFF0)
        XCTAssertEqual(BlockHandle.generation(.max), .max)
        XCTAssertEqual(BlockHandle.make(dataOffset: 0xF_FFFF_FFF0, generation: .max), .max)
        XCTAssertNil(BlockHandle.make(dataOffset: 8, generation: 0), "not a multiple of 16")
        XCTAssertNil(BlockHandle.make(dataOffset: 1 << 36, generation: 0), "beyond 32 bits of 16-byte units")
    }

    func testProtocolErrorReplyEchoesTheRequest() throws {
        var bytes = Frame(requestID: 77, message: .allocate(size: 8)).encoded()
        bytes.append(0)
        bytes[16] = 9  // keep the header's length consistent with the trailing byte
        let error = try XCTUnwrap(decodeError(bytes))
        XCTAssertEqual(error.code, .malformedFrame)
        XCTAssertEqual(error.requestID, 77)
        XCTAssertEqual(error.requestType, .allocate)
        XCTAssertTrue(error.description.hasPrefix("malformedFrame: "), error.description)
        let reply = error.reply
        XCTAssertEqual(reply.requestID, 77)
        XCTAssertEqual(
            reply.message, .error(ErrorReply(code: .malformedFrame, requestType: .allocate, message: error.message)))
        XCTAssertEqual(try Frame.decode(reply.encoded()), reply)

        let unreadable = try XCTUnwrap(decodeError([1, 2, 3]))
        XCTAssertEqual(unreadable.reply.requestID, 0)
        XCTAssertEqual(
            unreadable.reply.message,
            .error(
                ErrorReply(code: .malformedFrame, requestType: MessageType(rawValue: 0), message: unreadable.message)))
    }

    func testEnumRawValuesMatchTheSpec() {
        XCTAssertEqual(ClientMode.mediated.rawValue, 2)
        XCTAssertEqual(PageKind.huge1G.rawValue, 3)
        XCTAssertEqual(AdminOperation.metrics.rawValue, 7)
        XCTAssertEqual(AdminOperation.disconnect.rawValue, 6)
        XCTAssertEqual(AdminFormat.text.rawValue, 1)
        XCTAssertEqual(RegionGrant.readWrite, 1)
        XCTAssertEqual(ProtocolLimits.magic, 0x5059_5644)
        XCTAssertEqual(Frame(requestID: 0, message: .stats).version, ProtocolVersion.current)
    }
}
