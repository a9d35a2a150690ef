import Divvy
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// `CAllocationAdapter` against the C semantics of the malloc family.
final class GlobalAllocatorAdapterTests: XCTestCase {
    typealias Heap = Segregator<Pool<OSAllocator>, OSAllocator>

    /// The realistic composition: size classes for small blocks, the OS for the rest.
    func makeHeap(threshold: Int = 32 << 10) throws -> CAllocationAdapter<HeaderStrategy<Heap>> {
        CAllocationAdapter(Segregator(threshold: threshold, small: try Pool(OSAllocator()), large: OSAllocator()))
    }

    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
}

// MARK: - malloc and free

extension GlobalAllocatorAdapterTests {
    func testMallocZeroReturnsUniqueFreeablePointers() throws {
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 1 << 20)
        let heap = CAllocationAdapter(quota)
        var pointers: [UnsafeMutableRawPointer] = []
        for _ in 0..<100 {
            errno = 0
            guard let p = heap.malloc(0) else { return XCTFail("malloc(0) returned nil") }
            XCTAssertEqual(errno, 0, "success leaves errno alone")
            XCTAssertEqual(UInt(bitPattern: p) % 16, 0)
            XCTAssertEqual(heap.requestedSize(p), 0)
            XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), 1, "a zero-byte block still has a byte behind it")
            pointers.append(p)
        }
        XCTAssertEqual(Set(pointers).count, pointers.count, "every malloc(0) pointer is distinct")
        XCTAssertGreaterThan(quota.usedBytes, 0)
        for p in pointers { heap.free(p) }
        XCTAssertEqual(quota.usedBytes, 0, "free(malloc(0)) gives the block back")
        XCTAssertEqual(quota.base.smallLiveBlocks, 0)
    }

    func testMallocAlignsToSixteenAndEveryRequestedByteIsUsable() throws {
        let heap = try makeHeap()
        var live: [(UnsafeMutableRawPointer, Int, UInt8)] = []
        let sizes = Array(0...300) + [1000, 4095, 4096, 4097, 32 << 10, (32 << 10) + 1, 100_000, 1 << 20]
        for (index, size) in sizes.enumerated() {
            guard let p = heap.malloc(size) else { return XCTFail("malloc(\(size)) failed") }
            XCTAssertEqual(UInt(bitPattern: p) % 16, 0, "malloc(\(size)) is aligned to max_align_t")
            XCTAssertEqual(heap.requestedSize(p), size)
            let tag = UInt8(truncatingIfNeeded: index)
            memset(p, Int32(tag), size)
            live.append((p, size, tag))
        }
        for (p, size, tag) in live {
            XCTAssertTrue(
                UnsafeRawBufferPointer(start: p, count: size).allSatisfy { $0 == tag }, "size \(size) overwritten")
            heap.free(p)
        }
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }

    func testFreeNilIsANoOpAndFreeReturnsEveryBlockToTheBase() throws {
        let counting = CountingAllocator(SystemAllocator())
        let heap = CAllocationAdapter(counting)
        errno = 0
        heap.free(nil)
        XCTAssertEqual(errno, 0)
        XCTAssertEqual(counting.allocations, 0)
        XCTAssertEqual(counting.deallocations, 0)
        let a = heap.malloc(10)!
        let b = heap.memalign(alignment: 256, size: 10)!
        let c = heap.calloc(3, 7)!
        XCTAssertEqual(counting.live.count, 3)
        // The layouts the base saw: 16 (or the alignment) bytes of header room, then the caller's bytes.
        XCTAssertEqual(
            Set(counting.live.values),
            [try Layout(size: 26), try Layout(size: 266, alignment: 256), try Layout(size: 37)])
        for p in [a, b, c] { heap.free(p) }
        XCTAssertEqual(counting.live.count, 0)
        XCTAssertEqual(counting.deallocations, 3)
    }

    func testMallocFailureReturnsNilWithENOMEM() throws {
        let heap = CAllocationAdapter(FailingAllocator())
        for size in [0, 1, 16, 1 << 20] {
            errno = 0
            XCTAssertNil(heap.malloc(size))
            XCTAssertEqual(errno, ENOMEM, "malloc(\(size)) over a failing allocator")
        }
        // Sizes no layout can describe fail before the base is asked: a size_t above Int.max arrives negative.
        let refusing = RefusingAllocator()
        let strict = CAllocationAdapter(refusing)
        for size in [-1, Int.min, Int.max, Int.max - 31] {
            errno = 0
            XCTAssertNil(strict.malloc(size))
            XCTAssertEqual(errno, ENOMEM, "malloc(\(size))")
        }
        XCTAssertEqual(refusing.requestCount, 0, "impossible sizes never reach the allocator")
        errno = 0
        XCTAssertNil(strict.malloc(Int.max - 32))
        XCTAssertEqual(errno, ENOMEM)
        XCTAssertEqual(refusing.requestCount, 1, "the largest describable size is passed on")
        XCTAssertEqual(refusing.largestRequest, Int.max - 16)
    }

    func testQuotaFailureSetsENOMEMAndChangesNothing() throws {
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 4096)
        let heap = CAllocationAdapter(quota)
        let kept = heap.malloc(2000)!
        let used = quota.usedBytes
        errno = 0
        XCTAssertNil(heap.malloc(3000))
        XCTAssertEqual(errno, ENOMEM)
        XCTAssertNil(heap.calloc(1, 3000))
        XCTAssertNil(heap.memalign(alignment: 64, size: 3000))
        var out: UnsafeMutableRawPointer? = nil
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 64, size: 3000), ENOMEM)
        XCTAssertNil(out)
        XCTAssertEqual(quota.usedBytes, used)
        heap.free(kept)
        XCTAssertEqual(quota.usedBytes, 0)
    }
}

// MARK: - Bad frees

extension GlobalAllocatorAdapterTests {
    func testCheckedFreeReportsDoubleAndInvalidFreesAndChangesNothing() throws {
        let quota = LimitAllocator(SystemAllocator(), limit: 1 << 20)
        let heap = CAllocationAdapter(quota)
        let keep = heap.malloc(100)!
        let p = heap.malloc(64)!
        try heap.checkedFree(p)
        let used = quota.usedBytes
        XCTAssertEqual(used, 116, "only `keep` (100 bytes + 16 of header room) is left")
        // glibc's free writes its tcache links over the whole header, so over `SystemAllocator` a double free is
        // reported as a foreign pointer (a sanitizer's free leaves it alone: a double free); either way it is refused.
        do {
            try heap.checkedFree(p)
            XCTFail("a double free over SystemAllocator was accepted")
        } catch {
            XCTAssertTrue([.doubleFree, .foreignBlock].contains(error.code), "\(error)")
        }
        // Not ours: an interior pointer (its "header" is the caller's bytes) and a misaligned one.
        memset(keep, 0x5A, 100)
        assertAllocationError(.foreignBlock) { try heap.checkedFree(keep + 32) }
        assertAllocationError(.foreignBlock) { try heap.checkedFree(keep + 8) }
        assertAllocationError(.foreignBlock) { try heap.checkedFree(keep + 1) }
        // A buffer that merely looks plausible: a size and a header word that is not a valid check.
        let fake = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
        defer { fake.deallocate() }
        fake.storeBytes(of: 32, as: UInt64.self)
        fake.storeBytes(of: UInt64(4) << 34, toByteOffset: 8, as: UInt64.self)
        assertAllocationError(.foreignBlock) { try heap.checkedFree(fake + 16) }
        XCTAssertEqual(quota.usedBytes, used, "rejected frees change nothing")
        XCTAssertEqual(heap.requestedSize(keep), 100)
        XCTAssertTrue(UnsafeRawBufferPointer(start: keep, count: 100).allSatisfy { $0 == 0x5A })
        try heap.checkedFree(nil)
        try heap.checkedFree(keep)
        XCTAssertEqual(quota.usedBytes, 0)
    }

    func testCheckedFreeRecognisesADoubleFreeOverDivvySlabs() throws {
        // Divvy's slabs link free blocks through their first word only (the size), so the check word survives.
        let pool = try Pool(OSAllocator())
        let heap = CAllocationAdapter(pool)
        // (Not a block that went back to the OS: its header is unmapped, and reading it faults, as in glibc.)
        for size in [0, 1, 100, 5000, 30_000] {
            let p = heap.malloc(size)!
            let q = heap.malloc(size)!
            heap.free(p)
            assertAllocationError(.doubleFree, "size \(size)") { try heap.checkedFree(p) }
            XCTAssertEqual(pool.smallLiveBlocks, 1, "the rejected free changed nothing")
            // The freed block is handed out again (LIFO) and is live once more.
            let again = heap.malloc(size)!
            XCTAssertEqual(again, p)
            heap.free(again)
            heap.free(q)
        }
        XCTAssertEqual(pool.smallLiveBlocks, 0)
    }

    func testFreeOfAPointerThatReallocMovedIsADoubleFree() throws {
        let pool = try Pool(OSAllocator())
        let heap = CAllocationAdapter(pool)
        let p = heap.malloc(10)!
        let q = heap.realloc(p, 1000)!
        XCTAssertNotEqual(p, q)
        assertAllocationError(.doubleFree) { try heap.checkedFree(p) }
        // In place, the pointer stays valid.
        let r = heap.realloc(q, 1001)!
        XCTAssertEqual(r, q)
        XCTAssertEqual(heap.requestedSize(r), 1001)
        try heap.checkedFree(r)
        XCTAssertEqual(pool.smallLiveBlocks, 0)
        // A failed realloc leaves the block live (its header restored), so it can still be freed once.
        let quota = CAllocationAdapter(LimitAllocator(try Pool(OSAllocator()), limit: 100))
        let s = quota.malloc(50)!
        XCTAssertNil(quota.realloc(s, 90))
        XCTAssertEqual(quota.requestedSize(s), 50)
        try quota.checkedFree(s)
        assertAllocationError(.doubleFree) { try quota.checkedFree(s) }
    }

    func testUncheckedAdapterServesTheSameFunctions() throws {
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 1 << 20)
        let heap = CAllocationAdapter(quota, checksFrees: false)
        XCTAssertFalse(heap.strategy.checksFrees)
        var p = heap.malloc(10)!
        memset(p, 7, 10)
        p = heap.realloc(p, 5000)!
        XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: 10).allSatisfy { $0 == 7 })
        XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), 5000)
        let q = heap.memalign(alignment: 4096, size: 1)!
        XCTAssertEqual(UInt(bitPattern: q) % 4096, 0)
        heap.free(q)
        heap.free(p)
        XCTAssertEqual(quota.usedBytes, 0)
        // The header is written even when unchecked, so a checked free still recognises a double free.
        let r = heap.malloc(1)!
        try heap.checkedFree(r)
        assertAllocationError(.doubleFree) { try heap.checkedFree(r) }
    }

    /// The traps themselves, in a child process: `free` of a freed block and of a foreign pointer abort with a fixed
    /// message (the message is written with `write(2)`, so nothing is allocated on the way down).
    func testDoubleAndInvalidFreeTrapWithAMessage() throws {
        let double = try runChild("doubleFree")
        XCTAssertEqual(double.signal, SIGABRT, "stderr: \(double.stderr)")
        XCTAssertTrue(double.stderr.contains("Divvy: free()/realloc(): double free"), double.stderr)
        XCTAssertFalse(double.stdout.contains("survived"))
        let invalid = try runChild("invalidFree")
        XCTAssertEqual(invalid.signal, SIGABRT, "stderr: \(invalid.stderr)")
        XCTAssertTrue(invalid.stderr.contains("Divvy: free()/realloc(): invalid pointer"), invalid.stderr)
        let realloc = try runChild("reallocFreed")
        XCTAssertEqual(realloc.signal, SIGABRT, "stderr: \(realloc.stderr)")
        XCTAssertTrue(realloc.stderr.contains("double free"), realloc.stderr)
    }
}

// MARK: - HeaderStrategy on its own

extension GlobalAllocatorAdapterTests {
    func testHeaderStrategyServesItsContractWithoutTheAdapter() throws {
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 1 << 20)
        let strategy = HeaderStrategy(quota)
        XCTAssertEqual(strategy.maximumAlignment, 1 << 40)
        XCTAssertEqual(HeaderStrategy<SystemAllocator>.headerSize, 16)
        // An alignment below 16 from a direct caller still leaves room for the header.
        let p = try XCTUnwrap(strategy.allocate(size: 10, alignment: 8))
        XCTAssertEqual(UInt(bitPattern: p) % 16, 0)
        XCTAssertEqual(strategy.requestedSize(of: p), 10)
        XCTAssertGreaterThanOrEqual(strategy.usableSize(of: p), 10)
        let a = try XCTUnwrap(strategy.allocate(size: 100, alignment: 4096))
        XCTAssertEqual(UInt(bitPattern: a) % 4096, 0)
        memset(a, 0x3C, 100)
        // reallocate keeps the alignment and the bytes; allocateZeroed zeroes.
        let b = try XCTUnwrap(strategy.reallocate(a, toSize: 9000))
        XCTAssertEqual(UInt(bitPattern: b) % 4096, 0)
        XCTAssertTrue(UnsafeRawBufferPointer(start: b, count: 100).allSatisfy { $0 == 0x3C })
        let z = try XCTUnwrap(strategy.allocateZeroed(size: 300, alignment: 16))
        XCTAssertTrue(UnsafeRawBufferPointer(start: z, count: 300).allSatisfy { $0 == 0 })
        for block in [p, b, z] { strategy.deallocate(block) }
        assertAllocationError(.doubleFree) { try strategy.checkedDeallocate(p) }
        XCTAssertEqual(quota.usedBytes, 0)
        // The adapter over an explicit strategy is the convenience initializer's.
        let adapter = CAllocationAdapter(HeaderStrategy(quota, checksFrees: false))
        let c = try XCTUnwrap(adapter.malloc(5))
        XCTAssertEqual(adapter.requestedSize(c), 5)
        XCTAssertFalse(adapter.strategy.checksFrees)
        adapter.free(c)
        XCTAssertEqual(quota.usedBytes, 0)
    }
}

// MARK: - calloc

extension GlobalAllocatorAdapterTests {
    func testCallocZeroesADirtyReusedBlock() throws {
        let heap = try makeHeap()
        for size in [1, 24, 100, 1000, 20_000] {
            let dirty = heap.malloc(size)!
            memset(dirty, 0xAB, heap.mallocUsableSize(dirty))
            heap.free(dirty)
            let clean = heap.calloc(1, size)!
            XCTAssertEqual(clean, dirty, "the pool hands the dirty block back (LIFO), size \(size)")
            XCTAssertTrue(UnsafeRawBufferPointer(start: clean, count: size).allSatisfy { $0 == 0 }, "size \(size)")
            heap.free(clean)
        }
        // count × size, both ways round, and a large calloc from the OS side.
        for (count, size) in [(10, 12), (12, 10), (1, 100_000), (100_000, 1), (0, 5), (5, 0)] {
            let p = heap.calloc(count, size)!
            XCTAssertEqual(heap.requestedSize(p), count * size)
            XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: count * size).allSatisfy { $0 == 0 })
            heap.free(p)
        }
    }

    func testCallocOverflowReturnsNilWithENOMEMWithoutAskingTheAllocator() throws {
        let refusing = RefusingAllocator()
        let heap = CAllocationAdapter(refusing)
        let cases: [(Int, Int)] = [
            (Int.max, 2), (2, Int.max), (1 << 32, 1 << 32), (-1, 1), (1, -1), (Int.min, 0), (3, Int.max / 2),
        ]
        for (count, size) in cases {
            errno = 0
            XCTAssertNil(heap.calloc(count, size), "calloc(\(count), \(size))")
            XCTAssertEqual(errno, ENOMEM, "calloc(\(count), \(size))")
        }
        XCTAssertEqual(refusing.requestCount, 0)
        errno = 0
        XCTAssertNil(heap.calloc(4, 1 << 20))
        XCTAssertEqual(errno, ENOMEM, "an allocator failure is ENOMEM too")
        XCTAssertEqual(refusing.largestRequest, 16 + (4 << 20))
    }
}

// MARK: - realloc and reallocarray

extension GlobalAllocatorAdapterTests {
    func testReallocOfNilIsMallocAndToZeroFrees() throws {
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 1 << 20)
        let heap = CAllocationAdapter(quota)
        let p = heap.realloc(nil, 40)!
        XCTAssertEqual(heap.requestedSize(p), 40)
        let z = heap.realloc(nil, 0)!
        XCTAssertEqual(heap.requestedSize(z), 0, "realloc(NULL, 0) is malloc(0): a unique pointer")
        errno = 0
        XCTAssertNil(heap.realloc(p, 0), "realloc(p, 0) frees p and returns NULL (glibc)")
        XCTAssertEqual(errno, 0, "freeing through realloc is not a failure")
        XCTAssertEqual(quota.usedBytes, 16 + 1, "only z is left")
        assertAllocationError(.doubleFree) { try heap.checkedFree(p) }
        heap.free(z)
        XCTAssertEqual(quota.usedBytes, 0)
    }

    func testReallocGrowthAndShrinkChainsPreserveContents() throws {
        let heap = try makeHeap(threshold: 16 << 10)
        // Grow one byte at a time through many classes, then in big steps across the threshold into the OS side
        // (where `mremap` may move the pages), then shrink back down.
        var p = heap.malloc(1)!
        var size = 1
        p.storeBytes(of: 0, as: UInt8.self)
        func fill(from start: Int, to end: Int) {
            for i in start..<end {
                p.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31), toByteOffset: i, as: UInt8.self)
            }
        }
        func verify(_ count: Int, _ step: String) -> Bool {
            for i in 0..<count where p.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: i &* 31) {
                XCTFail("\(step): byte \(i) of \(count) lost")
                return false
            }
            return true
        }
        var addresses: Set<UnsafeMutableRawPointer> = [p]
        var steps: [Int] = Array(2...600)
        steps += stride(from: 1000, through: 200_000, by: 7919).map { $0 }
        steps += [1 << 20, 3 << 20, 700_000, 20_000, 16 << 10, (16 << 10) + 1, 5000, 129, 128, 17, 16, 1]
        for newSize in steps {
            guard let moved = heap.realloc(p, newSize) else { return XCTFail("realloc to \(newSize) failed") }
            p = moved
            addresses.insert(p)
            XCTAssertEqual(UInt(bitPattern: p) % 16, 0)
            XCTAssertEqual(heap.requestedSize(p), newSize)
            XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), newSize)
            guard verify(Swift.min(size, newSize), "\(size) → \(newSize)") else { return }
            if newSize > size { fill(from: size, to: newSize) }
            size = newSize
        }
        XCTAssertGreaterThan(addresses.count, 10, "the chain moved between classes")
        XCTAssertLessThan(addresses.count, steps.count, "sizes within one class keep the block in place")
        heap.free(p)
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }

    func testReallocWithinAClassKeepsTheBlock() throws {
        let heap = try makeHeap()
        let p = heap.malloc(100)!  // 116 bytes with the header: the 128-byte class
        XCTAssertEqual(heap.realloc(p, 112), p)
        XCTAssertEqual(heap.realloc(p, 97), p)
        XCTAssertEqual(heap.requestedSize(p), 97)
        let q = heap.realloc(p, 113)!
        XCTAssertNotEqual(q, p, "113 + 16 needs the 160-byte class")
        heap.free(q)
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }

    func testReallocKeepsTheAlignmentOfAnAlignedBlock() throws {
        let heap = try makeHeap()
        for shift in 5...16 {
            let alignment = 1 << shift
            var p = heap.memalign(alignment: alignment, size: 10)!
            memset(p, Int32(shift), 10)
            for size in [100, 5000, 70_000, 3] {
                p = heap.realloc(p, size)!
                XCTAssertEqual(UInt(bitPattern: p) % UInt(alignment), 0, "alignment \(alignment), size \(size)")
                XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: Swift.min(size, 10)).allSatisfy { $0 == shift })
            }
            heap.free(p)
        }
    }

    func testReallocFailureLeavesTheOldBlockIntactWithENOMEM() throws {
        // A quota forces the failure on the same side of the composition…
        let quota = LimitAllocator(try Pool(OSAllocator()), limit: 10_000)
        let heap = CAllocationAdapter(quota)
        let p = heap.malloc(3000)!
        for i in 0..<3000 { p.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
        let used = quota.usedBytes
        for size in [20_000, 10_000, Int.max, -5] {
            errno = 0
            XCTAssertNil(heap.realloc(p, size), "realloc to \(size)")
            XCTAssertEqual(errno, ENOMEM, "realloc to \(size)")
            XCTAssertEqual(quota.usedBytes, used)
            XCTAssertEqual(heap.requestedSize(p), 3000, "the header is unchanged")
            XCTAssertTrue(
                (0..<3000).allSatisfy { p.load(fromByteOffset: $0, as: UInt8.self) == UInt8(truncatingIfNeeded: $0) })
        }
        // …and a failing large side forces it across the threshold, where the block must move.
        let split = CAllocationAdapter(
            Segregator(threshold: 4096, small: try Pool(OSAllocator()), large: FailingAllocator()))
        let q = split.malloc(1000)!
        memset(q, 0x3C, 1000)
        errno = 0
        XCTAssertNil(split.realloc(q, 5000))
        XCTAssertEqual(errno, ENOMEM)
        XCTAssertTrue(UnsafeRawBufferPointer(start: q, count: 1000).allSatisfy { $0 == 0x3C })
        let r = split.realloc(q, 2000)!
        XCTAssertTrue(UnsafeRawBufferPointer(start: r, count: 1000).allSatisfy { $0 == 0x3C }, "still usable")
        split.free(r)
        heap.free(p)
        XCTAssertEqual(quota.usedBytes, 0)
        XCTAssertEqual(split.strategy.base.small.smallLiveBlocks, 0)
    }

    func testReallocarrayChecksOverflowAndLeavesTheBlockIntact() throws {
        let heap = try makeHeap()
        let p = heap.reallocarray(nil, 10, 8)!
        XCTAssertEqual(heap.requestedSize(p), 80)
        memset(p, 0x11, 80)
        for (count, size) in [(Int.max, 2), (1 << 40, 1 << 40), (-1, 8), (8, -1)] {
            errno = 0
            XCTAssertNil(heap.reallocarray(p, count, size), "reallocarray(p, \(count), \(size))")
            XCTAssertEqual(errno, ENOMEM)
            XCTAssertEqual(heap.requestedSize(p), 80)
            XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: 80).allSatisfy { $0 == 0x11 })
        }
        let q = heap.reallocarray(p, 100, 8)!
        XCTAssertEqual(heap.requestedSize(q), 800)
        XCTAssertTrue(UnsafeRawBufferPointer(start: q, count: 80).allSatisfy { $0 == 0x11 })
        errno = 0
        XCTAssertNil(heap.reallocarray(q, 0, 8), "a zero product frees, like realloc(p, 0)")
        XCTAssertEqual(errno, 0)
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }
}

// MARK: - Aligned allocation

extension GlobalAllocatorAdapterTests {
    func testPosixMemalignSweepUpTo64KiB() throws {
        let heap = try makeHeap()
        var live: [UnsafeMutableRawPointer] = []
        for shift in 3...16 {
            let alignment = 1 << shift
            for size in [0, 1, 7, alignment - 1, alignment, alignment + 1, 3 * alignment, 40_000] {
                var out: UnsafeMutableRawPointer? = nil
                errno = 12345
                XCTAssertEqual(heap.posixMemalign(&out, alignment: alignment, size: size), 0)
                XCTAssertEqual(errno, 12345, "posix_memalign never touches errno")
                guard let p = out else { return XCTFail("no pointer for alignment \(alignment), size \(size)") }
                XCTAssertEqual(UInt(bitPattern: p) % UInt(Swift.max(alignment, 16)), 0, "\(alignment)/\(size)")
                XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), size)
                memset(p, 0xEE, size)
                live.append(p)
            }
        }
        XCTAssertEqual(Set(live).count, live.count)
        for p in live { heap.free(p) }
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }

    func testPosixMemalignRejectsBadAlignmentsWithEINVALAndLeavesEverythingUntouched() throws {
        let counting = CountingAllocator(SystemAllocator())
        let heap = CAllocationAdapter(counting)
        let sentinel = UnsafeMutableRawPointer(bitPattern: 0xDEAD_BEE0)!
        for alignment in [0, 1, 2, 4, 12, 24, 48, 100, -8, Int.min + 8, 4097] {
            var out: UnsafeMutableRawPointer? = sentinel
            errno = 777
            XCTAssertEqual(heap.posixMemalign(&out, alignment: alignment, size: 64), EINVAL, "alignment \(alignment)")
            XCTAssertEqual(out, sentinel, "out untouched for alignment \(alignment)")
            XCTAssertEqual(errno, 777)
        }
        // A power of two that is a multiple of sizeof(void *) but larger than any allocator serves: ENOMEM.
        for alignment in [1 << 41, 1 << 62, Int.min] {
            var out: UnsafeMutableRawPointer? = sentinel
            errno = 777
            XCTAssertEqual(heap.posixMemalign(&out, alignment: alignment, size: 64), ENOMEM, "alignment \(alignment)")
            XCTAssertEqual(out, sentinel)
            XCTAssertEqual(errno, 777)
        }
        var out: UnsafeMutableRawPointer? = sentinel
        XCTAssertEqual(CAllocationAdapter(FailingAllocator()).posixMemalign(&out, alignment: 64, size: 1), ENOMEM)
        XCTAssertEqual(out, sentinel)
        XCTAssertEqual(counting.allocations, 0)
    }

    func testAlignedAllocAndMemalignSweepUpTo64KiB() throws {
        let heap = try makeHeap()
        for shift in 0...16 {
            let alignment = 1 << shift
            for size in [0, 1, alignment, 5 * alignment + 3, 50_000] {
                let a = heap.alignedAlloc(alignment: alignment, size: size)!
                let m = heap.memalign(alignment: alignment, size: size)!
                for p in [a, m] {
                    XCTAssertEqual(UInt(bitPattern: p) % UInt(Swift.max(alignment, 16)), 0, "\(alignment)/\(size)")
                    XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), size)
                    memset(p, 0x77, heap.mallocUsableSize(p))
                }
                heap.free(a)
                heap.free(m)
            }
        }
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }

    func testAlignedAllocNeedsAPowerOfTwoAndMemalignRoundsUp() throws {
        let heap = try makeHeap()
        for alignment in [0, 3, 24, 48, 100, -16] {
            errno = 0
            XCTAssertNil(heap.alignedAlloc(alignment: alignment, size: 10), "aligned_alloc(\(alignment))")
            XCTAssertEqual(errno, EINVAL)
        }
        // memalign rounds a non-power-of-two alignment up (glibc), and only rejects ones above 2^63.
        for (alignment, rounded) in [(0, 16), (3, 16), (24, 32), (48, 64), (100, 128), (5000, 8192), (40_000, 65_536)] {
            let p = heap.memalign(alignment: alignment, size: 10)!
            XCTAssertEqual(UInt(bitPattern: p) % UInt(rounded), 0, "memalign(\(alignment)) aligns to \(rounded)")
            heap.free(p)
        }
        errno = 0
        XCTAssertNil(heap.memalign(alignment: Int.min + 1, size: 10))
        XCTAssertEqual(errno, EINVAL)
        errno = 0
        XCTAssertNil(heap.memalign(alignment: Int.min, size: 10), "2^63 is a valid alignment nobody can serve")
        XCTAssertEqual(errno, ENOMEM)
        errno = 0
        XCTAssertNil(heap.alignedAlloc(alignment: 1 << 41, size: 10))
        XCTAssertEqual(errno, ENOMEM)
        errno = 0
        XCTAssertNil(CAllocationAdapter(FailingAllocator()).alignedAlloc(alignment: 64, size: 10))
        XCTAssertEqual(errno, ENOMEM)
    }

    func testVallocAndPvallocFollowThePageRules() throws {
        let heap = try makeHeap()
        for size in [0, 1, 100, page - 1, page, page + 1, 5 * page + 17, 100_000] {
            let v = heap.valloc(size)!
            XCTAssertEqual(UInt(bitPattern: v) % UInt(page), 0, "valloc(\(size)) is page aligned")
            XCTAssertEqual(heap.requestedSize(v), size)
            XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(v), size)
            let p = heap.pvalloc(size)!
            let rounded = Swift.max(1, (size + page - 1) / page) * page
            XCTAssertEqual(UInt(bitPattern: p) % UInt(page), 0, "pvalloc(\(size)) is page aligned")
            XCTAssertEqual(heap.requestedSize(p), rounded, "pvalloc(\(size)) rounds to whole pages")
            XCTAssertGreaterThanOrEqual(heap.mallocUsableSize(p), rounded)
            memset(p, 0x42, rounded)
            heap.free(v)
            heap.free(p)
        }
        for size in [Int.max, Int.max - page + 2, -1] {
            errno = 0
            XCTAssertNil(heap.pvalloc(size), "pvalloc(\(size)) overflows when rounded")
            XCTAssertEqual(errno, ENOMEM)
            errno = 0
            XCTAssertNil(heap.valloc(size))
            XCTAssertEqual(errno, ENOMEM)
        }
        XCTAssertEqual(heap.strategy.base.small.smallLiveBlocks, 0)
    }
}

// MARK: - malloc_usable_size

extension GlobalAllocatorAdapterTests {
    func testUsableSizeComesFromGoodSizeAndIsWritable() throws {
        let pool = try Pool(OSAllocator())
        let heap = CAllocationAdapter(pool)
        XCTAssertEqual(heap.mallocUsableSize(nil), 0)
        var blocks: [(UnsafeMutableRawPointer, Int)] = []
        for size in Array(0...200) + [1000, 4000, 30_000, 40_000, 100_000] {
            let p = heap.malloc(size)!
            let usable = heap.mallocUsableSize(p)
            XCTAssertEqual(usable, pool.goodSize(for: try Layout(size: 16 + Swift.max(size, 1))) - 16, "size \(size)")
            XCTAssertGreaterThanOrEqual(usable, size)
            blocks.append((p, usable))
        }
        // Fill every usable byte; no block's bytes (or header) may be disturbed by its neighbours.
        for (index, (p, usable)) in blocks.enumerated() { memset(p, Int32(index & 0xFF), usable) }
        for (index, (p, usable)) in blocks.enumerated() {
            XCTAssertEqual(heap.mallocUsableSize(p), usable, "header intact")
            XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: usable).allSatisfy { $0 == UInt8(index & 0xFF) })
        }
        for (p, _) in blocks { try heap.checkedFree(p) }
        XCTAssertEqual(pool.smallLiveBlocks, 0)

        // A base that does not round: exactly what was asked for (a byte for a zero-byte block).
        let plain = CAllocationAdapter(SystemAllocator())
        for size in [0, 1, 17, 1000] {
            let p = plain.malloc(size)!
            XCTAssertEqual(plain.mallocUsableSize(p), Swift.max(size, 1))
            plain.free(p)
        }
        // The OS side rounds to pages: the rest of the last page is usable.
        let os = CAllocationAdapter(OSAllocator())
        let big = os.malloc(100_000)!
        XCTAssertEqual(os.mallocUsableSize(big), (100_016 + page - 1) / page * page - 16)
        memset(big, 1, os.mallocUsableSize(big))
        os.free(big)
    }
}

// MARK: - Randomized model

extension GlobalAllocatorAdapterTests {
    func testRandomizedModelOverAPoolAndTheOS() throws {
        let seed = SeededGenerator.testSeed()
        try runHeaderModel(seed: seed, steps: 6_000, quota: nil)
    }

    func testRandomizedModelUnderAQuotaFailsCleanly() throws {
        let seed = SeededGenerator.testSeed()
        try runHeaderModel(seed: seed, steps: 6_000, quota: 400_000)
    }

    /// The model over `HeaderStrategy` (a pool and the OS, under an optional quota): headers, checked frees, kept
    /// alignments, and every byte back at the end.
    private func runHeaderModel(seed: UInt64, steps: Int, quota: Int?) throws {
        let limit = LimitAllocator(
            Segregator(threshold: 16 << 10, small: try Pool(OSAllocator()), large: OSAllocator()),
            limit: quota ?? Int.max)
        let heap = CAllocationAdapter(limit)
        let failures = try runModel(
            heap, seed: seed, steps: steps, failuresExpected: quota != nil, headerRoom: 16, keepsAlignment: true,
            requestedSize: { heap.requestedSize($0) }, checkedFree: { try heap.checkedFree($0) })
        let context = "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]"
        XCTAssertEqual(limit.usedBytes, 0, "every byte went back \(context)")
        XCTAssertEqual(limit.base.small.smallLiveBlocks, 0, context)
        if quota != nil { XCTAssertGreaterThan(failures, 0, "the quota was never hit \(context)") }
    }

    /// Thousands of random malloc/calloc/realloc/reallocarray/posix_memalign/memalign/aligned_alloc/valloc/free
    /// against a model of what every live block must hold. When failures are expected, each must set errno (or
    /// return ENOMEM) and leave every block as it was. Returns how many calls failed.
    ///
    /// - Parameters:
    ///   - headerRoom: bytes in front of each pointer that belong to its block (checked for overlaps too).
    ///   - keepsAlignment: whether `realloc` keeps an aligned block aligned (the strategy's choice).
    ///   - requestedSize, checkedFree: the header strategy's extras, when it has them.
    private func runModel<Strategy: CAllocationStrategy>(
        _ heap: CAllocationAdapter<Strategy>, seed: UInt64, steps: Int, failuresExpected: Bool, headerRoom: Int,
        keepsAlignment: Bool, requestedSize: ((UnsafeMutableRawPointer) -> Int)? = nil,
        checkedFree: ((UnsafeMutableRawPointer) throws -> Void)? = nil
    ) throws -> Int {
        typealias Live = ModelBlock
        var random = SeededGenerator(seed: seed)
        var live: [Live] = []
        var failures = 0
        var failed = false
        let context = "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]"
        func fail(_ message: String) {
            if !failed { XCTFail("\(message) \(context)") }
            failed = true
        }
        func randomSize() -> Int {
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<5: return 0
            case 5..<70: return Int.random(in: 1...256, using: &random)
            case 70..<92: return Int.random(in: 257...8192, using: &random)
            case 92..<98: return Int.random(in: 8193...40_000, using: &random)
            default: return Int.random(in: 40_001...300_000, using: &random)
            }
        }
        func fill(_ entry: Live, from start: Int = 0) {
            for i in start..<entry.size {
                entry.pointer.storeBytes(of: entry.tag &+ UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self)
            }
        }
        func verify(_ entry: Live, count: Int, _ what: String) {
            for i in 0..<count
            where entry.pointer.load(fromByteOffset: i, as: UInt8.self) != entry.tag &+ UInt8(truncatingIfNeeded: i) {
                return fail("\(what): block \(entry.pointer) (\(entry.size) bytes) lost byte \(i)")
            }
        }
        func place(_ pointer: UnsafeMutableRawPointer, size: Int, alignment: Int, ignoring: Int? = nil) {
            if UInt(bitPattern: pointer) % UInt(alignment) != 0 { fail("\(pointer) not aligned to \(alignment)") }
            if let requestedSize, requestedSize(pointer) != size {
                fail("\(pointer): header says \(requestedSize(pointer))")
            }
            let usable = heap.mallocUsableSize(pointer)
            if usable < size { fail("\(pointer): usable \(usable) < \(size)") }
            let lo = UInt(bitPattern: pointer) - UInt(headerRoom)
            let hi = UInt(bitPattern: pointer) + UInt(Swift.max(usable, 1))
            for (index, other) in live.enumerated() where index != ignoring {
                let olo = UInt(bitPattern: other.pointer) - UInt(headerRoom)
                let ohi = UInt(bitPattern: other.pointer) + UInt(Swift.max(other.size, 1))
                if lo < ohi && olo < hi { fail("\(pointer)+\(size) overlaps live \(other.pointer)+\(other.size)") }
            }
        }
        func expectFailure(_ what: String) {
            if !failuresExpected { fail("\(what) failed unexpectedly (errno \(errno))") }
            if errno != ENOMEM { fail("\(what) failed with errno \(errno), not ENOMEM") }
            failures += 1
        }
        func add(_ pointer: UnsafeMutableRawPointer?, size: Int, alignment: Int, zeroed: Bool, _ what: String) {
            guard let pointer else { return expectFailure(what) }
            place(pointer, size: size, alignment: alignment)
            if zeroed, !UnsafeRawBufferPointer(start: pointer, count: size).allSatisfy({ $0 == 0 }) {
                fail("\(what) is not zeroed")
            }
            let entry = Live(
                pointer: pointer, size: size, alignment: alignment, tag: .random(in: 0...255, using: &random))
            fill(entry)
            live.append(entry)
        }

        for step in 0..<steps where !failed {
            let roll = Int.random(in: 0..<100, using: &random)
            errno = 0
            if !live.isEmpty && (live.count >= 250 || roll < 38) {
                let index = Int.random(in: 0..<live.count, using: &random)
                let entry = live[index]
                verify(entry, count: entry.size, "before free (step \(step))")
                live.swapAt(index, live.count - 1)
                live.removeLast()
                if roll % 2 == 1, let checkedFree { try checkedFree(entry.pointer) } else { heap.free(entry.pointer) }
            } else if !live.isEmpty && roll >= 80 {
                let index = Int.random(in: 0..<live.count, using: &random)
                var entry = live[index]
                let newSize = randomSize()
                let byArray = roll >= 95 && newSize % 8 == 0
                let moved =
                    byArray ? heap.reallocarray(entry.pointer, newSize / 8, 8) : heap.realloc(entry.pointer, newSize)
                if newSize == 0 {
                    if moved != nil { fail("realloc(p, 0) returned non-nil") }
                    live.swapAt(index, live.count - 1)
                    live.removeLast()
                    continue
                }
                guard let moved else {
                    expectFailure("realloc(\(entry.size) → \(newSize))")
                    verify(entry, count: entry.size, "after a failed realloc")
                    if let requestedSize, requestedSize(entry.pointer) != entry.size {
                        fail("failed realloc changed the header")
                    }
                    continue
                }
                entry.pointer = moved
                verify(entry, count: Swift.min(entry.size, newSize), "realloc \(entry.size) → \(newSize)")
                if !keepsAlignment { entry.alignment = 16 }
                place(moved, size: newSize, alignment: entry.alignment, ignoring: index)
                let oldSize = entry.size
                entry.size = newSize
                if newSize > oldSize { fill(entry, from: oldSize) }
                live[index] = entry
            } else {
                let size = randomSize()
                switch roll % 8 {
                case 0, 1, 2:
                    add(heap.malloc(size), size: size, alignment: 16, zeroed: false, "malloc(\(size))")
                case 3:
                    let count = Int.random(in: 1...16, using: &random)
                    add(
                        heap.calloc(count, size / count), size: size / count * count, alignment: 16, zeroed: true,
                        "calloc(\(count), \(size / count))")
                case 4:
                    let alignment = 1 << Int.random(in: 3...16, using: &random)
                    var out: UnsafeMutableRawPointer? = nil
                    let code = heap.posixMemalign(&out, alignment: alignment, size: size)
                    if code != 0 {
                        if out != nil { fail("posix_memalign wrote its output on failure") }
                        if code != ENOMEM { fail("posix_memalign returned \(code)") }
                        errno = code
                    }
                    add(
                        out, size: size, alignment: Swift.max(alignment, 16), zeroed: false,
                        "posix_memalign(\(alignment), \(size))")
                case 5:
                    let alignment = 1 << Int.random(in: 0...16, using: &random)
                    add(
                        heap.memalign(alignment: alignment, size: size), size: size,
                        alignment: Swift.max(alignment, 16),
                        zeroed: false, "memalign(\(alignment), \(size))")
                case 6:
                    let alignment = 1 << Int.random(in: 0...13, using: &random)
                    add(
                        heap.alignedAlloc(alignment: alignment, size: size), size: size,
                        alignment: Swift.max(alignment, 16),
                        zeroed: false, "aligned_alloc(\(alignment), \(size))")
                default:
                    add(heap.valloc(size), size: size, alignment: page, zeroed: false, "valloc(\(size))")
                }
            }
        }
        for entry in live {
            verify(entry, count: entry.size, "at the end")
            heap.free(entry.pointer)
        }
        return failures
    }
}

/// A live block in `runModel`: where, how large, its alignment, and the tag its bytes are filled from.
private struct ModelBlock {
    var pointer: UnsafeMutableRawPointer
    var size: Int
    var alignment: Int
    var tag: UInt8
}

// MARK: - A header-less strategy

/// glibc's `malloc_usable_size` (declared in <malloc.h>, which the Glibc module does not import).
private let glibcUsableSize: @convention(c) (UnsafeMutableRawPointer?) -> Int = unsafeBitCast(
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_usable_size"),
    to: (@convention(c) (UnsafeMutableRawPointer?) -> Int).self)

/// A strategy without headers: glibc's own heap, which finds its chunks from their addresses itself. It checks the
/// contract the adapter promises its strategies (sizes `0...Int.max`, alignments powers of two from 16 to
/// `maximumAlignment`), records what it was asked, and can be told to fail (setting
/// `errno` to a junk value, as a failing system call might). It leaves `allocateZeroed` and `reallocate` to the
/// protocol's default implementations, so they are tested too.
struct GlibcStrategy: CAllocationStrategy {
    final class Log: @unchecked Sendable {
        var allocations: [(size: Int, alignment: Int)] = []
        var deallocations = 0
        var violations: [String] = []
        /// Fail every n-th allocation (0: never).
        var failEvery = 0
        var calls = 0
    }
    let log = Log()
    let maximumAlignment: Int

    init(maximumAlignment: Int = 1 << 20) { self.maximumAlignment = maximumAlignment }

    func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        log.allocations.append((size, alignment))
        if size < 0 { log.violations.append("allocate(size: \(size))") }
        if alignment.nonzeroBitCount != 1 || alignment < 16 || alignment > maximumAlignment {
            log.violations.append("allocate(alignment: \(alignment))")
        }
        log.calls += 1
        if log.failEvery > 0 && log.calls % log.failEvery == 0 {
            errno = 12_345
            return nil
        }
        return alignment == 16 ? Glibc.malloc(size) : aligned_alloc(alignment, size)
    }

    func deallocate(_ pointer: UnsafeMutableRawPointer) {
        log.deallocations += 1
        Glibc.free(pointer)
    }

    func usableSize(of pointer: UnsafeMutableRawPointer) -> Int {
        glibcUsableSize(pointer)
    }
}

extension GlobalAllocatorAdapterTests {
    func testAHeaderlessStrategyGetsEveryCRuleFromTheAdapter() throws {
        let strategy = GlibcStrategy(maximumAlignment: 1 << 16)
        let heap = CAllocationAdapter(strategy)
        XCTAssertEqual(heap.maximumAlignment, 1 << 16)
        // malloc(0): a unique pointer, freed like any other; free(nil) never reaches the strategy.
        let zeros = (0..<10).map { _ in heap.malloc(0)! }
        XCTAssertEqual(Set(zeros).count, 10)
        zeros.forEach(heap.free)
        heap.free(nil)
        XCTAssertEqual(strategy.log.deallocations, 10)
        XCTAssertEqual(heap.mallocUsableSize(nil), 0)
        // Sizes above Int.max (negative) and overflowing products fail with ENOMEM before the strategy is asked.
        strategy.log.allocations.removeAll()
        for call in [{ heap.malloc(-1) }, { heap.calloc(Int.max, 2) }, { heap.calloc(-1, 1) },
            { heap.reallocarray(nil, 1 << 40, 1 << 40) }, { heap.valloc(-5) }, { heap.pvalloc(Int.max) },
            { heap.memalign(alignment: 64, size: -1) }]
        {
            errno = 0
            XCTAssertNil(call())
            XCTAssertEqual(errno, ENOMEM)
        }
        // Bad alignments: EINVAL (aligned_alloc, memalign above 2^63) or ENOMEM (stricter than the strategy serves).
        for alignment in [0, 3, 24, -16] {
            errno = 0
            XCTAssertNil(heap.alignedAlloc(alignment: alignment, size: 8))
            XCTAssertEqual(errno, EINVAL, "aligned_alloc(\(alignment))")
        }
        errno = 0
        XCTAssertNil(heap.memalign(alignment: Int.min + 1, size: 8))
        XCTAssertEqual(errno, EINVAL)
        errno = 0
        XCTAssertNil(heap.memalign(alignment: 1 << 17, size: 8))
        XCTAssertEqual(errno, ENOMEM, "above the strategy's maximumAlignment")
        XCTAssertTrue(strategy.log.allocations.isEmpty, "\(strategy.log.allocations)")
        // Alignments reach the strategy validated: below 16 raised to 16, memalign's rounded up, pages for valloc.
        let page = self.page
        for (call, expected) in [
            ({ heap.memalign(alignment: 1, size: 8) }, 16), ({ heap.memalign(alignment: 100, size: 8) }, 128),
            ({ heap.alignedAlloc(alignment: 8, size: 8) }, 16), ({ heap.alignedAlloc(alignment: 4096, size: 8) }, 4096),
            ({ heap.valloc(8) }, page), ({ heap.pvalloc(0) }, page), ({ heap.malloc(8) }, 16),
        ] as [(() -> UnsafeMutableRawPointer?, Int)] {
            let p = try XCTUnwrap(call())
            XCTAssertEqual(strategy.log.allocations.last?.alignment, expected)
            XCTAssertEqual(Int(bitPattern: p) % expected, 0)
            heap.free(p)
        }
        // pvalloc rounds the size to whole pages (one page for 0); valloc does not.
        _ = heap.pvalloc(0).map(heap.free)
        XCTAssertEqual(strategy.log.allocations.last?.size, page)
        _ = heap.pvalloc(page + 1).map(heap.free)
        XCTAssertEqual(strategy.log.allocations.last?.size, 2 * page)
        _ = heap.valloc(page + 1).map(heap.free)
        XCTAssertEqual(strategy.log.allocations.last?.size, page + 1)
        // posix_memalign: codes, not errno; output untouched on failure, even when the strategy clobbers errno.
        let sentinel = UnsafeMutableRawPointer(bitPattern: 0xDEAD_BEE0)!
        var out: UnsafeMutableRawPointer? = sentinel
        errno = 777
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 24, size: 8), EINVAL)
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 4, size: 8), EINVAL)
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 1 << 17, size: 8), ENOMEM)
        strategy.log.failEvery = 1
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 64, size: 8), ENOMEM)
        XCTAssertEqual(out, sentinel)
        XCTAssertEqual(errno, 777, "posix_memalign restores errno the strategy clobbered")
        strategy.log.failEvery = 0
        XCTAssertEqual(heap.posixMemalign(&out, alignment: 64, size: 8), 0)
        XCTAssertEqual(errno, 777)
        XCTAssertEqual(Int(bitPattern: out!) % 64, 0)
        heap.free(out)
        // Any other failure of the strategy is ENOMEM in errno, whatever it left there.
        strategy.log.failEvery = 1
        for call in [{ heap.malloc(8) }, { heap.calloc(2, 8) }, { heap.alignedAlloc(alignment: 64, size: 8) }] {
            errno = 0
            XCTAssertNil(call())
            XCTAssertEqual(errno, ENOMEM)
        }
        strategy.log.failEvery = 0
        XCTAssertEqual(strategy.log.violations, [])
    }

    func testReallocOverAHeaderlessStrategy() throws {
        let strategy = GlibcStrategy()
        let heap = CAllocationAdapter(strategy)
        // realloc(nil, n) allocates; realloc(p, 0) frees and returns nil with errno untouched.
        let p = try XCTUnwrap(heap.realloc(nil, 40))
        XCTAssertEqual(strategy.log.allocations.count, 1)
        errno = 0
        XCTAssertNil(heap.realloc(p, 0))
        XCTAssertEqual(errno, 0)
        XCTAssertEqual(strategy.log.deallocations, 1)
        // The default reallocate: in place while the usable size covers the request, else moved with its bytes.
        var q = try XCTUnwrap(heap.malloc(100))
        for i in 0..<100 { q.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
        let usable = heap.mallocUsableSize(q)
        XCTAssertEqual(heap.realloc(q, usable), q)
        XCTAssertEqual(heap.realloc(q, 10), q, "the default never moves to shrink")
        q = try XCTUnwrap(heap.realloc(q, 10_000))
        XCTAssertTrue((0..<100).allSatisfy { q.load(fromByteOffset: $0, as: UInt8.self) == UInt8($0) })
        // A failed move leaves the block as it was, with ENOMEM.
        strategy.log.failEvery = 1
        errno = 0
        XCTAssertNil(heap.realloc(q, 1 << 20))
        XCTAssertEqual(errno, ENOMEM)
        XCTAssertNil(heap.reallocarray(q, 1 << 10, 1 << 10))
        XCTAssertNil(heap.realloc(q, -1), "a size_t above Int.max")
        strategy.log.failEvery = 0
        XCTAssertTrue((0..<100).allSatisfy { q.load(fromByteOffset: $0, as: UInt8.self) == UInt8($0) })
        heap.free(q)
        // The default allocateZeroed zeroes a dirty reused block.
        for size in [24, 100, 5000] {
            let dirty = try XCTUnwrap(heap.malloc(size))
            memset(dirty, 0xAB, heap.mallocUsableSize(dirty))
            heap.free(dirty)
            let clean = try XCTUnwrap(heap.calloc(1, size))
            XCTAssertTrue(UnsafeRawBufferPointer(start: clean, count: size).allSatisfy { $0 == 0 }, "size \(size)")
            heap.free(clean)
        }
        XCTAssertEqual(strategy.log.violations, [])
    }

    func testRandomizedModelOverAHeaderlessStrategy() throws {
        let seed = SeededGenerator.testSeed()
        let strategy = GlibcStrategy()
        _ = try runModel(
            CAllocationAdapter(strategy), seed: seed, steps: 6_000, failuresExpected: false, headerRoom: 0,
            keepsAlignment: false)
        let failing = GlibcStrategy()
        failing.log.failEvery = 7
        let failures = try runModel(
            CAllocationAdapter(failing), seed: seed, steps: 6_000, failuresExpected: true, headerRoom: 0,
            keepsAlignment: false)
        XCTAssertGreaterThan(failures, 100, "seed \(seed)")
        XCTAssertEqual(strategy.log.violations + failing.log.violations, [], "seed \(seed)")
        XCTAssertEqual(
            failing.log.deallocations, failing.log.allocations.count - failures, "every block freed once, seed \(seed)")
    }
}

// MARK: - The hot path does not allocate

extension GlobalAllocatorAdapterTests {
    /// Runs the adapter's hot path in a child process under glibc's `mtrace` (libc_malloc_debug), which logs every
    /// malloc-family call the process makes. After a warm-up, thousands of malloc/calloc/realloc/memalign/free calls
    /// through the adapter over a pool-and-OS composition must not log a single allocation. A positive control in
    /// the same trace (allocating Swift class instances) shows the trace would catch a regression: a class instance,
    /// an array, a string or an existential box on the hot path is exactly such a logged call.
    func testTheHotPathNeverCallsTheCHeap() throws {
        let debugLibrary = [
            "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0", "/lib/aarch64-linux-gnu/libc_malloc_debug.so.0",
            "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0", "/usr/lib/aarch64-linux-gnu/libc_malloc_debug.so.0",
        ]
        .first { FileManager.default.fileExists(atPath: $0) }
        guard let debugLibrary else { throw XCTSkip("glibc's libc_malloc_debug.so.0 (mtrace) is not installed") }
        if dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil
            || dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
        {
            throw XCTSkip("a sanitizer's malloc hides the calls from mtrace")
        }
        let trace = FileManager.default.temporaryDirectory.appendingPathComponent("divvy-mtrace-\(getpid()).txt").path
        defer { try? FileManager.default.removeItem(atPath: trace) }
        let child = try runChild("mtrace", environment: ["LD_PRELOAD": debugLibrary, "MALLOC_TRACE": trace])
        XCTAssertEqual(child.status, 0, "child failed: \(child.stderr)")
        XCTAssertTrue(child.stdout.contains("hot path done"), "the child did not run the hot path: \(child.stdout)")
        let lines = (try? String(contentsOfFile: trace, encoding: .utf8))?.split(separator: "\n") ?? []
        XCTAssertFalse(lines.isEmpty, "mtrace wrote nothing")
        // `@ caller + address size`, `- address`, `< old` / `> new` (realloc): every call is one `@` line. The
        // marker is a direct malloc of 54321 (0xd431) bytes between the hot path and the control.
        let events = lines.filter { $0.hasPrefix("@") }
        guard let marker = events.firstIndex(where: { $0.hasSuffix(" 0xd431") && $0.contains(" + ") }) else {
            return XCTFail("no marker in the trace: \(lines.prefix(20))")
        }
        XCTAssertEqual(
            marker, 0, "the hot path called the C heap:\n\(events.prefix(min(marker, 20)).joined(separator: "\n"))")
        let control = events[(marker + 1)...].filter { $0.contains(" + ") }.count
        XCTAssertGreaterThanOrEqual(
            control, 1000, "the positive control's allocations were not seen; the trace is blind")
    }

    /// The body of the child processes above. Does nothing in a normal test run.
    func testChildProcessEntryPoint() throws {
        guard let role = getenvString(childRoleVariable) else { return }
        switch role {
        case "mtrace": try childHotPath()
        case "doubleFree":
            let heap = try makeHeap()
            let p = heap.malloc(48)!
            heap.free(p)
            heap.free(p)
            print("survived")
        case "invalidFree":
            let heap = try makeHeap()
            let p = heap.malloc(48)!
            memset(p, 0x33, 48)
            heap.free(p + 32)
            print("survived")
        case "reallocFreed":
            let heap = try makeHeap()
            let p = heap.malloc(48)!
            heap.free(p)
            _ = heap.realloc(p, 100)
            print("survived")
        default: XCTFail("unknown child role \(role)")
        }
    }

    private func childHotPath() throws {
        typealias MTrace = @convention(c) () -> Void
        // libc_malloc_debug defines mtrace only under the symbol version the program linked against (a hidden
        // version), so a plain dlsym finds libc's do-nothing stub; ask for the versioned symbol.
        typealias DLVSym =
            @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>, UnsafePointer<CChar>)
            -> UnsafeMutableRawPointer?
        guard let dlvsymAddress = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "dlvsym") else {
            return XCTFail("dlvsym is not available")
        }
        let dlvsym = unsafeBitCast(dlvsymAddress, to: DLVSym.self)
        func lookup(_ name: String) -> UnsafeMutableRawPointer? {
            for version in ["GLIBC_2.2.5", "GLIBC_2.17"] {
                if let symbol = dlvsym(UnsafeMutableRawPointer(bitPattern: 0), name, version) { return symbol }
            }
            return nil
        }
        guard let start = lookup("mtrace"), let stop = lookup("muntrace") else {
            return XCTFail("mtrace is not available")
        }
        let mtrace = unsafeBitCast(start, to: MTrace.self)
        let muntrace = unsafeBitCast(stop, to: MTrace.self)
        let heap = try makeHeap(threshold: 16 << 10)
        let slots = 64
        let live = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: slots)
        live.initialize(repeating: nil, count: slots)
        let sizes = UnsafeMutablePointer<Int>.allocate(capacity: 16)
        for (i, size) in [0, 8, 24, 40, 100, 128, 300, 700, 1500, 4000, 9000, 16_000, 20_000, 70_000, 48, 64]
            .enumerated()
        {
            sizes[i] = size
        }
        func run(_ iterations: Int) {
            var state: UInt64 = 0x1234_5678
            for i in 0..<iterations {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                let slot = Int(truncatingIfNeeded: (state >> 33) % UInt64(slots))
                let size = sizes[Int(truncatingIfNeeded: (state >> 40) & 15)]
                if let old = live[slot] {
                    switch i % 4 {
                    case 0: live[slot] = heap.realloc(old, size + 1)
                    case 1: live[slot] = heap.reallocarray(old, 2, size / 2 + 1)
                    default:
                        _ = heap.mallocUsableSize(old)
                        heap.free(old)
                        live[slot] = nil
                    }
                } else {
                    switch i % 5 {
                    case 0: live[slot] = heap.malloc(size)
                    case 1: live[slot] = heap.calloc(2, size / 2 + 1)
                    case 2: live[slot] = heap.memalign(alignment: 64, size: size)
                    case 3:
                        var out: UnsafeMutableRawPointer? = nil
                        _ = heap.posixMemalign(&out, alignment: 4096, size: size)
                        live[slot] = out
                    default: live[slot] = heap.alignedAlloc(alignment: 256, size: size)
                    }
                    if let p = live[slot] { p.storeBytes(of: UInt8(1), as: UInt8.self) }
                }
            }
        }
        // Warm-up: every size class the loop uses gets its slab (a Pool builds a Slab object on first use).
        run(20_000)
        mtrace()
        run(20_000)
        let marker = malloc(54321)
        free(marker)
        // Positive control: Swift class instances come from the C heap.
        final class Box { var value = 0 }
        for i in 0..<2000 {
            let box = Box()
            box.value = i
            withExtendedLifetime(box) {}
        }
        muntrace()
        for i in 0..<slots { heap.free(live[i]) }
        live.deallocate()
        sizes.deallocate()
        print("hot path done")
    }
}

// MARK: - Child processes

private let childRoleVariable = "DIVVY_ADAPTER_TEST_CHILD"

extension GlobalAllocatorAdapterTests {
    struct ChildResult {
        var status: Int32
        var signal: Int32?
        var stdout: String
        var stderr: String
    }

    /// Runs `testChildProcessEntryPoint` in a fresh copy of this test binary with `role`.
    func runChild(_ role: String, environment: [String: String] = [:]) throws -> ChildResult {
        let process = Process()
        process.executableURL = URL(
            fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        process.arguments = ["DivvyTests.GlobalAllocatorAdapterTests/testChildProcessEntryPoint"]
        var env = ProcessInfo.processInfo.environment
        env[childRoleVariable] = role
        // No Swift backtracer in the child: it would keep our pipes open (and, under ASan, trip over itself).
        env["SWIFT_BACKTRACE"] = "enable=no"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read both pipes at once: a child that fills one while we block on the other would never finish.
        let group = DispatchGroup()
        nonisolated(unsafe) var outData = Data(), errData = Data()
        DispatchQueue.global().async(group: group) { outData = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
        group.wait()
        process.waitUntilExit()
        let signaled = process.terminationReason == .uncaughtSignal
        return ChildResult(
            status: process.terminationStatus, signal: signaled ? process.terminationStatus : nil,
            stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }
}
