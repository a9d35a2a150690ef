import DivvyProtocol
@testable import DivvyServer
import Foundation
import XCTest

/// `AdminPaging` and `ReplyCheck` on their own, and the reply check in a running daemon.
final class AdminPagingTests: XCTestCase {
    private func row(_ id: UInt32, nameLength: Int = 255) -> AdminDocument.Client {
        AdminDocument.Client(
            id: id, pid: 1000 + Int32(id), uid: 1, gid: 2, name: String(repeating: "\u{1}", count: nameLength),
            mode: "mediated", bytesHeld: Int(id) * 16, blocksHeld: Int(id), quotaBytes: 1 << 20, pageAllowance: 0,
            participant: nil, connectedSeconds: 1.5, requests: 3)
    }

    func testAPageHoldsTheRowsThatFitAndIsTheArraysOwnEncoding() throws {
        // Control characters are escaped (`\u0001`: 6 bytes each): the longest rows there are.
        let rows = (1...400).map { row($0) }
        let limit = ProtocolLimits.maxAdminBodyLength
        let (body, count) = AdminPaging.arrayPage(rows, limit: limit)
        XCTAssertLessThanOrEqual(body.count, limit)
        XCTAssertGreaterThan(count, 10)
        XCTAssertLessThan(count, rows.count, "400 rows of 1.5 KB do not fit one page")
        XCTAssertEqual(body, AdminPaging.encode(Array(rows.prefix(count))), "the bytes of encoding the array at once")
        XCTAssertEqual(
            try JSONDecoder().decode([AdminDocument.Client].self, from: Data(body)), Array(rows.prefix(count)))
        let next = AdminPaging.encode(rows[count])
        XCTAssertGreaterThan(body.count + 1 + next.count, limit, "the page ends only where the next row does not fit")

        XCTAssertEqual(AdminPaging.arrayPage([AdminDocument.Client](), limit: limit).body, Array("[]".utf8))
        let few = (1...3).map { row($0, nameLength: 5) }
        XCTAssertEqual(AdminPaging.arrayPage(few, limit: limit).count, 3)
        XCTAssertEqual(AdminPaging.arrayPage(few, limit: limit).body, AdminPaging.encode(few))
    }

    func testVerifyKeepsTheViolationsThatFitAndCountsTheRest() throws {
        let violations = (0..<5000).map { "violation \($0): " + String(repeating: "x", count: 80) }
        let report = AdminDocument.Verify(
            clean: false, violations: violations, summary: "5000 violation(s)", pooledPages: 1, ownedPages: 2,
            orphanPages: 3, allocatedBlocks: 4, holdings: 5, liveParticipants: 6, deadParticipants: 7,
            operationsInFlight: 0)
        let limit = ProtocolLimits.maxAdminBodyLength
        let body = AdminPaging.verifyBody(report, limit: limit)
        XCTAssertLessThanOrEqual(body.count, limit)
        let cut = try JSONDecoder().decode(AdminDocument.Verify.self, from: Data(body))
        XCTAssertFalse(cut.clean)
        XCTAssertEqual(cut.violations, Array(violations.prefix(cut.violations.count)), "the first ones are kept")
        XCTAssertGreaterThan(cut.violations.count, 100)
        XCTAssertEqual(cut.violations.count + (cut.violationsOmitted ?? -1), violations.count)
        XCTAssertEqual(cut.summary, report.summary)
        var oneMore = report
        oneMore.violations = Array(violations.prefix(cut.violations.count + 1))
        oneMore.violationsOmitted = violations.count - oneMore.violations.count
        XCTAssertGreaterThan(AdminPaging.encode(oneMore).count, limit, "as many as fit")

        var small = report
        small.violations = ["one"]
        let whole = try JSONDecoder().decode(
            AdminDocument.Verify.self, from: Data(AdminPaging.verifyBody(small, limit: limit)))
        XCTAssertEqual(whole.violations, ["one"])
        XCTAssertEqual(whole.violationsOmitted, 0)
    }

    func testAReplyThatDoesNotFitAFrameBecomesInternalError() throws {
        var buffer: [UInt8] = []
        let tooLong = Message.adminReply(
            AdminReply(operation: .clients, format: .json, body: [UInt8](repeating: 32, count: 70_000)))
        let replaced = try XCTUnwrap(ReplyCheck.encode(tooLong, requestID: 42, into: &buffer))
        XCTAssertTrue(replaced.contains("over the protocol's limit"), replaced)
        XCTAssertLessThanOrEqual(buffer.count, ProtocolLimits.maxFrameSize)
        let frame = try Frame.decode(buffer)
        XCTAssertEqual(frame.requestID, 42)
        guard case .error(let error) = frame.message else { return XCTFail("\(frame.message)") }
        XCTAssertEqual(error.code, .internalError)
        XCTAssertEqual(error.requestType, .admin, "it answers the admin request")
        XCTAssertFalse(error.code.closesConnection)

        // A reply that fits, up to the last byte, is sent as it is.
        let longest = [UInt8](repeating: 32, count: ProtocolLimits.maxAdminBodyLength)
        let fits = Message.adminReply(AdminReply(operation: .clients, format: .json, body: longest))
        XCTAssertNil(ReplyCheck.encode(fits, requestID: 43, into: &buffer))
        XCTAssertEqual(buffer.count, ProtocolLimits.maxFrameSize)
        XCTAssertEqual(try Frame.decode(buffer), Frame(requestID: 43, message: fits))
    }

    /// With the page limit raised past a frame (only a test can), the `clients` reply cannot be sent: the admin
    /// request gets `internalError`, and the requests pipelined behind it are all answered.
    func testAnOversizeReplyIsAnsweredWithAnErrorAndLaterRequestsStillGetTheirAnswers() throws {
        let (daemon, connections, _) = try AdminAtScaleTests.crowdedDaemon(200) { $0.adminBodyLimit = 1 << 20 }
        defer { connections.forEach { $0.socket.close() } }
        let admin = try RawConnection(daemon.socketPath)
        try admin.hello()
        try admin.send(.admin(.clients, argument: 0), requestID: 100)
        for index in 1...9 { try admin.send(.ping(payload: [UInt8(index)]), requestID: 100 + UInt64(index)) }
        assertErrorReply(try admin.receive(), .internalError, requestID: 100)
        for index in 1...9 {
            guard let frame = try admin.receive() else { return XCTFail("ping \(index) lost: the connection closed") }
            XCTAssertEqual(frame.requestID, 100 + UInt64(index))
            XCTAssertEqual(frame.message, .pong(payload: [UInt8(index)]))
        }
    }
}
