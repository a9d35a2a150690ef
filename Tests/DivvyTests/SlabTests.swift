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

extension SlabTests {
    func testBuilderRejectsImpossibleConfigurations() {
        let system = SystemAllocator()
        assertAllocationError(.invalidConfiguration, "zero size") {
            _ = try SlabBuilder(size: 0).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "alignment 24") {
            _ = try SlabBuilder(size: 16, alignment: 24).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "limit below one block") {
            _ = try SlabBuilder(size: 4096).limit(4096).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "block larger than a fixed refill") {
            _ = try SlabBuilder(size: 8192).growthPolicy(.fixed(4096)).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "block larger than the pow2 maximum") {
            _ = try SlabBuilder(size: 1 << 20).growthPolicy(.pow2(initial: 4096, maximum: 1 << 19))
                .finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "linear step 0") {
            _ = try SlabBuilder(size: 16).growthPolicy(.linear(initial: 4096, step: 0)).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "pow2 maximum below initial") {
            _ = try SlabBuilder(size: 16).growthPolicy(.pow2(initial: 8192, maximum: 4096)).finishUnsynchronized(system)
        }
        assertAllocationError(.invalidConfiguration, "page size not a power of two") {
            _ = try SlabBuilder(size: 16).pageSize(5000).finishUnsynchronized(system)
        }
    }

    func testGrowthPolicies() {
        XCTAssertEqual((0..<5).map { SlabGrowthPolicy.pow2(initial: 4096, maximum: 32768).refillSize($0) },
                       [4096, 8192, 16384, 32768, 32768])
        XCTAssertEqual((0..<3).map { SlabGrowthPolicy.linear(initial: 100, step: 10).refillSize($0) }, [100, 110, 120])
        XCTAssertEqual((0..<3).map { SlabGrowthPolicy.fixed(777).refillSize($0) }, [777, 777, 777])
        XCTAssertEqual(SlabGrowthPolicy.pow2(initial: 1 << 40, maximum: Int.max).refillSize(100), Int.max)
        XCTAssertEqual(SlabGrowthPolicy.linear(initial: 1, step: Int.max / 2).refillSize(10), 1 << 48)
        XCTAssertEqual(SlabGrowthPolicy.linear(initial: 1 << 47, step: 1 << 47).refillSize(5), 1 << 48)
    }

    func testSaturatedRefillSizesFailCleanlyInsteadOfTrapping() throws {
        // A policy whose refills saturate near Int.max must reach the backing with a sane size (and fail there),
        // never build an impossible layout.
        for policy in [SlabGrowthPolicy.pow2(initial: 1 << 62, maximum: Int.max), .linear(initial: 1 << 50, step: 1)] {
            let backing = RefusingAllocator()
            let slab = try SlabBuilder(size: 64).growthPolicy(policy).finishUnsynchronized(backing)
            assertAllocationError(.outOfMemory, "\(policy)") { _ = try slab.allocate(Layout(size: 64)) }
            XCTAssertEqual(backing.largestRequest, 1 << 48, "\(policy)")
            XCTAssertEqual(slab.liveBlocks, 0)
            XCTAssertEqual(slab.footprint, 0)
        }
    }

    func testPow2GrowthDoublesRefillsFromTheBacking() throws {
        let counting = CountingAllocator(SystemAllocator())
        let slab = try SlabBuilder(size: 64).growthPolicy(.pow2(initial: 4096, maximum: 1 << 20))
            .finishUnsynchronized(counting)
        let layout = try Layout(size: 64)
        for _ in 0..<1000 { _ = try slab.allocate(layout) }
        let sizes = counting.live.values.map(\.size).sorted()
        XCTAssertEqual(sizes, (0..<sizes.count).map { 4096 << $0 })
        XCTAssertEqual(slab.refillCount, sizes.count)
        XCTAssertEqual(slab.footprint, sizes.reduce(0, +))
    }

    func testLimitThrowsButKeepsHandedOutBlocks() throws {
        let slab = try SlabBuilder(size: 100).limit(10_000).growthPolicy(.fixed(4096)).finishUnsynchronized(
            SystemAllocator())
        let layout = try Layout(size: 100)
        var blocks: [UnsafeBlock] = []
        while let block = try? slab.allocate(layout) {
            block.start.initializeMemory(as: UInt8.self, repeating: UInt8(blocks.count % 256), count: 100)
            blocks.append(block)
        }
        let error = assertAllocationError(.limitExceeded) { _ = try slab.allocate(layout) }
        XCTAssertEqual(error?.limit, 10_000)
        XCTAssertLessThanOrEqual(slab.footprint, 10_000)
        XCTAssertGreaterThan(blocks.count, 80, "the last refill is clipped to the limit, not dropped")
        for (i, block) in blocks.enumerated() {
            XCTAssertEqual(block.start.load(fromByteOffset: 99, as: UInt8.self), UInt8(i % 256))
        }
        let live = slab.liveBlocks
        assertAllocationError(.limitExceeded) { _ = try slab.allocate(layout) }
        XCTAssertEqual(slab.liveBlocks, live, "a failed allocation changes nothing")
        slab.deallocate(blocks.removeLast(), layout: layout)
        XCTAssertNoThrow(try slab.allocate(layout), "a freed block is usable again under the limit")
        slab._checkInvariants()
    }

    func testRejectsLayoutsThatDoNotFitTheBlocks() throws {
        let slab = try SlabBuilder(size: 24, alignment: 8).finishUnsynchronized(SystemAllocator())
        assertAllocationError(.unsupportedLayout) { _ = try slab.allocate(Layout(size: 25, alignment: 8)) }
        assertAllocationError(.unsupportedLayout) { _ = try slab.allocate(Layout(size: 8, alignment: 16)) }
        XCTAssertEqual(slab.liveBlocks, 0)
        XCTAssertEqual(slab.goodSize(for: try Layout(size: 1, alignment: 1)), 24)
    }

    func testOwnsResetAndRefillsReturnedOnDeinit() throws {
        let counting = CountingAllocator(SystemAllocator())
        var slab: Slab? = try SlabBuilder(size: 32).growthPolicy(.linear(initial: 1024, step: 1024))
            .finishUnsynchronized(counting)
        let layout = try Layout(size: 32)
        let blocks = try (0..<200).map { _ in try slab!.allocate(layout) }
        XCTAssertTrue(blocks.allSatisfy { slab!.owns($0) })
        let foreign = try SystemAllocator().allocate(layout)
        XCTAssertFalse(slab!.owns(foreign))
        SystemAllocator().deallocate(foreign, layout: layout)
        XCTAssertGreaterThan(counting.live.count, 1)
        slab!.deallocateAll()
        XCTAssertEqual(counting.live.count, 0)
        XCTAssertEqual(slab!.liveBlocks, 0)
        XCTAssertEqual(slab!.footprint, 0)
        _ = try slab!.allocate(layout)
        XCTAssertEqual(counting.live.count, 1)
        slab = nil
        XCTAssertEqual(counting.live.count, 0, "deinit returns every refill")
        XCTAssertEqual(counting.allocations, counting.deallocations)
    }

    func testLargeAlignment() throws {
        let slab = try SlabBuilder(size: 100, alignment: 256).finishUnsynchronized(SystemAllocator())
        let layout = try Layout(size: 100, alignment: 256)
        let blocks = try (0..<100).map { _ in try slab.allocate(layout) }
        XCTAssertTrue(blocks.allSatisfy { $0.address % 256 == 0 && $0.size == 256 })
    }
}
