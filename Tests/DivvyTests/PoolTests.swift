import Divvy
import DivvyTestSupport
import XCTest

final class PoolTests: XCTestCase {
    func testSizeClassTable() {
        XCTAssertEqual(
            (0..<24).map { SizeClasses.size(ofClass: $0) },
            [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
             1280, 1536, 1792, 2048])
        // Every size maps to the smallest class that holds it.
        for size in 0...70_000 {
            let index = SizeClasses.index(forSize: size)
            let classSize = SizeClasses.size(ofClass: index)
            XCTAssertGreaterThanOrEqual(classSize, size)
            if index > 0 { XCTAssertLessThan(SizeClasses.size(ofClass: index - 1), size, "size \(size)") }
            // Above 128 bytes a class wastes at most a quarter of itself.
            if size > 128 { XCTAssertLessThanOrEqual(classSize - size, classSize / 4, "size \(size)") }
            if classSize != SizeClasses.size(ofClass: index) || classSize < size { return }
        }
        for shift in 4...20 {
            XCTAssertEqual(SizeClasses.size(ofClass: SizeClasses.index(forSize: 1 << shift)), 1 << shift)
        }
    }

    func testClassBoundariesAndTheLargePath() throws {
        let counting = CountingAllocator(SystemAllocator())
        let pool = try Pool(counting)
        XCTAssertEqual(pool.largestSmallSize, 32 * 1024)
        XCTAssertEqual(pool.classCount, 40)
        let expectations: [(size: Int, blockSize: Int)] = [
            (0, 16), (1, 16), (16, 16), (17, 32), (128, 128), (129, 160), (160, 160), (161, 192), (256, 256),
            (257, 320), (1000, 1024), (32 * 1024, 32 * 1024),
        ]
        for (size, blockSize) in expectations {
            let layout = try Layout(size: size)
            let block = try pool.allocate(layout)
            XCTAssertEqual(block.size, blockSize, "size \(size)")
            XCTAssertEqual(pool.goodSize(for: layout), blockSize)
            XCTAssertEqual(block.address % 16, 0)
        }
        XCTAssertTrue(counting.live.values.allSatisfy { $0.size >= 64 * 1024 }, "only slab refills so far")
        XCTAssertEqual(pool.smallLiveBlocks, expectations.count)
        // One byte above the largest class goes straight to the backing allocator.
        let largeLayout = try Layout(size: 32 * 1024 + 1)
        let refills = counting.live.count
        let large = try pool.allocate(largeLayout)
        XCTAssertEqual(counting.live.count, refills + 1)
        XCTAssertEqual(counting.live[large.address], largeLayout, "passed through unchanged")
        XCTAssertEqual(pool.goodSize(for: largeLayout), 32 * 1024 + 1)
        pool.deallocate(large, layout: largeLayout)
        XCTAssertEqual(counting.live.count, refills)
        XCTAssertEqual(pool.smallLiveBlocks, expectations.count)
        pool._checkInvariants()
    }

    func testSlabsAreBuiltLazilyAndBlocksAreReused() throws {
        let pool = try Pool(SystemAllocator())
        XCTAssertEqual(pool.activeClassCount, 0)
        XCTAssertEqual(pool.smallFootprint, 0)
        let layout = try Layout(size: 40)
        let a = try pool.allocate(layout)
        XCTAssertEqual(pool.activeClassCount, 1)
        XCTAssertNotNil(pool.slab(forClass: SizeClasses.index(forSize: 48)))
        XCTAssertNil(pool.slab(forClass: 0))
        _ = try pool.allocate(Layout(size: 33))  // same 48-byte class
        XCTAssertEqual(pool.activeClassCount, 1)
        pool.deallocate(a, layout: layout)
        XCTAssertEqual(try pool.allocate(Layout(size: 48)).start, a.start, "freed block reused by its class")
        pool._checkInvariants()
    }

    func testAlignedRequestsUseAClassWithThatAlignmentOrTheBacking() throws {
        let counting = CountingAllocator(SystemAllocator())
        let pool = try Pool(counting, largestSmallSize: 16 * 1024)
        var seen: [(UnsafeBlock, Layout)] = []
        for shift in 5...14 {
            for size in [1, 17, 100, 300, 1 << shift, (1 << shift) + 1, 3000] {
                let layout = try Layout(size: size, alignment: 1 << shift)
                let refills = counting.live.count
                let block = try pool.allocate(layout)
                XCTAssertEqual(block.address % UInt(1 << shift), 0, "\(layout)")
                XCTAssertGreaterThanOrEqual(block.size, size)
                let rounded = (Swift.max(size, 1) + (1 << shift) - 1) & ~((1 << shift) - 1)
                if rounded > 16 * 1024 {
                    XCTAssertEqual(counting.live[block.address], layout, "\(layout) goes to the backing")
                } else {
                    XCTAssertEqual(
                        block.size, SizeClasses.size(ofClass: SizeClasses.index(forSize: rounded)),
                        "\(layout) is served by the class holding its rounded size")
                    XCTAssertEqual(block.size % (1 << shift), 0, "whose size is a multiple of the alignment")
                    XCTAssertLessThanOrEqual(counting.live.count, refills + 1)
                }
                seen.append((block, layout))
            }
        }
        for (block, layout) in seen { pool.deallocate(block, layout: layout) }
        XCTAssertEqual(pool.smallLiveBlocks, 0)
        pool._checkInvariants()
    }

    func testReallocateAndResize() throws {
        let counting = CountingAllocator(SystemAllocator())
        let pool = try Pool(counting)
        let a = try pool.allocate(Layout(size: 40))
        a.start.storeBytes(of: 0x1234_5678, as: UInt64.self)
        let same = try pool.reallocate(a, from: Layout(size: 40), to: Layout(size: 48))
        XCTAssertEqual(same.start, a.start, "same class: in place")
        XCTAssertEqual(try pool.resize(same, from: Layout(size: 48), toSize: 33)?.start, a.start)
        XCTAssertNil(try pool.resize(same, from: Layout(size: 48), toSize: 49))
        let moved = try pool.reallocate(same, from: Layout(size: 48), to: Layout(size: 1000))
        XCTAssertNotEqual(moved.start, a.start)
        XCTAssertEqual(moved.size, 1024)
        XCTAssertEqual(moved.start.load(as: UInt64.self), 0x1234_5678)
        let large = try pool.reallocate(moved, from: Layout(size: 1000), to: Layout(size: 100_000))
        XCTAssertEqual(large.start.load(as: UInt64.self), 0x1234_5678)
        XCTAssertEqual(counting.live[large.address]?.size, 100_000)
        let larger = try pool.reallocate(large, from: Layout(size: 100_000), to: Layout(size: 200_000))
        XCTAssertEqual(larger.start.load(as: UInt64.self), 0x1234_5678)
        XCTAssertEqual(counting.live[larger.address]?.size, 200_000)
        XCTAssertNil(try pool.resize(larger, from: Layout(size: 200_000), toSize: 200_001))
        let back = try pool.reallocate(larger, from: Layout(size: 200_000), to: Layout(size: 8))
        XCTAssertEqual(back.start.load(as: UInt64.self), 0x1234_5678)
        XCTAssertEqual(back.size, 16)
        XCTAssertEqual(pool.smallLiveBlocks, 1)
        XCTAssertTrue(counting.live.values.allSatisfy { $0.size >= 64 * 1024 && $0.size != 200_000 })
    }

    func testBackingFailureLeavesThePoolUsable() throws {
        let pool = try Pool(FailingAllocator())
        assertAllocationError(.outOfMemory) { _ = try pool.allocate(Layout(size: 16)) }
        assertAllocationError(.outOfMemory) { _ = try pool.allocate(Layout(size: 100_000)) }
        XCTAssertEqual(pool.smallLiveBlocks, 0)
        XCTAssertEqual(pool.smallFootprint, 0)

        // A quota that holds one 64 KiB refill: the class with a refill keeps working, a new class fails.
        let limited = LimitAllocator(SystemAllocator(), limit: 100_000)
        let capped = try Pool(limited)
        let block = try capped.allocate(Layout(size: 64))
        assertAllocationError(.limitExceeded) { _ = try capped.allocate(Layout(size: 128)) }
        assertAllocationError(.limitExceeded) { _ = try capped.allocate(Layout(size: 50_000)) }
        XCTAssertEqual(limited.usedBytes, 64 * 1024)
        XCTAssertEqual(capped.smallLiveBlocks, 1)
        XCTAssertNoThrow(try capped.allocate(Layout(size: 64)))
        capped.deallocate(block, layout: try Layout(size: 64))
        capped._checkInvariants()
    }

    func testConfiguration() throws {
        assertAllocationError(.invalidConfiguration) { _ = try Pool(SystemAllocator(), largestSmallSize: 8) }
        assertAllocationError(.invalidConfiguration) { _ = try Pool(SystemAllocator(), largestSmallSize: 2 << 20) }
        assertAllocationError(.invalidConfiguration, "a 1 MiB class does not fit 64 KiB refills") {
            _ = try Pool(SystemAllocator(), largestSmallSize: 1 << 20, growth: .fixed(64 * 1024))
        }
        let pool = try Pool(SystemAllocator(), largestSmallSize: 1000)
        XCTAssertEqual(pool.largestSmallSize, 896, "rounded down to a class")
        XCTAssertEqual(try pool.allocate(Layout(size: 896)).size, 896)
        let large = try pool.allocate(Layout(size: 897))
        XCTAssertEqual(large.size, 897, "the backing serves it")
        pool.deallocate(large, layout: try Layout(size: 897))  // large blocks are not tracked: free them
    }

    func testOverAnArenaOwnsAndResets() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 1 << 20, maximum: 4 << 20))
        let pool = try Pool(arena)
        let small = try pool.allocate(Layout(size: 24))
        let large = try pool.allocate(Layout(size: 100_000))
        XCTAssertTrue(pool.owns(small))
        XCTAssertTrue(pool.owns(large))
        let foreign = try SystemAllocator().allocate(Layout(size: 24))
        XCTAssertFalse(pool.owns(foreign))
        try SystemAllocator().deallocate(foreign, layout: Layout(size: 24))
        pool.deallocateAll()
        XCTAssertEqual(pool.smallLiveBlocks, 0)
        XCTAssertEqual(pool.smallFootprint, 0)
        XCTAssertEqual(arena.largeChunkCount, 0)
        XCTAssertEqual(counting.live.count, 1, "the arena kept its first chunk")
        XCTAssertNoThrow(try pool.allocate(Layout(size: 24)))
        pool._checkInvariants()
    }

    func testDeinitReturnsEveryRefill() throws {
        let counting = CountingAllocator(SystemAllocator())
        do {
            let pool = try Pool(counting)
            for size in stride(from: 1, to: 30_000, by: 97) { _ = try pool.allocate(Layout(size: size)) }
            XCTAssertGreaterThan(counting.live.count, 30)
        }
        XCTAssertEqual(counting.live.count, 0)
    }
}

extension PoolTests {
    func testRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let counting = CountingAllocator(SystemAllocator())
        let pool = try Pool(counting, largestSmallSize: 8192, growth: .pow2(initial: 16 * 1024, maximum: 256 * 1024))
        let report = AllocatorModelCheck.run(
            pool, seed: seed, steps: 20_000,
            layout: { random in
                let roll = Int.random(in: 0..<100, using: &random)
                let size = roll < 5 ? Int.random(in: 8000...20_000, using: &random)
                    : roll < 30 ? Int.random(in: 0...2000, using: &random) : Int.random(in: 0...160, using: &random)
                let alignment = roll % 10 == 0 ? 1 << Int.random(in: 5...10, using: &random) : 16
                return try! Layout(size: size, alignment: alignment)
            },
            afterEachStep: { _, _ in if Int.random(in: 0..<1000) == 0 { pool._checkInvariants() } })
        XCTAssertGreaterThan(report.allocations, 1000, "seed \(seed)")
        XCTAssertEqual(pool.smallLiveBlocks, 0, "seed \(seed)")
        XCTAssertTrue(counting.live.values.allSatisfy { $0.size >= 16 * 1024 }, "only refills left, seed \(seed)")
        pool._checkInvariants()
    }
}
