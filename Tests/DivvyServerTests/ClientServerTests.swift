import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

/// The client library against the real server library in-process: both modes, every call, quotas, admin.
final class ClientServerTests: XCTestCase {
    func testBothModesAllocateWriteShareAdoptAndFree() throws {
        let daemon = try TestDaemon()
        for (writerMode, readerMode) in [(ClientMode.direct, ClientMode.mediated), (.mediated, .direct),
                                         (.direct, .direct), (.mediated, .mediated)] {
            let writer = try daemon.client(writerMode, name: "writer")
            let reader = try daemon.client(readerMode, name: "reader")
            XCTAssertEqual(writer.mode, writerMode)
            XCTAssertEqual(reader.mode, readerMode)
            // (XCTAssert's autoclosures cannot capture ~Copyable owners: values are read into locals first.)
            var block = try writer.allocate(1000)
            let handle = block.handle
            let size = block.count
            XCTAssertGreaterThanOrEqual(size, 1000)
            var bytes = block.mutableBytes
            bytes.storeBytes(of: 0xFEED_FACE, toByteOffset: 992, as: UInt64.self)
            let info = try writer.share(handle)
            XCTAssertEqual(info.handle, handle.wire)
            XCTAssertEqual(info.offset, UInt64(handle.dataOffset))
            XCTAssertEqual(info.holders, 1)
            XCTAssertNotEqual(info.token, 0)
            let adopted = try reader.adopt(handle, token: info.token)
            let seen = adopted.withUnsafeBytes { $0.load(fromByteOffset: 992, as: UInt64.self) }
            XCTAssertEqual(seen, 0xFEED_FACE)
            XCTAssertEqual(try writer.share(handle).holders, 2)
            let writerReleased = try block.free()
            XCTAssertFalse(writerReleased, "the reader still holds it")
            let readerReleased = try adopted.free()
            XCTAssertTrue(readerReleased, "the last holder releases it")
            writer.close()
            reader.close()
        }
        let report = try daemon.audit()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0, "\(report)")
    }

    /// `handle(for:)` gives back the exact handle in both modes, including the very first block (offset 0, which a
    /// mediated client used to turn into handle 0), for allocated, batch-allocated and adopted blocks, and refuses
    /// an address whose block the client no longer holds.
    func testHandleForPointerIsExactInBothModes() throws {
        let daemon = try TestDaemon()
        for mode in [ClientMode.mediated, .direct] {
            let client = try daemon.client(mode, name: "translator")
            let other = try daemon.client(.mediated, name: "giver")
            var handles = [try client.allocateHandle(64).handle, try client.allocateHandle(4096).handle]
            handles += try client.allocateBatch(size: 200, count: 3)
            let given = try other.allocateHandle(300).handle
            _ = try client.adoptHandle(given, token: try other.share(given).token)
            handles.append(given)
            for handle in handles {
                let address = try client.pointer(for: handle)
                // The exact handle, all 128 bits (heap id and generation included).
                XCTAssertEqual(try client.handle(for: address), handle, "\(mode) \(handle)")
                XCTAssertNotEqual(handle.heapID, 0, "\(mode): a handle names its heap")
            }
            if mode == .mediated {
                XCTAssertTrue(handles.contains { $0.dataOffset == 0 }, "the first block of the heap is covered")
                XCTAssertFalse(handles.contains { $0.isZero })
            }
            // A client holds a block once: a second adopt is refused (same code in both modes), nothing changes.
            let again = try other.share(given).token
            XCTAssertThrowsError(try client.adoptHandle(given, token: again), "\(mode): adopt twice") {
                XCTAssertEqual(($0 as? DivvyClientError)?.protocolCode, .alreadyHolder, "\($0)")
            }
            XCTAssertEqual(try client.share(given).holders, 2, "\(mode): the giver and this client")
            let givenAddress = try client.pointer(for: given)
            XCTAssertEqual(try client.handle(for: givenAddress), given)
            XCTAssertFalse(try client.free(given))
            let freed = handles[0]
            let freedAddress = try client.pointer(for: freed)
            XCTAssertTrue(try client.free(freed))
            XCTAssertThrowsError(try client.handle(for: freedAddress), "\(mode): a freed block has no handle") {
                let code = ($0 as? DivvyClientError)?.protocolCode
                XCTAssertTrue(code == .notHolder || code == .staleHandle, "\($0)")
            }
            XCTAssertThrowsError(try client.handle(for: UnsafeRawPointer(bitPattern: 0x1000)!), "outside the data area")
            _ = try client.freeBatch(Array(handles[1...4]))
            XCTAssertTrue(try other.free(given))
            client.close()
            other.close()
        }
        let report = try daemon.audit()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0, "\(report)")
    }

    func testDroppingABlockFreesItAndIntoHandleKeepsIt() throws {
        let daemon = try TestDaemon()
        let client = try daemon.client(.mediated)
        do {
            let block = try client.allocate(64)
            _ = block.handle
        }
        XCTAssertEqual(try client.stats().blocksHeld, 0, "a dropped block is freed")
        let handle = try client.allocate(64).intoHandle()
        XCTAssertEqual(try client.stats().blocksHeld, 1, "intoHandle gives up the owner, not the block")
        XCTAssertTrue(try client.free(handle))
    }

    func testBatchesAreAllOrNothingAndReportPerHandle() throws {
        let daemon = try TestDaemon { $0.quotaBytes = 64 << 10 }
        let client = try daemon.client(.mediated)
        let handles = try client.allocateBatch(size: 100, count: 100)
        XCTAssertEqual(Set(handles).count, 100)
        XCTAssertEqual(try client.stats().blocksHeld, 100)
        let before = try daemon.audit()
        assertClientError(.quotaExceeded) { try client.allocateBatch(size: 1000, count: 1000) }
        XCTAssertEqual(try daemon.audit(), before, "a refused batch allocates nothing")
        let beyond = SharedHandle(low: 0xFFFF_FFF0, high: handles[0].high)  // this heap's id, far outside its data
        let statuses = try client.freeBatch(handles + [handles[0], beyond])
        XCTAssertEqual(Array(statuses.prefix(100)), Array(repeating: .released, count: 100))
        XCTAssertEqual(statuses[100].error, .doubleFree, "a second free of the same handle in one batch")
        XCTAssertEqual(statuses[101].error, .invalidHandle)
        XCTAssertEqual(try client.stats().blocksHeld, 0)
    }

    func testQuotasOnBothPaths() throws {
        let daemon = try TestDaemon {
            $0.quotaBytes = 4 * (16 << 10)
            $0.initialLeasePages = 1
        }
        // Mediated: bytes of blocks held.
        let mediated = try daemon.client(.mediated)
        var held: [SharedHandle] = []
        while true {
            do throws(DivvyClientError) {
                held.append(try mediated.allocateHandle(2048).handle)
            } catch {
                XCTAssertEqual(error.protocolCode, .quotaExceeded, "\(error)")
                XCTAssertTrue(error.message.contains("quota"), error.message)
                break
            }
        }
        XCTAssertEqual(held.count, 32, "64 KiB of quota holds 32 blocks of 2 KiB")
        let before = try daemon.audit()
        assertClientError(.quotaExceeded) { try mediated.allocateHandle(16) }
        XCTAssertEqual(try daemon.audit(), before)
        _ = try mediated.freeBatch(held)
        // Direct: pages leased. The first lease is one page; more are leased transparently up to the quota.
        let direct = try daemon.client(.direct)
        XCTAssertEqual(direct.pageAllowance, 1)
        var directHeld: [SharedHandle] = []
        while true {
            do throws(DivvyClientError) {
                directHeld.append(try direct.allocateHandle(2048).handle)
            } catch {
                XCTAssertEqual(error.protocolCode, .quotaExceeded, "\(error)")
                break
            }
        }
        XCTAssertEqual(direct.pageAllowance, 4)
        XCTAssertEqual(directHeld.count, 32, "4 pages of 16 KiB hold 32 blocks of 2 KiB")
        for handle in directHeld { try direct.free(handle) }
        direct.close()
        mediated.close()
        XCTAssertTrue(try daemon.audit().isClean)
    }

    func testDisconnectReclaimsMediatedAndDirectHoldingsButKeepsSharedBlocks() throws {
        let daemon = try TestDaemon()
        let survivor = try daemon.client(.mediated, name: "survivor")
        var kept: SharedHandle?
        for mode in [ClientMode.mediated, .direct] {
            let leaving = try daemon.client(mode, name: "leaving")
            for _ in 0..<50 { _ = try leaving.allocate(200).intoHandle() }
            let shared = try leaving.allocate(300).intoHandle()
            var adopted = try survivor.adopt(shared, token: try leaving.share(shared).token)
            var bytes = adopted.mutableBytes
            bytes.storeBytes(of: 77, toByteOffset: 0, as: UInt64.self)
            kept = adopted.intoHandle()
            leaving.close()
        }
        let report = try daemon.audit()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 2, "only the two blocks the survivor adopted remain: \(report)")
        XCTAssertEqual(try survivor.pointer(for: kept!).load(as: UInt64.self), 77)
        survivor.close()
        XCTAssertEqual(try daemon.audit().allocatedBlocks, 0)
    }

    func testStatsAndAdminReports() throws {
        let daemon = try TestDaemon()
        let client = try daemon.client(.direct, name: "stats")
        let handle = try client.allocateHandle(128).handle
        usleep(150_000)  // heap figures may be up to 100 ms old (`HeapUsageSnapshot`)
        let stats = try client.stats()
        XCTAssertEqual(stats.clients, 1)
        XCTAssertEqual(stats.quotaBytes, UInt64(daemon.server.configuration.effectiveQuotaBytes))
        XCTAssertGreaterThan(stats.heapBytesUsed, 0)
        XCTAssertGreaterThan(stats.heapBytesFree, 0)

        func json(_ operation: AdminOperation) throws -> [String: Any] {
            let reply = try client.admin(operation)
            XCTAssertEqual(reply.format, .json)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any])
        }
        let status = try json(.status)
        XCTAssertEqual(status["clients"] as? Int, 1)
        XCTAssertEqual((status["region"] as? [String: Any])?["backing"] as? String, "memfd")
        let verify = try json(.verify)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        let config = try json(.config)
        XCTAssertNotNil((config["settings"] as? [[String: String]])?.first { $0["key"] == "socket" })
        let classes = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(client.admin(.classes).body)) as? [[String: Any]])
        XCTAssertEqual(classes.reduce(0) { $0 + ($1["blocksUsed"] as? Int ?? 0) }, 1)
        let clients = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(client.admin(.clients).body)) as? [[String: Any]])
        XCTAssertEqual(clients.first?["name"] as? String, "stats")
        XCTAssertEqual(clients.first?["mode"] as? String, "direct")
        let metrics = String(decoding: try client.admin(.metrics).body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("# TYPE divvy_clients gauge\ndivvy_clients 1.0\n"), metrics)
        XCTAssertTrue(metrics.contains("divvy_heap_bytes{class=\"128\"} 128.0\n"), metrics)
        XCTAssertTrue(metrics.contains("# TYPE divvy_connections_total counter\ndivvy_connections_total 1\n"), metrics)
        assertClientError(.noSuchClient) { try client.admin(.disconnect, argument: 999) }
        let failures = String(decoding: try client.admin(.metrics).body, as: UTF8.self)
        XCTAssertTrue(failures.contains("divvy_failures_total{reason=\"noSuchClient\"} 1\n"), failures)
        try client.free(handle)
    }

    /// Every event is counted once, into both the plain counters (`snapshotCounters()`) and the Prometheus
    /// exposition (`divvyctl metrics`): after mixed traffic on both paths, each pair agrees.
    func testCountersAndPrometheusMetricsAgree() throws {
        let daemon = try TestDaemon()
        let mediated = try daemon.client(.mediated, name: "mediated")
        let direct = try daemon.client(.direct, name: "direct")
        var handles: [SharedHandle] = []
        for size in [24, 100, 700, 3000] { handles.append(try mediated.allocate(size).intoHandle()) }
        handles += try mediated.allocateBatch(size: 64, count: 3)
        for _ in 0..<40 { _ = try direct.allocate(512).intoHandle() }
        let shared = try direct.allocate(200).intoHandle()
        handles.append(try mediated.adopt(shared, token: try direct.share(shared).token).intoHandle())
        for handle in handles { _ = try mediated.free(handle) }
        assertClientError(.noSuchClient) { try mediated.admin(.disconnect, argument: 999) }
        direct.close()

        func value(_ name: String, in exposition: String) -> Int? {
            exposition.split(separator: "\n").first { $0.hasPrefix(name + " ") }
                .flatMap { Double($0.split(separator: " ")[1]) }.map { Int($0) }
        }
        // The snapshot is published at the end of each loop iteration: ask until it has caught up.
        let deadline = Date().addingTimeInterval(5)
        var mismatches: [String] = []
        repeat {
            let exposition = String(decoding: try mediated.admin(.metrics).body, as: UTF8.self)
            usleep(20_000)
            let counters = daemon.server.snapshotCounters()
            let pairs: [(String, Int)] = [
                ("divvy_alloc_total", counters.allocations), ("divvy_free_total", counters.frees),
                ("divvy_adopt_total", counters.adoptions), ("divvy_leases_total", counters.leases),
                ("divvy_recoveries_total", counters.recoveries), ("divvy_connections_total", counters.connections),
                ("divvy_connections_refused_total", counters.refusedConnections),
                ("divvy_failures_total{reason=\"noSuchClient\"}", counters.errors["noSuchClient"] ?? 0),
            ]
            mismatches = pairs.compactMap { name, count in
                value(name, in: exposition) == count ? nil : "\(name): \(value(name, in: exposition) ?? -1) vs \(count)"
            }
            if counters.allocations < 7 || counters.leases == 0 || counters.adoptions != 1 {
                mismatches.append("not all traffic counted yet: \(counters)")
            }
        } while !mismatches.isEmpty && Date() < deadline
        XCTAssertEqual(mismatches, [])
        mediated.close()
    }

    func testAdminDisconnectReclaimsAClient() throws {
        let daemon = try TestDaemon()
        let admin = try daemon.client(.mediated, name: "admin")
        // Mediated: a direct victim would be killed, and in-process that is this test.
        let victim = try daemon.client(.mediated, name: "victim")
        for _ in 0..<10 { _ = try victim.allocate(64).intoHandle() }
        _ = try admin.admin(.disconnect, argument: victim.clientID)
        do {
            try victim.ping()
            XCTFail("a disconnected client's next call must fail")
        } catch {
            XCTAssertEqual(error.code, .daemonGone, "\(error)")
        }
        let report = try daemon.audit()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
    }

    func testDaemonGoneIsAnErrorAndReconnectWorks() throws {
        var daemon: TestDaemon? = try TestDaemon()
        let directory = daemon!.directory
        let client = try DivvyClient(.init(socketPath: daemon!.socketPath, name: "gone", mode: .mediated))
        try client.ping()
        daemon!.stop()
        do {
            try client.ping()
            XCTFail("a call after the daemon left must throw")
        } catch {
            XCTAssertEqual(error.code, .daemonGone, "\(error)")
        }
        XCTAssertThrowsError(try client.reconnect()) { error in
            XCTAssertEqual((error as? DivvyClientError)?.code, .noDaemon)
            XCTAssertTrue("\(error)".contains("start it with"), "\(error)")
        }
        daemon = nil
        _ = directory
    }

    func testNoDaemonMessageSaysHowToStartOne() {
        XCTAssertThrowsError(try DivvyClient(.init(socketPath: "/tmp/divvy-no-such-dir/none.sock"))) { error in
            let clientError = error as? DivvyClientError
            XCTAssertEqual(clientError?.code, .noDaemon)
            XCTAssertTrue(clientError?.message.contains("no daemon at /tmp/divvy-no-such-dir/none.sock") ?? false)
        }
    }

    func testManyClientsAndASlowOneDoNotBlockTheOthers() throws {
        let daemon = try TestDaemon { $0.maxClients = 400 }
        // 300 connected clients at once.
        var connections: [RawConnection] = []
        for _ in 0..<300 {
            let connection = try RawConnection(daemon.socketPath)
            try connection.hello()
            connections.append(connection)
        }
        // A stuck client: sends large pings and never reads the replies.
        let stuck = try RawConnection(daemon.socketPath)
        try stuck.hello()
        let flags = fcntl(stuck.socket.fileDescriptor, F_GETFL)
        _ = fcntl(stuck.socket.fileDescriptor, F_SETFL, flags | O_NONBLOCK)
        let payload = [UInt8](repeating: 0xAB, count: 60_000)
        for id in 0..<200 {
            guard (try? stuck.socket.send(Frame(requestID: UInt64(id), message: .ping(payload: payload)).encoded()))
                == .sent
            else { break }
        }
        // Everyone else is still served.
        for (index, connection) in connections.enumerated() where index % 10 == 0 {
            let reply = try connection.roundTrip(.allocate(size: 64))
            guard case .allocated(let handle, _) = reply.message else { return XCTFail("\(reply)") }
            XCTAssertEqual(try connection.roundTrip(.free(handle: handle)).message, .freed(released: true))
        }
        let client = try daemon.client(.direct)
        try client.ping()
        XCTAssertEqual(try client.stats().clients, 302)
        connections.removeAll()
        XCTAssertTrue(try daemon.audit().isClean)
    }

    func testTooManyClientsIsRefusedWithAnError() throws {
        let daemon = try TestDaemon {
            $0.maxClients = 2
            $0.reservedAdminConnections = 0  // this uid administers: no slots beyond max-clients for it
        }
        let first = try daemon.client(.mediated)
        let second = try daemon.client(.mediated)
        let third = try RawConnection(daemon.socketPath)
        assertErrorReply(try third.receive(), .tooManyClients)
        XCTAssertTrue(try third.isClosedByPeer())
        try first.ping()
        try second.ping()
    }

    func testGracefulShutdownTellsClients() throws {
        let daemon = try TestDaemon()
        let raw = try RawConnection(daemon.socketPath)
        try raw.hello()
        daemon.stop()
        let notice = try raw.receive()
        guard case .shutdown(let reason) = notice?.message else { return XCTFail("expected shutdown, got \(String(describing: notice))") }
        XCTAssertEqual(notice?.requestID, 0)
        XCTAssertEqual(reason, "test over")
        XCTAssertTrue(try raw.isClosedByPeer())
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.socketPath), "the socket file is removed")
    }
}
