@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Page allowances (`setPageAllowance`), `participantStatus` and `usage()`.
final class SharedHeapAllowanceTests: ShmTestCase {
    /// 64 KiB pages, default classes (16 … 8192 B), 64 pages; with `spanFraction` > 0, span pages of 512 KiB too.
    func makeHeap(_ name: String = "allow", dataSize: Int = 4 << 20, spanFraction: Double = 0) throws
        -> (SharedRegion, SharedHeap)
    {
        // Page tiers only (these tests count pages): no extent area.
        var configuration = SharedHeapConfiguration(participantCapacity: 8, heldCapacity: 256, spanFraction: spanFraction)
        configuration.extentFraction = 0
        let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
        let region = try SharedRegion.create(
            name: name, self.configuration(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
        return (region, try SharedHeap.create(in: region, configuration: configuration))
    }

    func assertHeapError(
        _ code: SharedHeapError.Code, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void
    ) {
        do {
            try body()
            XCTFail("expected SharedHeapError \(code), nothing was thrown", file: file, line: line)
        } catch let error as SharedHeapError {
            XCTAssertEqual(error.code, code, "wrong code in \(error)", file: file, line: line)
        } catch {
            XCTFail("expected SharedHeapError \(code), got \(error)", file: file, line: line)
        }
    }

    func testAllowanceExhaustedChangesNothingAndRaisingItLetsAllocationContinue() throws {
        let (region, heap) = try makeHeap()
        let me = try heap.join(name: "client")
        // The quota manager is another attachment (as a daemon in another process would be).
        let manager = try SharedHeap.attach(to: region)
        XCTAssertNil(heap.participantStatus(me.index)?.pageAllowance)
        try manager.setPageAllowance(participant: me.index, pages: 2)
        XCTAssertEqual(heap.participantStatus(me.index)?.pageAllowance, 2)
        // 8192-byte blocks: 8 per page, so 16 fill the two allowed pages.
        var handles = try (0..<16).map { _ in try me.allocate(8192) }
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 2)
        let before = heap.verify()
        XCTAssertTrue(before.isClean, "\(before)")
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(8192) }
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(16) }  // Another class needs a page too.
        XCTAssertEqual(heap.verify(), before)
        XCTAssertEqual(me.heldCount, 16)
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 2)
        do {
            _ = try me.allocate(4000)
            XCTFail("expected pageAllowanceExhausted")
        } catch {
            XCTAssertEqual(error.code, .pageAllowanceExhausted)
            XCTAssertTrue(error.message.contains("allowance is 2"), error.message)
        }
        // A freed block makes room within the owned pages.
        try me.free(handles.removeLast())
        handles.append(try me.allocate(8192))
        // Raising the allowance lets allocation take new pages again.
        try manager.setPageAllowance(participant: me.index, pages: 4)
        handles.append(try me.allocate(8192))
        handles.append(try me.allocate(100))
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 4)
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(16) }
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    func testAllowanceCountsPagesExactly() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "client")
        try heap.setPageAllowance(participant: me.index, pages: 3)
        var big = try (0..<16).map { _ in try me.allocate(8192) }  // pages 1, 2
        let small = try me.allocate(16)  // page 3
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 3)
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(8192) }
        // Lowering the allowance takes nothing away: the owned pages keep serving their classes.
        try heap.setPageAllowance(participant: me.index, pages: 1)
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 3)
        XCTAssertNoThrow(try me.allocate(16))
        try me.free(big.removeLast())
        big.append(try me.allocate(8192))
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(1024) }
        // Unlimited again.
        try heap.setPageAllowance(participant: me.index, pages: nil)
        XCTAssertNil(heap.participantStatus(me.index)?.pageAllowance)
        let more = try (0..<8).map { _ in try me.allocate(8192) }
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 4)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        // Freeing the last block of a page (not the class's current one) gives it back: the count drops.
        for handle in big.prefix(8) { try me.free(handle) }
        _ = more
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 3)
        _ = small
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        me.leave()
        let status = heap.participantStatus(me.index)
        XCTAssertEqual(status?.state, .free)
        XCTAssertEqual(status?.ownedPages, 0)
        XCTAssertNil(status?.pageAllowance)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    func testAtAllowanceEmptyPagesOfOtherClassesAreGivenBack() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "client")
        try heap.setPageAllowance(participant: me.index, pages: 1)
        // The 16-byte page stays ours (it is the class's current page) after its only block is freed.
        try me.free(try me.allocate(16))
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 1)
        let handle = try me.allocate(8192)  // needs a page: the empty 16-byte page goes back first.
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 1)
        XCTAssertEqual(heap.usage().sizeClasses.first?.pages, 0)
        try me.free(handle)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    func testSetPageAllowanceRejectsBadInput() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "client")
        try heap.setPageAllowance(participant: me.index, pages: 5)
        let before = heap.verify()
        assertHeapError(.outOfRange) { try heap.setPageAllowance(participant: -1, pages: 1) }
        assertHeapError(.outOfRange) { try heap.setPageAllowance(participant: heap.participantCapacity, pages: 1) }
        assertHeapError(.invalidConfiguration) { try heap.setPageAllowance(participant: me.index, pages: -1) }
        assertHeapError(.participantLeft) { try heap.setPageAllowance(participant: me.index + 1, pages: 1) }
        XCTAssertEqual(heap.participantStatus(me.index)?.pageAllowance, 5)
        XCTAssertNil(heap.participantStatus(me.index + 1)?.pageAllowance)
        XCTAssertEqual(heap.verify(), before)
        // Huge allowances mean no limit.
        try heap.setPageAllowance(participant: me.index, pages: Int.max)
        XCTAssertNil(heap.participantStatus(me.index)?.pageAllowance)
        try heap.setPageAllowance(participant: me.index, pages: 0)
        XCTAssertEqual(heap.participantStatus(me.index)?.pageAllowance, 0)
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(16) }
        XCTAssertEqual(heap.verify(), before)
    }

    func testParticipantStatusFields() throws {
        let (_, heap) = try makeHeap()
        XCTAssertNil(heap.participantStatus(-1))
        XCTAssertNil(heap.participantStatus(heap.participantCapacity))
        let unused = heap.participantStatus(3)
        XCTAssertEqual(unused, SharedHeapParticipantStatus(
            index: 3, state: .free, pid: 0, ownedPages: 0, pageAllowance: nil, heldCount: 0))
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        let handles = try (0..<5).map { _ in try a.allocate(48) }
        try b.adopt(handles[0])
        try b.adopt(handles[1])
        try heap.setPageAllowance(participant: b.index, pages: 7)
        let statusA = try XCTUnwrap(heap.participantStatus(a.index))
        XCTAssertEqual(statusA.index, a.index)
        XCTAssertEqual(statusA.state, .alive)
        XCTAssertEqual(statusA.pid, getpid())
        XCTAssertEqual(statusA.ownedPages, 1)
        XCTAssertNil(statusA.pageAllowance)
        XCTAssertEqual(statusA.heldCount, 5)
        let statusB = try XCTUnwrap(heap.participantStatus(b.index))
        XCTAssertEqual(statusB.ownedPages, 0)
        XCTAssertEqual(statusB.pageAllowance, 7)
        XCTAssertEqual(statusB.heldCount, 2)
        XCTAssertTrue(statusB.description.contains("allowance 7"), statusB.description)
        // A participant that died is .dead while its recovery is unfinished, .free after; recovery resets the
        // record.
        a._simulateDeath()
        XCTAssertEqual(heap.participantStatus(a.index)?.state, .alive)
        let report = try heap.recover(participant: a.index)
        XCTAssertEqual(report.droppedHoldings, 2)
        XCTAssertEqual(heap.participantStatus(a.index), SharedHeapParticipantStatus(
            index: a.index, state: .free, pid: 0, ownedPages: 0, pageAllowance: nil, heldCount: 0))
        b._simulateDeath()
        try heap.recover(participant: b.index)
        XCTAssertNil(heap.participantStatus(b.index)?.pageAllowance)
        XCTAssertEqual(heap.participantStatus(b.index)?.state, .free)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        // Join resets whatever a slot held.
        let c = try heap.join(name: "c")
        XCTAssertEqual(heap.participantStatus(c.index)?.pageAllowance, nil)
        XCTAssertEqual(heap.participantStatus(c.index)?.ownedPages, 0)
    }

    func testUsageMatchesAKnownAllocationPattern() throws {
        let (_, heap) = try makeHeap()
        var usage = heap.usage()
        XCTAssertEqual(usage.totalPages, 64)
        XCTAssertEqual(usage.freePages, 64)
        XCTAssertEqual(usage.ownedPages + usage.orphanPages, 0)
        XCTAssertEqual(usage.sizeClasses.map(\.blockSize), heap.sizeClasses)
        XCTAssertEqual(usage.bytesInUse, 0)
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        let small = try (0..<10).map { _ in try a.allocate(64) }
        let big = try (0..<11).map { _ in try a.allocate(8192) }  // two pages: 8 + 3
        let other = try (0..<3).map { _ in try b.allocate(64) }  // b's own 64-byte page
        usage = heap.usage()
        XCTAssertEqual(usage.freePages, 60)
        XCTAssertEqual(usage.ownedPages, 4)
        let c64 = try XCTUnwrap(usage.sizeClasses.first { $0.blockSize == 64 })
        XCTAssertEqual(c64.pages, 2)
        XCTAssertEqual(c64.blocksInUse, 13)
        XCTAssertEqual(c64.blocksFree, 2 * 1024 - 13)
        let c8k = try XCTUnwrap(usage.sizeClasses.first { $0.blockSize == 8192 })
        XCTAssertEqual(c8k.pages, 2)
        XCTAssertEqual(c8k.blocksInUse, 11)
        XCTAssertEqual(c8k.blocksFree, 5)
        XCTAssertEqual(usage.bytesInUse, 13 * 64 + 11 * 8192)
        XCTAssertEqual(usage.sizeClasses.filter { $0.pages > 0 }.count, 2)
        // b leaves: its page (live blocks: none after its frees) goes back; a's blocks freed by a.
        for handle in other { try b.free(handle) }
        b.leave()
        for handle in big.prefix(8) { try a.free(handle) }
        usage = heap.usage()
        XCTAssertEqual(usage.freePages, 62, "\(usage)")
        XCTAssertEqual(usage.sizeClasses.first { $0.blockSize == 8192 }?.blocksInUse, 3)
        XCTAssertEqual(usage.sizeClasses.first { $0.blockSize == 64 }?.blocksInUse, 10)
        // An orphan page is counted as such.
        a.leave()
        usage = heap.usage()
        XCTAssertEqual(usage.orphanPages, 0)  // a's leave freed its blocks: everything went back.
        XCTAssertEqual(usage.freePages, 64)
        _ = small
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        let c = try heap.join(name: "c")
        let d = try heap.join(name: "d")
        let kept = try c.allocate(1000)
        try d.adopt(kept)
        c.leave()
        usage = heap.usage()
        XCTAssertEqual(usage.orphanPages, 1)
        XCTAssertEqual(usage.sizeClasses.first { $0.blockSize == 1024 }?.blocksInUse, 1)
        XCTAssertTrue(usage.description.contains("1 orphan"), usage.description)
        try d.free(kept)
    }

    func testSpanPagesCountInPageUnitsForAllowanceAndUsage() throws {
        let (_, heap) = try makeHeap(spanFraction: 0.5)  // 2 MiB of 512 KiB span pages, 32 small pages.
        XCTAssertEqual(heap.spanPageCount, 4)
        XCTAssertEqual(heap.smallPageCount, 32)
        XCTAssertEqual(heap.spanPageSize, 8 * heap.pageSize)
        let me = try heap.join(name: "client")
        try heap.setPageAllowance(participant: me.index, pages: 9)
        let small = try me.allocate(16)
        let large = try me.allocate(100_000)
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 9)  // 1 small + one span page of 8 units
        var usage = heap.usage()
        XCTAssertEqual(usage.spanPages, 4)
        XCTAssertEqual(usage.freeSpanPages, 3)
        XCTAssertEqual(usage.freePages, 32 - 1 + 3)
        let largeClass = try XCTUnwrap(usage.sizeClasses.first { $0.blockSize == (try? heap.blockSize(of: large)) })
        XCTAssertEqual(largeClass.pageBytes, heap.spanPageSize)
        XCTAssertEqual(largeClass.pages, 1)
        XCTAssertEqual(largeClass.blocksInUse, 1)
        XCTAssertEqual(largeClass.blocksFree, heap.spanPageSize / largeClass.blockSize - 1)
        let before = heap.verify()
        XCTAssertTrue(before.isClean, "\(before)")
        // Another large class needs a whole span page (8 units): refused; a small page (1 unit) too.
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(300_000) }
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(9000) }
        XCTAssertEqual(heap.verify(), before)
        try heap.setPageAllowance(participant: me.index, pages: 17)
        let other = try me.allocate(300_000)
        XCTAssertEqual(heap.participantStatus(me.index)?.ownedPages, 17)
        try me.free(other)
        try me.free(large)
        try me.free(small)
        usage = heap.usage()
        XCTAssertEqual(usage.bytesInUse, 0)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    func testSpanTierConfigurationIsValidatedAndRecordedInTheHeader() throws {
        let dataSize = 4 << 20
        let region = try SharedRegion.create(
            name: "spancfg", self.configuration(dataSize: dataSize, metadataSize: 8 << 20))
        for bad in [
            SharedHeapConfiguration(spanPageSize: 3 << 16),  // not a power of two
            SharedHeapConfiguration(spanPageSize: 32 << 10),  // below the page size
            SharedHeapConfiguration(spanFraction: 1),
            SharedHeapConfiguration(spanFraction: -0.5),
            SharedHeapConfiguration(largeSizeClasses: [8192]),  // not above the small classes
            SharedHeapConfiguration(largeSizeClasses: [20000, 16384]),
            SharedHeapConfiguration(largeSizeClasses: [10008]),  // not a multiple of 16
            SharedHeapConfiguration(largeSizeClasses: [1 << 20]),  // above the span page size
            { var c = SharedHeapConfiguration(spanFraction: 0.5); c.extentFraction = 0.5; return c }(),  // sum 1
            { var c = SharedHeapConfiguration(); c.extentFraction = -0.1; return c }(),
        ] {
            assertHeapError(.invalidConfiguration) { _ = try SharedHeap.create(in: region, configuration: bad) }
        }
        var configuration = SharedHeapConfiguration(spanPageSize: 256 << 10, largeSizeClasses: [16384, 65536])
        configuration.extentFraction = 0
        let heap = try SharedHeap.create(in: region, configuration: configuration)
        XCTAssertEqual(heap.spanPageSize, 256 << 10)
        XCTAssertEqual(heap.spanPageCount, 4)
        XCTAssertEqual(heap.smallPageCount, 48)
        XCTAssertEqual(heap.largeSizeClasses, [16384, 65536])
        XCTAssertEqual(heap.largestBlockSize, 65536)
        let peer = try SharedHeap.attach(to: region)
        XCTAssertEqual(peer.sizeClasses, heap.sizeClasses)
        XCTAssertEqual(peer.spanPageCount, 4)
        XCTAssertEqual(peer.largestSmallBlockSize, 8192)
        assertHeapError(.unsupportedSize) { _ = try heap.join(name: "x").allocate(65537) }
        // A data area too small for one span page: no span tier, no large classes.
        let tiny = try SharedRegion.create(name: "spantiny", self.configuration(dataSize: 1 << 20, metadataSize: 4 << 20))
        var noExtents = SharedHeapConfiguration(spanPageSize: 1 << 20)
        noExtents.extentFraction = 0
        let small = try SharedHeap.create(in: tiny, configuration: noExtents)
        XCTAssertEqual(small.spanPageCount, 0)
        XCTAssertEqual(small.largeSizeClasses, [])
        XCTAssertEqual(small.largestBlockSize, 8192)
        XCTAssertEqual(try SharedHeap.attach(to: tiny).pageCount, 16)
        // With the default extent area (a quarter: 4 units of 64 KiB), requests above the largest class are extents.
        let withExtents = try SharedHeap.create(in: tiny, configuration: .init(spanPageSize: 1 << 20))
        XCTAssertEqual(withExtents.extentUnitCount, 4)
        XCTAssertEqual(withExtents.pageCount, 12)
        XCTAssertEqual(withExtents.largestBlockSize, 4 << 16)
        XCTAssertEqual(try SharedHeap.attach(to: tiny).extentUnitCount, 4)
        // The default large classes: four per doubling above pageSize / 8, up to the span page size.
        XCTAssertEqual(SharedHeapConfiguration.defaultLargeSizeClasses(pageSize: 4096, spanPageSize: 4096),
                       [640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096])
    }
}
