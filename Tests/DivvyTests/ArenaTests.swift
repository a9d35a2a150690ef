import Divvy
import DivvyTestSupport
import XCTest

final class ArenaTests: XCTestCase {
    func testBumpAllocationIsContiguousAlignedAndTakesOneChunk() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 4096, maximum: 16384))
        XCTAssertEqual(counting.allocations, 0, "no memory before the first allocation")
        let a = try arena.allocate(Layout(size: 10, alignment: 1))
        let b = try arena.allocate(Layout(size: 3, alignment: 1))
        let c = try arena.allocate(Layout(size: 8, alignment: 64))
        let d = try arena.allocate(Layout(size: 0, alignment: 1))
        XCTAssertEqual(b.address, a.address + 10, "bump allocation is contiguous")
        XCTAssertEqual(c.address % 64, 0)
        XCTAssertGreaterThanOrEqual(c.address, b.address + 3)
        XCTAssertEqual(d.address, c.address + 8)
        XCTAssertEqual([a.size, b.size, c.size, d.size], [10, 3, 8, 1], "a zero-byte request gets one byte")
        XCTAssertEqual(arena.goodSize(for: try Layout(size: 0)), 1)
        XCTAssertEqual(arena.goodSize(for: try Layout(size: 10, alignment: 64)), 10)
        XCTAssertEqual(counting.allocations, 1)
        XCTAssertEqual(counting.live.values.map(\.size), [4096])
        XCTAssertEqual(arena.footprint, 4096)
        XCTAssertEqual(arena.chunkCount, 1)
        arena._checkInvariants()
    }

    func testDeallocateBumpsBackOnlyForTheLastBlock() throws {
        let arena = try Arena(SystemAllocator(), growth: .fixed(4096))
        let layout = try Layout(size: 32)
        let a = try arena.allocate(layout)
        let b = try arena.allocate(layout)
        let remaining = arena.remainingInCurrentChunk
        arena.deallocate(a, layout: layout)  // not the last block: nothing happens
        XCTAssertEqual(arena.remainingInCurrentChunk, remaining)
        arena.deallocate(b, layout: layout)  // the last block: the cursor goes back
        XCTAssertEqual(arena.remainingInCurrentChunk, remaining + 32)
        arena.deallocate(a, layout: layout)  // now a is the last block (LIFO chain)
        XCTAssertEqual(arena.remainingInCurrentChunk, remaining + 64)
        XCTAssertEqual(try arena.allocate(layout).start, a.start, "freed space is reused")
        arena._checkInvariants()
    }

    func testChunkSizesDoubleUpToTheMaximum() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 4096, maximum: 16384))
        let layout = try Layout(size: 200)
        while arena.chunkCount < 5 { _ = try arena.allocate(layout) }
        XCTAssertEqual(counting.live.values.map(\.size).sorted(), [4096, 8192, 16384, 16384, 16384])
        XCTAssertEqual(arena.footprint, 4096 + 8192 + 3 * 16384)
        XCTAssertEqual(arena.largeChunkCount, 0)
        arena._checkInvariants()
    }

    func testLargeRequestGetsItsOwnChunkAndLeavesTheCurrentChunkAlone() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .fixed(4096))
        let small = try Layout(size: 16)
        let first = try arena.allocate(small)
        let bigLayout = try Layout(size: 20_000, alignment: 256)
        let big = try arena.allocate(bigLayout)
        XCTAssertEqual(big.address % 256, 0)
        XCTAssertEqual(big.size, 20_000)
        XCTAssertEqual(arena.largeChunkCount, 1)
        XCTAssertEqual(arena.chunkCount, 1)
        XCTAssertEqual(counting.live.count, 2)
        XCTAssertEqual(try arena.allocate(small).address, first.address + 16, "the current chunk is still in use")
        let second = try arena.allocate(Layout(size: 30_000))
        XCTAssertEqual(arena.largeChunkCount, 2)
        // Freeing the newest large block returns its chunk; an older one stays until reset.
        arena.deallocate(big, layout: bigLayout)
        XCTAssertEqual(arena.largeChunkCount, 2, "not the newest large chunk: kept")
        arena.deallocate(second, layout: try Layout(size: 30_000))
        XCTAssertEqual(arena.largeChunkCount, 1)
        XCTAssertEqual(counting.live.count, 2)
        arena._checkInvariants()
        arena.deallocateAll()
        XCTAssertEqual(arena.largeChunkCount, 0)
        XCTAssertEqual(counting.live.count, 1, "the first regular chunk is kept")
    }

    func testAQuarterOfTheNextChunkIsTheLargeThreshold() throws {
        let quarter = (4096 - 48) / 4
        let fits = try Arena(SystemAllocator(), growth: .fixed(4096))
        _ = try fits.allocate(Layout(size: quarter))
        XCTAssertEqual([fits.chunkCount, fits.largeChunkCount], [1, 0])
        let large = try Arena(SystemAllocator(), growth: .fixed(4096))
        _ = try large.allocate(Layout(size: quarter + 1))
        XCTAssertEqual([large.chunkCount, large.largeChunkCount], [0, 1])
        // Alignment padding counts: 32-byte alignment may need 16 bytes of padding.
        let aligned = try Arena(SystemAllocator(), growth: .fixed(4096))
        _ = try aligned.allocate(Layout(size: quarter - 15, alignment: 32))
        XCTAssertEqual([aligned.chunkCount, aligned.largeChunkCount], [0, 1])
    }

    func testRewindFreesChunksTakenAfterTheMarkAndRestoresTheCursor() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 4096, maximum: 8192))
        let layout = try Layout(size: 100)
        var kept: [UnsafeBlock] = []
        for i in 0..<50 {
            let block = try arena.allocate(layout)
            block.start.initializeMemory(as: UInt8.self, repeating: UInt8(i), count: 100)
            kept.append(block)
        }
        let chunksBefore = counting.live.count
        let footprintBefore = arena.footprint
        let position = arena.mark()
        let next = try arena.allocate(layout)
        for _ in 0..<500 { _ = try arena.allocate(layout) }
        _ = try arena.allocate(Layout(size: 50_000))
        XCTAssertGreaterThan(counting.live.count, chunksBefore + 3)
        arena.rewind(to: position)
        XCTAssertEqual(counting.live.count, chunksBefore, "chunks taken after the mark went back")
        XCTAssertEqual(arena.footprint, footprintBefore)
        XCTAssertEqual(arena.largeChunkCount, 0)
        XCTAssertEqual(try arena.allocate(layout).start, next.start, "the cursor is back where it was at the mark")
        for (i, block) in kept.enumerated() {
            XCTAssertEqual(block.start.load(fromByteOffset: 99, as: UInt8.self), UInt8(i), "blocks before the mark")
        }
        arena._checkInvariants()
    }

    func testNestedScopesAndRewindOnThrow() throws {
        struct Boom: Error {}
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .fixed(1024))
        let layout = try Layout(size: 64)
        let outer = try arena.allocate(layout)
        let footprint = arena.footprint
        XCTAssertThrowsError(
            try arena.withScope { () throws(Boom) -> Void in
                for _ in 0..<100 { _ = try? arena.allocate(layout) }
                try? arena.withScope { () throws(AllocationError) -> Void in
                    for _ in 0..<100 { _ = try arena.allocate(layout) }
                }
                throw Boom()
            })
        XCTAssertEqual(arena.footprint, footprint, "a throwing scope is rewound too")
        XCTAssertEqual(try arena.allocate(layout).address, outer.address + 64)
        let value = arena.withScope { () -> Int in
            _ = try? arena.allocate(Layout(size: 5000))
            return 42
        }
        XCTAssertEqual(value, 42)
        XCTAssertEqual(arena.largeChunkCount, 0)
        // Rewinding to an outer mark after an inner one is fine (marks nest like a stack).
        let m1 = arena.mark()
        _ = try arena.allocate(Layout(size: 900))
        let m2 = arena.mark()
        _ = try arena.allocate(Layout(size: 900))
        arena.rewind(to: m2)
        arena.rewind(to: m1)
        XCTAssertEqual(arena.footprint, footprint)
        arena._checkInvariants()
    }

    func testMarkOnAnEmptyArenaRewindsToNoChunks() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .fixed(1024))
        let position = arena.mark()
        for _ in 0..<100 { _ = try arena.allocate(Layout(size: 100)) }
        arena.rewind(to: position)
        XCTAssertEqual(counting.live.count, 0)
        XCTAssertEqual(arena.footprint, 0)
        XCTAssertEqual(arena.chunkCount, 0)
        XCTAssertNoThrow(try arena.allocate(Layout(size: 100)))
        arena._checkInvariants()
    }

    func testDeallocateAllKeepsTheFirstChunkAndReusesIt() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 1024, maximum: 8192))
        let layout = try Layout(size: 64)
        let first = try arena.allocate(layout)
        for _ in 0..<1000 { _ = try arena.allocate(layout) }
        _ = try arena.allocate(Layout(size: 100_000))
        XCTAssertGreaterThan(counting.live.count, 3)
        arena.deallocateAll()
        XCTAssertEqual(counting.live.values.map(\.size), [1024])
        XCTAssertEqual(arena.footprint, 1024)
        XCTAssertEqual(arena.chunkCount, 1)
        XCTAssertEqual(try arena.allocate(layout).start, first.start)
        // Growth continues from the second chunk's size.
        for _ in 0..<20 { _ = try arena.allocate(layout) }
        XCTAssertEqual(counting.live.values.map(\.size).sorted(), [1024, 2048])
        arena._checkInvariants()
    }

    func testBackingFailureLeavesTheArenaUnchanged() throws {
        let failing = try Arena(FailingAllocator())
        let error = assertAllocationError(.outOfMemory) { _ = try failing.allocate(Layout(size: 8)) }
        XCTAssertEqual(error?.size, 65536, "the error is the backing's, for the chunk")
        XCTAssertEqual(failing.footprint, 0)
        XCTAssertEqual(failing.chunkCount, 0)

        // Over a byte quota: two 4 KiB chunks fit, the third does not.
        let limited = LimitAllocator(SystemAllocator(), limit: 8192)
        let arena = try Arena(limited, growth: .fixed(4096))
        let layout = try Layout(size: 512)
        var blocks: [UnsafeBlock] = []
        while arena.chunkCount < 2 || arena.remainingInCurrentChunk >= 512 { blocks.append(try arena.allocate(layout)) }
        let remaining = arena.remainingInCurrentChunk
        let footprint = arena.footprint
        assertAllocationError(.limitExceeded) { _ = try arena.allocate(layout) }
        assertAllocationError(.limitExceeded) { _ = try arena.allocate(Layout(size: 10_000)) }
        XCTAssertEqual(arena.remainingInCurrentChunk, remaining)
        XCTAssertEqual(arena.footprint, footprint)
        XCTAssertEqual(arena.chunkCount, 2)
        XCTAssertEqual(arena.largeChunkCount, 0)
        XCTAssertEqual(limited.usedBytes, 8192)
        if remaining > 0 {
            XCTAssertNoThrow(try arena.allocate(Layout(size: remaining, alignment: 1)), "what fits still works")
        }
        arena._checkInvariants()
    }

    func testOwnsAndResizeInPlace() throws {
        let arena = try Arena(SystemAllocator(), growth: .fixed(4096))
        let a = try arena.allocate(Layout(size: 100))
        let b = try arena.allocate(Layout(size: 100))
        let big = try arena.allocate(Layout(size: 10_000))
        XCTAssertTrue(arena.owns(a) && arena.owns(b) && arena.owns(big))
        let foreign = try SystemAllocator().allocate(Layout(size: 100))
        XCTAssertFalse(arena.owns(foreign))
        try SystemAllocator().deallocate(foreign, layout: Layout(size: 100))

        // The last block grows and shrinks in place, up to the chunk's end.
        let grown = try XCTUnwrap(arena.resize(b, from: Layout(size: 100), toSize: 1000))
        XCTAssertEqual(grown.start, b.start)
        XCTAssertEqual(grown.size, 1000)
        XCTAssertNil(try arena.resize(grown, from: Layout(size: 1000), toSize: 5000), "beyond the chunk")
        let shrunk = try XCTUnwrap(arena.resize(grown, from: Layout(size: 1000), toSize: 10))
        XCTAssertEqual(try arena.allocate(Layout(size: 1, alignment: 1)).address, b.address + 10)
        // Another block can only shrink.
        XCTAssertNil(try arena.resize(a, from: Layout(size: 100), toSize: 101))
        XCTAssertEqual(try arena.resize(a, from: Layout(size: 100), toSize: 50)?.size, 50)
        XCTAssertEqual(shrunk.size, 10)

        // reallocate uses resize, then falls back to a copy.
        let c = try arena.allocate(Layout(size: 8))
        c.start.storeBytes(of: 0xABCD_EF01, as: UInt64.self)
        let d = try arena.reallocate(c, from: Layout(size: 8), to: Layout(size: 64))
        XCTAssertEqual(d.start, c.start)
        let e = try arena.reallocate(d, from: Layout(size: 64), to: Layout(size: 5000))
        XCTAssertNotEqual(e.start, d.start)
        XCTAssertEqual(e.start.load(as: UInt64.self), 0xABCD_EF01)
        arena._checkInvariants()
    }

    func testDeinitReturnsEveryChunk() throws {
        let counting = CountingAllocator(SystemAllocator())
        do {
            let arena = try Arena(counting, growth: .pow2(initial: 1024, maximum: 4096))
            for i in 0..<500 { _ = try arena.allocate(Layout(size: i % 7 == 0 ? 2000 : 40)) }
            XCTAssertGreaterThan(counting.live.count, 5)
        }
        XCTAssertEqual(counting.live.count, 0)
        XCTAssertEqual(counting.allocations, counting.deallocations)
    }

    func testHugeRequestsFailCleanly() throws {
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .fixed(4096))
        _ = try arena.allocate(Layout(size: 16))
        let remaining = arena.remainingInCurrentChunk
        assertAllocationError(.unsupportedLayout) { _ = try arena.allocate(Layout(size: Int.max - 64, alignment: 16)) }
        assertAllocationError(.outOfMemory) { _ = try arena.allocate(Layout(size: 1 << 50)) }
        assertAllocationError(.outOfMemory) { _ = try arena.allocate(Layout(size: 1, alignment: 1 << 50)) }
        XCTAssertEqual(arena.remainingInCurrentChunk, remaining)
        XCTAssertEqual(arena.largeChunkCount, 0)
        XCTAssertEqual(counting.live.count, 1)
        // A linear policy saturates at Int.max: the chunk size is capped so the request stays a valid layout.
        let linear = try Arena(SystemAllocator(), growth: .linear(initial: 1 << 62, step: 1 << 62))
        assertAllocationError(.outOfMemory) { _ = try linear.allocate(Layout(size: 16)) }
        arena._checkInvariants()
    }

    func testRejectsBadConfigurations() {
        assertAllocationError(.invalidConfiguration) { _ = try Arena(SystemAllocator(), growth: .fixed(100)) }
        assertAllocationError(.invalidConfiguration) {
            _ = try Arena(SystemAllocator(), growth: .pow2(initial: 8192, maximum: 4096))
        }
        assertAllocationError(.invalidConfiguration) { _ = try Arena(SystemAllocator(), growth: .fixed(0)) }
    }
}

extension ArenaTests {
    func testRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 1024, maximum: 16384))
        let report = AllocatorModelCheck.run(
            arena, seed: seed, steps: 20_000,
            layout: { random in
                let size = Int.random(in: 0..<100, using: &random) < 3
                    ? Int.random(in: 1000...20_000, using: &random) : Int.random(in: 0...300, using: &random)
                return try! Layout(size: size, alignment: 1 << Int.random(in: 0...7, using: &random))
            },
            afterEachStep: { _, _ in if Int.random(in: 0..<500) == 0 { arena._checkInvariants() } })
        XCTAssertGreaterThan(report.allocations, 1000, "seed \(seed)")
        arena._checkInvariants()
        arena.deallocateAll()
        XCTAssertEqual(counting.live.count, 1, "seed \(seed)")
    }

    /// Random allocations, marks and rewinds: blocks allocated before the innermost live mark keep their bytes,
    /// and after each rewind the arena holds no more chunks than it did at the mark.
    func testRandomizedMarksAndRewinds() throws {
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        let counting = CountingAllocator(SystemAllocator())
        let arena = try Arena(counting, growth: .pow2(initial: 512, maximum: 4096))
        var blocks: [(block: UnsafeBlock, tag: UInt8)] = []
        var marks: [(mark: Arena<CountingAllocator<SystemAllocator>>.Mark, blockCount: Int, chunks: Int)] = []
        for step in 0..<20_000 {
            let roll = Int.random(in: 0..<100, using: &random)
            if roll < 5 {
                marks.append((arena.mark(), blocks.count, counting.live.count))
            } else if roll < 10, let top = marks.popLast() {
                arena.rewind(to: top.mark)
                blocks.removeLast(blocks.count - top.blockCount)
                XCTAssertEqual(counting.live.count, top.chunks, "seed \(seed), step \(step)")
            } else {
                let size =
                    roll < 12 ? Int.random(in: 500...3000, using: &random) : Int.random(in: 1...64, using: &random)
                let alignment = 1 << Int.random(in: 0...5, using: &random)
                let block = try arena.allocate(Layout(size: size, alignment: alignment))
                let tag = UInt8.random(in: 0...255, using: &random)
                block.start.initializeMemory(as: UInt8.self, repeating: tag, count: size)
                blocks.append((block, tag))
            }
            if step % 1000 == 0 {
                arena._checkInvariants()
                for (block, tag) in blocks {
                    let ok = (0..<block.size).allSatisfy { block.start.load(fromByteOffset: $0, as: UInt8.self) == tag }
                    if !ok { XCTFail("block \(block) lost its bytes [seed \(seed); DIVVY_TEST_SEED=\(seed)]"); return }
                }
            }
        }
        if let bottom = marks.first {
            arena.rewind(to: bottom.mark)
            XCTAssertEqual(counting.live.count, bottom.chunks, "seed \(seed)")
        }
    }
}
