import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyTestSupport
import Foundation
import XCTest

/// Admin documents with many clients (issue 13, items 5 and 6): `clients` is paged so that no reply exceeds a
/// frame, `divvyctl clients` follows the pages, and a large admin request never costs the connection its later
/// answers.
final class AdminAtScaleTests: XCTestCase {
    /// How many clients the tests connect: 1,000 (the figure) unless `DIVVY_ADMIN_SCALE_CLIENTS` says
    /// otherwise (a bigger figure for a long run; the daemon's max-clients follows).
    static let clientCount = ProcessInfo.processInfo.environment["DIVVY_ADMIN_SCALE_CLIENTS"].flatMap(Int.init) ?? 1000

    /// A name of exactly `maxNameLength` bytes that starts with the client's number, so that every row is as long
    /// as a row can be.
    static func longName(_ index: Int) -> String {
        let prefix = "client-\(index)-"
        return prefix + String(repeating: "n", count: ProtocolLimits.maxNameLength - prefix.utf8.count)
    }

    /// A daemon with `count` real connections that said hello with long names; returns the connections (kept open
    /// by the caller) and their client ids by name.
    static func crowdedDaemon(
        _ count: Int = clientCount, prepare: (DivvyServer) -> Void = { _ in }
    ) throws -> (TestDaemon, [RawConnection], [String: UInt32]) {
        let daemon = try TestDaemon({ $0.maxClients = count + 16 }, prepare: prepare)
        var connections: [RawConnection] = []
        var ids: [String: UInt32] = [:]
        for index in 0..<count {
            let connection = try RawConnection(daemon.socketPath)
            let name = longName(index)
            let reply = try connection.roundTrip(
                .hello(Hello(minVersion: 2, maxVersion: 2, mode: .mediated, capabilities: 0, name: name)))
            guard case .welcome(let welcome) = reply.message else {
                throw NSError(domain: "no welcome: \(reply)", code: 1)
            }
            ids[name] = welcome.clientID
            connections.append(connection)
        }
        return (daemon, connections, ids)
    }

    func testDivvyctlClientsListsEveryOneOfAThousandClientsWithLongNames() throws {
        let (daemon, connections, ids) = try Self.crowdedDaemon()
        defer { connections.forEach { $0.socket.close() } }

        let json = try runDivvyctl(["clients", "--json"], socket: daemon.socketPath)
        XCTAssertEqual(json.status, 0, json.error)
        let rows = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [[String: Any]],
            "--json prints one valid JSON array however many pages it took")
        var listed: [String: UInt32] = [:]
        for row in rows {
            if let name = row["name"] as? String, let id = row["id"] as? Int { listed[name] = UInt32(id) }
        }
        XCTAssertEqual(rows.count, ids.count + 1, "every client once, and divvyctl itself")
        XCTAssertEqual(Set(rows.compactMap { $0["id"] as? Int }).count, rows.count, "no client listed twice")
        for (name, id) in ids where listed[name] != id {
            XCTFail("client \(id) (\(name.prefix(20))…) is missing from `divvyctl clients --json`")
            break
        }
        let sortedIDs = rows.compactMap { $0["id"] as? Int }
        XCTAssertEqual(sortedIDs, sortedIDs.sorted(), "rows come in id order across pages")

        let text = try runDivvyctl(["clients"], socket: daemon.socketPath)
        XCTAssertEqual(text.status, 0, text.error)
        let lines = text.output.split(separator: "\n")
        XCTAssertEqual(lines.count, 1 + ids.count + 1, "a header, then one line per client (and divvyctl's own)")
        let firstColumn = Set(lines.dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) })
        for id in ids.values where !firstColumn.contains("\(id)") {
            XCTFail("client \(id) is missing from `divvyctl clients`")
            break
        }
    }

    func testClientsPagesFitAFrameAndTheCursorWalksTheWholeList() throws {
        let (daemon, connections, ids) = try Self.crowdedDaemon()
        defer { connections.forEach { $0.socket.close() } }
        let admin = try RawConnection(daemon.socketPath)
        let adminID = try admin.hello().clientID

        var cursor: UInt32 = 0
        var seen: [UInt32] = []
        var pages = 0
        while true {
            let reply = try admin.roundTrip(.admin(.clients, argument: cursor), requestID: UInt64(pages + 1))
            guard case .adminReply(let page) = reply.message else { return XCTFail("page \(pages): \(reply.message)") }
            XCTAssertEqual(page.format, .json)
            XCTAssertLessThanOrEqual(page.body.count, ProtocolLimits.maxAdminBodyLength)
            let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(page.body)) as? [[String: Any]])
            let pageIDs = rows.compactMap { ($0["id"] as? Int).map(UInt32.init) }
            XCTAssertEqual(pageIDs.count, rows.count)
            XCTAssertTrue(pageIDs.allSatisfy { $0 > cursor }, "a page starts after its cursor")
            XCTAssertEqual(pageIDs, pageIDs.sorted())
            if pageIDs.isEmpty { break }
            if pages == 0 {
                // The first page (argument 0: what tools written before paging send) is full: a page ends only
                // where the next row would not fit.
                XCTAssertGreaterThan(page.body.count, ProtocolLimits.maxAdminBodyLength - 2 * 1024, "a full page")
            }
            seen += pageIDs
            cursor = pageIDs.last!
            pages += 1
            XCTAssertLessThan(pages, 1000, "the cursor makes progress")
        }
        XCTAssertGreaterThan(pages, 1, "\(ids.count) rows of 255-byte names need several pages")
        XCTAssertEqual(Set(seen), Set(ids.values).union([adminID]))
        XCTAssertEqual(seen.count, ids.count + 1)
        // The connection is still in use afterwards.
        guard case .pong(let payload) = try admin.roundTrip(.ping(payload: [1, 2, 3])).message else {
            return XCTFail("no pong after paging")
        }
        XCTAssertEqual(payload, [1, 2, 3])
    }

    func testPipelinedPingsAfterALargeAdminRequestAreAllAnswered() throws {
        let (daemon, connections, _) = try Self.crowdedDaemon()
        defer { connections.forEach { $0.socket.close() } }
        let admin = try RawConnection(daemon.socketPath)
        try admin.hello()
        // One burst, nothing read in between: the admin request, then pings.
        try admin.send(.admin(.clients, argument: 0), requestID: 100)
        for index in 1...9 { try admin.send(.ping(payload: [UInt8(index)]), requestID: 100 + UInt64(index)) }
        let first = try XCTUnwrap(try admin.receive(), "the admin request is answered")
        XCTAssertEqual(first.requestID, 100)
        guard case .adminReply(let reply) = first.message else {
            return XCTFail("expected adminReply: \(first.message)")
        }
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(reply.body)) as? [[String: Any]])
        for index in 1...9 {
            guard let frame = try admin.receive() else { return XCTFail("ping \(index) lost: the connection closed") }
            XCTAssertEqual(frame.requestID, 100 + UInt64(index))
            XCTAssertEqual(frame.message, .pong(payload: [UInt8(index)]))
        }
    }
}
