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
        let handle = WireHandle(low: 0x0003_0000_0000_1234, high: 7 << 32)
        let second = Frame(requestID: 10, message: .free(handle: handle))
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
                0x44, 0x56, 0x59, 0x50, 0x02, 0x00, 0x06, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
            ])
        XCTAssertEqual(Array(bytes[0..<4]), Array("DVYP".utf8))
    }

    func testDecodeReadsFromAnUnalignedSliceOfALargerBuffer() throws {
        let handles = [1, 2, 3].map { WireHandle(low: $0, high: 0xFEDC_BA98_7654_3210 &+ $0) }
        let frame = Frame(requestID: 5, message: .allocatedBatch(blockSize: 64, handles: handles))
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
        let tooManyHandles = [WireHandle](
            repeating: WireHandle(low: 7, high: 1 << 32), count: ProtocolLimits.maxBatchCount + 1)
        let welcomeAny = Welcome(
            version: 1, mode: .any, clientID: 1, quotaBytes: 0, regionSize: 0, metadataOffset: 0, metadataSize: 0,
            dataOffset: 0, dataSize: 0, pageSize: 4096, pageKind: .base, sizeClasses: [])
        let cases: [(Message, ErrorCode)] = [
            (.allocateBatch(size: 8, count: 0), .batchTooLarge),
            (.allocateBatch(size: 8, count: UInt32(ProtocolLimits.maxBatchCount + 1)), .batchTooLarge),
            (.allocatedBatch(blockSize: 8, handles: []), .batchTooLarge),
            (.freeBatch(handles: []), .batchTooLarge),
            (.freeBatch(handles: tooManyHandles), .batchTooLarge),
            (.freedBatch(statuses: []), .batchTooLarge),
            (.freedBatch(statuses: [FreedStatus](repeating: .released, count: ProtocolLimits.maxBatchCount + 1)), .batchTooLarge),
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
        // An allocatedBatch one handle over the limit does not fit a frame: the decoder refuses its size before it
        // reads the count, validate() its count first. Both refuse it.
        let overfull = Message.allocatedBatch(blockSize: 8, handles: tooManyHandles)
        XCTAssertThrowsError(try overfull.validate()) { error in
            XCTAssertEqual((error as? ProtocolError)?.code, .batchTooLarge)
        }
        XCTAssertEqual(decodeError(Frame(requestID: 3, message: overfull).encoded())?.code, .frameTooLarge)
    }

    func testFramesAtTheLimitsAreAccepted() throws {
        let maxBatch = [WireHandle](
            repeating: WireHandle(low: .max, high: .max), count: ProtocolLimits.maxBatchCount)
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
        // The batch limit is the most 16-byte handles an allocatedBatch fits: one more would not fit a frame.
        XCTAssertEqual(ProtocolLimits.maxBatchCount, 4093)
        XCTAssertLessThanOrEqual(Frame(requestID: 0, message: messages[1]).encoded().count, ProtocolLimits.maxFrameSize)
        XCTAssertGreaterThan(
            ProtocolLimits.headerSize + 12 + 16 * (ProtocolLimits.maxBatchCount + 1), ProtocolLimits.maxFrameSize)
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
        frame[4] = 3  // unsupported version
        frame[20] = 1  // and nonzero flags: the version wins
        XCTAssertEqual(decodeError(frame)?.code, .unsupportedVersion)
        frame[4] = 2
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
        XCTAssertEqual(ErrorCode.allKnown.map(\.rawValue), Array(1...26))
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

    func testWireHandleLayout() throws {
        // PROTOCOL.md section 8: low = offset/16 (bits 0-47) | generation bits 0-15 (48-63); high = generation
        // bits 16-47 (0-31) | heap id (32-63).
        let handle = try XCTUnwrap(
            WireHandle(heapID: 0x1D2C_3B4A, dataOffset: 0x12340, generation: 0x1234_5678_9ABC))
        XCTAssertEqual(handle.low, 0x9ABC_0000_0000_1234)
        XCTAssertEqual(handle.high, 0x1D2C_3B4A_1234_5678)
        XCTAssertEqual(handle.dataOffset, 0x12340)
        XCTAssertEqual(handle.generation, 0x1234_5678_9ABC)
        XCTAssertEqual(handle.heapID, 0x1D2C_3B4A)
        XCTAssertEqual(handle.description, "0x1d2c3b4a123456789abc000000001234")

        let full = WireHandle(low: .max, high: .max)
        XCTAssertEqual(full.dataOffset, 0xF_FFFF_FFFF_FFF0, "48 bits of 16-byte units: beyond 64 GiB")
        XCTAssertEqual(full.generation, 0xFFFF_FFFF_FFFF)
        XCTAssertEqual(full.heapID, .max)
        XCTAssertEqual(
            WireHandle(heapID: .max, dataOffset: 0xF_FFFF_FFFF_FFF0, generation: 0xFFFF_FFFF_FFFF), full)
        XCTAssertNil(WireHandle(heapID: 1, dataOffset: 8, generation: 0), "not a multiple of 16")
        XCTAssertNil(WireHandle(heapID: 1, dataOffset: 1 << 52, generation: 0), "beyond 48 bits of 16-byte units")
        XCTAssertNil(WireHandle(heapID: 1, dataOffset: 0, generation: 1 << 48), "generations have 48 bits")
        XCTAssertTrue(WireHandle.zero.isZero)
        XCTAssertFalse(WireHandle(low: 0, high: 1).isZero)

        // On the wire: low then high, little-endian, 16 bytes.
        let bytes = Frame(requestID: 1, message: .free(handle: handle)).encoded()
        XCTAssertEqual(bytes.count, ProtocolLimits.headerSize + ProtocolLimits.handleSize)
        XCTAssertEqual(
            Array(bytes[24...]),
            [0x34, 0x12, 0, 0, 0, 0, 0xBC, 0x9A, 0x78, 0x56, 0x34, 0x12, 0x4A, 0x3B, 0x2C, 0x1D])
    }

    func testHandlesUsingAll128BitsRoundTripInEveryMessage() throws {
        // Distinct patterns in every byte of both words, so a swapped, truncated or reordered word is caught.
        let a = WireHandle(low: 0x0123_4567_89AB_CDEF, high: 0xFEDC_BA98_7654_3210)
        let b = WireHandle(low: .max, high: 0x8000_0000_0000_0001)
        let c = WireHandle(low: 0x8000_0000_0000_0000, high: .max)
        let messages: [Message] = [
            .allocated(handle: a, blockSize: 64), .free(handle: b), .share(handle: c),
            .adopt(handle: a, token: 0x0102_0304_0506_0708), .adopted(handle: b, blockSize: 1),
            .shared(SharedInfo(handle: c, offset: 16, blockSize: 2, holders: 3, token: .max)),
            .allocatedBatch(blockSize: 8, handles: [a, b, c]), .freeBatch(handles: [c, b, a]),
        ]
        for message in messages {
            XCTAssertEqual(roundTrip(message), message, "\(message.type)")
        }
    }

    func testHeaderVersions() throws {
        // hello and welcome travel in version-1 headers (section 6.1); everything else in the current version.
        let hello = Message.hello(Hello(minVersion: 2, maxVersion: 2, mode: .any, capabilities: 0, name: "x"))
        XCTAssertEqual(Frame(requestID: 1, message: hello).version, 1)
        XCTAssertEqual(Frame(requestID: 1, message: hello).encoded()[4], 1)
        XCTAssertEqual(Frame(requestID: 1, message: .stats).version, 2)
        XCTAssertEqual(ProtocolVersion.current, 2)
        XCTAssertEqual(ProtocolVersion.supported, 2...2)
        // The decoder accepts header versions 1 and 2 and nothing else.
        for version: UInt16 in [1, 2] {
            XCTAssertEqual(try Frame.decode(Frame(requestID: 4, message: .stats, version: version).encoded()).version,
                version)
        }
        for version: UInt16 in [0, 3, .max] {
            let bytes = Frame(requestID: 4, message: .stats, version: version).encoded()
            XCTAssertEqual(decodeError(bytes)?.code, .unsupportedVersion, "header version \(version)")
        }
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
        XCTAssertEqual(ErrorCode.foreignHandle.rawValue, 25)
        XCTAssertEqual(ErrorCode.foreignHandle.name, "foreignHandle")
        XCTAssertFalse(ErrorCode.foreignHandle.closesConnection)
        XCTAssertEqual(ErrorCode.badShareToken.rawValue, 26)
        XCTAssertEqual(ErrorCode.badShareToken.name, "badShareToken")
        XCTAssertFalse(ErrorCode.badShareToken.closesConnection)
        XCTAssertEqual(ErrorCode.allKnown.last, .badShareToken)
    }

    func testAdoptCarriesTheTokenAfterTheHandleAndSharedEndsWithIt() {
        // PROTOCOL.md 7: adopt = handle, u64 token; shared = handle, offset, blockSize, holders, u64 token.
        let handle = WireHandle(low: 1, high: 2)
        let adopt = Frame(requestID: 1, message: .adopt(handle: handle, token: 0x1122_3344_5566_7788)).encoded()
        XCTAssertEqual(adopt.count, 24 + 24)
        XCTAssertEqual(Array(adopt[40...]), [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        let info = SharedInfo(handle: handle, offset: 16, blockSize: 32, holders: 2, token: 0xAB)
        let shared = Frame(requestID: 1, message: .shared(info)).encoded()
        XCTAssertEqual(shared.count, 24 + 44)
        XCTAssertEqual(Array(shared[60...]), [0xAB, 0, 0, 0, 0, 0, 0, 0])
    }
}
