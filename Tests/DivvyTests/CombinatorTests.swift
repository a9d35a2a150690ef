import Atomics
import Dispatch
import Divvy
import DivvyTestSupport
import Foundation
import XCTest

/// Compile-time checks of conditional conformances.
private func isOwnershipAware<A: OwnershipAwareAllocator>(_: A) -> Bool { true }
private func isResettable<A: ResettableAllocator>(_: A) -> Bool { true }
private func isSizeRounding<A: SizeRoundingAllocator>(_: A) -> Bool { true }
private func isInPlaceResizing<A: InPlaceResizingAllocator>(_: A) -> Bool { true }
private func isSendable<A: Allocator & Sendable>(_: A) -> Bool { true }

final class CombinatorTests: XCTestCase {
    // MARK: FallbackAllocator

    func testFallbackUsesTheSecondaryWhenThePrimaryFailsAndRoutesFreesByOwnership() throws {
        let primaryBacking = CountingAllocator(SystemAllocator())
        let arena = try Arena(LimitAllocator(primaryBacking, limit: 8192), growth: .fixed(4096))
        let secondary = CountingAllocator(SystemAllocator())
        let allocator = FallbackAllocator(arena, secondary)
        let layout = try Layout(size: 496)  // a multiple of 16: blocks are packed without padding
        var fromPrimary: [UnsafeBlock] = []
        var fromSecondary: [UnsafeBlock] = []
        for _ in 0..<40 {
            let block = try allocator.allocate(layout)
            if arena.owns(block) { fromPrimary.append(block) } else { fromSecondary.append(block) }
        }
        XCTAssertEqual(fromPrimary.count, 2 * ((4096 - 48) / 496), "the arena serves until its quota is used")
        XCTAssertEqual(fromSecondary.count, 40 - fromPrimary.count)
        XCTAssertEqual(secondary.live.count, fromSecondary.count)
        XCTAssertTrue(fromSecondary.allSatisfy { secondary.live[$0.address] == layout })
        // Frees go where the block came from.
        for block in fromPrimary { allocator.deallocate(block, layout: layout) }
        XCTAssertEqual(secondary.deallocations, 0, "primary blocks never reach the secondary")
        for block in fromSecondary { allocator.deallocate(block, layout: layout) }
        XCTAssertEqual(secondary.live.count, 0)
        XCTAssertEqual(primaryBacking.live.count, 2, "the arena keeps its chunks until reset")
    }

    func testFallbackReportsTheSecondaryErrorWhenBothFail() throws {
        let secondary = LimitAllocator(CountingAllocator(SystemAllocator()), limit: 100)
        let allocator = FallbackAllocator(FailingAllocator(), secondary)
        let error = assertAllocationError(.limitExceeded) { _ = try allocator.allocate(Layout(size: 200)) }
        XCTAssertEqual(error?.limit, 100)
        XCTAssertEqual(secondary.usedBytes, 0)
        XCTAssertEqual(secondary.base.allocations, 0)
        let block = try allocator.allocate(Layout(size: 50))
        XCTAssertEqual(secondary.usedBytes, 50)
        allocator.deallocate(block, layout: try Layout(size: 50))  // FailingAllocator owns nothing
        XCTAssertEqual(secondary.usedBytes, 0)
    }

    func testFallbackReallocateMovesOutOfThePrimaryWhenItCannotGrow() throws {
        let arena = try Arena(LimitAllocator(SystemAllocator(), limit: 4096), growth: .fixed(4096))
        let secondary = CountingAllocator(SystemAllocator())
        let allocator = FallbackAllocator(arena, secondary)
        let block = try allocator.allocate(Layout(size: 8))
        block.start.storeBytes(of: 0xFEED, as: UInt64.self)
        let grown = try allocator.reallocate(block, from: Layout(size: 8), to: Layout(size: 1000))
        XCTAssertEqual(grown.start, block.start, "grown in place in the arena")
        let moved = try allocator.reallocate(grown, from: Layout(size: 1000), to: Layout(size: 10_000))
        XCTAssertFalse(arena.owns(moved))
        XCTAssertEqual(secondary.live[moved.address]?.size, 10_000)
        XCTAssertEqual(moved.start.load(as: UInt64.self), 0xFEED)
        let again = try allocator.reallocate(moved, from: Layout(size: 10_000), to: Layout(size: 16))
        XCTAssertFalse(arena.owns(again), "a secondary block stays with the secondary")
        XCTAssertEqual(again.start.load(as: UInt64.self), 0xFEED)
        allocator.deallocate(again, layout: try Layout(size: 16))
        XCTAssertEqual(secondary.live.count, 0)
    }

    func testFallbackConditionalConformances() throws {
        let a = try Arena(SystemAllocator(), growth: .fixed(1024))
        let b = try Arena(SystemAllocator(), growth: .fixed(1024))
        let both = FallbackAllocator(a, b)
        XCTAssertTrue(isOwnershipAware(both) && isResettable(both) && isInPlaceResizing(both))
        XCTAssertTrue(isSendable(FallbackAllocator(FailingAllocator(), SystemAllocator())))
        let block = try both.allocate(Layout(size: 10_000))  // large chunk of the primary
        XCTAssertTrue(both.owns(block))
        let resized = try XCTUnwrap(both.resize(block, from: Layout(size: 10_000), toSize: 20))
        XCTAssertEqual(resized.start, block.start)
        both.deallocateAll()
        XCTAssertEqual(a.largeChunkCount, 0)
        XCTAssertFalse(both.owns(block))
    }

    // MARK: Segregator

    func testSegregatorRoutesByThresholdInclusive() throws {
        let small = CountingAllocator(SystemAllocator())
        let large = CountingAllocator(SystemAllocator())
        let allocator = Segregator(threshold: 128, small: small, large: large)
        let atThreshold = try allocator.allocate(Layout(size: 128))
        let zero = try allocator.allocate(Layout(size: 0))
        let above = try allocator.allocate(Layout(size: 129))
        XCTAssertEqual(Set(small.live.keys), [atThreshold.address, zero.address])
        XCTAssertEqual(Set(large.live.keys), [above.address])
        allocator.deallocate(above, layout: try Layout(size: 129))
        XCTAssertEqual(large.live.count, 0)
        XCTAssertEqual(small.deallocations, 0)
        allocator.deallocate(atThreshold, layout: try Layout(size: 128))
        allocator.deallocate(zero, layout: try Layout(size: 0))
        XCTAssertEqual(small.live.count, 0)
        XCTAssertEqual(large.deallocations, 1)
    }

    func testSegregatorReallocateStaysOrCrosses() throws {
        let small = CountingAllocator(SystemAllocator())
        let large = CountingAllocator(SystemAllocator())
        let allocator = Segregator(threshold: 100, small: small, large: large)
        var block = try allocator.allocate(Layout(size: 10))
        block.start.storeBytes(of: 77, as: UInt64.self)
        block = try allocator.reallocate(block, from: Layout(size: 10), to: Layout(size: 100))
        XCTAssertEqual(small.live[block.address]?.size, 100, "stays small at the threshold")
        XCTAssertEqual(large.allocations, 0)
        block = try allocator.reallocate(block, from: Layout(size: 100), to: Layout(size: 101))
        XCTAssertEqual(large.live[block.address]?.size, 101, "crosses to large above it")
        XCTAssertEqual(small.live.count, 0)
        block = try allocator.reallocate(block, from: Layout(size: 101), to: Layout(size: 5000))
        XCTAssertEqual(large.live[block.address]?.size, 5000)
        block = try allocator.reallocate(block, from: Layout(size: 5000), to: Layout(size: 8))
        XCTAssertEqual(small.live[block.address]?.size, 8)
        XCTAssertEqual(large.live.count, 0)
        XCTAssertEqual(block.start.load(as: UInt64.self), 77)
        allocator.deallocate(block, layout: try Layout(size: 8))

        // A failing side: the old block is untouched and still owned.
        let failing = Segregator(threshold: 100, small: small, large: FailingAllocator())
        let kept = try failing.allocate(Layout(size: 50))
        kept.start.storeBytes(of: 99, as: UInt64.self)
        assertAllocationError(.outOfMemory) {
            _ = try failing.reallocate(kept, from: Layout(size: 50), to: Layout(size: 500))
        }
        XCTAssertEqual(small.live[kept.address]?.size, 50)
        XCTAssertEqual(kept.start.load(as: UInt64.self), 99)
        failing.deallocate(kept, layout: try Layout(size: 50))
    }

    func testSegregatorResizeNeverCrossesTheThreshold() throws {
        let allocator = Segregator(
            threshold: 100, small: try Pool(SystemAllocator()), large: try Pool(SystemAllocator()))
        XCTAssertTrue(isSizeRounding(allocator) && isInPlaceResizing(allocator))
        XCTAssertEqual(allocator.goodSize(for: try Layout(size: 90)), 96)
        XCTAssertEqual(allocator.goodSize(for: try Layout(size: 101)), 112)
        let block = try allocator.allocate(Layout(size: 90))
        XCTAssertEqual(block.size, 96)
        XCTAssertEqual(try allocator.resize(block, from: Layout(size: 90), toSize: 96)?.start, block.start)
        XCTAssertNil(
            try allocator.resize(block, from: Layout(size: 90), toSize: 101),
            "112-byte class in either pool, but the other pool would get the free")
        let moved = try allocator.reallocate(block, from: Layout(size: 90), to: Layout(size: 101))
        XCTAssertNotEqual(moved.start, block.start)
        XCTAssertEqual(allocator.large.smallLiveBlocks, 1)
        XCTAssertEqual(allocator.small.smallLiveBlocks, 0)
        allocator.deallocate(moved, layout: try Layout(size: 101))
        XCTAssertEqual(allocator.large.smallLiveBlocks, 0)

        let arenas = Segregator(
            threshold: 64, small: try Arena(SystemAllocator(), growth: .fixed(1024)),
            large: try Arena(SystemAllocator(), growth: .fixed(1024)))
        XCTAssertTrue(isOwnershipAware(arenas) && isResettable(arenas))
        let b = try arenas.allocate(Layout(size: 200))
        XCTAssertTrue(arenas.owns(b) && arenas.large.owns(b) && !arenas.small.owns(b))
        arenas.deallocateAll()
        XCTAssertEqual(arenas.large.chunkCount, 1)
    }

    // MARK: StatsAllocator

    func testStatsCountsEverythingExactly() throws {
        let stats = StatsAllocator(LimitAllocator(SystemAllocator(), limit: 1000))
        let a = try stats.allocate(Layout(size: 100))
        var b = try stats.allocate(Layout(size: 300))
        XCTAssertEqual(
            stats.stats,
            AllocationStats(
                allocations: 2, liveBytes: 400, liveBlocks: 2, peakLiveBytes: 400, totalAllocatedBytes: 400))
        b = try stats.reallocate(b, from: Layout(size: 300), to: Layout(size: 800))
        XCTAssertEqual(stats.stats.liveBytes, 900)
        XCTAssertEqual(stats.stats.peakLiveBytes, 900)
        XCTAssertEqual(stats.stats.totalAllocatedBytes, 900)
        // Failures are counted and change nothing else.
        let before = stats.stats
        assertAllocationError(.limitExceeded) { _ = try stats.allocate(Layout(size: 101)) }
        assertAllocationError(.limitExceeded) {
            _ = try stats.reallocate(b, from: Layout(size: 800), to: Layout(size: 901))
        }
        var expected = before
        expected.failures = 2
        XCTAssertEqual(stats.stats, expected)
        b = try stats.reallocate(b, from: Layout(size: 800), to: Layout(size: 50))
        stats.deallocate(a, layout: try Layout(size: 100))
        stats.deallocate(b, layout: try Layout(size: 50))
        XCTAssertEqual(
            stats.stats,
            AllocationStats(
                allocations: 2, deallocations: 2, reallocations: 2, failures: 2, liveBytes: 0, liveBlocks: 0,
                peakLiveBytes: 900, totalAllocatedBytes: 900))
        XCTAssertEqual(stats.base.usedBytes, 0)
        XCTAssertEqual(
            stats.stats.description,
            "allocations 2, deallocations 2, reallocations 2, failures 2, live 0 blocks / 0 bytes, peak 900 bytes, "
                + "total 900 bytes")
    }

    func testStatsConditionalConformances() throws {
        let stats = StatsAllocator(try Arena(SystemAllocator(), growth: .fixed(1024)))
        XCTAssertTrue(isOwnershipAware(stats) && isResettable(stats) && isInPlaceResizing(stats))
        XCTAssertTrue(isSendable(StatsAllocator(SystemAllocator())))
        XCTAssertTrue(isSizeRounding(StatsAllocator(try Pool(SystemAllocator()))))
        let block = try stats.allocate(Layout(size: 100))
        XCTAssertTrue(stats.owns(block))
        XCTAssertNotNil(stats.resize(block, from: try Layout(size: 100), toSize: 200))
        XCTAssertNil(stats.resize(block, from: try Layout(size: 200), toSize: 5000))
        XCTAssertEqual(stats.stats.liveBytes, 200)
        XCTAssertEqual(stats.stats.reallocations, 1)
        stats.deallocateAll()
        XCTAssertEqual(stats.stats.liveBytes, 0)
        XCTAssertEqual(stats.stats.liveBlocks, 0)
        XCTAssertEqual(stats.stats.peakLiveBytes, 200)
    }

    // MARK: LimitAllocator

    func testLimitReachedLeavesEverythingUnchanged() throws {
        let base = CountingAllocator(SystemAllocator())
        let limited = LimitAllocator(base, limit: 1000)
        let a = try limited.allocate(Layout(size: 600))
        let b = try limited.allocate(Layout(size: 400))  // exactly at the limit
        XCTAssertEqual(limited.usedBytes, 1000)
        XCTAssertEqual(limited.remainingBytes, 0)
        let error = assertAllocationError(.limitExceeded) { _ = try limited.allocate(Layout(size: 1)) }
        XCTAssertEqual(error?.limit, 1000)
        XCTAssertEqual(error?.size, 1)
        XCTAssertEqual(base.allocations, 2, "the base is never called over the quota")
        XCTAssertEqual(limited.usedBytes, 1000)
        // Zero bytes always fit.
        let empty = try limited.allocate(Layout(size: 0))
        limited.deallocate(empty, layout: try Layout(size: 0))
        // Frees return quota.
        limited.deallocate(a, layout: try Layout(size: 600))
        XCTAssertEqual(limited.usedBytes, 400)
        let c = try limited.allocate(Layout(size: 600))
        XCTAssertEqual(limited.usedBytes, 1000)
        // Reallocation: growth past the quota fails before the base is called; shrinking releases.
        c.start.storeBytes(of: 5, as: UInt64.self)
        assertAllocationError(.limitExceeded) {
            _ = try limited.reallocate(c, from: Layout(size: 600), to: Layout(size: 601))
        }
        XCTAssertEqual(base.allocations, 4)
        XCTAssertEqual(base.live[c.address]?.size, 600)
        XCTAssertEqual(c.start.load(as: UInt64.self), 5)
        let d = try limited.reallocate(c, from: Layout(size: 600), to: Layout(size: 100))
        XCTAssertEqual(limited.usedBytes, 500)
        limited.deallocate(d, layout: try Layout(size: 100))
        limited.deallocate(b, layout: try Layout(size: 400))
        XCTAssertEqual(limited.usedBytes, 0)
        XCTAssertEqual(base.live.count, 0)
    }

    func testLimitReleasesTheReservationWhenTheBaseFails() throws {
        let limited = LimitAllocator(FailingAllocator(), limit: 1000)
        assertAllocationError(.outOfMemory) { _ = try limited.allocate(Layout(size: 500)) }
        XCTAssertEqual(limited.usedBytes, 0)
        let arenaLimited = LimitAllocator(try Arena(FailingAllocator()), limit: 1000)
        assertAllocationError(.outOfMemory) { _ = try arenaLimited.allocate(Layout(size: 500)) }
        XCTAssertEqual(arenaLimited.usedBytes, 0)
    }

    func testLimitConditionalConformancesAndResize() throws {
        let limited = LimitAllocator(try Arena(SystemAllocator(), growth: .fixed(4096)), limit: 1000)
        XCTAssertTrue(isOwnershipAware(limited) && isResettable(limited) && isInPlaceResizing(limited))
        XCTAssertTrue(isSendable(LimitAllocator(SystemAllocator(), limit: 1)))
        XCTAssertTrue(isSizeRounding(LimitAllocator(try Pool(SystemAllocator()), limit: 1)))
        let block = try limited.allocate(Layout(size: 100))
        XCTAssertTrue(limited.owns(block))
        XCTAssertNil(limited.resize(block, from: try Layout(size: 100), toSize: 1001), "over the quota")
        XCTAssertEqual(limited.usedBytes, 100)
        XCTAssertEqual(limited.resize(block, from: try Layout(size: 100), toSize: 1000)?.start, block.start)
        XCTAssertEqual(limited.usedBytes, 1000)
        XCTAssertEqual(limited.resize(block, from: try Layout(size: 1000), toSize: 10)?.size, 10)
        XCTAssertEqual(limited.usedBytes, 10)
        limited.deallocateAll()
        XCTAssertEqual(limited.usedBytes, 0)
    }
}

// MARK: Checked deallocation

/// A malloc-backed test double that knows its live blocks, so it can reject double and foreign frees.
private final class CheckedSystemAllocator: CheckedDeallocatingAllocator, OwnershipAwareAllocator {
    var live: Set<UInt> = []
    var everAllocated: Set<UInt> = []

    func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let block = try SystemAllocator().allocate(layout)
        live.insert(block.address)
        everAllocated.insert(block.address)
        return block
    }

    func deallocate(_ block: UnsafeBlock, layout: Layout) {
        precondition(live.remove(block.address) != nil)
        SystemAllocator().deallocate(block, layout: layout)
    }

    func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        guard live.contains(block.address) else {
            throw AllocationError(
                everAllocated.contains(block.address) ? .doubleFree : .foreignBlock, "test double", size: layout.size)
        }
        deallocate(block, layout: layout)
    }

    func owns(_ block: UnsafeBlock) -> Bool { everAllocated.contains(block.address) }
}

extension CombinatorTests {
    func testCheckedDeallocationThroughEveryCombinator() throws {
        let layout = try Layout(size: 64)
        let inner = CheckedSystemAllocator()
        let stats = StatsAllocator(LimitAllocator(inner, limit: 1000))
        let block = try stats.allocate(layout)
        try stats.checkedDeallocate(block, layout: layout)
        let after = stats.stats
        XCTAssertEqual(after.deallocations, 1)
        assertAllocationError(.doubleFree) { try stats.checkedDeallocate(block, layout: layout) }
        XCTAssertEqual(stats.stats, after, "a rejected free changes no count")
        XCTAssertEqual(stats.base.usedBytes, 0, "nor the quota")
        let held = try stats.allocate(layout)
        let foreign = try SystemAllocator().allocate(layout)
        assertAllocationError(.foreignBlock) { try stats.checkedDeallocate(foreign, layout: layout) }
        XCTAssertEqual(stats.stats.liveBlocks, 1)
        XCTAssertEqual(stats.stats.liveBytes, 64)
        XCTAssertEqual(stats.base.usedBytes, 64)

        let small = CheckedSystemAllocator()
        let large = CheckedSystemAllocator()
        let segregator = Segregator(threshold: 32, small: small, large: large)
        let fallback = FallbackAllocator(small, large)
        let s = try segregator.allocate(Layout(size: 16))
        let l = try segregator.allocate(layout)
        assertAllocationError(.foreignBlock, "routed to the large side by size") {
            try segregator.checkedDeallocate(s, layout: layout)
        }
        try segregator.checkedDeallocate(l, layout: layout)
        try fallback.checkedDeallocate(s, layout: Layout(size: 16))  // the primary owns it
        assertAllocationError(.doubleFree) { try fallback.checkedDeallocate(l, layout: layout) }
        XCTAssertTrue(small.live.isEmpty && large.live.isEmpty)

        stats.deallocate(held, layout: layout)
        SystemAllocator().deallocate(foreign, layout: layout)
    }
}

// MARK: Randomized, model-based

extension CombinatorTests {
    private static func mixedLayout(_ random: inout SeededGenerator) -> Layout {
        let roll = Int.random(in: 0..<100, using: &random)
        let size = roll < 5 ? Int.random(in: 2000...20_000, using: &random) : Int.random(in: 0...400, using: &random)
        return try! Layout(size: size, alignment: 1 << Int.random(in: 0...6, using: &random))
    }

    func testStatsRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let stats = StatsAllocator(LimitAllocator(SystemAllocator(), limit: 200_000))
        let report = AllocatorModelCheck.run(
            stats, seed: seed, steps: 20_000, layout: Self.mixedLayout,
            acceptFailure: { $0.code == .limitExceeded },
            afterEachStep: { liveBytes, liveBlocks in
                let now = stats.stats
                if now.liveBytes != liveBytes || now.liveBlocks != liveBlocks {
                    XCTFail("stats \(now) vs model \(liveBytes) bytes / \(liveBlocks) blocks [seed \(seed)]")
                }
            })
        let final = stats.stats
        XCTAssertEqual(final.allocations, report.allocations, "seed \(seed)")
        XCTAssertEqual(final.deallocations, report.deallocations, "seed \(seed)")
        XCTAssertEqual(final.reallocations, report.reallocations, "seed \(seed)")
        XCTAssertEqual(final.failures, report.failures, "seed \(seed)")
        XCTAssertGreaterThan(report.failures, 0, "the limit was reached, seed \(seed)")
        XCTAssertEqual(final.peakLiveBytes, report.peakRequestedBytes, "seed \(seed)")
        XCTAssertLessThanOrEqual(final.peakLiveBytes, 200_000)
        XCTAssertEqual(final.liveBytes, 0)
        XCTAssertEqual(stats.base.usedBytes, 0)
    }

    func testStatsAgreeWithACountingBase() throws {
        let seed = SeededGenerator.testSeed()
        let counting = CountingAllocator(SystemAllocator())
        let stats = StatsAllocator(counting)
        // Without reallocation every call maps to one base call, so the base's own counts must match.
        let report = AllocatorModelCheck.run(
            stats, seed: seed, steps: 10_000, reallocate: false, layout: Self.mixedLayout,
            afterEachStep: { _, liveBlocks in
                if counting.live.count != stats.stats.liveBlocks || liveBlocks != counting.live.count {
                    XCTFail("counting \(counting.live.count) vs stats \(stats.stats.liveBlocks) [seed \(seed)]")
                }
            })
        XCTAssertEqual(stats.stats.allocations, counting.allocations, "seed \(seed)")
        XCTAssertEqual(stats.stats.deallocations, counting.deallocations, "seed \(seed)")
        XCTAssertEqual(stats.stats.allocations, report.allocations, "seed \(seed)")
    }

    func testLimitRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let limited = LimitAllocator(SystemAllocator(), limit: 100_000)
        let report = AllocatorModelCheck.run(
            limited, seed: seed, steps: 20_000, layout: Self.mixedLayout,
            acceptFailure: { $0.code == .limitExceeded && $0.limit == 100_000 },
            afterEachStep: { liveBytes, _ in
                if limited.usedBytes != liveBytes {
                    XCTFail("used \(limited.usedBytes) vs model \(liveBytes) [seed \(seed)]")
                }
            })
        XCTAssertGreaterThan(report.failures, 0, "seed \(seed)")
        XCTAssertLessThanOrEqual(report.peakRequestedBytes, 100_000)
        XCTAssertEqual(limited.usedBytes, 0)
    }

    func testFallbackRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let arena = try Arena(
            LimitAllocator(SystemAllocator(), limit: 64 * 1024), growth: .pow2(initial: 4096, maximum: 32768))
        let secondary = StatsAllocator(SystemAllocator())
        let allocator = FallbackAllocator(arena, secondary)
        let report = AllocatorModelCheck.run(allocator, seed: seed, steps: 20_000, layout: Self.mixedLayout)
        XCTAssertGreaterThan(secondary.stats.allocations, 0, "the primary filled up, seed \(seed)")
        XCTAssertEqual(secondary.stats.liveBlocks, 0, "every secondary block went back to the secondary, seed \(seed)")
        XCTAssertGreaterThan(report.allocations, 1000)
        arena._checkInvariants()
    }

    func testSegregatorRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let small = StatsAllocator(try Pool(SystemAllocator(), largestSmallSize: 1024))
        let large = StatsAllocator(SystemAllocator())
        let allocator = Segregator(threshold: 256, small: small, large: large)
        let report = AllocatorModelCheck.run(
            allocator, seed: seed, steps: 20_000, layout: Self.mixedLayout,
            afterEachStep: { liveBytes, _ in
                if small.stats.liveBytes + large.stats.liveBytes != liveBytes {
                    XCTFail("small + large live bytes != model's \(liveBytes) [seed \(seed)]")
                }
            })
        XCTAssertGreaterThan(small.stats.allocations, 0, "seed \(seed)")
        XCTAssertGreaterThan(large.stats.allocations, 0, "seed \(seed)")
        XCTAssertEqual(small.stats.liveBlocks + large.stats.liveBlocks, 0, "seed \(seed)")
        XCTAssertEqual(small.stats.allocations, small.stats.deallocations, "each part got its own blocks back")
        XCTAssertEqual(small.base.smallLiveBlocks, 0)
        XCTAssertGreaterThanOrEqual(small.stats.allocations + large.stats.allocations, report.allocations)
        small.base._checkInvariants()
    }
}

// MARK: Concurrency

/// Blocks handed between threads, so that one thread frees what another allocated.
///
/// Guarded by `NSLock` (a pthread mutex) rather than the standard library's `Mutex`: on Linux `Mutex` uses raw
/// futex calls that ThreadSanitizer does not model, so it reports false races on the data it protects.
private final class Mailbox: @unchecked Sendable {
    // @unchecked: `parcels` is only touched with `lock` held.
    struct Parcel: Sendable {
        var block: UnsafeBlock
        var layout: Layout
        var tag: UInt8
    }
    private let lock = NSLock()
    private var parcels: [Parcel] = []

    func post(_ parcel: Parcel) { lock.withLock { parcels.append(parcel) } }
    func take() -> Parcel? { lock.withLock { parcels.popLast() } }
}

extension CombinatorTests {
    /// Several threads allocate, write, hand blocks to each other and free them through a StatsAllocator over a
    /// LimitAllocator over the system allocator. At the end every count is exact, nothing is live, and the live
    /// bytes never exceeded the limit.
    func testConcurrentStatsOverLimitAreExact() throws {
        let limit = 256 * 1024
        let limited = LimitAllocator(SystemAllocator(), limit: limit)
        let stats = StatsAllocator(limited)
        try runConcurrentHammer(stats, limit: limit) { stats.stats }
        XCTAssertEqual(limited.usedBytes, 0)
    }

    /// The same with the order reversed: the limit outside, the stats inside (which then see only what the limit
    /// let through).
    func testConcurrentLimitOverStatsAreExact() throws {
        let limit = 256 * 1024
        let stats = StatsAllocator(SystemAllocator())
        let limited = LimitAllocator(stats, limit: limit)
        try runConcurrentHammer(limited, limit: limit, expectFailuresInStats: false) { stats.stats }
        XCTAssertEqual(limited.usedBytes, 0)
    }

    private func runConcurrentHammer<A: Allocator & Sendable>(
        _ allocator: A, limit: Int, expectFailuresInStats: Bool = true, stats: () -> AllocationStats
    ) throws {
        let seed = SeededGenerator.testSeed()
        let threads = 4
        let steps = 20_000
        let mailbox = Mailbox()
        let allocations = ManagedAtomic(0)
        let deallocations = ManagedAtomic(0)
        let reallocations = ManagedAtomic(0)
        let failures = ManagedAtomic(0)
        let corruptions = ManagedAtomic(0)
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            var random = SeededGenerator(seed: seed &+ UInt64(thread))
            var mine: [Mailbox.Parcel] = []
            func check(_ parcel: Mailbox.Parcel) {
                for i in 0..<parcel.layout.size
                where parcel.block.start.load(fromByteOffset: i, as: UInt8.self) != parcel.tag {
                    corruptions.wrappingIncrement(ordering: .relaxed)
                    return
                }
            }
            func free(_ parcel: Mailbox.Parcel) {
                check(parcel)
                allocator.deallocate(parcel.block, layout: parcel.layout)
                deallocations.wrappingIncrement(ordering: .relaxed)
            }
            for _ in 0..<steps {
                let roll = Int.random(in: 0..<100, using: &random)
                if roll < 30, !mine.isEmpty {
                    free(mine.swapRemove(Int.random(in: 0..<mine.count, using: &random)))
                } else if roll < 40, let parcel = mailbox.take() {
                    free(parcel)  // a block another thread allocated
                } else if roll < 50, !mine.isEmpty {
                    mailbox.post(mine.swapRemove(Int.random(in: 0..<mine.count, using: &random)))
                } else if roll < 55, !mine.isEmpty {
                    let index = Int.random(in: 0..<mine.count, using: &random)
                    let layout = try! Layout(size: Int.random(in: 1...8192, using: &random))
                    do {
                        check(mine[index])
                        let moved = try allocator.reallocate(mine[index].block, from: mine[index].layout, to: layout)
                        let tag = UInt8.random(in: 0...255, using: &random)
                        moved.start.initializeMemory(as: UInt8.self, repeating: tag, count: layout.size)
                        mine[index] = Mailbox.Parcel(block: moved, layout: layout, tag: tag)
                        reallocations.wrappingIncrement(ordering: .relaxed)
                    } catch {
                        failures.wrappingIncrement(ordering: .relaxed)
                    }
                } else {
                    let layout = try! Layout(size: Int.random(in: 1...8192, using: &random))
                    do {
                        let block = try allocator.allocate(layout)
                        let tag = UInt8.random(in: 0...255, using: &random)
                        block.start.initializeMemory(as: UInt8.self, repeating: tag, count: layout.size)
                        mine.append(Mailbox.Parcel(block: block, layout: layout, tag: tag))
                        allocations.wrappingIncrement(ordering: .relaxed)
                    } catch {
                        failures.wrappingIncrement(ordering: .relaxed)
                    }
                }
            }
            for parcel in mine { free(parcel) }
        }
        while let parcel = mailbox.take() {
            allocator.deallocate(parcel.block, layout: parcel.layout)
            deallocations.wrappingIncrement(ordering: .relaxed)
        }
        let final = stats()
        XCTAssertEqual(corruptions.load(ordering: .relaxed), 0, "blocks overlapped [seed \(seed)]")
        XCTAssertEqual(final.allocations, allocations.load(ordering: .relaxed), "seed \(seed)")
        XCTAssertEqual(final.deallocations, deallocations.load(ordering: .relaxed), "seed \(seed)")
        XCTAssertEqual(final.allocations, final.deallocations, "every block freed exactly once [seed \(seed)]")
        XCTAssertEqual(final.reallocations, reallocations.load(ordering: .relaxed), "seed \(seed)")
        if expectFailuresInStats {
            XCTAssertEqual(final.failures, failures.load(ordering: .relaxed), "seed \(seed)")
        } else {
            XCTAssertEqual(final.failures, 0, "the limit rejects before the stats see the call [seed \(seed)]")
        }
        XCTAssertGreaterThan(failures.load(ordering: .relaxed), 0, "the limit was reached [seed \(seed)]")
        XCTAssertEqual(final.liveBytes, 0, "seed \(seed)")
        XCTAssertEqual(final.liveBlocks, 0, "seed \(seed)")
        XCTAssertLessThanOrEqual(final.peakLiveBytes, limit, "the limit was never exceeded [seed \(seed)]")
        XCTAssertGreaterThan(final.peakLiveBytes, limit / 2, "seed \(seed)")
    }
}

extension Array {
    /// Removes and returns the element at `index` in O(1) by moving the last element there.
    fileprivate mutating func swapRemove(_ index: Int) -> Element {
        swapAt(index, count - 1)
        return removeLast()
    }
}
