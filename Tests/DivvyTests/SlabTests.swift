import Divvy
import DivvyTestSupport
import XCTest

final class SlabTests: XCTestCase {
    func testAllocatesDistinctAlignedBlocksAndReusesFreedOnes() throws {
        let slab = try SlabBuilder(size: 24, alignment: 8).growthPolicy(.fixed(4096)).finishUnsynchronized(
            SystemAllocator())
        let layout = try Layout(size: 24, alignment: 8)
        var blocks: [UnsafeBlock] = []
        for _ in 0..<1000 { blocks.append(try slab.allocate(layout)) }
        XCTAssertEqual(Set(blocks.map(\.start)).count, 1000)
        XCTAssertEqual(slab.liveBlocks, 1000)
        XCTAssertTrue(blocks.allSatisfy { $0.address % 8 == 0 && $0.size == 24 })
        slab._checkInvariants()
        let freed = blocks.removeLast()
        slab.deallocate(freed, layout: layout)
        XCTAssertEqual(try slab.allocate(layout).start, freed.start, "LIFO reuse of the freed block")
        slab._checkInvariants()
    }
}

extension SlabTests {
    func testRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let slab = try SlabBuilder(size: 40, alignment: 8).growthPolicy(.pow2(initial: 1024)).finishUnsynchronized(
            SystemAllocator())
        let report = AllocatorModelCheck.run(
            slab, seed: seed, steps: 20_000, reallocate: false,
            layout: { random in try! Layout(size: Int.random(in: 1...40, using: &random), alignment: 8) },
            afterEachStep: { _, liveBlocks in XCTAssertEqual(slab.liveBlocks, liveBlocks) })
        XCTAssertEqual(report.allocations, report.deallocations)
        slab._checkInvariants()
        XCTAssertEqual(slab.liveBlocks, 0)
    }
}
