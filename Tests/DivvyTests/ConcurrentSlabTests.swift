import Divvy
import DivvyTestSupport
import Atomics
import Foundation
import Synchronization
import XCTest

#if canImport(Glibc)
import Glibc
#endif


/// A thread-safe counting wrapper over `SystemAllocator`, so tests can see refills come and go (the concurrent
/// slab's backing must be `Sendable`: its last owner may go away on any thread).
private final class CSlabCountingAllocator: Allocator, Sendable {
    struct Counts {
        var allocations = 0
        var deallocations = 0
        var live: [UInt: Layout] = [:]
    }
    let counts = Locked(Counts())
    /// Bytes by which every returned block is shifted (to simulate a backing that ignores alignment); 0 normally.
    let misalignment: Int

    init(misalignBy misalignment: Int = 0) { self.misalignment = misalignment }

    var liveCount: Int { counts.withLock { $0.live.count } }
    var liveLayouts: [Layout] { counts.withLock { Array($0.live.values) } }
    var allocations: Int { counts.withLock { $0.allocations } }
    var deallocations: Int { counts.withLock { $0.deallocations } }

    func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let real = try SystemAllocator().allocate(Layout(uncheckedSize: layout.size + misalignment, alignment: layout.alignment))
        let block = UnsafeBlock(start: real.start + misalignment, size: layout.size)
        counts.withLock {
            precondition($0.live[block.address] == nil, "CSlabCountingAllocator: address handed out twice")
            $0.live[block.address] = layout
            $0.allocations += 1
        }
        return block
    }

    func deallocate(_ block: UnsafeBlock, layout: Layout) {
        counts.withLock {
            precondition($0.live[block.address] == layout, "CSlabCountingAllocator: bad free of \(block) with \(layout)")
            $0.live[block.address] = nil
            $0.deallocations += 1
        }
        SystemAllocator().deallocate(UnsafeBlock(start: block.start - misalignment, size: block.size), layout: layout)
    }
}

/// Runs `body(index)` on `count` new threads and waits for all of them.
///
/// When this returns, no thread holds `body` (or anything it captured) any more: the threads reach `body` through a
/// box that is emptied here, so tests can check that captured slab handles are gone.
private func cslabRunOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    let holder = Locked<(@Sendable (Int) -> Void)?>(body)
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            do {
                let work = holder.withLock { $0 }
                work?(index)
            }
            group.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    group.wait()
    holder.withLock { $0 = nil }
}

final class ConcurrentSlabTests: XCTestCase {
    func testAllocatesDistinctAlignedBlocksAndReusesFreedOnes() throws {
        let (local, shared) = try SlabBuilder(size: 24, alignment: 8).pageSize(4096).growthPolicy(.fixed(16384))
            .finish(SystemAllocator())
        let layout = try Layout(size: 24, alignment: 8)
        var blocks: [UnsafeBlock] = []
        for _ in 0..<1000 { blocks.append(try local.allocate(layout)) }
        XCTAssertEqual(Set(blocks.map(\.start)).count, 1000)
        XCTAssertTrue(blocks.allSatisfy { $0.address % 8 == 0 && $0.size == 24 })
        XCTAssertTrue(blocks.allSatisfy { $0.address % 4096 >= 128 }, "no block overlaps a page header")
        XCTAssertEqual(local.liveBlocks, 1000)
        // (4096 - 128) / 24 = 165 blocks per page, so 1000 blocks fill 7 pages; refills are 4 pages each.
        XCTAssertEqual(local.pageCount, 7)
        XCTAssertEqual(local.refillCount, 2)
        XCTAssertEqual(local.footprint, 2 * 16384)
        local._checkInvariants()

        let freed = blocks.removeLast()
        local.deallocate(freed, layout: layout)
        XCTAssertEqual(try local.allocate(layout).start, freed.start, "LIFO reuse of a locally freed block")
        local._checkInvariants()

        // A block on an exhausted page, freed locally, makes that page available again.
        let early = blocks.removeFirst()
        local.deallocate(early, layout: layout)
        local._checkInvariants()
        XCTAssertEqual(local.liveBlocks, 999)
        for block in blocks { shared.deallocate(block, layout: layout) }
        XCTAssertEqual(local.liveBlocks, 1, "remote frees are counted once collected")
        local._checkInvariants()
        XCTAssertEqual(local.remoteFreesCollected, 998)
    }

    func testRejectsLayoutsThatDoNotFitTheBlocks() throws {
        let (local, _) = try SlabBuilder(size: 24, alignment: 8).finish(SystemAllocator())
        assertAllocationError(.unsupportedLayout) { _ = try local.allocate(Layout(size: 25, alignment: 8)) }
        assertAllocationError(.unsupportedLayout) { _ = try local.allocate(Layout(size: 8, alignment: 16)) }
        XCTAssertEqual(local.liveBlocks, 0)
        XCTAssertEqual(local.footprint, 0, "a rejected layout takes no refill")
        XCTAssertEqual(local.goodSize(for: try Layout(size: 1, alignment: 1)), 24)
    }

    func testOwns() throws {
        let (local, _) = try SlabBuilder(size: 32).pageSize(4096).growthPolicy(.fixed(8192))
            .finish(SystemAllocator())
        let layout = try Layout(size: 32)
        let blocks = try (0..<300).map { _ in try local.allocate(layout) }
        XCTAssertTrue(blocks.allSatisfy { local.owns($0) })
        let foreign = try SystemAllocator().allocate(layout)
        XCTAssertFalse(local.owns(foreign))
        SystemAllocator().deallocate(foreign, layout: layout)
        let header = UnsafeBlock(start: blocks[0].start - Int(blocks[0].address % 4096), size: 32)
        XCTAssertFalse(local.owns(header), "a page header is not a block")
    }

    func testLargeAlignment() throws {
        let (local, shared) = try SlabBuilder(size: 100, alignment: 256).pageSize(4096).finish(SystemAllocator())
        let layout = try Layout(size: 100, alignment: 256)
        let blocks = try (0..<100).map { _ in try local.allocate(layout) }
        XCTAssertTrue(blocks.allSatisfy { $0.address % 256 == 0 && $0.size == 256 })
        // The header takes the first 256-byte slot: 15 blocks per 4 KiB page.
        XCTAssertEqual(local.pageCount, 7)
        for block in blocks { shared.deallocate(block, layout: layout) }
        XCTAssertEqual(local.liveBlocks, 0)
        local._checkInvariants()
    }
}

// MARK: - Model-based

extension ConcurrentSlabTests {
    func testRandomizedAgainstModel() throws {
        let seed = SeededGenerator.testSeed()
        let (local, _) = try SlabBuilder(size: 40, alignment: 8).pageSize(4096)
            .growthPolicy(.pow2(initial: 4096, maximum: 32768)).finish(SystemAllocator())
        var mismatch = false
        let report = AllocatorModelCheck.run(
            local, seed: seed, steps: 20_000,
            layout: { random in try! Layout(size: Int.random(in: 1...40, using: &random), alignment: 8) },
            afterEachStep: { _, liveBlocks in
                if !mismatch && local.liveBlocks != liveBlocks {
                    mismatch = true
                    XCTFail("liveBlocks \(local.liveBlocks) != model's \(liveBlocks) [seed \(seed)]")
                }
            })
        XCTAssertEqual(report.allocations, report.deallocations)
        local._checkInvariants()
        XCTAssertEqual(local.liveBlocks, 0)
    }

    /// The same check, freeing each block at random through the local or the shared side.
    func testRandomizedAgainstModelWithRemoteFrees() throws {
        let seed = SeededGenerator.testSeed()
        let (local, shared) = try SlabBuilder(size: 64, alignment: 16).pageSize(4096)
            .growthPolicy(.linear(initial: 4096, step: 4096)).limit(256 * 1024).finish(SystemAllocator())
        var coin = SeededGenerator(seed: seed ^ 0x9E37_79B9)
        var remoteFrees = 0
        var step = 0
        var mismatch = false
        let report = AllocatorModelCheck.run(
            local, seed: seed, steps: 20_000, maxLive: 2000,
            layout: { random in try! Layout(size: Int.random(in: 0...64, using: &random), alignment: 16) },
            afterEachStep: { _, liveBlocks in
                step += 1
                if !mismatch && local.liveBlocks != liveBlocks {
                    mismatch = true
                    XCTFail("liveBlocks \(local.liveBlocks) != model's \(liveBlocks) [seed \(seed)]")
                }
                if step % 997 == 0 { local._checkInvariants() }
            },
            deallocate: { block, layout in
                if Bool.random(using: &coin) {
                    shared.deallocate(block, layout: layout)
                    remoteFrees += 1
                } else {
                    local.deallocate(block, layout: layout)
                }
            })
        XCTAssertEqual(report.allocations, report.deallocations, "seed \(seed)")
        XCTAssertGreaterThan(remoteFrees, 1000)
        XCTAssertEqual(local.liveBlocks, 0)
        XCTAssertEqual(local.remoteFreesCollected, remoteFrees, "every remote free collected exactly once")
        XCTAssertLessThanOrEqual(local.footprint, 256 * 1024)
        local._checkInvariants()
    }
}

// MARK: - Builder errors

extension ConcurrentSlabTests {
    func testSaturatedRefillSizesFailCleanlyInsteadOfTrapping() throws {
        // A policy whose refills saturate near Int.max must reach the backing with a sane size and fail there.
        for policy in [SlabGrowthPolicy.pow2(initial: 1 << 62, maximum: Int.max), .linear(initial: 1 << 50, step: 1)] {
            let backing = RefusingAllocator()
            let (local, _) = try SlabBuilder(size: 64).growthPolicy(policy).finish(backing)
            assertAllocationError(.outOfMemory, "\(policy)") { _ = try local.allocate(Layout(size: 64)) }
            XCTAssertEqual(backing.largestRequest, 1 << 48, "\(policy)")
            XCTAssertEqual(local.footprint, 0)
            XCTAssertEqual(local.liveBlocks, 0)
        }
    }

    func testBuilderRejectsImpossibleConfigurationsAtFinish() {
        let system = SystemAllocator()
        assertAllocationError(.invalidConfiguration, "zero size") {
            _ = try SlabBuilder(size: 0).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "negative size") {
            _ = try SlabBuilder(size: -8).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "alignment 24") {
            _ = try SlabBuilder(size: 16, alignment: 24).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "alignment 0") {
            _ = try SlabBuilder(size: 16, alignment: 0).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "limit below one block") {
            _ = try SlabBuilder(size: 4096).limit(4096).finish(system)
        }
        let belowPage = assertAllocationError(.invalidConfiguration, "limit below one page") {
            _ = try SlabBuilder(size: 64).limit(60_000).finish(system)
        }
        XCTAssertEqual(belowPage?.limit, 60_000)
        let tooBig = assertAllocationError(.invalidConfiguration, "block plus header larger than a page") {
            _ = try SlabBuilder(size: 4000).pageSize(4096).finish(system)
        }
        XCTAssertEqual(tooBig?.limit, 4096)
        XCTAssertEqual(tooBig?.size, 4000)
        assertAllocationError(.invalidConfiguration, "alignment equal to the page size leaves no room") {
            _ = try SlabBuilder(size: 16, alignment: 4096).pageSize(4096).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "block larger than a fixed refill") {
            _ = try SlabBuilder(size: 8192).growthPolicy(.fixed(4096)).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "block larger than the pow2 maximum") {
            _ = try SlabBuilder(size: 1 << 20).growthPolicy(.pow2(initial: 4096, maximum: 1 << 19)).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "linear step 0") {
            _ = try SlabBuilder(size: 16).growthPolicy(.linear(initial: 4096, step: 0)).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "page size not a power of two") {
            _ = try SlabBuilder(size: 16).pageSize(5000).finish(system)
        }
        assertAllocationError(.invalidConfiguration, "page size below 4 KiB") {
            _ = try SlabBuilder(size: 16).pageSize(2048).finish(system)
        }
        // The edge that does fit: one block per page.
        XCTAssertNoThrow(try SlabBuilder(size: 4096 - 128).pageSize(4096).limit(4096).finish(system))
    }

    func testBuilderDoesNotTouchTheBackingOnError() {
        let counting = CSlabCountingAllocator()
        assertAllocationError(.invalidConfiguration) { _ = try SlabBuilder(size: 4000).pageSize(4096).finish(counting) }
        XCTAssertEqual(counting.allocations, 0)
        // Nor on success: refills are taken lazily.
        let pair = try? SlabBuilder(size: 64).finish(counting)
        XCTAssertNotNil(pair)
        XCTAssertEqual(counting.allocations, 0)
    }
}

// MARK: - Limit, growth, reuse of remote frees, lifetime

extension ConcurrentSlabTests {
    func testLimitThrowsButKeepsHandedOutBlocks() throws {
        let (local, shared) = try SlabBuilder(size: 100).pageSize(4096).limit(10_000).growthPolicy(.fixed(4096))
            .finish(SystemAllocator())
        let layout = try Layout(size: 100)
        var blocks: [UnsafeBlock] = []
        while let block = try? local.allocate(layout) {
            block.start.initializeMemory(as: UInt8.self, repeating: UInt8(blocks.count % 256), count: 112)
            blocks.append(block)
        }
        let error = assertAllocationError(.limitExceeded) { _ = try local.allocate(layout) }
        XCTAssertEqual(error?.limit, 10_000)
        // Two whole pages fit under 10 000 bytes: 2 × (4096 - 128) / 112 = 2 × 35 blocks.
        XCTAssertEqual(blocks.count, 70)
        XCTAssertEqual(local.footprint, 8192)
        for (i, block) in blocks.enumerated() {
            XCTAssertEqual(block.start.load(fromByteOffset: 0, as: UInt8.self), UInt8(i % 256))
            XCTAssertEqual(block.start.load(fromByteOffset: 111, as: UInt8.self), UInt8(i % 256))
        }
        XCTAssertEqual(local.liveBlocks, 70, "a failed allocation changes nothing")
        local._checkInvariants()
        // A block freed by another side is reused under the limit.
        let victim = blocks.removeLast()
        shared.deallocate(victim, layout: layout)
        XCTAssertEqual(try local.allocate(layout).start, victim.start)
        XCTAssertEqual(local.footprint, 8192)
        assertAllocationError(.limitExceeded) { _ = try local.allocate(layout) }
        local._checkInvariants()
    }

    func testRemoteFreesAreReusedAfterExhaustion() throws {
        let counting = CSlabCountingAllocator()
        let (local, shared) = try SlabBuilder(size: 48).pageSize(4096).limit(8 * 4096).growthPolicy(.fixed(8192))
            .finish(counting)
        let layout = try Layout(size: 48)
        var first: [UnsafeBlock] = []
        while let block = try? local.allocate(layout) { first.append(block) }
        XCTAssertEqual(first.count, 8 * ((4096 - 128) / 48))
        XCTAssertEqual(counting.allocations, 4)
        // Free everything from other threads.
        let toFree = first
        cslabRunOnThreads(4) { index in
            for block in toFree[(index * toFree.count / 4)..<((index + 1) * toFree.count / 4)] {
                shared.deallocate(block, layout: layout)
            }
        }
        var second: [UnsafeBlock] = []
        while let block = try? local.allocate(layout) { second.append(block) }
        XCTAssertEqual(Set(second.map(\.address)), Set(first.map(\.address)), "exactly the freed blocks come back")
        XCTAssertEqual(counting.allocations, 4, "no refill: remote frees were reused")
        XCTAssertEqual(local.remoteFreesCollected, first.count)
        XCTAssertEqual(local.liveBlocks, first.count)
        local._checkInvariants()
    }

    func testPow2RefillsAreRoundedToPagesAndRequestedPageAligned() throws {
        let counting = CSlabCountingAllocator()
        let (local, _) = try SlabBuilder(size: 64).pageSize(8192).growthPolicy(.pow2(initial: 5000, maximum: 40_000))
            .finish(counting)
        let layout = try Layout(size: 64)
        for _ in 0..<3000 { _ = try local.allocate(layout) }
        let layouts = counting.liveLayouts.sorted { $0.size < $1.size }
        XCTAssertTrue(layouts.allSatisfy { $0.alignment == 8192 })
        // 5000 → 8192, 10000 → 16384, 20000 → 24576, 40000 → 40960, then capped at 40000 → 40960.
        XCTAssertEqual(Array(layouts.map(\.size).prefix(4)), [8192, 16384, 24576, 40960])
        XCTAssertEqual(local.footprint, layouts.map(\.size).reduce(0, +))
        local._checkInvariants()
    }

    func testBackingFailureIsReportedAndNothingChanges() throws {
        let (local, _) = try SlabBuilder(size: 64).finish(FailingAllocator())
        assertAllocationError(.outOfMemory) { _ = try local.allocate(Layout(size: 64)) }
        XCTAssertEqual(local.footprint, 0)
        XCTAssertEqual(local.refillCount, 0)
        local._checkInvariants()
    }

    func testBackingThatIgnoresAlignmentIsReportedNotTrusted() throws {
        let counting = CSlabCountingAllocator(misalignBy: 16)
        let (local, _) = try SlabBuilder(size: 64).pageSize(4096).finish(counting)
        let error = assertAllocationError(.unsupportedLayout) { _ = try local.allocate(Layout(size: 64)) }
        XCTAssertEqual(error?.alignment, 4096)
        XCTAssertEqual(counting.allocations, 1)
        XCTAssertEqual(counting.liveCount, 0, "the misaligned refill went back to the backing")
        XCTAssertEqual(local.footprint, 0)
        XCTAssertEqual(local.refillCount, 0)
        local._checkInvariants()
    }

    func testMemoryReturnsWhenLocalIsDroppedLast() throws {
        let counting = CSlabCountingAllocator()
        let layout = try Layout(size: 32)
        var local: ConcurrentSlab<CSlabCountingAllocator>.Local?
        var shared: ConcurrentSlab<CSlabCountingAllocator>.Shared?
        do {
            let pair = try SlabBuilder(size: 32).pageSize(4096).growthPolicy(.fixed(8192)).finish(counting)
            local = pair.local
            shared = pair.shared
        }
        var blocks: [UnsafeBlock] = []
        for _ in 0..<1000 { blocks.append(try local!.allocate(layout)) }
        for block in blocks.prefix(500) { shared!.deallocate(block, layout: layout) }
        let refills = counting.liveCount
        XCTAssertGreaterThan(refills, 1)
        shared = nil
        XCTAssertEqual(counting.liveCount, refills, "the local side still holds the memory")
        XCTAssertEqual(local!.liveBlocks, 500, "remote frees pushed before Shared went away are collected")
        local!._checkInvariants()
        local = nil
        XCTAssertEqual(counting.liveCount, 0, "the last owner returns every refill")
        XCTAssertEqual(counting.allocations, counting.deallocations)
    }

    func testSharedOutlivesLocal() throws {
        let counting = CSlabCountingAllocator()
        let layout = try Layout(size: 32)
        var local: ConcurrentSlab<CSlabCountingAllocator>.Local?
        var shared: ConcurrentSlab<CSlabCountingAllocator>.Shared?
        do {
            let pair = try SlabBuilder(size: 32).pageSize(4096).growthPolicy(.fixed(8192)).finish(counting)
            local = pair.local
            shared = pair.shared
        }
        var blocks: [UnsafeBlock] = []
        for i in 0..<1000 {
            let block = try local!.allocate(layout)
            block.start.storeBytes(of: i, as: Int.self)
            blocks.append(block)
        }
        let refills = counting.liveCount
        XCTAssertGreaterThan(refills, 1)
        local = nil
        XCTAssertEqual(counting.liveCount, refills, "Shared keeps the memory alive after Local is gone")
        // Worker threads take their own copies out of a box, so no copy outlives the threads' work.
        let box = Mutex(shared)
        let handed = blocks
        cslabRunOnThreads(3) { index in
            guard let copy = box.withLock({ $0 }) else { return }
            for (i, block) in handed.enumerated() where i % 3 == index {
                precondition(block.start.load(as: Int.self) == i, "block \(i) lost its contents")
                copy.deallocate(block, layout: layout)
            }
        }
        XCTAssertEqual(counting.liveCount, refills)
        XCTAssertEqual(counting.deallocations, 0)
        box.withLock { $0 = nil }
        XCTAssertEqual(counting.liveCount, refills, "one copy left")
        shared = nil
        XCTAssertEqual(counting.liveCount, 0, "the last owner returns every refill")
        XCTAssertEqual(counting.allocations, counting.deallocations)
    }
}

extension ConcurrentSlabTests {
    /// The local side goes first and the shared copies die on worker threads, so the slab is torn down by whichever
    /// worker drops the last copy; every refill still goes back exactly once.
    func testLastOwnerMayBeAnyThread() throws {
        let counting = CSlabCountingAllocator()
        let layout = try Layout(size: 40, alignment: 8)
        let workers = 4
        let box: Mutex<ConcurrentSlab<CSlabCountingAllocator>.Shared?>
        var blocks: [UnsafeBlock] = []
        do {
            let pair = try SlabBuilder(layout).pageSize(4096).growthPolicy(.fixed(4096)).finish(counting)
            for _ in 0..<2000 { blocks.append(try pair.local.allocate(layout)) }
            box = Mutex(pair.shared)
        }  // the local side and the test's copy of the shared side are gone here
        XCTAssertGreaterThan(counting.liveCount, 1)
        let taken = ManagedAtomic(0)
        let handed = blocks
        cslabRunOnThreads(workers) { index in
            var copy = box.withLock { $0 }
            taken.wrappingIncrement(ordering: .relaxed)
            if taken.load(ordering: .relaxed) == workers { box.withLock { $0 = nil } }
            for (i, block) in handed.enumerated() where i % workers == index {
                copy?.deallocate(block, layout: layout)
            }
            copy = nil
        }
        XCTAssertEqual(counting.liveCount, 0, "some worker (or the last box clear) returned every refill")
        XCTAssertEqual(counting.allocations, counting.deallocations)
    }
}

// MARK: - Multi-thread stress

/// A block in flight between threads, with the pattern its holder last wrote into it.
private struct CSlabStressItem: Sendable {
    var block: UnsafeBlock
    var pattern: UInt64

    /// Fills the block's six words with `pattern + word index`.
    mutating func write(_ newPattern: UInt64) {
        pattern = newPattern
        // Typed accesses (not raw `storeBytes`), so ThreadSanitizer sees them in debug builds.
        let words = block.start.bindMemory(to: UInt64.self, capacity: 6)
        for word in 0..<6 { words[word] = pattern &+ UInt64(word) }
    }

    /// Whether the block still holds `pattern`.
    func intact() -> Bool {
        let words = block.start.assumingMemoryBound(to: UInt64.self)
        return (0..<6).allSatisfy { words[$0] == pattern &+ UInt64($0) }
    }
}

/// A multi-producer queue of blocks; consumers take everything at once.
private final class CSlabStressQueue: Sendable {
    let items = Locked<[CSlabStressItem]>([])
    let closed = ManagedAtomic<Bool>(false)

    func push(_ item: CSlabStressItem) { items.withLock { $0.append(item) } }
    func takeAll() -> [CSlabStressItem] {
        items.withLock {
            let taken = $0
            $0.removeAll(keepingCapacity: true)
            return taken
        }
    }
}

/// Frees a block through the local side after checking its pattern and striking it from the live set.
///
/// A free function rather than a closure in the owner's thread body: capturing the test's shared state and being
/// passed the local side would merge the local side into that state's isolation region.
private func cslabStressFreeLocally(
    _ item: CSlabStressItem, _ local: ConcurrentSlab<CSlabCountingAllocator>.Local, _ tracker: Locked<Set<UInt>>,
    _ localFrees: ManagedAtomic<Int>, _ seed: UInt64
) {
    precondition(item.intact(), "block \(item.block) lost its pattern [seed \(seed)]")
    let removed = tracker.withLock { $0.remove(item.block.address) }
    precondition(removed != nil, "block \(item.block) freed but not live [seed \(seed)]")
    local.deallocate(item.block, layout: try! Layout(size: 48, alignment: 16))
    localFrees.wrappingIncrement(ordering: .relaxed)
}

extension ConcurrentSlabTests {
    fileprivate typealias Counted = ConcurrentSlab<CSlabCountingAllocator>

    /// One owner thread allocates (under a byte limit, so it must reuse remote frees) and hands blocks to worker
    /// threads through queues; workers check and rewrite a pattern, then free through `Shared` or send the block
    /// back to the owner, who frees it locally. The owner also frees some blocks itself. At the end every block is
    /// accounted exactly once and the slab holds all of its blocks again.
    func testStressOwnerAllocatesWorkersFreeRemotely() throws {
        let seed = SeededGenerator.testSeed()
        var setup = SeededGenerator(seed: seed)
        let workers = Int.random(in: 2...4, using: &setup)
        let pageSize = [4096, 8192].randomElement(using: &setup)!
        let limitPages = Int.random(in: 4...10, using: &setup)
        let total = 40_000
        let blocksPerPage = (pageSize - 128) / 48
        print("testStressOwnerAllocatesWorkersFreeRemotely: seed \(seed) (replay with DIVVY_TEST_SEED=\(seed)), "
            + "\(workers) workers, page \(pageSize), limit \(limitPages) pages")

        let counting = CSlabCountingAllocator()
        let layout = try Layout(size: 48, alignment: 16)
        let localBox: Mutex<Counted.Local?>
        let sharedBox: Mutex<Counted.Shared?>
        do {
            let pair = try SlabBuilder(layout).pageSize(pageSize).growthPolicy(.fixed(2 * pageSize))
                .limit(limitPages * pageSize).finish(counting)
            localBox = Mutex(pair.local)
            sharedBox = Mutex(pair.shared)
        }
        let queues = (0..<workers).map { _ in CSlabStressQueue() }
        let returns = CSlabStressQueue()
        let tracker = Locked(Set<UInt>())
        let allocations = ManagedAtomic(0)
        let localFrees = ManagedAtomic(0)
        let remoteFrees = ManagedAtomic(0)
        let limitHits = ManagedAtomic(0)
        let finishedWorkers = ManagedAtomic(0)

        cslabRunOnThreads(workers + 1) { index in
            if index == 0 {
                // The owner: uses the local side only while holding the box's lock, so the local side is owned by
                // exactly one thread at a time (this one now, the test's thread afterwards).
                localBox.withLock { slot in
                    guard let local = slot else { preconditionFailure("no local side") }
                    var random = SeededGenerator(seed: seed &+ 1)
                    var held: [CSlabStressItem] = []
                    var nextPattern: UInt64 = 1
                    var allocated = 0
                    var starved = 0
                    while allocated < total {
                        for item in returns.takeAll() { cslabStressFreeLocally(item, local, tracker, localFrees, seed) }
                        let block: UnsafeBlock
                        do throws(AllocationError) {
                            block = try local.allocate(layout)
                        } catch {
                            precondition(error.code == .limitExceeded, "unexpected \(error) [seed \(seed)]")
                            limitHits.wrappingIncrement(ordering: .relaxed)
                            starved += 1
                            // A bound on retries, not on time: remote frees must come back eventually.
                            precondition(starved < 2_000_000, "owner starved: remote frees never reused [seed \(seed)]")
                            if !held.isEmpty && Bool.random(using: &random) {
                                cslabStressFreeLocally(held.remove(at: Int.random(in: 0..<held.count, using: &random)), local, tracker, localFrees, seed)
                            }
                            sched_yield()
                            continue
                        }
                        let inserted = tracker.withLock { $0.insert(block.address).inserted }
                        precondition(inserted, "block \(block) handed out while still live [seed \(seed)]")
                        allocations.wrappingIncrement(ordering: .relaxed)
                        allocated += 1
                        starved = 0
                        var item = CSlabStressItem(block: block, pattern: 0)
                        item.write(nextPattern)
                        nextPattern &+= 0x1_0000
                        let roll = Int.random(in: 0..<100, using: &random)
                        if roll < 75 {
                            queues[Int.random(in: 0..<workers, using: &random)].push(item)
                        } else if roll < 90 {
                            held.append(item)
                        } else {
                            cslabStressFreeLocally(item, local, tracker, localFrees, seed)
                        }
                        if held.count > 64 || (roll == 0 && !held.isEmpty) {
                            cslabStressFreeLocally(held.remove(at: Int.random(in: 0..<held.count, using: &random)), local, tracker, localFrees, seed)
                        }
                    }
                    for queue in queues { queue.closed.store(true, ordering: .releasing) }
                    while finishedWorkers.load(ordering: .acquiring) < workers {
                        for item in returns.takeAll() { cslabStressFreeLocally(item, local, tracker, localFrees, seed) }
                        sched_yield()
                    }
                    for item in returns.takeAll() { cslabStressFreeLocally(item, local, tracker, localFrees, seed) }
                    for item in held { cslabStressFreeLocally(item, local, tracker, localFrees, seed) }
                    local._checkInvariants()
                }
            } else {
                guard let shared = sharedBox.withLock({ $0 }) else { preconditionFailure("no shared side") }
                let queue = queues[index - 1]
                var random = SeededGenerator(seed: seed &+ UInt64(index) &* 7919)
                while true {
                    let items = queue.takeAll()
                    if items.isEmpty {
                        if queue.closed.load(ordering: .acquiring) && queue.items.withLock({ $0.isEmpty }) { break }
                        sched_yield()
                        continue
                    }
                    for var item in items {
                        precondition(item.intact(), "block \(item.block) lost its pattern in transit [seed \(seed)]")
                        item.write(item.pattern ^ (UInt64(index) << 56))
                        precondition(item.intact(), "block \(item.block) changed under its holder [seed \(seed)]")
                        if Int.random(in: 0..<100, using: &random) < 15 {
                            returns.push(item)
                        } else {
                            let removed = tracker.withLock { $0.remove(item.block.address) }
                            precondition(removed != nil, "block \(item.block) freed but not live [seed \(seed)]")
                            shared.deallocate(item.block, layout: layout)
                            remoteFrees.wrappingIncrement(ordering: .relaxed)
                        }
                    }
                }
                finishedWorkers.wrappingIncrement(ordering: .releasing)
            }
        }

        let context = "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]"
        localBox.withLock { slot in
            guard let local = slot else { return XCTFail("the local side is gone") }
            XCTAssertEqual(allocations.load(ordering: .relaxed), total, context)
            XCTAssertEqual(
                localFrees.load(ordering: .relaxed) + remoteFrees.load(ordering: .relaxed), total,
                "every block freed exactly once \(context)")
            XCTAssertEqual(tracker.withLock { $0.count }, 0, context)
            XCTAssertEqual(local.liveBlocks, 0, context)
            XCTAssertEqual(local.remoteFreesCollected, remoteFrees.load(ordering: .relaxed), context)
            XCTAssertGreaterThan(remoteFrees.load(ordering: .relaxed), total / 2, context)
            XCTAssertLessThanOrEqual(local.footprint, limitPages * pageSize, context)
            XCTAssertGreaterThan(limitHits.load(ordering: .relaxed) + local.remoteFreesCollected, 0, context)
            local._checkInvariants()
            // All blocks are back: the whole capacity can be allocated again, without growing.
            let footprint = local.footprint
            var again: [UnsafeBlock] = []
            while let block = try? local.allocate(layout) { again.append(block) }
            XCTAssertEqual(again.count, limitPages * blocksPerPage, context)
            XCTAssertEqual(Set(again.map(\.address)).count, again.count, context)
            XCTAssertEqual(local.footprint, limitPages * pageSize, context)
            XCTAssertGreaterThanOrEqual(local.footprint, footprint, context)
            for block in again { local.deallocate(block, layout: layout) }
            XCTAssertEqual(local.liveBlocks, 0, context)
            local._checkInvariants()
            slot = nil
        }
        sharedBox.withLock { $0 = nil }
        XCTAssertEqual(counting.liveCount, 0, "the last owner returns every refill \(context)")
        XCTAssertEqual(counting.allocations, counting.deallocations, context)
    }
}

extension ConcurrentSlabTests {
    /// The local side moves between threads (one owner at a time, handed over through a `Mutex`); each owner frees
    /// locally the blocks the previous owner allocated, and frees some of its own through `Shared`.
    func testLocalOwnershipMovesBetweenThreads() throws {
        let seed = SeededGenerator.testSeed()
        let threads = 3
        let rounds = 30
        let layout = try Layout(size: 48, alignment: 16)
        let localBox: Mutex<Counted.Local?>
        let shared: Counted.Shared
        let counting = CSlabCountingAllocator()
        do {
            let pair = try SlabBuilder(layout).pageSize(4096).growthPolicy(.fixed(16384)).finish(counting)
            localBox = Mutex(pair.local)
            shared = pair.shared
        }
        let handoff = Locked<[CSlabStressItem]>([])
        let turn = ManagedAtomic(0)
        let remoteFrees = ManagedAtomic(0)
        cslabRunOnThreads(threads) { index in
            var random = SeededGenerator(seed: seed &+ UInt64(index))
            for round in 0..<rounds {
                let myTurn = round * threads + index
                while turn.load(ordering: .acquiring) != myTurn { sched_yield() }
                localBox.withLock { slot in
                    guard let local = slot else { preconditionFailure("no local side") }
                    for item in handoff.withLock({ $0.take() }) {
                        precondition(item.intact(), "handed-off block lost its pattern [seed \(seed)]")
                        local.deallocate(item.block, layout: layout)
                    }
                    var kept: [CSlabStressItem] = []
                    for n in 0..<Int.random(in: 1...200, using: &random) {
                        guard let block = try? local.allocate(layout) else { preconditionFailure("allocate failed") }
                        var item = CSlabStressItem(block: block, pattern: 0)
                        item.write(UInt64(myTurn) << 32 | UInt64(n))
                        if Bool.random(using: &random) {
                            kept.append(item)
                        } else {
                            shared.deallocate(block, layout: layout)
                            remoteFrees.wrappingIncrement(ordering: .relaxed)
                        }
                    }
                    local._checkInvariants()
                    handoff.withLock { $0 = kept }
                }
                turn.wrappingIncrement(ordering: .releasing)
            }
        }
        let context = "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]"
        localBox.withLock { slot in
            guard let local = slot else { return XCTFail("the local side is gone") }
            let left = handoff.withLock { $0.take() }
            XCTAssertEqual(local.liveBlocks, left.count, context)
            for item in left { local.deallocate(item.block, layout: layout) }
            XCTAssertEqual(local.liveBlocks, 0, context)
            XCTAssertEqual(local.remoteFreesCollected, remoteFrees.load(ordering: .relaxed), context)
            local._checkInvariants()
            slot = nil
        }
        XCTAssertGreaterThan(counting.liveCount, 0, "Shared still holds the memory")
        _ = consume shared
        XCTAssertEqual(counting.liveCount, 0, context)
    }
}

extension Array {
    /// Returns the array's elements and leaves it empty.
    fileprivate mutating func take() -> [Element] {
        let taken = self
        self = []
        return taken
    }
}

/// A one-way channel from the owner to one worker: a preallocated array that is never reused, so the only
/// synchronization is owner → worker (the owner publishes a count with a releasing store). Nothing the worker does
/// synchronizes back with the owner, except through the slab itself.
private final class CSlabOneWayChannel: @unchecked Sendable {
    // @unchecked Sendable: `slots[i]` is written by the owner before it publishes `i + 1` (releasing) and read by
    // the worker after it observes that count (acquiring); `freed` is touched only by the worker, then by the test
    // after joining the worker's thread.
    let slots: UnsafeMutablePointer<CSlabStressItem>
    let published = ManagedAtomic(0)
    let closed = ManagedAtomic(false)
    var freed: [UInt64] = []

    init(capacity: Int) { slots = .allocate(capacity: capacity) }
    deinit { slots.deallocate() }
}

/// The owner's record of what it did, read by the test after joining the owner's thread.
private final class CSlabOwnerLog: @unchecked Sendable {
    // @unchecked Sendable: written only by the owner thread, read after it was joined.
    var allocated: [UInt64] = []
    var freedLocally: [UInt64] = []
    var limitHits = 0
}

extension ConcurrentSlabTests {
    /// Like `testStressOwnerAllocatesWorkersFreeRemotely`, but the workers never synchronize back with the owner
    /// except through the slab: no locks, no return queue. Under ThreadSanitizer this checks the slab's own memory
    /// orderings (a remote free's link must be visible to the owner that collects it, and a reused block's new
    /// contents to its next holder).
    func testStressRemoteFreesSynchronizeOnlyThroughTheSlab() throws {
        let seed = SeededGenerator.testSeed()
        var setup = SeededGenerator(seed: seed)
        let workers = Int.random(in: 2...4, using: &setup)
        let limitPages = Int.random(in: 3...8, using: &setup)
        let total = 30_000
        print("testStressRemoteFreesSynchronizeOnlyThroughTheSlab: seed \(seed) (replay with DIVVY_TEST_SEED=\(seed)), "
            + "\(workers) workers, limit \(limitPages) pages")
        let layout = try Layout(size: 48, alignment: 16)
        let localBox: Mutex<ConcurrentSlab<SystemAllocator>.Local?>
        let sharedBox: Mutex<ConcurrentSlab<SystemAllocator>.Shared?>
        do {
            let pair = try SlabBuilder(layout).pageSize(4096).growthPolicy(.fixed(4096)).limit(limitPages * 4096)
                .finish(SystemAllocator())
            localBox = Mutex(pair.local)
            sharedBox = Mutex(pair.shared)
        }
        let channels = (0..<workers).map { _ in CSlabOneWayChannel(capacity: total) }
        let log = CSlabOwnerLog()

        cslabRunOnThreads(workers + 1) { index in
            if index == 0 {
                localBox.withLock { slot in
                    guard let local = slot else { preconditionFailure("no local side") }
                    var random = SeededGenerator(seed: seed &+ 1)
                    var sent = Array(repeating: 0, count: workers)
                    var starved = 0
                    var id: UInt64 = 0
                    while id < UInt64(total) {
                        let block: UnsafeBlock
                        do throws(AllocationError) {
                            block = try local.allocate(layout)
                        } catch {
                            precondition(error.code == .limitExceeded, "unexpected \(error) [seed \(seed)]")
                            log.limitHits += 1
                            starved += 1
                            precondition(starved < 2_000_000, "owner starved: remote frees never reused [seed \(seed)]")
                            sched_yield()
                            continue
                        }
                        starved = 0
                        id += 1
                        var item = CSlabStressItem(block: block, pattern: 0)
                        item.write(id << 8)
                        log.allocated.append(id << 8)
                        if Int.random(in: 0..<10, using: &random) == 0 {
                            precondition(item.intact(), "block lost its pattern [seed \(seed)]")
                            log.freedLocally.append(id << 8)
                            local.deallocate(block, layout: layout)
                            continue
                        }
                        let worker = Int.random(in: 0..<workers, using: &random)
                        channels[worker].slots.advanced(by: sent[worker]).initialize(to: item)
                        sent[worker] += 1
                        // Releasing: the worker that acquires this count sees the slot and the block's pattern.
                        channels[worker].published.store(sent[worker], ordering: .releasing)
                    }
                    for channel in channels { channel.closed.store(true, ordering: .releasing) }
                }
            } else {
                guard let shared = sharedBox.withLock({ $0 }) else { preconditionFailure("no shared side") }
                let channel = channels[index - 1]
                var consumed = 0
                while true {
                    let closed = channel.closed.load(ordering: .acquiring)
                    let available = channel.published.load(ordering: .acquiring)
                    if consumed == available {
                        if closed { break }
                        sched_yield()
                        continue
                    }
                    while consumed < available {
                        var item = channel.slots[consumed]
                        consumed += 1
                        let original = item.pattern
                        precondition(item.intact(), "block \(item.block) lost its pattern in transit [seed \(seed)]")
                        item.write(~original)
                        precondition(item.intact(), "block \(item.block) changed under its holder [seed \(seed)]")
                        channel.freed.append(original)
                        shared.deallocate(item.block, layout: layout)
                    }
                }
            }
        }

        let context = "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]"
        var freed = log.freedLocally
        for channel in channels { freed += channel.freed }
        XCTAssertEqual(log.allocated.count, total, context)
        XCTAssertEqual(freed.count, total, "every block freed once \(context)")
        XCTAssertEqual(Set(freed), Set(log.allocated), "exactly the allocated blocks were freed \(context)")
        localBox.withLock { slot in
            guard let local = slot else { return XCTFail("the local side is gone") }
            XCTAssertEqual(local.liveBlocks, 0, context)
            XCTAssertEqual(local.remoteFreesCollected, total - log.freedLocally.count, context)
            XCTAssertEqual(local.footprint, limitPages * 4096, "the limit forced reuse of remote frees \(context)")
            local._checkInvariants()
            var again = 0
            while (try? local.allocate(layout)) != nil { again += 1 }
            XCTAssertEqual(again, limitPages * ((4096 - 128) / 48), "every block is back \(context)")
            slot = nil
        }
        sharedBox.withLock { $0 = nil }
    }
}
