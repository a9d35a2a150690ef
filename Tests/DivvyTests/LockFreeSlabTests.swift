import Atomics
import DivvyTestSupport
import Foundation
import XCTest

@testable import Divvy

// Tests of `UnsafeLockFreeIndexStack` and `LockFreeSlab`. The concurrent ones are named `testStress…`; run them
// under ThreadSanitizer with
//   swift test --sanitize=thread --scratch-path .build-tsan --filter LockFreeSlabTests

final class LockFreeSlabTests: XCTestCase {
    func testAllocatesDistinctAlignedBlocksAndReusesFreedOnes() throws {
        let layout = try Layout(size: 24, alignment: 8)
        let slab = try LockFreeSlab(layout: layout, capacity: 100, backing: SystemAllocator())
        XCTAssertEqual(slab.blockSize, 24)
        XCTAssertEqual(slab.blockAlignment, 8)
        XCTAssertEqual(slab.capacity, 100)
        XCTAssertEqual(slab.approximateFreeCount, 100)
        var blocks: [UnsafeBlock] = []
        for _ in 0..<100 { blocks.append(try slab.allocate(layout)) }
        XCTAssertEqual(Set(blocks.map(\.start)).count, 100)
        XCTAssertTrue(blocks.allSatisfy { $0.address % 8 == 0 && $0.size == 24 })
        // A fresh slab hands out blocks in address order, one stride apart.
        XCTAssertEqual(zip(blocks, blocks.dropFirst()).filter { $1.start - $0.start != 24 }.count, 0)
        XCTAssertEqual(slab.approximateFreeCount, 0)
        XCTAssertEqual(slab.approximateLiveCount, 100)
        slab._checkInvariants()
        let freed = blocks.removeLast()
        slab.deallocate(freed, layout: layout)
        XCTAssertEqual(slab.approximateFreeCount, 1)
        XCTAssertEqual(try slab.allocate(layout).start, freed.start, "LIFO reuse of the freed block")
        for block in blocks { slab.deallocate(block, layout: layout) }
        slab.deallocate(freed, layout: layout)
        XCTAssertEqual(slab.approximateFreeCount, 100)
        slab._checkInvariants()
    }

    func testSmallerLayoutsFitAndLargerOnesAreRejected() throws {
        let slab = try LockFreeSlab(
            layout: try Layout(size: 48, alignment: 16), capacity: 4, backing: SystemAllocator())
        XCTAssertEqual(slab.blockSize, 48)
        let small = try slab.allocate(try Layout(size: 1, alignment: 1))
        XCTAssertEqual(small.size, 48)
        XCTAssertEqual(small.address % 16, 0)
        XCTAssertEqual(slab.goodSize(for: try Layout(size: 3, alignment: 2)), 48)
        assertAllocationError(.unsupportedLayout, "too large") {
            _ = try slab.allocate(try Layout(size: 49, alignment: 16))
        }
        assertAllocationError(.unsupportedLayout, "too aligned") {
            _ = try slab.allocate(try Layout(size: 8, alignment: 32))
        }
        XCTAssertEqual(slab.approximateFreeCount, 3, "rejected requests take no block")
        XCTAssertEqual(slab.resize(small, from: Layout(uncheckedSize: 1, alignment: 1), toSize: 48)?.start, small.start)
        XCTAssertNil(slab.resize(small, from: Layout(uncheckedSize: 1, alignment: 1), toSize: 49))
        slab.deallocate(small, layout: try Layout(size: 1, alignment: 1))
        slab._checkInvariants()
    }

    func testBlockAlignmentAbovePageSize() throws {
        let layout = try Layout(size: 100, alignment: 8192)
        let slab = try LockFreeSlab(layout: layout, capacity: 3, backing: SystemAllocator())
        XCTAssertEqual(slab.blockSize, 8192)
        let blocks = try (0..<3).map { _ in try slab.allocate(layout) }
        XCTAssertTrue(blocks.allSatisfy { $0.address % 8192 == 0 })
        for block in blocks { try slab.checkedDeallocate(block, layout: layout) }
        XCTAssertEqual(slab.approximateFreeCount, 3)
    }
}

// MARK: - Exhaustion, model check, bad frees, configuration

extension LockFreeSlabTests {
    func testExhaustionThrowsOutOfMemoryThenRecoversWhenABlockIsFreed() throws {
        let layout = try Layout(size: 32, alignment: 16)
        let slab = try LockFreeSlab(layout: layout, capacity: 7, backing: SystemAllocator())
        var blocks = try (0..<7).map { _ in try slab.allocate(layout) }
        for _ in 0..<3 {
            let error = assertAllocationError(.outOfMemory, "slab is full") { _ = try slab.allocate(layout) }
            XCTAssertEqual(error?.limit, 7, "the error names the capacity")
            XCTAssertEqual(slab.approximateFreeCount, 0, "a failed allocation changes nothing")
        }
        let victim = blocks.remove(at: 3)
        slab.deallocate(victim, layout: layout)
        let again = try slab.allocate(layout)
        XCTAssertEqual(again.start, victim.start, "the one free block is handed out again")
        assertAllocationError(.outOfMemory) { _ = try slab.allocate(layout) }
        blocks.append(again)
        for block in blocks { slab.deallocate(block, layout: layout) }
        slab._checkInvariants()
        XCTAssertEqual(Set(try (0..<7).map { _ in try slab.allocate(layout).start }).count, 7)
    }

    func testRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        print("LockFreeSlabTests.testRandomizedAgainstModel seed \(seed) (replay: DIVVY_TEST_SEED=\(seed))")
        let slab = try LockFreeSlab(
            layout: try Layout(size: 40, alignment: 8), capacity: 200, backing: SystemAllocator())
        let report = AllocatorModelCheck.run(
            slab, seed: seed, steps: 20_000, maxLive: 250, reallocate: true,
            layout: { random in try! Layout(size: Int.random(in: 0...40, using: &random), alignment: 8) },
            acceptFailure: { $0.code == .outOfMemory },
            afterEachStep: { _, liveBlocks in
                XCTAssertEqual(slab.approximateLiveCount, liveBlocks, "seed \(seed)")
            },
            deallocate: { block, layout in
                do { try slab.checkedDeallocate(block, layout: layout) } catch {
                    XCTFail("checkedDeallocate(\(block)) failed: \(error); seed \(seed)")
                }
            })
        XCTAssertGreaterThan(report.failures, 0, "maxLive above capacity: the run must hit a full slab (seed \(seed))")
        XCTAssertEqual(report.allocations, report.deallocations, "seed \(seed)")
        slab._checkInvariants()
        XCTAssertEqual(slab.approximateFreeCount, 200)
    }

    func testDoubleFreeIsReportedAndChangesNothing() throws {
        let layout = try Layout(size: 64, alignment: 8)
        let slab = try LockFreeSlab(layout: layout, capacity: 8, backing: SystemAllocator())
        let blocks = try (0..<5).map { _ in try slab.allocate(layout) }
        try slab.checkedDeallocate(blocks[2], layout: layout)
        XCTAssertEqual(slab.approximateFreeCount, 4)
        let error = assertAllocationError(.doubleFree, "second free of the same block") {
            try slab.checkedDeallocate(blocks[2], layout: layout)
        }
        XCTAssertEqual(error?.size, 64)
        XCTAssertEqual(slab.approximateFreeCount, 4, "a rejected free changes nothing")
        slab._checkInvariants()
        // A block that was never allocated is free too.
        let neverAllocated = slab.block(at: 7)
        assertAllocationError(.doubleFree, "free of a never-allocated block") {
            try slab.checkedDeallocate(neverAllocated, layout: layout)
        }
        XCTAssertEqual(slab.approximateFreeCount, 4)
        slab._checkInvariants()
        // The free list is intact: exactly the four free blocks come out, then the slab is full.
        let reissued = try (0..<4).map { _ in try slab.allocate(layout).start }
        XCTAssertEqual(
            Set(reissued),
            Set([
                blocks[2].start, slab.block(at: 5).start, slab.block(at: 6).start,
                slab.block(at: 7).start,
            ]))
        assertAllocationError(.outOfMemory) { _ = try slab.allocate(layout) }
    }

    func testForeignAndMisalignedBlocksAreReportedAndChangeNothing() throws {
        let layout = try Layout(size: 64, alignment: 64)
        let slab = try LockFreeSlab(layout: layout, capacity: 4, backing: SystemAllocator())
        let first = try slab.allocate(layout)
        let last = slab.block(at: 3)
        let outside = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        defer { outside.deallocate() }
        let candidates: [(String, UnsafeBlock)] = [
            ("unrelated memory", UnsafeBlock(start: outside, size: 64)),
            ("just below the first block", UnsafeBlock(start: first.start - 64, size: 64)),
            ("one past the last block", UnsafeBlock(start: last.start + 64, size: 64)),
            ("inside a block, off its boundary", UnsafeBlock(start: first.start + 8, size: 56)),
            ("one byte into the last block", UnsafeBlock(start: last.start + 1, size: 63)),
        ]
        for (name, block) in candidates {
            assertAllocationError(.foreignBlock, name) { try slab.checkedDeallocate(block, layout: layout) }
            XCTAssertEqual(slab.approximateFreeCount, 3, name)
        }
        XCTAssertTrue(slab.owns(first))
        XCTAssertTrue(slab.owns(last))
        XCTAssertFalse(slab.owns(candidates[0].1))
        XCTAssertFalse(slab.owns(candidates[1].1))
        XCTAssertFalse(slab.owns(candidates[2].1))
        XCTAssertNil(slab.blockIndex(of: candidates[3].1))
        XCTAssertEqual(slab.blockIndex(of: last), 3)
        slab._checkInvariants()
        try slab.checkedDeallocate(first, layout: layout)
        XCTAssertEqual(slab.approximateFreeCount, 4)
    }

    func testNonPowerOfTwoStrideMapsBlocksAndRejectsMisalignedOnes() throws {
        let layout = try Layout(size: 24, alignment: 8)  // stride 24: index by division
        let slab = try LockFreeSlab(layout: layout, capacity: 10, backing: SystemAllocator())
        XCTAssertEqual(slab.strideShift, -1)
        for index in UInt32(0)..<10 {
            XCTAssertEqual(slab.blockIndex(of: slab.block(at: index)), index)
            XCTAssertNil(slab.blockIndex(of: UnsafeBlock(start: slab.block(at: index).start + 8, size: 16)))
        }
        let powerOfTwo = try LockFreeSlab(
            layout: try Layout(size: 32, alignment: 8), capacity: 10, backing: SystemAllocator())
        XCTAssertEqual(powerOfTwo.strideShift, 5)
        for index in UInt32(0)..<10 {
            XCTAssertEqual(powerOfTwo.blockIndex(of: powerOfTwo.block(at: index)), index)
            XCTAssertNil(
                powerOfTwo.blockIndex(of: UnsafeBlock(start: powerOfTwo.block(at: index).start + 16, size: 16)))
        }
    }

    func testRejectsImpossibleConfigurations() throws {
        let counting = CountingAllocator(SystemAllocator())
        let layout = try Layout(size: 16, alignment: 8)
        assertAllocationError(.invalidConfiguration, "capacity 0") {
            _ = try LockFreeSlab(layout: layout, capacity: 0, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "negative capacity") {
            _ = try LockFreeSlab(layout: layout, capacity: -1, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "capacity beyond 32-bit indices") {
            _ = try LockFreeSlab(
                layout: layout, capacity: UnsafeLockFreeIndexStack.maximumCapacity + 1, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "zero-sized blocks") {
            _ = try LockFreeSlab(layout: try Layout(size: 0, alignment: 8), capacity: 4, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "alignment over 1 GiB") {
            _ = try LockFreeSlab(layout: try Layout(size: 8, alignment: 1 << 31), capacity: 4, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "capacity × size overflows") {
            _ = try LockFreeSlab(layout: try Layout(size: 1 << 40, alignment: 8), capacity: 1 << 30, backing: counting)
        }
        assertAllocationError(.invalidConfiguration, "builder: alignment 24") {
            _ = try SlabBuilder(size: 16, alignment: 24).finishLockFree(counting, capacity: 4)
        }
        assertAllocationError(.invalidConfiguration, "builder: zero size") {
            _ = try SlabBuilder(size: 0).finishLockFree(counting, capacity: 4)
        }
        assertAllocationError(.invalidConfiguration, "builder: region over the byte limit") {
            _ = try SlabBuilder(size: 64).limit(64 * 100).finishLockFree(counting, capacity: 100)
        }
        XCTAssertEqual(counting.allocations, 0, "a rejected configuration takes nothing from the backing allocator")
        // The backing allocator's own failure comes through unchanged.
        assertAllocationError(.outOfMemory, "backing fails") {
            _ = try LockFreeSlab(layout: layout, capacity: 4, backing: FailingAllocator())
        }
        // Free list: 128 + 4 × 100 bytes, rounded up to 64 → 576; then 100 blocks of 64 bytes.
        assertAllocationError(.invalidConfiguration, "builder: one byte over the limit") {
            _ = try SlabBuilder(size: 64).limit(576 + 64 * 100 - 1).finishLockFree(counting, capacity: 100)
        }
        XCTAssertEqual(counting.allocations, 0)
        let fits = try SlabBuilder(size: 64).limit(576 + 64 * 100).finishLockFree(counting, capacity: 100)
        XCTAssertEqual(fits.capacity, 100)
        XCTAssertEqual(fits.blockSize, 64)
    }

    func testTakesOneRegionFromTheBackingAndReturnsItOnDeinit() throws {
        let counting = CountingAllocator(SystemAllocator())
        do {
            let slab = try LockFreeSlab(layout: try Layout(size: 100, alignment: 32), capacity: 50, backing: counting)
            XCTAssertEqual(counting.allocations, 1)
            let region = try XCTUnwrap(counting.live.first)
            // Free list (128 + 4 × 50 = 328, rounded to 64 → 384) then 50 blocks of stride 128.
            XCTAssertEqual(region.value.size, 384 + 50 * 128)
            XCTAssertEqual(region.value.alignment, 64)
            for _ in 0..<50 { _ = try slab.allocate(try Layout(size: 100, alignment: 32)) }
            XCTAssertEqual(counting.allocations, 1, "allocation never calls the backing allocator")
        }
        XCTAssertEqual(counting.deallocations, 1)
        XCTAssertTrue(counting.live.isEmpty)
    }
}

// MARK: - The index stack on its own

extension LockFreeSlabTests {
    /// Raw memory for a stack, freed when the test ends.
    private func rawStackMemory(capacity: Int) -> UnsafeMutableRawPointer {
        let memory = UnsafeMutableRawPointer.allocate(
            byteCount: UnsafeLockFreeIndexStack.requiredBytes(capacity: capacity),
            alignment: UnsafeLockFreeIndexStack.requiredAlignment)
        addTeardownBlock { memory.deallocate() }
        return memory
    }

    func testStackOnRawMemoryAndAttachFromTheSameMemory() throws {
        XCTAssertEqual(UnsafeLockFreeIndexStack.requiredBytes(capacity: 10), 128 + 40)
        let memory = rawStackMemory(capacity: 10)
        memory.initializeMemory(
            as: UInt8.self, repeating: 0xA5, count: UnsafeLockFreeIndexStack.requiredBytes(capacity: 10))
        let stack = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: 10)
        XCTAssertEqual(stack.capacity, 10)
        XCTAssertEqual(stack.approximateCount, 10)
        XCTAssertEqual(stack.baseAddress, memory)
        XCTAssertEqual(
            [stack.pop(), stack.pop(), stack.pop()], [0, 1, 2], "a fresh stack hands out ascending indices")

        let attached = try UnsafeLockFreeIndexStack.attach(at: memory)
        XCTAssertEqual(attached.capacity, 10)
        XCTAssertEqual(attached.approximateCount, 7, "the second view sees the first one's pops")
        XCTAssertTrue(attached.isInUse(1))
        XCTAssertFalse(attached.isInUse(3))
        try attached.push(1)
        XCTAssertEqual(stack.approximateCount, 8)
        let error = assertAllocationError(.doubleFree, "index freed through the other view") { try stack.push(1) }
        XCTAssertEqual(error?.size, 1)
        XCTAssertEqual(stack.pop(), 1, "the index pushed through one view pops through the other")
        try stack.push(0)
        try attached.push(2)
        try stack.push(1)
        stack._checkInvariants()
        attached._checkInvariants()
        var drained: [UInt32] = []
        while let index = attached.pop() { drained.append(index) }
        XCTAssertEqual(drained.sorted(), Array(0..<10))
        XCTAssertNil(stack.pop())
        XCTAssertEqual(stack.approximateCount, 0)
        stack._checkInvariants()
    }

    func testAttachRejectsMemoryWithoutAStack() throws {
        let memory = rawStackMemory(capacity: 4)
        memory.initializeMemory(
            as: UInt8.self, repeating: 0, count: UnsafeLockFreeIndexStack.requiredBytes(capacity: 4))
        assertAllocationError(.invalidConfiguration, "zeroed memory") {
            _ = try UnsafeLockFreeIndexStack.attach(at: memory)
        }
        assertAllocationError(.invalidConfiguration, "misaligned") {
            _ = try UnsafeLockFreeIndexStack.attach(at: memory + 4)
        }
        _ = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: 4)
        // A header whose capacity is impossible is rejected, not trusted.
        memory.storeBytes(of: 0, toByteOffset: UnsafeLockFreeIndexStack.capacityOffset, as: UInt32.self)
        assertAllocationError(.invalidConfiguration, "capacity 0 in the header") {
            _ = try UnsafeLockFreeIndexStack.attach(at: memory)
        }
        memory.storeBytes(of: 4, toByteOffset: UnsafeLockFreeIndexStack.capacityOffset, as: UInt32.self)
        XCTAssertEqual(try UnsafeLockFreeIndexStack.attach(at: memory).capacity, 4)
    }

    func testStackRejectsOutOfRangeIndicesAndChangesNothing() throws {
        let stack = UnsafeLockFreeIndexStack.initialize(at: rawStackMemory(capacity: 3), capacity: 3)
        let popped = try XCTUnwrap(stack.pop())
        let before = stack._head
        for index: UInt32 in [3, 4, 0xFFFF_FFFE, 0xFFFF_FFFF] {
            assertAllocationError(.foreignBlock, "index \(index)") { try stack.push(index) }
        }
        XCTAssertTrue(stack._head == before)
        XCTAssertEqual(stack.approximateCount, 2)
        try stack.push(popped)
        stack._checkInvariants()
    }

    func testHeadTagAdvancesOnEverySuccessfulPopAndPushOnly() throws {
        let stack = UnsafeLockFreeIndexStack.initialize(at: rawStackMemory(capacity: 2), capacity: 2)
        XCTAssertTrue(stack._head == (0, 0))
        XCTAssertEqual(stack.pop(), 0)
        XCTAssertTrue(stack._head == (1, 1))
        XCTAssertEqual(stack.pop(), 1)
        XCTAssertTrue(stack._head == (0xFFFF_FFFF, 2), "empty")
        XCTAssertNil(stack.pop())
        XCTAssertTrue(stack._head == (0xFFFF_FFFF, 2), "a pop from the empty stack changes nothing")
        try stack.push(1)
        XCTAssertTrue(stack._head == (1, 3))
        assertAllocationError(.doubleFree) { try stack.push(1) }
        XCTAssertTrue(stack._head == (1, 3), "a rejected push changes nothing")
        try stack.push(0)
        XCTAssertTrue(stack._head == (0, 4))
        // The same index on top again (0, then 0 after a pop and push) carries a different tag: that is what
        // defeats ABA.
        XCTAssertEqual(stack.pop(), 0)
        try stack.push(0)
        XCTAssertTrue(stack._head == (0, 6))
        stack._checkInvariants()
    }

    func testSequentialDetectionCatchesDoubleFreesAndChangesNothing() throws {
        let memory = UnsafeMutableRawPointer.allocate(
            byteCount: UnsafeLockFreeIndexStack.requiredBytes(capacity: 3),
            alignment: UnsafeLockFreeIndexStack.requiredAlignment)
        defer { memory.deallocate() }
        let stack = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: 3)
        let a = try XCTUnwrap(stack.pop())
        let b = try XCTUnwrap(stack.pop())
        XCTAssertEqual(stack.approximateCount, 1)
        try stack.push(a, detection: .sequential)
        XCTAssertEqual(stack.approximateCount, 2)
        let before = stack._head
        assertAllocationError(.doubleFree) { try stack.push(a, detection: .sequential) }
        assertAllocationError(.doubleFree) { try stack.push(2, detection: .sequential) }  // never popped
        assertAllocationError(.foreignBlock) { try stack.push(3, detection: .sequential) }
        XCTAssertTrue(stack._head == before, "rejected pushes change nothing")
        XCTAssertEqual(stack.approximateCount, 2)
        XCTAssertTrue(stack.isInUse(b))
        try stack.push(b, detection: .sequential)
        XCTAssertEqual(stack.approximateCount, 3)
        stack._checkInvariants()
        // The list is intact: every index comes out exactly once.
        var seen = Set<UInt32>()
        while let index = stack.pop() { XCTAssertTrue(seen.insert(index).inserted) }
        XCTAssertEqual(seen, [0, 1, 2])
    }

    func testHeadTagWrapsAround() throws {
        let memory = rawStackMemory(capacity: 2)
        let stack = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: 2)
        // Put the tag just below the wrap.
        stack.head.store(UnsafeLockFreeIndexStack.pack(index: 0, tag: 0xFFFF_FFFF), ordering: .relaxed)
        XCTAssertEqual(stack.pop(), 0)
        XCTAssertTrue(stack._head == (1, 0))
        try stack.push(0)
        XCTAssertTrue(stack._head == (0, 1))
        stack._checkInvariants()
    }

    /// The ABA scenario, step by step: thread A reads top = 0 with successor 1 and stalls; meanwhile B pops 0,
    /// pops 1 and pushes 0 back. The top is 0 again, but 0's successor is now "end" and 1 is in use. A plain
    /// Treiber stack would let A's exchange succeed and install 1 (in use!) as the new top. The tag makes it fail.
    func testDeterministicABAInterleavingFailsTheStalePop() throws {
        let stack = UnsafeLockFreeIndexStack.initialize(at: rawStackMemory(capacity: 2), capacity: 2)
        // A, step 1.
        let staleA = try XCTUnwrap(stack._popPrepare(stack.head.load(ordering: .acquiring)))
        XCTAssertEqual(staleA.index, 0)
        XCTAssertEqual(staleA.next, 1)
        // B runs to completion.
        XCTAssertEqual(stack.pop(), 0)
        XCTAssertEqual(stack.pop(), 1)
        try stack.push(0)
        XCTAssertEqual(stack._head.index, 0, "same top index as A saw: the ABA situation")
        // A, step 2: must fail and report the current head.
        let current = try XCTUnwrap(stack._popCommit(staleA), "the stale pop must not succeed")
        XCTAssertEqual(UnsafeLockFreeIndexStack.index(of: current), 0)
        XCTAssertTrue(stack.isInUse(1), "1 stays B's")
        // A retries from the fresh head and gets 0, whose successor is now the end of the list.
        let retry = try XCTUnwrap(stack._popPrepare(current))
        XCTAssertEqual(retry.next, 0xFFFF_FFFF)
        XCTAssertNil(stack._popCommit(retry))
        XCTAssertNil(stack.pop(), "both indices are in use")
        try stack.push(1)
        try stack.push(0)
        stack._checkInvariants()
    }

    /// A push whose exchange loses to a concurrent pop relinks its index to the new top and retries; a second push
    /// of the same index while the first is in flight is already a double free.
    func testDeterministicPushRetryRelinksAndConcurrentDoubleFreeLoses() throws {
        let stack = UnsafeLockFreeIndexStack.initialize(at: rawStackMemory(capacity: 3), capacity: 3)
        XCTAssertEqual(stack.pop(), 0)
        // Pusher A claims index 0, linking it to the current top (1).
        let observed = try stack._pushClaim(0)
        XCTAssertEqual(UnsafeLockFreeIndexStack.index(of: observed), 1)
        // A racing second free of 0 (B) fails: the slot is no longer marked in use.
        assertAllocationError(.doubleFree) { _ = try stack._pushClaim(0) }
        // C pops 1 before A commits.
        XCTAssertEqual(stack.pop(), 1)
        // A's exchange fails, 0 is relinked to the new top (2), and the retry succeeds.
        let current = try XCTUnwrap(stack._pushCommit(0, observed))
        XCTAssertEqual(UnsafeLockFreeIndexStack.index(of: current), 2)
        XCTAssertEqual(stack.link(0).load(ordering: .relaxed), 2)
        XCTAssertNil(stack._pushCommit(0, current))
        XCTAssertEqual([stack.pop(), stack.pop(), stack.pop()], [0, 2, nil])
        for index: UInt32 in [0, 1, 2] { try stack.push(index) }
        stack._checkInvariants()
    }
}

// MARK: - Shared memory

/// Two mappings, at different addresses, of one POSIX shared memory object (unlinked at once), unmapped at teardown.
private func twoSharedMappings(bytes: Int, test: XCTestCase) throws -> (
    UnsafeMutableRawPointer, UnsafeMutableRawPointer
) {
    let name = "/divvy-lockfree-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o600)
    guard fd >= 0 else { throw XCTSkip("shm_open failed (errno \(errno)); no POSIX shared memory here") }
    shm_unlink(name)
    defer { close(fd) }
    guard ftruncate(fd, off_t(bytes)) == 0 else { throw XCTSkip("ftruncate failed (errno \(errno))") }
    var maps: [UnsafeMutableRawPointer] = []
    for _ in 0..<2 {
        guard let map = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), map != MAP_FAILED else {
            throw XCTSkip("mmap failed (errno \(errno))")
        }
        test.addTeardownBlock { munmap(map, bytes) }
        maps.append(map)
    }
    return (maps[0], maps[1])
}

extension LockFreeSlabTests {
    /// The stack is position independent: built through one mapping, attached through another at a different
    /// address, both views see and change the same free list — including double-free detection across views, and
    /// concurrent use of both views at once.
    func testStackInTwoMappingsOfSharedMemory() throws {
        let capacity = 8
        let bytes = UnsafeLockFreeIndexStack.requiredBytes(capacity: capacity)
        let (first, second) = try twoSharedMappings(bytes: bytes, test: self)
        XCTAssertNotEqual(first, second)
        assertAllocationError(.invalidConfiguration, "nothing initialized yet") {
            _ = try UnsafeLockFreeIndexStack.attach(at: second)
        }
        let a = UnsafeLockFreeIndexStack.initialize(at: first, capacity: capacity)
        let b = try UnsafeLockFreeIndexStack.attach(at: second)
        XCTAssertEqual(b.capacity, capacity)
        XCTAssertEqual(a.pop(), 0)
        XCTAssertEqual(b.pop(), 1, "the second view continues where the first left off")
        XCTAssertTrue(b.isInUse(0))
        try b.push(0)
        assertAllocationError(.doubleFree, "freed through the other mapping already") { try a.push(0) }
        try a.push(1)
        XCTAssertEqual(a.approximateCount, capacity)
        b._checkInvariants()

        // One thread per view, popping and pushing at once.
        let seed = SeededGenerator.testSeed()
        print(
            "LockFreeSlabTests.testStackInTwoMappingsOfSharedMemory seed \(seed) (replay: DIVVY_TEST_SEED=\(seed))")
        let views = [a, b]
        let owned = (0..<capacity).map { _ in ManagedAtomic<Bool>(false) }
        let problems = Problems()
        runConcurrently(2) { t in
            var random = SeededGenerator(seed: seed &+ UInt64(t))
            var held: [UInt32] = []
            for _ in 0..<4_000 {
                if Bool.random(using: &random), let index = views[t].pop() {
                    if owned[Int(index)].exchange(true, ordering: .relaxed) {
                        problems.report("view \(t): index \(index) popped while held")
                    }
                    held.append(index)
                } else if let index = held.popLast() {
                    owned[Int(index)].store(false, ordering: .relaxed)
                    do throws(AllocationError) { try views[t].push(index) } catch {
                        problems.report("view \(t): push of \(index) failed: \(error)")
                    }
                }
            }
            for index in held {
                owned[Int(index)].store(false, ordering: .relaxed)
                do throws(AllocationError) { try views[t].push(index) } catch {
                    problems.report("view \(t): final push of \(index) failed: \(error)")
                }
            }
        }
        XCTAssertEqual(problems.all, [], "seed \(seed)")
        XCTAssertEqual(b.approximateCount, capacity, "seed \(seed)")
        a._checkInvariants()
        var drained: [UInt32] = []
        while let index = b.pop() { drained.append(index) }
        XCTAssertEqual(drained.sorted(), Array(0..<UInt32(capacity)), "seed \(seed)")
    }
}

// MARK: - Concurrency

/// Runs `body(t)` on `count` new threads that start together, and waits for all of them.
private func runConcurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let ready = ManagedAtomic<Int>(0)
    let done = DispatchSemaphore(value: 0)
    for t in 0..<count {
        let thread = Thread {
            ready.wrappingIncrement(ordering: .relaxed)
            while ready.load(ordering: .relaxed) < count { sched_yield() }
            body(t)
            done.signal()
        }
        thread.start()
    }
    for _ in 0..<count { done.wait() }
}

/// A block handed from one thread to another, with the token its content was stamped with.
private struct Parcel: Sendable {
    var block: UnsafeBlock
    var token: UInt64
}

/// Per-thread mailboxes for handing blocks across threads.

private final class Mailboxes: Sendable {
    final class Box: Sendable {
        let parcels = Locked<[Parcel]>([])
    }
    let boxes: [Box]
    init(count: Int) { boxes = (0..<count).map { _ in Box() } }
    func send(_ parcel: Parcel, to thread: Int) { boxes[thread].parcels.withLock { $0.append(parcel) } }
    func takeOne(_ thread: Int) -> Parcel? {
        boxes[thread].parcels.withLock { box in box.isEmpty ? nil : box.removeFirst() }
    }
    func takeAll(_ thread: Int) -> [Parcel] {
        boxes[thread].parcels.withLock { box in
            defer { box = [] }
            return box
        }
    }
}

// The block and payload accesses below go through typed pointers' `pointee` on purpose: in debug builds the raw
// pointer `load`/`storeBytes` are calls into the (uninstrumented) standard library, invisible to ThreadSanitizer,
// whereas `pointee` is inlined into this instrumented code — so TSan checks that the slab's memory orderings
// really order these plain accesses between threads.

/// Stamps a block with `token`: word `k` of the block holds `token + k`.
private func stamp(_ block: UnsafeBlock, _ token: UInt64) {
    let words = block.start.assumingMemoryBound(to: UInt64.self)
    for k in 0..<block.size / 8 { (words + k).pointee = token &+ UInt64(k) }
}

/// Whether a block still holds `token`'s stamp.
private func holdsStamp(_ block: UnsafeBlock, _ token: UInt64) -> Bool {
    let words = block.start.assumingMemoryBound(to: UInt64.self)
    for k in 0..<block.size / 8 where (words + k).pointee != token &+ UInt64(k) { return false }
    return true
}

/// Problems found on worker threads, reported by the test afterwards.
private final class Problems: Sendable {
    private let messages = Locked<[String]>([])
    func report(_ message: String) { messages.withLock { $0.append(message) } }
    var all: [String] { messages.withLock { $0 } }
}

/// Shared state of the hand-off stress test.
private final class HandOffContext: Sendable {
    let slab: LockFreeSlab<SystemAllocator>
    let layout: Layout
    let owners: [ManagedAtomic<Bool>]
    let problems: Problems
    let frees: ManagedAtomic<Int>

    init(
        slab: LockFreeSlab<SystemAllocator>, layout: Layout, owners: [ManagedAtomic<Bool>], problems: Problems,
        frees: ManagedAtomic<Int>
    ) {
        self.slab = slab
        self.layout = layout
        self.owners = owners
        self.problems = problems
        self.frees = frees
    }

    /// Checks a parcel's stamp, clears its owner flag and frees it.
    func release(_ parcel: Parcel, by thread: Int) {
        if !holdsStamp(parcel.block, parcel.token) {
            problems.report("thread \(thread): block \(parcel.block) lost stamp \(parcel.token) while held")
        }
        guard let index = slab.blockIndex(of: parcel.block) else {
            return problems.report("block \(parcel.block) not in slab")
        }
        // Ordering: relaxed is enough for the flag; the block itself is ordered by the slab.
        if !owners[Int(index)].exchange(false, ordering: .relaxed) {
            problems.report("thread \(thread): block \(index) freed while not owned")
        }
        // Alternate between the exact (checked) and the sequential (trapping) free paths, so both run under TSan.
        if parcel.token & 1 == 0 {
            slab.deallocate(parcel.block, layout: layout)
        } else {
            do { try slab.checkedDeallocate(parcel.block, layout: layout) } catch {
                problems.report("thread \(thread): free of block \(index) failed: \(error)")
            }
        }
        frees.wrappingIncrement(ordering: .relaxed)
    }
}

/// Lets threads that have done their share keep draining their mailboxes until every thread is done (after
/// which nobody sends any more), so no thread waits forever for blocks mailed to a finished one.
private final class FinishLine: Sendable {
    private let count = ManagedAtomic<Int>(0)

    func drainMailUntilAllFinished(_ thread: Int, threads: Int, mail: Mailboxes, _ handle: (Parcel) -> Void) {
        count.wrappingIncrement(ordering: .relaxed)
        while true {
            // Read before draining: once everyone is finished, the drain that follows is the last one needed.
            let allFinished = count.load(ordering: .relaxed) == threads
            for parcel in mail.takeAll(thread) { handle(parcel) }
            if allFinished { return }
            sched_yield()
        }
    }
}

extension LockFreeSlabTests {
    /// Several threads allocate, stamp blocks, keep some and mail others to other threads, which check and free them
    /// (remote frees). Each block also has an owner flag: allocation must find it clear (no block is handed to
    /// two holders at once) and freeing clears it. At the end every block is free exactly once.
    func testStressConcurrentAllocateHandOffAndRemoteFree() throws {
        let seed = SeededGenerator.testSeed()
        print(
            "LockFreeSlabTests.testStressConcurrentAllocateHandOffAndRemoteFree seed \(seed) "
                + "(replay: DIVVY_TEST_SEED=\(seed))"
        )
        let threads = 4
        let allocationsPerThread = 3_000
        let capacity = 96
        let layout = try Layout(size: 48, alignment: 16)
        let slab = try LockFreeSlab(layout: layout, capacity: capacity, backing: SystemAllocator())
        let owners = (0..<capacity).map { _ in ManagedAtomic<Bool>(false) }
        let mail = Mailboxes(count: threads)
        let allocations = ManagedAtomic<Int>(0)
        let frees = ManagedAtomic<Int>(0)
        let fullSlabFailures = ManagedAtomic<Int>(0)
        let finished = FinishLine()
        let problems = Problems()

        let context = HandOffContext(slab: slab, layout: layout, owners: owners, problems: problems, frees: frees)

        runConcurrently(threads) { t in
            var random = SeededGenerator(seed: seed &+ UInt64(t))
            var held: [Parcel] = []
            var sequence: UInt64 = 0
            // Count successful allocations, not steps: a thread that finds the slab full must wait for the others
            // (whose blocks it may hold in its mailbox) rather than burn its steps alone.
            while sequence < allocationsPerThread {
                let roll = Int.random(in: 0..<100, using: &random)
                if roll < 40 {
                    do throws(AllocationError) {
                        let block = try slab.allocate(layout)
                        allocations.wrappingIncrement(ordering: .relaxed)
                        guard let index = slab.blockIndex(of: block) else {
                            problems.report("allocated \(block) not in slab")
                            continue
                        }
                        if owners[Int(index)].exchange(true, ordering: .relaxed) {
                            problems.report("thread \(t): block \(index) handed out while already held")
                        }
                        sequence &+= 1
                        let parcel = Parcel(block: block, token: UInt64(t) << 48 | sequence)
                        stamp(block, parcel.token)
                        if Bool.random(using: &random) {
                            mail.send(parcel, to: Int.random(in: 0..<threads, using: &random))
                        } else {
                            held.append(parcel)
                        }
                    } catch {
                        if error.code != .outOfMemory { problems.report("thread \(t): unexpected \(error)") }
                        fullSlabFailures.wrappingIncrement(ordering: .relaxed)
                        // Make room: everything mailed to us, and half of what we hold.
                        for parcel in mail.takeAll(t) { context.release(parcel, by: t) }
                        for _ in 0..<(held.count + 1) / 2 { context.release(held.removeLast(), by: t) }
                        sched_yield()
                    }
                } else if roll < 70 {
                    if !held.isEmpty {
                        context.release(held.remove(at: Int.random(in: 0..<held.count, using: &random)), by: t)
                    }
                } else {
                    for parcel in mail.takeAll(t) { context.release(parcel, by: t) }
                }
            }
            for parcel in held { context.release(parcel, by: t) }
            finished.drainMailUntilAllFinished(t, threads: threads, mail: mail) { context.release($0, by: t) }
        }
        // Nothing can be left in the mailboxes; free anything that is, so the accounting below catches it.
        for t in 0..<threads { for parcel in mail.takeAll(t) { context.release(parcel, by: t) } }

        XCTAssertEqual(problems.all, [], "seed \(seed)")
        XCTAssertEqual(allocations.load(ordering: .relaxed), frees.load(ordering: .relaxed), "seed \(seed)")
        XCTAssertGreaterThan(allocations.load(ordering: .relaxed), 0)
        XCTAssertEqual(slab.approximateFreeCount, capacity, "seed \(seed)")
        slab._checkInvariants()
        print(
            "  \(allocations.load(ordering: .relaxed)) allocations, "
                + "\(fullSlabFailures.load(ordering: .relaxed)) hit a full slab"
        )
        // Final drain: every block comes out exactly once, then the slab is full.
        var drained = Set<UInt32>()
        for _ in 0..<capacity {
            let block = try slab.allocate(layout)
            XCTAssertTrue(drained.insert(try XCTUnwrap(slab.blockIndex(of: block))).inserted, "seed \(seed)")
        }
        XCTAssertEqual(drained, Set(0..<UInt32(capacity)))
        assertAllocationError(.outOfMemory) { _ = try slab.allocate(layout) }
    }

    /// Several threads free the same blocks at the same time: for each block exactly one free succeeds and every
    /// other reports `.doubleFree`; the slab ends with every block free exactly once.
    func testStressRacingDoubleFreesExactlyOneWins() throws {
        let seed = SeededGenerator.testSeed()
        print(
            "LockFreeSlabTests.testStressRacingDoubleFreesExactlyOneWins seed \(seed) (replay: DIVVY_TEST_SEED=\(seed))"
        )
        let threads = 4
        let rounds = 60
        let capacity = 32
        let layout = try Layout(size: 32, alignment: 8)
        let slab = try LockFreeSlab(layout: layout, capacity: capacity, backing: SystemAllocator())
        let problems = Problems()
        var random = SeededGenerator(seed: seed)
        for round in 0..<rounds {
            // Allocate a random subset; each racer frees all of them, in its own random order.
            let count = Int.random(in: 1...capacity, using: &random)
            let blocks = try (0..<count).map { _ in try slab.allocate(layout) }
            let wins = (0..<count).map { _ in ManagedAtomic<Int>(0) }
            let roundSeed = random.next()
            runConcurrently(threads) { t in
                var order = Array(0..<count)
                var threadRandom = SeededGenerator(seed: roundSeed &+ UInt64(t))
                order.shuffle(using: &threadRandom)
                for i in order {
                    do throws(AllocationError) {
                        try slab.checkedDeallocate(blocks[i], layout: layout)
                        wins[i].wrappingIncrement(ordering: .relaxed)
                    } catch  where error.code == .doubleFree {
                    } catch {
                        problems.report("round \(round) thread \(t): unexpected \(error)")
                    }
                }
            }
            let winners = wins.map { $0.load(ordering: .relaxed) }
            XCTAssertEqual(winners, Array(repeating: 1, count: count), "round \(round), seed \(seed)")
            XCTAssertEqual(slab.approximateFreeCount, capacity, "round \(round), seed \(seed)")
            slab._checkInvariants()
            if winners != Array(repeating: 1, count: count) { break }
        }
        XCTAssertEqual(problems.all, [], "seed \(seed)")
        let drained = Set(try (0..<capacity).map { _ in try slab.allocate(layout).start })
        XCTAssertEqual(drained.count, capacity)
        assertAllocationError(.outOfMemory) { _ = try slab.allocate(layout) }
    }

    /// The stack alone, under contention with a tiny capacity (so indices recycle constantly and the ABA tag is
    /// needed): threads pop indices, keep some and hand others to another thread, which pushes them (remote
    /// frees). Each index has an owner flag that must be clear when it is popped. At the end each index is free
    /// exactly once. (Racing double pushes are tested in rounds by `testStressRacingDoubleFreesExactlyOneWins`:
    /// a second free that races with a re-pop of the same index is, by design, indistinguishable from its new
    /// owner's free.)
    func testStressStackPopPushAndRemotePush() throws {
        let seed = SeededGenerator.testSeed()
        print(
            "LockFreeSlabTests.testStressStackPopPushAndRemotePush seed \(seed) (replay: DIVVY_TEST_SEED=\(seed))")
        let threads = 4
        let popsPerThread = 5_000
        let finished = FinishLine()
        let capacity = 6
        let memory = rawStackMemory(capacity: capacity)
        let stack = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: capacity)
        let owned = (0..<capacity).map { _ in ManagedAtomic<Bool>(false) }
        let mail = Mailboxes(count: threads)
        let placeholder = UnsafeBlock(start: memory, size: 0)  // parcels here carry an index in `token`, no block
        // A plain (non-atomic) counter per index, bumped by its holder after each pop and before each push: only the
        // stack's memory orderings make these accesses race-free, so ThreadSanitizer checks them; lost updates
        // would show in the final counts.
        let payloadMemory = UnsafeMutableRawPointer.allocate(byteCount: 8 * capacity, alignment: 8)
        payloadMemory.initializeMemory(as: UInt64.self, repeating: 0, count: capacity)
        defer { payloadMemory.deallocate() }
        let payload = UnsafeBlock(start: payloadMemory, size: 8 * capacity)
        @Sendable func bump(_ index: UInt32) {
            (payload.start.assumingMemoryBound(to: UInt64.self) + Int(index)).pointee &+= 1
        }
        let popsOfIndex = (0..<capacity).map { _ in ManagedAtomic<Int>(0) }
        let pops = ManagedAtomic<Int>(0)
        let pushes = ManagedAtomic<Int>(0)
        let problems = Problems()

        runConcurrently(threads) { t in
            var random = SeededGenerator(seed: seed &+ UInt64(t))
            var held: [UInt32] = []
            func push(_ index: UInt32) {
                // Ordering: relaxed; the index's hand-over is ordered by the stack (or the mailbox's lock).
                bump(index)
                if !owned[Int(index)].exchange(false, ordering: .relaxed) {
                    problems.report("thread \(t): index \(index) pushed while not owned")
                }
                do throws(AllocationError) {
                    try stack.push(index)
                    pushes.wrappingIncrement(ordering: .relaxed)
                } catch {
                    problems.report("thread \(t): push of index \(index) failed: \(error)")
                }
            }
            var popped = 0
            while popped < popsPerThread {
                let roll = Int.random(in: 0..<100, using: &random)
                if roll < 50 {
                    guard let index = stack.pop() else {
                        // Empty: give back what we hold and what was mailed to us, and let the others run.
                        if let index = held.popLast() { push(index) }
                        for parcel in mail.takeAll(t) { push(UInt32(parcel.token)) }
                        sched_yield()
                        continue
                    }
                    popped += 1
                    pops.wrappingIncrement(ordering: .relaxed)
                    if owned[Int(index)].exchange(true, ordering: .relaxed) {
                        problems.report("thread \(t): index \(index) popped while already held")
                    }
                    popsOfIndex[Int(index)].wrappingIncrement(ordering: .relaxed)
                    bump(index)
                    if roll < 20 {
                        mail.send(
                            Parcel(block: placeholder, token: UInt64(index)),
                            to: Int.random(in: 0..<threads, using: &random))
                    } else {
                        held.append(index)
                    }
                } else if roll < 85 {
                    if let index = held.popLast() { push(index) }
                } else {
                    for parcel in mail.takeAll(t) { push(UInt32(parcel.token)) }
                }
            }
            for index in held { push(index) }
            finished.drainMailUntilAllFinished(t, threads: threads, mail: mail) { push(UInt32($0.token)) }
        }
        for t in 0..<threads {
            for parcel in mail.takeAll(t) {
                bump(UInt32(parcel.token))
                owned[Int(parcel.token)].store(false, ordering: .relaxed)
                try stack.push(UInt32(parcel.token))
                pushes.wrappingIncrement(ordering: .relaxed)
            }
        }
        XCTAssertEqual(problems.all, [], "seed \(seed)")
        XCTAssertEqual(
            pops.load(ordering: .relaxed), pushes.load(ordering: .relaxed), "every pop pushed back once; seed \(seed)")
        XCTAssertEqual(stack.approximateCount, capacity, "seed \(seed)")
        for index in 0..<capacity {
            XCTAssertEqual(
                (payload.start.assumingMemoryBound(to: UInt64.self) + index).pointee,
                UInt64(2 * popsOfIndex[index].load(ordering: .relaxed)), "index \(index): a lost update; seed \(seed)")
        }
        stack._checkInvariants()
        print("  \(pops.load(ordering: .relaxed)) pops")
        var drained: [UInt32] = []
        while let index = stack.pop() { drained.append(index) }
        XCTAssertEqual(drained.sorted(), Array(0..<UInt32(capacity)), "seed \(seed)")
    }
}
