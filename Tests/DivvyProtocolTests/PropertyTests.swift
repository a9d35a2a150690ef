import DivvyProtocol
import XCTest

/// Seeded randomized tests: every valid message round-trips, and no byte string makes decoding trap.
/// Replay a failure with DIVVY_TEST_SEED=<seed printed in the failure message>.
final class PropertyTests: XCTestCase {
    func testRandomMessagesOfEveryCaseRoundTrip() {
        let seed = SplitMix.testSeed()
        print("\(name): seed \(seed) (replay with DIVVY_TEST_SEED=\(seed))")
        var random = RandomMessages(rng: SplitMix(seed: seed))
        var buffer: [UInt8] = [0xAA, 0xBB]  // reused, with a prefix that must stay untouched
        var seenTypes = Set<MessageType>()
        for iteration in 0..<4000 {
            let index = iteration % RandomMessages.caseCount
            let frame = Frame(requestID: random.u64(), message: random.message(case: index))
            XCTAssertEqual(frame.message.type, MessageType.allKnown[index], "seed \(seed)")
            seenTypes.insert(frame.message.type)
            XCTAssertEqual(frame.message.isRequest, frame.message.type.isRequest, "seed \(seed)")
            do {
                try frame.message.validate()
            } catch {
                XCTFail("seed \(seed): valid \(frame.message.type) failed validation: \(error)")
            }
            let bytes = frame.encoded()
            XCTAssertEqual(bytes.count, ProtocolLimits.headerSize + frame.message.encodedPayloadSize, "seed \(seed)")
            XCTAssertLessThanOrEqual(bytes.count, ProtocolLimits.maxFrameSize, "seed \(seed)")

            buffer.removeSubrange(2...)
            frame.encode(into: &buffer)
            XCTAssertEqual(buffer[..<2], [0xAA, 0xBB], "seed \(seed)")
            XCTAssertEqual(Array(buffer[2...]), bytes, "seed \(seed): encode(into:) differs from encoded()")

            do {
                let decoded = try Frame.decode(bytes)
                XCTAssertEqual(decoded, frame, "seed \(seed): \(frame.message.type) did not round-trip")
                XCTAssertEqual(decoded.encoded(), bytes, "seed \(seed)")
            } catch {
                XCTFail("seed \(seed), iteration \(iteration): \(frame.message.type) failed to decode: \(error)")
            }
        }
        XCTAssertEqual(seenTypes.count, MessageType.allKnown.count)
    }

    /// Random byte strings, and truncations, extensions and bit flips of valid frames: decoding either succeeds
    /// (and then the bytes are the canonical encoding of the result) or throws a ProtocolError. Never traps.
    func testFuzzedBytesNeverTrap() {
        let seed = SplitMix.testSeed()
        print("\(name): seed \(seed) (replay with DIVVY_TEST_SEED=\(seed))")
        var random = RandomMessages(rng: SplitMix(seed: seed))
        var accepted = 0
        var codes: [ErrorCode: Int] = [:]

        @discardableResult
        func check(_ bytes: [UInt8], _ what: @autoclosure () -> String) -> Bool {
            do {
                let frame = try Frame.decode(bytes)
                accepted += 1
                // Decoding is strict and encoding canonical, so an accepted frame re-encodes to the same bytes.
                XCTAssertEqual(frame.encoded(), bytes, "seed \(seed): \(what()) decoded to a non-canonical frame")
                return true
            } catch {
                codes[error.code, default: 0] += 1
                XCTAssertTrue(error.code.isKnown, "seed \(seed): \(what())")
                XCTAssertFalse(error.message.isEmpty, "seed \(seed): \(what())")
                let readable = bytes.count >= 24 && bytes[0..<4] == [0x44, 0x56, 0x59, 0x50]
                if !readable {
                    XCTAssertEqual(error.requestID, 0, "seed \(seed): \(what())")
                    XCTAssertEqual(error.requestType.rawValue, 0, "seed \(seed): \(what())")
                }
                return false
            }
        }

        // Pure noise, with and without a plausible header in front.
        for _ in 0..<3000 {
            var bytes = (0..<random.int(0...80)).map { _ in random.u8() }
            if random.bool(), bytes.count >= 24 {
                let type = MessageType.allKnown[random.int(0...MessageType.allKnown.count - 1)]
                FrameHeader(type: type, requestID: 7, payloadLength: UInt32(bytes.count - 24)).encode(into: &bytes)
                bytes = Array(bytes[(bytes.count - 24)...] + bytes[24..<(bytes.count - 24)])
            }
            check(bytes, "noise")
        }
        // Mutations of valid frames.
        for _ in 0..<6000 {
            let valid = random.frame().encoded()
            var bytes = valid
            switch random.int(0...4) {
            case 0:
                bytes = Array(bytes.prefix(random.int(0...bytes.count)))
            case 1:
                bytes += (0..<random.int(1...8)).map { _ in random.u8() }
            case 2:
                for _ in 0..<random.int(1...3) {
                    let bit = random.int(0...bytes.count * 8 - 1)
                    bytes[bit / 8] ^= 1 << (bit % 8)
                }
            case 3:
                // Flip payload bits but keep the header's length consistent: exercises the payload decoder.
                if bytes.count > 24 {
                    let bit = random.int(24 * 8...bytes.count * 8 - 1)
                    bytes[bit / 8] ^= 1 << (bit % 8)
                }
            default:
                // Cut or extend the payload and fix the header's length to match.
                let newCount = max(24, bytes.count + random.int(-12...12))
                bytes =
                    newCount <= bytes.count
                    ? Array(bytes.prefix(newCount)) : bytes + (0..<(newCount - bytes.count)).map { _ in random.u8() }
                let length = UInt32(bytes.count - 24)
                for index in 0..<4 { bytes[16 + index] = UInt8(truncatingIfNeeded: length >> (8 * index)) }
            }
            check(bytes, "mutation of \(valid.hex.prefix(64))")
        }
        // Every prefix of one frame of each case is rejected (the full frame is accepted).
        for index in 0..<RandomMessages.caseCount {
            let bytes = Frame(requestID: 1, message: random.message(case: index)).encoded()
            for cut in 0..<min(bytes.count, 200) {
                XCTAssertFalse(
                    check(Array(bytes.prefix(cut)), "prefix"), "seed \(seed): prefix \(cut) of case \(index)")
            }
            XCTAssertTrue(check(bytes, "case \(index)"), "seed \(seed): case \(index)")
        }
        XCTAssertGreaterThan(accepted, 0, "seed \(seed)")
        XCTAssertGreaterThan(codes[.malformedFrame, default: 0], 0, "seed \(seed)")
    }
}
