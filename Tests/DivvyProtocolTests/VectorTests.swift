import DivvyProtocol
import Foundation
import XCTest

/// Checks DivvyProtocol against the golden vectors in Protocol/vectors (written by an independent encoder,
/// Protocol/vectors/generate.py): every valid vector encodes to exactly its bytes and decodes to exactly its
/// fields; every invalid vector throws the expected error with the expected header fields.
final class VectorTests: XCTestCase {
    struct VectorFile<Vector: Decodable>: Decodable {
        var format: Int
        var vectors: [Vector]
    }

    /// All fields any message has; u64 fields are decimal strings, byte fields hex strings.
    struct Fields: Decodable {
        var minVersion: UInt16?
        var maxVersion: UInt16?
        var mode: UInt8?
        var capabilities: UInt32?
        var name: String?
        var version: UInt16?
        var clientID: UInt32?
        var quotaBytes: String?
        var regionSize: String?
        var metadataOffset: String?
        var metadataSize: String?
        var dataOffset: String?
        var dataSize: String?
        var pageSize: UInt32?
        var pageKind: UInt8?
        var sizeClasses: [UInt32]?
        var access: UInt8?
        var offset: String?
        var length: String?
        var participant: UInt32?
        var pageAllowance: UInt32?
        var pages: UInt32?
        var size: String?
        var handle: Handle?
        var blockSize: String?
        var released: Bool?
        var count: UInt32?
        var handles: [Handle]?
        var statuses: [UInt16]?
        var holders: UInt32?
        var token: String?
        var bytesHeld: String?
        var blocksHeld: String?
        var heapBytesUsed: String?
        var heapBytesFree: String?
        var clients: UInt32?
        var payload: String?
        var op: UInt8?
        var argument: UInt32?
        var format: UInt8?
        var body: String?
        var reason: String?
        var code: UInt16?
        var requestType: UInt16?
        var message: String?
    }

    /// A 128-bit handle: its two words as decimal u64 strings.
    struct Handle: Decodable {
        var low: String
        var high: String
    }

    struct ValidVector: Decodable {
        var name: String
        var type: String
        var typeCode: UInt16
        var requestID: String
        var version: UInt16
        var fields: Fields
        var hex: String
        var comment: String
    }

    struct InvalidVector: Decodable {
        var name: String
        var hex: String
        var error: String
        var code: UInt16
        var requestID: String
        var requestType: UInt16
        var comment: String
        var appendZeros: Int?
        /// What the daemon does with it on SOCK_SEQPACKET when that is not an error reply ("closes").
        var onSeqpacket: String?

        var bytes: [UInt8] { [UInt8](hex: hex) + [UInt8](repeating: 0, count: appendZeros ?? 0) }
    }

    struct MissingField: Error, CustomStringConvertible {
        var description: String
    }

    static func load<Vector: Decodable>(_ file: String, as _: Vector.Type) throws -> [Vector] {
        let data = try Data(contentsOf: vectorsDirectory.appendingPathComponent(file))
        let decoded = try JSONDecoder().decode(VectorFile<Vector>.self, from: data)
        XCTAssertEqual(decoded.format, 2, "\(file): unknown vector file format")
        return decoded.vectors
    }

    /// Builds the message a valid vector describes, requiring every field of its type.
    static func message(_ vector: ValidVector) throws -> Message {
        let f = vector.fields
        func need<T>(_ value: T?, _ field: String) throws -> T {
            guard let value else { throw MissingField(description: "\(vector.name): missing field \(field)") }
            return value
        }
        func u64(_ value: String?, _ field: String) throws -> UInt64 {
            guard let parsed = UInt64(try need(value, field)) else {
                throw MissingField(description: "\(vector.name): \(field) is not a decimal u64")
            }
            return parsed
        }
        func handle(_ value: Handle?, _ field: String) throws -> WireHandle {
            let value = try need(value, field)
            return WireHandle(low: try u64(value.low, "\(field).low"), high: try u64(value.high, "\(field).high"))
        }
        func mode(_ raw: UInt8?) throws -> ClientMode {
            try need(ClientMode(rawValue: try need(raw, "mode")), "mode (valid)")
        }
        func op(_ raw: UInt8?) throws -> AdminOperation {
            try need(AdminOperation(rawValue: try need(raw, "op")), "op (valid)")
        }
        func bytes(_ hex: String?, _ field: String) throws -> [UInt8] { [UInt8](hex: try need(hex, field)) }

        switch vector.type {
        case "hello":
            return .hello(
                Hello(
                    minVersion: try need(f.minVersion, "minVersion"), maxVersion: try need(f.maxVersion, "maxVersion"),
                    mode: try mode(f.mode), capabilities: try need(f.capabilities, "capabilities"),
                    name: try need(f.name, "name")))
        case "welcome":
            return .welcome(
                Welcome(
                    version: try need(f.version, "version"), mode: try mode(f.mode),
                    clientID: try need(f.clientID, "clientID"), quotaBytes: try u64(f.quotaBytes, "quotaBytes"),
                    regionSize: try u64(f.regionSize, "regionSize"),
                    metadataOffset: try u64(f.metadataOffset, "metadataOffset"),
                    metadataSize: try u64(f.metadataSize, "metadataSize"),
                    dataOffset: try u64(f.dataOffset, "dataOffset"), dataSize: try u64(f.dataSize, "dataSize"),
                    pageSize: try need(f.pageSize, "pageSize"),
                    pageKind: try need(PageKind(rawValue: try need(f.pageKind, "pageKind")), "pageKind (valid)"),
                    sizeClasses: try need(f.sizeClasses, "sizeClasses")))
        case "mapRegion": return .mapRegion
        case "region":
            return .region(
                RegionGrant(
                    access: try need(f.access, "access"), offset: try u64(f.offset, "offset"),
                    length: try u64(f.length, "length")))
        case "join": return .join(participant: try need(f.participant, "participant"))
        case "joined": return .joined(pageAllowance: try need(f.pageAllowance, "pageAllowance"))
        case "lease": return .lease(pages: try need(f.pages, "pages"))
        case "leased": return .leased(pageAllowance: try need(f.pageAllowance, "pageAllowance"))
        case "returnPages": return .returnPages(pages: try need(f.pages, "pages"))
        case "returned": return .returned(pageAllowance: try need(f.pageAllowance, "pageAllowance"))
        case "allocate": return .allocate(size: try u64(f.size, "size"))
        case "allocated":
            return .allocated(handle: try handle(f.handle, "handle"), blockSize: try u64(f.blockSize, "blockSize"))
        case "free": return .free(handle: try handle(f.handle, "handle"))
        case "freed": return .freed(released: try need(f.released, "released"))
        case "allocateBatch": return .allocateBatch(size: try u64(f.size, "size"), count: try need(f.count, "count"))
        case "allocatedBatch":
            return .allocatedBatch(
                blockSize: try u64(f.blockSize, "blockSize"),
                handles: try need(f.handles, "handles").map { try handle($0, "handles[]") })
        case "freeBatch": return .freeBatch(handles: try need(f.handles, "handles").map { try handle($0, "handles[]") })
        case "freedBatch": return .freedBatch(statuses: try need(f.statuses, "statuses").map(FreedStatus.init))
        case "share": return .share(handle: try handle(f.handle, "handle"))
        case "shared":
            return .shared(
                SharedInfo(
                    handle: try handle(f.handle, "handle"), offset: try u64(f.offset, "offset"),
                    blockSize: try u64(f.blockSize, "blockSize"), holders: try need(f.holders, "holders"),
                    token: try u64(f.token, "token")))
        case "adopt": return .adopt(handle: try handle(f.handle, "handle"), token: try u64(f.token, "token"))
        case "adopted":
            return .adopted(handle: try handle(f.handle, "handle"), blockSize: try u64(f.blockSize, "blockSize"))
        case "stats": return .stats
        case "statsReply":
            return .statsReply(
                ClientStats(
                    bytesHeld: try u64(f.bytesHeld, "bytesHeld"), blocksHeld: try u64(f.blocksHeld, "blocksHeld"),
                    quotaBytes: try u64(f.quotaBytes, "quotaBytes"),
                    pageAllowance: try need(f.pageAllowance, "pageAllowance"),
                    heapBytesUsed: try u64(f.heapBytesUsed, "heapBytesUsed"),
                    heapBytesFree: try u64(f.heapBytesFree, "heapBytesFree"), clients: try need(f.clients, "clients")))
        case "ping": return .ping(payload: try bytes(f.payload, "payload"))
        case "pong": return .pong(payload: try bytes(f.payload, "payload"))
        case "goodbye": return .goodbye
        case "farewell": return .farewell
        case "admin": return .admin(try op(f.op), argument: try need(f.argument, "argument"))
        case "adminReply":
            return .adminReply(
                AdminReply(
                    operation: try op(f.op),
                    format: try need(AdminFormat(rawValue: try need(f.format, "format")), "format (valid)"),
                    body: try bytes(f.body, "body")))
        case "shutdown": return .shutdown(reason: try need(f.reason, "reason"))
        case "error":
            return .error(
                ErrorReply(
                    code: ErrorCode(rawValue: try need(f.code, "code")),
                    requestType: MessageType(rawValue: try need(f.requestType, "requestType")),
                    message: try need(f.message, "message")))
        default:
            throw MissingField(description: "\(vector.name): unknown type \(vector.type)")
        }
    }

    func testValidVectorsEncodeToTheirBytesAndDecodeToTheirFields() throws {
        let vectors = try Self.load("valid.json", as: ValidVector.self)
        XCTAssertGreaterThan(vectors.count, 60)
        for vector in vectors {
            let message = try Self.message(vector)
            let requestID = try XCTUnwrap(UInt64(vector.requestID), vector.name)
            let frame = Frame(requestID: requestID, message: message, version: vector.version)
            let bytes = [UInt8](hex: vector.hex)
            XCTAssertEqual(message.type.rawValue, vector.typeCode, vector.name)
            XCTAssertEqual(message.type.name, vector.type, vector.name)
            XCTAssertEqual(frame.encoded().hex, vector.hex, "\(vector.name): encoding differs")
            XCTAssertEqual(message.encodedPayloadSize + ProtocolLimits.headerSize, bytes.count, vector.name)
            XCTAssertNoThrow(try message.validate(), vector.name)
            do {
                let decoded = try Frame.decode(bytes)
                XCTAssertEqual(decoded, frame, "\(vector.name): decoding differs")
                // String equality is canonical equivalence; compare the exact bytes too.
                XCTAssertEqual(decoded.encoded(), bytes, vector.name)
            } catch {
                XCTFail("\(vector.name): decode threw \(error)")
            }
            bytes.withUnsafeBytes { raw in
                XCTAssertEqual(
                    FrameHeader.parse(raw),
                    FrameHeader(
                        version: vector.version, type: message.type, requestID: requestID,
                        payloadLength: UInt32(bytes.count - ProtocolLimits.headerSize)), vector.name)
            }
        }
    }

    func testInvalidVectorsThrowTheirErrorCode() throws {
        let vectors = try Self.load("invalid.json", as: InvalidVector.self)
        XCTAssertGreaterThan(vectors.count, 50)
        for vector in vectors {
            let code = ErrorCode(rawValue: vector.code)
            XCTAssertEqual(code.name, vector.error, "\(vector.name): code and name disagree")
            guard let error = decodeError(vector.bytes) else {
                XCTFail("\(vector.name): decoded but should throw \(vector.error)")
                continue
            }
            XCTAssertEqual(error.code, code, "\(vector.name) (\(vector.comment)): \(error)")
            XCTAssertEqual(error.requestID, UInt64(vector.requestID), "\(vector.name): requestID")
            XCTAssertEqual(error.requestType.rawValue, vector.requestType, "\(vector.name): requestType")
            XCTAssertFalse(error.message.isEmpty, vector.name)
            // A 0-byte datagram is end of file on SOCK_SEQPACKET: the vector says the daemon closes instead of
            // replying, and no other vector does.
            XCTAssertEqual(vector.onSeqpacket, vector.bytes.isEmpty ? "closes" : nil, vector.name)
            // The pointer entry point agrees.
            let pointerResult: Result<Frame, ProtocolError> = vector.bytes.withUnsafeBytes { raw in
                Result { () throws(ProtocolError) -> Frame in try Frame.decode(raw) }
            }
            XCTAssertEqual(pointerResult, .failure(error), vector.name)
        }
    }

    /// Every known message type and error code needs a vector. `isKnown` comes from the same switch the decoder
    /// and names use, so adding a type or code without vectors fails here.
    func testEveryTypeAndCodeHasAVector() throws {
        let valid = try Self.load("valid.json", as: ValidVector.self)
        let invalid = try Self.load("invalid.json", as: InvalidVector.self)
        let types = Set(valid.map(\.typeCode))
        var knownTypes = 0
        for raw in UInt16.min...UInt16.max where MessageType(rawValue: raw).isKnown {
            knownTypes += 1
            XCTAssertTrue(types.contains(raw), "no valid vector for message type \(MessageType(rawValue: raw))")
        }
        XCTAssertEqual(knownTypes, MessageType.allKnown.count)
        XCTAssertEqual(Set(MessageType.allKnown.map(\.rawValue)).count, MessageType.allKnown.count)
        XCTAssertTrue(MessageType.allKnown.allSatisfy(\.isKnown))

        let errorReplyCodes = Set(valid.compactMap { $0.type == "error" ? $0.fields.code : nil })
        var knownCodes = 0
        for raw in UInt16.min...UInt16.max where ErrorCode(rawValue: raw).isKnown {
            knownCodes += 1
            XCTAssertTrue(errorReplyCodes.contains(raw), "no error reply vector for \(ErrorCode(rawValue: raw))")
        }
        XCTAssertEqual(knownCodes, ErrorCode.allKnown.count)
        XCTAssertEqual(Set(ErrorCode.allKnown.map(\.rawValue)).count, ErrorCode.allKnown.count)

        // Every error the decoder can throw has an invalid vector.
        let invalidCodes = Set(invalid.map { ErrorCode(rawValue: $0.code) })
        for code in [
            ErrorCode.malformedFrame, .unsupportedVersion, .unknownMessageType, .frameTooLarge, .batchTooLarge,
        ] {
            XCTAssertTrue(invalidCodes.contains(code), "no invalid vector throwing \(code)")
        }
        // Vector names are unique.
        let names = valid.map(\.name) + invalid.map(\.name)
        XCTAssertEqual(Set(names).count, names.count)
    }
}
