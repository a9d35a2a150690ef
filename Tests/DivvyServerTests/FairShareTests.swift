import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

@testable import DivvyServer

/// One mediated client cannot take what all mediated clients share (issue 13, items 1 and 2), and holes punched in
/// the data object are repaired (item 16). Real daemons, real clients.
final class FairShareTests: XCTestCase {
    /// Allocates `size`-byte blocks (`batch` at a time) until refused; returns the handles and the refusal.
    private func allocateUntilRefused(
        _ client: DivvyClient, size: Int, batch: Int = 1, limit: Int = 100_000
    ) throws -> (handles: [SharedHandle], refusal: DivvyClientError) {
        var handles: [SharedHandle] = []
        while handles.count < limit {
            do throws(DivvyClientError) {
                if batch == 1 {
                    handles.append(try client.allocateHandle(size).handle)
                } else {
                    handles += try client.allocateBatch(size: size, count: batch)
                }
            } catch {
                return (handles, error)
            }
        }
        throw NSError(domain: "never refused after \(handles.count) blocks", code: 1)
    }

    // MARK: Item 1: blocks per client

    func testOneClientAtItsBlockLimitLeavesTheSharedHeldListToOthers() throws {
        // held-capacity 4096 (the test daemon's): the default limit is 4096 / 16 = 256 blocks per client.
        let daemon = try TestDaemon()
        XCTAssertEqual(daemon.server.configuration.effectiveMaxBlocksPerClient, 256)
        let hog = try daemon.client(.mediated, name: "hog")
        let (held, refusal) = try allocateUntilRefused(hog, size: 16, batch: 64)
        XCTAssertEqual(refusal.protocolCode, .quotaExceeded, "\(refusal)")
        XCTAssertTrue(refusal.message.contains("max-blocks-per-client"), refusal.message)
        XCTAssertEqual(held.count, 256)
        // A refused request changes nothing.
        let before = try daemon.audit()
        assertClientError(.quotaExceeded) { try hog.allocateHandle(16) }
        assertClientError(.quotaExceeded) { try hog.allocateBatch(size: 16, count: 2) }
        XCTAssertEqual(try daemon.audit(), before)
        XCTAssertEqual(try hog.stats().blocksHeld, 256)
        // Another mediated client still allocates (before the limit: heapFull, the hog filled the held list).
        let other = try daemon.client(.mediated, name: "other")
        let handle = try other.allocateHandle(16).handle
        XCTAssertTrue(try other.free(handle))
        // Freeing makes room again.
        XCTAssertTrue(try hog.free(held[0]))
        XCTAssertNoThrow(try hog.allocateHandle(16))
    }

    func testBlockLimitCountsAdoptions() throws {
        let daemon = try TestDaemon { $0.maxBlocksPerClient = 2 }
        let owner = try daemon.client(.mediated, name: "owner")
        let first = try owner.allocateHandle(16).handle
        let second = try owner.allocateHandle(16).handle
        let adopter = try daemon.client(.mediated, name: "adopter")
        _ = try adopter.adoptHandle(first, token: try owner.share(first).token)
        _ = try adopter.adoptHandle(second, token: try owner.share(second).token)
        let thirdOwner = try daemon.client(.mediated, name: "third")
        let third = try thirdOwner.allocateHandle(16).handle
        let token = try thirdOwner.share(third).token
        assertClientError(.quotaExceeded) { try adopter.adoptHandle(third, token: token) }
        XCTAssertEqual(try adopter.stats().blocksHeld, 2)
    }

    // MARK: Item 2: the large-block tier

    func testWithDefaultQuotasOneClientCannotTakeTheWholeLargeBlockTier() throws {
        // The test daemon: 8 MiB of data, 16 KiB pages: a 2 MiB span tier (16 span pages of 128 KiB), and the
        // default quota (a quarter of the data area) is 2 MiB too: the whole tier.
        let daemon = try TestDaemon()
        let heap = daemon.server.heap
        // The largest class (span pages); the large-block tier is the span tier and the extent area (2 MiB each).
        let largest = heap.largestClassBlockSize
        let largeTier = heap.spanPageCount * heap.spanPageSize + heap.extentUnitCount * heap.extentUnitSize
        XCTAssertEqual(heap.spanPageCount * heap.spanPageSize, daemon.server.configuration.effectiveQuotaBytes)
        let hog = try daemon.client(.mediated, name: "hog")
        let (held, refusal) = try allocateUntilRefused(hog, size: largest)
        XCTAssertEqual(refusal.protocolCode, .quotaExceeded, "\(refusal)")
        XCTAssertTrue(refusal.message.contains("large-quota"), refusal.message)
        XCTAssertEqual(held.count * largest, largeTier / 4, "a quarter of the tier")
        let before = try daemon.audit()
        assertClientError(.quotaExceeded) { try hog.allocateHandle(largest) }
        XCTAssertEqual(try daemon.audit(), before, "a refused request changes nothing")
        // Small blocks are still within its quota.
        XCTAssertNoThrow(try hog.allocateHandle(100))
        // Another client still gets large blocks (before: heapFull, the hog held every span page).
        let other = try daemon.client(.mediated, name: "other")
        let handle = try other.allocateHandle(largest).handle
        XCTAssertTrue(try other.free(handle))
    }

    func testHeapFullSaysWhichTierIsFull() throws {
        let daemon = try TestDaemon()
        let largest = daemon.server.heap.largestClassBlockSize
        var clients: [DivvyClient] = []
        var full: DivvyClientError?
        // Four clients at their large-quota hold the whole tier; the fifth is told that tier is full.
        for index in 0..<8 where full == nil {
            let client = try daemon.client(.mediated, name: "large-\(index)")
            clients.append(client)
            let (_, refusal) = try allocateUntilRefused(client, size: largest)
            if refusal.protocolCode == .heapFull { full = refusal }
        }
        let error = try XCTUnwrap(full)
        XCTAssertTrue(error.message.contains("large-block tier"), error.message)
        XCTAssertTrue(error.message.contains("small-block tier still has"), error.message)
        XCTAssertNoThrow(try clients[0].allocateHandle(100), "the small tier still serves")
    }

    // MARK: Item 16: holes punched in the data object

    func testHolesAMediatedClientPunchesInTheDataObjectAreRepaired() throws {
        let daemon = try TestDaemon()
        let region = daemon.server.region
        let committed = try XCTUnwrap(try region.dataObjectAllocatedBytes())
        XCTAssertGreaterThanOrEqual(committed, region.geometry.dataSize, "commit=full")
        let client = try daemon.client(.mediated, name: "puncher")
        let handle = try client.allocateHandle(64).handle
        // The client's mapping of the data area starts at data offset 0.
        let base = try client.pointer(for: handle) - handle.dataOffset
        XCTAssertEqual(madvise(base, region.geometry.dataSize, Self.adviseRemove), 0, "errno \(errno)")
        let punched = try XCTUnwrap(try region.dataObjectAllocatedBytes())
        XCTAssertLessThan(punched, committed, "MADV_REMOVE punched the data object")
        // The daemon's tick repairs it (poll with a generous deadline; no timing assertion).
        let deadline = Date().addingTimeInterval(60)
        while daemon.server.snapshotCounters().holesRepaired == 0, Date() < deadline {
            usleep(20_000)
        }
        let counters = daemon.server.snapshotCounters()
        XCTAssertGreaterThanOrEqual(counters.holesRepaired, 1)
        XCTAssertGreaterThan(counters.bytesRecommitted, 0)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try region.dataObjectAllocatedBytes()), committed)
        let metrics = String(decoding: try client.admin(.metrics).body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("divvy_region_holes_repaired_total"), metrics)
        // The client goes on working.
        XCTAssertTrue(try client.free(handle))
        XCTAssertTrue(try daemon.audit().isClean)
    }

    func testHoleRepairFindsAndFillsHolesAndIgnoresAnIntactObject() throws {
        let region = try SharedRegion.createAnonymous(
            .init(dataSize: 4 << 20, hugePages: .none, separateDataObject: true))
        let repair = HoleRepair(region: region)
        XCTAssertNil(repair.check(), "no holes yet")
        let data = try region.mapDataArea()
        let base = try data.unsafePointer(forOffset: data.regionOffset, length: 1 << 20)
        XCTAssertEqual(madvise(base, 1 << 20, Self.adviseRemove), 0, "errno \(errno)")
        guard case .repaired(let missing, let recommitted) = repair.check() else {
            return XCTFail("the hole was not repaired")
        }
        XCTAssertEqual(missing, 1 << 20)
        XCTAssertEqual(recommitted, 1 << 20)
        XCTAssertNil(repair.check(), "repaired once")
        // A lazily committed region (no data object committed) is never "repaired".
        let lazy = try SharedRegion.createAnonymous(
            .init(dataSize: 4 << 20, hugePages: .none, commitment: .lazy, separateDataObject: true))
        XCTAssertNil(HoleRepair(region: lazy).check())
    }

    /// `MADV_REMOVE` (Linux: free the range and its backing store, for shared memory).
    private static let adviseRemove: Int32 = 9

    // MARK: Configuration and the limits as values

    func testFairShareRefusalsNameTheirSettings() {
        let share = FairShare(
            maxBlocksPerClient: 4, heldCapacity: 64, largestSmallBlock: 8192, largeQuotaBytes: 1 << 20,
            spanTierBytes: 4 << 20)
        XCTAssertNil(share.refusal(client: 1, blocksHeld: 3, largeBytesHeld: 0, adding: 1, blockSize: 16))
        XCTAssertTrue(
            share.refusal(client: 1, blocksHeld: 3, largeBytesHeld: 0, adding: 2, blockSize: 16)?.message
                .contains("max-blocks-per-client (4)") ?? false)
        XCTAssertNil(share.refusal(client: 1, blocksHeld: 0, largeBytesHeld: 1 << 20, adding: 1, blockSize: 8192))
        XCTAssertTrue(
            share.refusal(client: 1, blocksHeld: 0, largeBytesHeld: 1 << 19, adding: 3, blockSize: 1 << 18)?.message
                .contains("large-quota of 1048576") ?? false)
    }

    func testConfigurationKeysParseValidateAndRender() throws {
        var configuration = ServerConfiguration()
        XCTAssertEqual(configuration.effectiveMaxBlocksPerClient, 4096, "65536 / 16")
        XCTAssertEqual(
            configuration.effectiveLargeQuotaBytes(spanTierBytes: 64 << 20, spanPageSize: 512 << 10), 16 << 20)
        XCTAssertEqual(
            configuration.effectiveLargeQuotaBytes(spanTierBytes: 1 << 20, spanPageSize: 512 << 10), 512 << 10,
            "at least one span page")
        try configuration.apply(configText: "max-blocks-per-client = 100\nlarge-quota = 2M\n")
        XCTAssertEqual(configuration.maxBlocksPerClient, 100)
        XCTAssertEqual(configuration.largeQuotaBytes, 2 << 20)
        let rendered = Dictionary(uniqueKeysWithValues: configuration.render().map { ($0.key, $0.value) })
        XCTAssertEqual(rendered["max-blocks-per-client"], "100")
        XCTAssertEqual(rendered["large-quota"], "2097152")
        var reread = ServerConfiguration()
        try reread.apply(configText: configuration.render().map { "\($0.key) = \($0.value)" }.joined(separator: "\n"))
        XCTAssertEqual(reread, configuration)
        try configuration.apply(configText: "max-blocks-per-client = auto\nlarge-quota = auto\n")
        XCTAssertNil(configuration.maxBlocksPerClient)
        XCTAssertNil(configuration.largeQuotaBytes)
        // Bad values: the error names the key, and nothing changes.
        let unchanged = configuration
        XCTAssertThrowsError(try configuration.apply(configText: "max-blocks-per-client = many")) {
            XCTAssertTrue("\($0)".contains("max-blocks-per-client"), "\($0)")
        }
        XCTAssertEqual(configuration, unchanged)
        configuration.maxBlocksPerClient = 65536
        XCTAssertThrowsError(try configuration.validate()) {
            XCTAssertTrue("\($0)".contains("below held-capacity"), "\($0)")
        }
        configuration.maxBlocksPerClient = 0
        XCTAssertThrowsError(try configuration.validate())
        configuration.maxBlocksPerClient = nil
        configuration.largeQuotaBytes = 0
        XCTAssertThrowsError(try configuration.validate()) { XCTAssertTrue("\($0)".contains("large-quota")) }
    }
}
