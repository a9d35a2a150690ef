import DivvyProtocol

/// Random valid messages of every case, for property and fuzz tests.
struct RandomMessages {
    static let caseCount = 32

    var rng: SplitMix

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func u8() -> UInt8 { UInt8.random(in: .min ... .max, using: &rng) }
    mutating func u16() -> UInt16 { UInt16.random(in: .min ... .max, using: &rng) }
    mutating func bool() -> Bool { Bool.random(using: &rng) }

    /// Small values, boundaries and full-range values, so both ends of every field are exercised.
    mutating func u32() -> UInt32 {
        switch int(0...3) {
        case 0: UInt32(int(0...16))
        case 1: [0, 1, .max, .max - 1, 1 << 31][int(0...4)]
        default: UInt32.random(in: .min ... .max, using: &rng)
        }
    }

    mutating func u64() -> UInt64 {
        switch int(0...3) {
        case 0: UInt64(int(0...16))
        case 1: [0, 1, .max, .max - 1, 1 << 63, 1 << 32][int(0...5)]
        default: rng.next()
        }
    }

    mutating func bytes(maxCount: Int) -> [UInt8] {
        let count = int(0...15) == 0 ? maxCount : int(0...min(maxCount, 64))
        return (0..<count).map { _ in u8() }
    }

    /// A valid string of at most `limit` UTF-8 bytes mixing 1-, 2-, 3- and 4-byte scalars (NUL included).
    mutating func string(limit: Int) -> String {
        let target = int(0...3) == 0 ? limit : int(0...min(limit, 40))
        var scalars = String.UnicodeScalarView()
        var length = 0
        while true {
            let scalar: Unicode.Scalar
            switch int(0...3) {
            case 0: scalar = Unicode.Scalar(UInt8(int(0...0x7F)))
            case 1: scalar = Unicode.Scalar(UInt32(int(0x80...0x7FF)))!
            case 2: scalar = Unicode.Scalar(UInt32([int(0x800...0xD7FF), int(0xE000...0xFFFF)][int(0...1)]))!
            default: scalar = Unicode.Scalar(UInt32(int(0x10000...0x10FFFF)))!
            }
            let width = String(scalar).utf8.count
            if length + width > target { break }
            scalars.append(scalar)
            length += width
        }
        return String(scalars)
    }

    mutating func batchCount() -> Int {
        int(0...7) == 0 ? [1, ProtocolLimits.maxBatchCount][int(0...1)] : int(1...20)
    }

    /// A handle with all 128 bits random (the codec treats both words as opaque).
    mutating func handle() -> WireHandle { WireHandle(low: u64(), high: u64()) }

    mutating func mode() -> ClientMode { [ClientMode.any, .direct, .mediated][int(0...2)] }
    mutating func grantedMode() -> ClientMode { [ClientMode.direct, .mediated][int(0...1)] }
    mutating func operation() -> AdminOperation { AdminOperation(rawValue: UInt8(int(1...7)))! }

    /// A random valid message of case number `index` (0..<caseCount, in MessageType.allKnown order).
    mutating func message(case index: Int) -> Message {
        switch index {
        case 0:
            return .hello(
                Hello(
                    minVersion: u16(), maxVersion: u16(), mode: mode(), capabilities: u32(),
                    name: string(limit: ProtocolLimits.maxNameLength)))
        case 1:
            return .welcome(
                Welcome(
                    version: u16(), mode: grantedMode(), clientID: u32(), quotaBytes: u64(), regionSize: u64(),
                    metadataOffset: u64(), metadataSize: u64(), dataOffset: u64(), dataSize: u64(), pageSize: u32(),
                    pageKind: PageKind(rawValue: UInt8(int(0...3)))!, sizeClasses: (0..<int(0...40)).map { _ in u32() })
            )
        case 2: return .mapRegion
        case 3: return .region(RegionGrant(access: u8(), offset: u64(), length: u64()))
        case 4: return .join(participant: u32())
        case 5: return .joined(pageAllowance: u32())
        case 6: return .lease(pages: u32())
        case 7: return .leased(pageAllowance: u32())
        case 8: return .returnPages(pages: u32())
        case 9: return .returned(pageAllowance: u32())
        case 10: return .allocate(size: u64())
        case 11: return .allocated(handle: handle(), blockSize: u64())
        case 12: return .free(handle: handle())
        case 13: return .freed(released: bool())
        case 14: return .allocateBatch(size: u64(), count: UInt32(batchCount()))
        case 15: return .allocatedBatch(blockSize: u64(), handles: (0..<batchCount()).map { _ in handle() })
        case 16: return .freeBatch(handles: (0..<batchCount()).map { _ in handle() })
        case 17: return .freedBatch(statuses: (0..<batchCount()).map { _ in FreedStatus(rawValue: u16()) })
        case 18: return .share(handle: handle())
        case 19: return .shared(SharedInfo(handle: handle(), offset: u64(), blockSize: u64(), holders: u32(), token: u64()))
        case 20: return .adopt(handle: handle(), token: u64())
        case 21: return .adopted(handle: handle(), blockSize: u64())
        case 22: return .stats
        case 23:
            return .statsReply(
                ClientStats(
                    bytesHeld: u64(), blocksHeld: u64(), quotaBytes: u64(), pageAllowance: u32(), heapBytesUsed: u64(),
                    heapBytesFree: u64(), clients: u32()))
        case 24: return .ping(payload: bytes(maxCount: ProtocolLimits.maxPingPayload))
        case 25: return .pong(payload: bytes(maxCount: ProtocolLimits.maxPingPayload))
        case 26: return .goodbye
        case 27: return .farewell
        case 28: return .admin(operation(), argument: u32())
        case 29:
            return .adminReply(
                AdminReply(
                    operation: operation(), format: bool() ? .json : .text,
                    body: bytes(maxCount: ProtocolLimits.maxAdminBodyLength)))
        case 30: return .shutdown(reason: string(limit: ProtocolLimits.maxMessageLength))
        default:
            return .error(
                ErrorReply(
                    code: ErrorCode(rawValue: u16()), requestType: MessageType(rawValue: u16()),
                    message: string(limit: ProtocolLimits.maxMessageLength)))
        }
    }

    mutating func frame() -> Frame {
        Frame(requestID: u64(), message: message(case: int(0...Self.caseCount - 1)))
    }
}
