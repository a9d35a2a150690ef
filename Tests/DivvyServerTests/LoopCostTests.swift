import DivvyClient
import DivvyProtocol
@testable import DivvyServer
@testable import DivvyShm
import Foundation
import XCTest

/// What `stats`, `admin status` and `admin clients` cost the loop (issue 13, "Noisy neighbours" in
/// docs/benchmarks.md): heap figures from a snapshot, client ids kept sorted, rows written without an encoder.
final class LoopCostTests: XCTestCase {
    /// A usage whose `totalPages` tells which walk made it.
    private func usage(_ marker: Int) -> SharedHeapUsage {
        var usage = SharedHeapUsage()
        usage.totalPages = marker
        return usage
    }

    func testTheSnapshotWalksTheHeapOnlyWhenOlderThanItsMaxAge() {
        var snapshot = HeapUsageSnapshot(maxAge: .milliseconds(100))
        var walks = 0
        var bytes = 10
        func walk() -> SharedHeapUsage {
            walks += 1
            return usage(bytes)
        }
        let start = ContinuousClock.now
        XCTAssertEqual(snapshot.current(now: start, walk: walk).totalPages, 10, "the first request walks")
        bytes = 20
        for step in 0...100 {
            XCTAssertEqual(snapshot.current(now: start + .milliseconds(step), walk: walk).totalPages, 10)
        }
        XCTAssertEqual(walks, 1, "101 requests within 100 ms walk once")
        XCTAssertEqual(snapshot.requestWalks, 1)
        XCTAssertEqual(snapshot.current(now: start + .milliseconds(101), walk: walk).totalPages, 20, "then refreshed")
        XCTAssertEqual(walks, 2)
        // A periodic walk (the status report) refreshes it too, and requests then use it.
        snapshot.store(usage(30), at: start + .milliseconds(150))
        XCTAssertEqual(snapshot.current(now: start + .milliseconds(200), walk: walk).totalPages, 30)
        XCTAssertEqual(walks, 2)
        XCTAssertEqual(snapshot.requestWalks, 2, "stores are not request walks")
        // A max age of zero walks on every request.
        snapshot.maxAge = .zero
        _ = snapshot.current(now: start + .milliseconds(200), walk: walk)
        _ = snapshot.current(now: start + .milliseconds(200), walk: walk)
        XCTAssertEqual(walks, 4)
    }

    func testABurstOfStatsAndStatusDoesNotWalkTheHeapEachTime() throws {
        let daemon = try TestDaemon(prepare: { $0.heapUsageSnapshot.maxAge = .seconds(3600) })
        let client = try daemon.client(.mediated, name: "burst")
        defer { client.close() }
        _ = try client.stats()
        _ = try client.admin(.status)
        let before = daemon.server.snapshotCounters().heapUsageRequestWalks
        XCTAssertLessThanOrEqual(before, 1, "the loop's own status report took the first snapshot")
        for _ in 0..<200 { _ = try client.stats() }
        for _ in 0..<50 { _ = try client.admin(.status) }
        _ = try client.ping()
        let after = daemon.server.snapshotCounters().heapUsageRequestWalks
        XCTAssertEqual(after, before, "250 requests within the max age walked the heap \(after - before) times")
    }

    func testStatsSeesAnAllocationOnceTheMaxAgeHasPassed() throws {
        let daemon = try TestDaemon(prepare: { $0.heapUsageSnapshot.maxAge = .milliseconds(50) })
        let client = try daemon.client(.mediated, name: "refresh")
        defer { client.close() }
        let first = try client.stats().heapBytesUsed
        let (handle, blockSize) = try client.allocateHandle(100_000)
        usleep(200_000)  // past the 50 ms max age: the snapshot taken before the allocation is too old now
        let second = try client.stats()
        XCTAssertEqual(second.heapBytesUsed, first + UInt64(blockSize), "\(second)")
        XCTAssertTrue(try client.free(handle))
        usleep(200_000)
        XCTAssertEqual(try client.stats().heapBytesUsed, first)
    }

    func testSortedClientIDsKeepsOrderAndPagesFromACursor() {
        var ids = SortedClientIDs()
        for id: UInt32 in [1, 2, 3, 5, 8, 9] { ids.insert(id) }
        ids.insert(4)  // out of order (ids wrapped)
        ids.insert(UInt32.max)
        ids.insert(5)  // present already
        XCTAssertEqual(ids.ids, [1, 2, 3, 4, 5, 8, 9, UInt32.max])
        ids.remove(3)
        ids.remove(7)  // absent
        ids.remove(UInt32.max)
        XCTAssertEqual(ids.ids, [1, 2, 4, 5, 8, 9])
        XCTAssertEqual(Array(ids.after(0)), [1, 2, 4, 5, 8, 9])
        XCTAssertEqual(Array(ids.after(2)), [4, 5, 8, 9])
        XCTAssertEqual(Array(ids.after(3)), [4, 5, 8, 9], "a cursor whose client has gone")
        XCTAssertEqual(Array(ids.after(9)), [])
        XCTAssertEqual(Array(ids.after(.max)), [])
        XCTAssertEqual(ids.count, 6)

        var random = SortedClientIDs()
        var reference = Set<UInt32>()
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let id = UInt32.random(in: 0..<300, using: &generator)
            if Bool.random(using: &generator) { random.insert(id); reference.insert(id) } else {
                random.remove(id); reference.remove(id)
            }
        }
        XCTAssertEqual(random.ids, reference.sorted())
        XCTAssertEqual(Array(random.after(150)), reference.filter { $0 > 150 }.sorted())
    }

    func testClientRowsAreJSONEncodersBytes() throws {
        let names = [
            "", "worker", "a/b \"quoted\" \\ back", "tab\tnew\nline\r\u{8}\u{c}", "\u{1}\u{1f}\u{7f}",
            "héllo wörld ✓ 🎉", String(repeating: "x", count: 255),
        ]
        let seconds: [Double] = [0, 1, 1.5, 2.0, 0.000_012_3, 12_345.678_9, 1e20, -3.25, 86_400.5]
        var rows: [AdminDocument.Client] = []
        for (index, name) in names.enumerated() {
            for (step, second) in seconds.enumerated() {
                rows.append(AdminDocument.Client(
                    id: UInt32(index * 100 + step), pid: step % 2 == 0 ? 4242 : -1, uid: .max, gid: 0, name: name,
                    mode: step % 3 == 0 ? "handshake" : "mediated", bytesHeld: index << 40, blocksHeld: step,
                    quotaBytes: Int.max, pageAllowance: step, participant: step % 2 == 0 ? nil : step,
                    connectedSeconds: second, requests: Int.min + step))
            }
        }
        let encoder = AdminPaging.encoder()
        for row in rows {
            var bytes: [UInt8] = []
            ClientRowJSON.append(row, to: &bytes)
            let expected = AdminPaging.encode(row, with: encoder)
            XCTAssertEqual(String(decoding: bytes, as: UTF8.self), String(decoding: expected, as: UTF8.self))
            XCTAssertEqual(try JSONDecoder().decode(AdminDocument.Client.self, from: Data(bytes)), row)
        }
    }
}

extension LoopCostTests {
    func testModeNamesAreTheCasesNames() {
        for mode in [ClientMode.any, .direct, .mediated] { XCTAssertEqual(AdminReports.modeName(mode), "\(mode)") }
        XCTAssertEqual(AdminReports.modeName(nil), "handshake")
    }
}
