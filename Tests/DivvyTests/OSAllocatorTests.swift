import Divvy
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class OSAllocatorTests: XCTestCase {
    let page = OSAllocator.pageSize

    func testAllocatesZeroedPageRoundedBlocksAndUnmapsThemOnFree() throws {
        let os = OSAllocator()
        let layout = try Layout(size: 10_000, alignment: 8)
        let block = try os.allocate(layout)
        XCTAssertEqual(block.size, 3 * page, "block.size is the real mapping length")
        XCTAssertEqual(block.size, os.goodSize(for: layout))
        XCTAssertEqual(block.address % UInt(page), 0)
        XCTAssertTrue(block.buffer.allSatisfy { $0 == 0 }, "fresh mappings read as zero")
        for i in 0..<block.size {
            block.start.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self)
        }
        XCTAssertTrue(block.buffer.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset) })
        XCTAssertEqual(OSAllocator.residency(of: block), block.size)
        XCTAssertTrue(isMapped(block))
        os.deallocate(block, layout: layout)
        XCTAssertFalse(isMapped(block), "deallocate must munmap the whole block")
    }

    func testSystemFacts() {
        XCTAssertEqual(OSAllocator.pageSize, Int(sysconf(Int32(_SC_PAGESIZE))))
        XCTAssertEqual(
            OSAllocator.transparentHugePageSize,
            readInt("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") ?? 2 << 20)
        let enabled = readText("/sys/kernel/mm/transparent_hugepage/enabled") ?? "[never]"
        XCTAssertEqual(OSAllocator.transparentHugePagesEnabled, !enabled.contains("[never]"))
        XCTAssertEqual(OSAllocator.maximumAlignment, 1 << 40)
        XCTAssertEqual(OSAllocator().granularity, page)
        XCTAssertEqual(OSAllocator(.init(hugePages: .transparent)).granularity, OSAllocator.transparentHugePageSize)
        XCTAssertEqual(OSAllocator(.init(hugePages: .explicit2MiB)).granularity, 2 << 20)
        XCTAssertEqual(OSAllocator(.init(hugePages: .explicit1GiB)).granularity, 1 << 30)
        XCTAssertEqual(OSAllocator.PageKind.explicit1GiB.pageSize, 1 << 30)
        XCTAssertEqual("\(OSAllocator.PageKind.transparent)", "transparent")
    }
}

// MARK: - Alignment and reservations

extension OSAllocatorTests {
    func testAlignmentSweepUpToOneGiBTrimsTheOverReservation() throws {
        let os = OSAllocator(.init(commit: .reserveOnly))
        for shift in 0...30 {
            let alignment = 1 << shift
            for size in [1, page + 1, 3 << 20] {
                let layout = try Layout(size: size, alignment: alignment)
                let before = vmSize()
                let block = try os.allocate(layout)
                let grown = vmSize() - before
                XCTAssertEqual(block.address % UInt(alignment), 0, "alignment \(alignment), size \(size)")
                XCTAssertEqual(block.size, os.goodSize(for: layout))
                // The over-reservation (size + alignment) must have been trimmed back to the block.
                XCTAssertLessThan(grown, block.size + (16 << 20), "alignment \(alignment): \(grown) bytes mapped")
                block.start.storeBytes(of: 0x5A, toByteOffset: block.size - 1, as: UInt8.self)
                block.start.storeBytes(of: 0xA5, as: UInt8.self)
                XCTAssertEqual(block.start.load(as: UInt8.self), 0xA5)
                XCTAssertEqual(block.start.load(fromByteOffset: block.size - 1, as: UInt8.self), 0x5A)
                os.deallocate(block, layout: layout)
                XCTAssertFalse(isMapped(block))
            }
        }
    }

    func testCommitModeDecidesAccountingEvenForOverAlignedBlocks() throws {
        // smaps VmFlags: "ac" = charged to the commit limit, "nr" = MAP_NORESERVE. The PROT_NONE over-reservation
        // used for alignment must not change what the final block is.
        for alignment in [page, 1 << 30] {
            let layout = try Layout(size: 1 << 20, alignment: alignment)
            let committed = OSAllocator()
            let block = try committed.allocate(layout)
            let flags = smapsFlags(of: block)
            XCTAssertTrue(flags.contains("ac") && !flags.contains("nr"), "commit, alignment \(alignment): \(flags)")
            XCTAssertTrue(flags.contains("rd") && flags.contains("wr"))
            committed.deallocate(block, layout: layout)

            let lazy = OSAllocator(.init(commit: .reserveOnly))
            let reserved = try lazy.allocate(layout)
            let lazyFlags = smapsFlags(of: reserved)
            XCTAssertTrue(lazyFlags.contains("nr") && !lazyFlags.contains("ac"), "reserveOnly: \(lazyFlags)")
            lazy.deallocate(reserved, layout: layout)
        }
    }

    func testReservesSixtyFourGiBWithoutCommittingIt() throws {
        let os = OSAllocator(.init(commit: .reserveOnly))
        let size = 64 << 30
        let layout = try Layout(size: size, alignment: page)
        let block = try os.allocate(layout)
        defer { os.deallocate(block, layout: layout) }
        XCTAssertEqual(block.size, size)
        XCTAssertEqual(OSAllocator.residency(of: block), 0, "nothing is resident before it is touched")
        for offset in [0, size / 2, size - 8] {
            block.start.storeBytes(of: UInt64(offset), toByteOffset: offset, as: UInt64.self)
        }
        for offset in [0, size / 2, size - 8] {
            XCTAssertEqual(block.start.load(fromByteOffset: offset, as: UInt64.self), UInt64(offset))
        }
        let resident = OSAllocator.residency(of: block)
        XCTAssertGreaterThanOrEqual(resident, 3 * page)
        XCTAssertLessThanOrEqual(resident, 3 * OSAllocator.transparentHugePageSize, "only touched pages are resident")
    }

    func testCommittingSixtyFourGiBFailsCleanlyUnderHeuristicOvercommit() throws {
        // With vm.overcommit_memory = 0 the kernel refuses one private writable mapping larger than RAM + swap.
        // This is what `.reserveOnly` is for; skip where the machine is configured differently.
        let size = 64 << 30
        guard readInt("/proc/sys/vm/overcommit_memory") == 0, let total = meminfo("MemTotal"),
            let swap = meminfo("SwapTotal"), total + swap < size
        else { throw XCTSkip("needs vm.overcommit_memory = 0 and less than 64 GiB of RAM + swap") }
        let before = vmSize()
        let error = assertAllocationError(.outOfMemory) { _ = try OSAllocator().allocate(Layout(size: size)) }
        XCTAssertEqual(error?.systemError, ENOMEM)
        XCTAssertEqual(error?.size, size)
        XCTAssertEqual(vmSize(), before, "a failed mapping leaves nothing behind")
    }
}

// MARK: - Resizing

extension OSAllocatorTests {
    func testResizeShrinksAndGrowsInPlace() throws {
        let os = OSAllocator()
        let layout = try Layout(size: 64 << 20, alignment: page)
        let block = try os.allocate(layout)
        fill(block, count: 3 * page, seed: 7)
        guard let small = os.resize(block, from: layout, toSize: 2 * page + 1) else {
            return XCTFail("shrinking in place cannot fail")
        }
        XCTAssertEqual(small.start, block.start)
        XCTAssertEqual(small.size, 3 * page)
        XCTAssertTrue(isMapped(UnsafeBlock(start: block.start, size: 3 * page)))
        XCTAssertFalse(isMapped(UnsafeBlock(start: block.start + 3 * page, size: page)), "the tail was unmapped")
        XCTAssertTrue(check(small, count: 3 * page, seed: 7))
        let smallLayout = try Layout(size: 2 * page + 1, alignment: page)
        // The tail we just gave back is still free (this test maps nothing else), so growing back works in place.
        guard let big = os.resize(small, from: smallLayout, toSize: 32 << 20) else {
            return XCTFail("growing into free address space should work in place")
        }
        XCTAssertEqual(big.start, block.start)
        XCTAssertEqual(big.size, 32 << 20)
        XCTAssertTrue(check(big, count: 3 * page, seed: 7), "contents survive")
        XCTAssertEqual(big.start.load(fromByteOffset: (32 << 20) - 1, as: UInt8.self), 0, "new pages read as zero")
        XCTAssertEqual(os.resize(big, from: smallLayout, toSize: 32 << 20), big, "same size is a no-op")
        XCTAssertNil(os.resize(big, from: smallLayout, toSize: 0), "a mapping cannot be empty")
        XCTAssertTrue(isMapped(big))
        os.deallocate(big, layout: try Layout(size: 32 << 20, alignment: page))
        XCTAssertFalse(isMapped(big))
    }

    func testResizeFailsWhenTheNextPageIsTakenAndReallocateMovesWithoutLosingData() throws {
        let os = OSAllocator()
        let layout = try Layout(size: page, alignment: 2 << 20)
        let block = try os.allocate(layout)
        // Occupy the page right after the block so it cannot grow in place.
        let mapFixedNoReplace: Int32 = 0x10_0000
        let blocker = try XCTUnwrap(
            mmap(block.start + page, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | mapFixedNoReplace, -1, 0))
        XCTAssertEqual(blocker, block.start + page, "the page after a fresh 2 MiB-aligned block is free")
        defer { munmap(blocker, page) }
        fill(block, count: page, seed: 3)

        XCTAssertNil(os.resize(block, from: layout, toSize: 2 * page))
        XCTAssertTrue(isMapped(block), "a failed resize leaves the block as it was")
        XCTAssertTrue(check(block, count: page, seed: 3))

        // Page alignment is enough for the new layout, so mremap may move it (no copy).
        let newLayout = try Layout(size: 5 * page, alignment: page)
        let moved = try os.reallocate(block, from: layout, to: newLayout)
        XCTAssertNotEqual(moved.start, block.start)
        XCTAssertEqual(moved.size, 5 * page)
        XCTAssertTrue(check(moved, count: page, seed: 3))
        XCTAssertFalse(isMapped(block), "the old range is gone")
        os.deallocate(moved, layout: newLayout)
    }

    func testReallocatePreservesContentsForEveryPath() throws {
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        for configuration in [OSAllocator.Configuration(), .init(commit: .reserveOnly), .init(hugePages: .transparent),
                              .init(prefault: true)] {
            let os = OSAllocator(configuration)
            var layout = try Layout(size: 3 * page, alignment: 16)
            var block = try os.allocate(layout)
            // Only a prefix is written and checked: byte loops are slow in debug builds, and the paths under test
            // (in place, mremap, copy) treat every byte alike.
            let sample = 64 << 10
            var tag = UInt8.random(in: 0...255, using: &random)
            fill(block, count: min(layout.size, sample), seed: tag)
            for _ in 0..<40 {
                let size = Int.random(in: 1...(8 << 20), using: &random)
                let alignment = 1 << Int.random(in: 0...22, using: &random)
                let newLayout = try Layout(size: size, alignment: alignment)
                let moved = try os.reallocate(block, from: layout, to: newLayout)
                let kept = min(layout.size, newLayout.size, sample)
                XCTAssertTrue(
                    check(moved, count: kept, seed: tag), "\(configuration) \(layout) → \(newLayout) [seed \(seed)]")
                XCTAssertEqual(moved.address % UInt(max(alignment, os.granularity)), 0)
                XCTAssertEqual(moved.size, os.goodSize(for: newLayout))
                if configuration.prefault {
                    XCTAssertEqual(OSAllocator.residency(of: moved), moved.size, "prefault covers grown pages")
                }
                (block, layout) = (moved, newLayout)
                tag = UInt8.random(in: 0...255, using: &random)
                fill(block, count: min(layout.size, sample), seed: tag)
            }
            os.deallocate(block, layout: layout)
        }
    }

    func testOverAlignedReallocateCopiesIntoAnAlignedBlock() throws {
        let os = OSAllocator()
        let layout = try Layout(size: page, alignment: page)
        var block = try os.allocate(layout)
        // Find a start that is not 1 GiB aligned (a fresh one almost never is; retry the rare case).
        var spare: [UnsafeBlock] = []
        while block.address % (1 << 30) == 0 { spare.append(block); block = try os.allocate(layout) }
        fill(block, count: page, seed: 11)
        let newLayout = try Layout(size: 2 * page, alignment: 1 << 30)
        let moved = try os.reallocate(block, from: layout, to: newLayout)
        XCTAssertEqual(moved.address % (1 << 30), 0)
        XCTAssertTrue(check(moved, count: page, seed: 11))
        XCTAssertFalse(isMapped(block))
        os.deallocate(moved, layout: newLayout)
        for extra in spare { os.deallocate(extra, layout: layout) }
    }

    func testGoodSizeMatchesAllocatedSizeForEveryPolicy() throws {
        for policy in [OSAllocator.HugePagePolicy.none, .transparent, .explicit2MiB, .explicit1GiB] {
            let os = OSAllocator(.init(hugePages: policy, commit: .reserveOnly))
            let unit = os.granularity
            XCTAssertEqual(os.goodSize(for: try Layout(size: 1)), unit, "\(policy)")
            XCTAssertEqual(os.goodSize(for: try Layout(size: unit)), unit)
            XCTAssertEqual(os.goodSize(for: try Layout(size: unit + 1)), 2 * unit)
            XCTAssertEqual(os.goodSize(for: try Layout(size: 0)), 0)
            let huge = try Layout(size: Int.max - 64, alignment: 1)
            XCTAssertEqual(os.goodSize(for: huge), huge.size, "overflowing sizes are reported unchanged")
            for size in [1, page - 1, 3 * page + 5, 5 << 20] {
                let layout = try Layout(size: size)
                let block = try os.allocate(layout)
                XCTAssertEqual(block.size, os.goodSize(for: layout), "\(policy), size \(size)")
                XCTAssertEqual(block.address % UInt(unit), 0)
                os.deallocate(block, layout: layout)
            }
        }
    }
}

// MARK: - Huge pages, prefault

extension OSAllocatorTests {
    func testEveryHugePagePolicyFallsBackAndReportsWhatItGot() throws {
        let free2MiB = readInt("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? 0
        let free1GiB = readInt("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages") ?? 0
        let thp: OSAllocator.PageKind = OSAllocator.transparentHugePagesEnabled ? .transparent : .base
        let expectations: [(OSAllocator.HugePagePolicy, OSAllocator.PageKind)] = [
            (.none, .base),
            (.transparent, thp),
            (.explicit2MiB, free2MiB >= 2 ? .explicit2MiB : thp),
            (.explicit1GiB, free1GiB >= 1 ? .explicit1GiB : (free2MiB >= 512 ? .explicit2MiB : thp)),
        ]
        for (policy, expected) in expectations {
            let os = OSAllocator(.init(hugePages: policy))
            let layout = try Layout(size: 4 << 20)
            let mapping = try os.map(layout)
            print("OSAllocator policy \(policy) got \(mapping.kind) pages (\(mapping.block))")
            XCTAssertEqual(mapping.kind, expected, "policy \(policy)")
            XCTAssertEqual(mapping.block.size, os.goodSize(for: layout))
            XCTAssertEqual(mapping.block.address % UInt(os.granularity), 0)
            memset(mapping.block.start, 0x42, layout.size)
            XCTAssertEqual(mapping.block.start.load(fromByteOffset: layout.size - 1, as: UInt8.self), 0x42)
            if mapping.kind == .transparent {
                let huge = smapsField("AnonHugePages", of: mapping.block)
                XCTAssertGreaterThan(huge, 0, "a touched, aligned, MADV_HUGEPAGE range gets huge pages")
            }
            os.deallocate(mapping.block, layout: layout)
        }
    }

    func testExplicitHugePagesWithoutFallbackFailClearlyWhenNoneAreReserved() throws {
        for (policy, pool) in [(OSAllocator.HugePagePolicy.explicit2MiB, "hugepages-2048kB"),
                               (.explicit1GiB, "hugepages-1048576kB")] {
            guard (readInt("/sys/kernel/mm/hugepages/\(pool)/free_hugepages") ?? 0) == 0 else { continue }
            let os = OSAllocator(.init(hugePages: policy, fallback: false))
            let before = vmSize()
            let error = assertAllocationError(.outOfMemory, "\(policy)") { _ = try os.map(Layout(size: 1 << 20)) }
            XCTAssertEqual(error?.systemError, ENOMEM)
            XCTAssertTrue(error?.description.contains("huge pages") ?? false, "\(String(describing: error))")
            XCTAssertEqual(vmSize(), before, "nothing stays mapped")
        }
    }

    func testTransparentWithoutFallbackGetsTransparentPages() throws {
        let os = OSAllocator(.init(hugePages: .transparent, fallback: false))
        let layout = try Layout(size: 1)
        if OSAllocator.transparentHugePagesEnabled {
            let mapping = try os.map(layout)
            XCTAssertEqual(mapping.kind, .transparent)
            XCTAssertEqual(mapping.block.size, OSAllocator.transparentHugePageSize)
            os.deallocate(mapping.block, layout: layout)
        } else {
            assertAllocationError(.unsupportedLayout) { _ = try os.map(layout) }
        }
    }

    func testExplicitHugePagesWhenThePoolHasSome() throws {
        // Needs root: reserves a few 2 MiB pages for the duration of the test and puts the count back.
        let pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        guard getuid() == 0, let original = readInt(pool) else { throw XCTSkip("needs root to reserve huge pages") }
        let wanted = original + 4
        guard writeText(pool, "\(wanted)\n") else { throw XCTSkip("cannot write \(pool)") }
        defer {
            _ = writeText(pool, "\(original)\n")
            XCTAssertEqual(readInt(pool), original, "nr_hugepages must be restored")
        }
        guard readInt(pool) == wanted, (readInt("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? 0) >= 4
        else { throw XCTSkip("the kernel could not find 4 free 2 MiB pages") }

        let os = OSAllocator(.init(hugePages: .explicit2MiB, fallback: false, commit: .reserveOnly))
        let layout = try Layout(size: 3 << 20)
        let mapping = try os.map(layout)
        XCTAssertEqual(mapping.kind, .explicit2MiB)
        XCTAssertEqual(mapping.block.size, 4 << 20)
        XCTAssertEqual(mapping.block.address % (2 << 20), 0)
        XCTAssertEqual(smapsField("KernelPageSize", of: mapping.block), 2048)
        let flags = smapsFlags(of: mapping.block)
        XCTAssertTrue(flags.contains("ht") && !flags.contains("nr"), "hugetlb, never NORESERVE: \(flags)")
        fill(mapping.block, count: mapping.block.size, seed: 9)
        XCTAssertEqual(OSAllocator.residency(of: mapping.block), 4 << 20)

        // Never MAP_NORESERVE, even in .reserveOnly: 2 pages are left, so 6 MiB fails now rather than SIGBUS later.
        assertAllocationError(.outOfMemory, "hugetlb must reserve its pages") { _ = try os.map(Layout(size: 6 << 20)) }

        // Explicit huge pages never grow in place; they shrink in whole huge pages.
        XCTAssertNil(os.resize(mapping.block, from: layout, toSize: 6 << 20))
        let shrunk = try XCTUnwrap(os.resize(mapping.block, from: layout, toSize: 1))
        XCTAssertEqual(shrunk.size, 2 << 20)
        XCTAssertTrue(check(shrunk, count: shrunk.size, seed: 9))
        // Growing by reallocation copies into a new hugetlb mapping (3 pages free now).
        let grownLayout = try Layout(size: 5 << 20)
        let grown = try os.reallocate(shrunk, from: try Layout(size: 1), to: grownLayout)
        XCTAssertEqual(grown.size, 6 << 20)
        XCTAssertTrue(check(grown, count: 1, seed: 9))
        os.deallocate(grown, layout: grownLayout)

        // An alignment above the huge page size goes through MAP_FIXED_NOREPLACE.
        let aligned = try Layout(size: 2 << 20, alignment: 1 << 30)
        let far = try os.map(aligned)
        XCTAssertEqual(far.kind, .explicit2MiB)
        XCTAssertEqual(far.block.address % (1 << 30), 0)
        os.deallocate(far.block, layout: aligned)
    }

    func testPrefaultPopulatesUpFrontAndOnGrowth() throws {
        let size = 8 << 20
        let layout = try Layout(size: size)
        let lazy = OSAllocator()
        let lazyBlock = try lazy.allocate(layout)
        XCTAssertEqual(OSAllocator.residency(of: lazyBlock), 0)
        lazy.deallocate(lazyBlock, layout: layout)

        let eager = OSAllocator(.init(commit: .reserveOnly, prefault: true))
        let block = try eager.allocate(layout)
        XCTAssertEqual(OSAllocator.residency(of: block), size, "prefault populates every page")
        XCTAssertTrue(block.buffer.allSatisfy { $0 == 0 })
        if let grown = eager.resize(block, from: layout, toSize: 2 * size) {
            XCTAssertEqual(OSAllocator.residency(of: grown), 2 * size, "grown pages are populated too")
            eager.deallocate(grown, layout: try Layout(size: 2 * size))
        } else {
            eager.deallocate(block, layout: layout)
        }
    }
}

// MARK: - Bad input

extension OSAllocatorTests {
    func testInvalidLayoutsThrowAndChangeNothing() throws {
        let os = OSAllocator(.init(commit: .reserveOnly))
        let before = vmSize()
        let zero = assertAllocationError(.invalidLayout) { _ = try os.allocate(Layout(size: 0)) }
        XCTAssertEqual(zero?.size, 0)
        let overAligned = assertAllocationError(.unsupportedLayout) {
            _ = try os.allocate(Layout(size: 1, alignment: OSAllocator.maximumAlignment << 1))
        }
        XCTAssertEqual(overAligned?.alignment, OSAllocator.maximumAlignment << 1)
        XCTAssertEqual(overAligned?.limit, OSAllocator.maximumAlignment)
        assertAllocationError(.unsupportedLayout) { _ = try os.allocate(Layout(size: Int.max - 64, alignment: 1)) }
        let tooBig = assertAllocationError(.outOfMemory) { _ = try os.allocate(Layout(size: 1 << 62)) }
        XCTAssertEqual(tooBig?.systemError, ENOMEM)
        assertAllocationError(.outOfMemory) { _ = try os.allocate(Layout(size: 1 << 50, alignment: 1 << 40)) }
        XCTAssertEqual(vmSize(), before, "failed requests leave no mapping behind")

        let layout = try Layout(size: 2 * page)
        let block = try os.allocate(layout)
        fill(block, count: layout.size, seed: 5)
        assertAllocationError(.invalidLayout) { _ = try os.reallocate(block, from: layout, to: Layout(size: 0)) }
        assertAllocationError(.unsupportedLayout) {
            _ = try os.reallocate(block, from: layout, to: Layout(size: 1, alignment: 1 << 41))
        }
        assertAllocationError(.outOfMemory) { _ = try os.reallocate(block, from: layout, to: Layout(size: 1 << 62)) }
        assertAllocationError(.outOfMemory) {
            _ = try os.reallocate(block, from: layout, to: Layout(size: 1 << 50, alignment: 1 << 40))
        }
        XCTAssertNil(os.resize(block, from: layout, toSize: 1 << 62))
        XCTAssertTrue(isMapped(block))
        XCTAssertEqual(block.size, 2 * page)
        XCTAssertTrue(check(block, count: layout.size, seed: 5), "a failed reallocation leaves the block as it was")
        os.deallocate(block, layout: layout)
    }
}

// MARK: - Model check, BlockArray, concurrency

extension OSAllocatorTests {
    func testRandomizedAgainstModel() throws {
        for configuration in [OSAllocator.Configuration(commit: .reserveOnly), .init(hugePages: .transparent)] {
            let seed = SeededGenerator.testSeed()
            let os = OSAllocator(configuration)
            let before = vmSize()
            let report = AllocatorModelCheck.run(
                os, seed: seed, steps: 3_000, maxLive: 64,
                layout: { random in
                    // Mostly small blocks (the check writes every requested byte), sometimes up to 3 MiB so that
                    // growth crosses huge-page boundaries.
                    let roll = Int.random(in: 0..<100, using: &random)
                    let limit = roll < 70 ? 4096 : roll < 97 ? 64 << 10 : 3 << 20
                    return try! Layout(
                        size: Int.random(in: 1...limit, using: &random),
                        alignment: 1 << Int.random(in: 0...22, using: &random))
                })
            XCTAssertEqual(report.allocations, report.deallocations, "seed \(seed)")
            XCTAssertGreaterThan(report.reallocations, 100)
            XCTAssertEqual(vmSize(), before, "every mapping was returned [\(configuration), seed \(seed)]")
        }
    }

    func testBlockArrayOfHalfAGigabyteFromTheOS() throws {
        var bytes = try BlockArray<UInt8, OSAllocator>(capacity: 1 << 29, allocator: OSAllocator())
        XCTAssertEqual(bytes.capacity, 1 << 29)
        for i in 0..<10_000 { try bytes.append(UInt8(truncatingIfNeeded: i)) }
        try bytes.reserveCapacity(1 << 30)  // in place, or mremap: never a 512 MiB copy of untouched pages
        XCTAssertEqual(bytes.capacity, 1 << 30)
        XCTAssertEqual(bytes.count, 10_000)
        for i in 0..<10_000 where bytes[i] != UInt8(truncatingIfNeeded: i) {
            return XCTFail("element \(i) lost in growth")
        }
        XCTAssertEqual(bytes.removeLast(), UInt8(truncatingIfNeeded: 9_999))
    }

    func testConcurrentAllocateResizeAndFreeAcrossThreads() throws {
        let seed = SeededGenerator.testSeed()
        let threads = 4
        let iterations = 400
        struct Entry: Sendable {
            var block: UnsafeBlock
            var layout: Layout
            var id: Int
        }
        final class Shared: Sendable {
            let pool = Locked<[Entry]>([])
            let freed = Locked<[Int]>([])
            let failures = Locked<[String]>([])
        }
        let shared = Shared()
        let os = OSAllocator(.init(hugePages: .none, commit: .reserveOnly))
        let page = self.page
        let group = DispatchGroup()
        for thread in 0..<threads {
            group.enter()
            Thread {
                defer { group.leave() }
                var random = SeededGenerator(seed: seed &+ UInt64(thread))
                func tag(_ id: Int) -> UInt8 { UInt8(truncatingIfNeeded: id &* 31 &+ 7) }
                func stamp(_ entry: Entry) {
                    let count = min(entry.layout.size, 2 * page)
                    memset(entry.block.start, Int32(tag(entry.id)), count)
                }
                func intact(_ entry: Entry, _ count: Int) -> Bool {
                    let bytes = UnsafeRawBufferPointer(start: entry.block.start, count: min(count, 2 * page))
                    return bytes.allSatisfy { $0 == tag(entry.id) }
                }
                for step in 0..<iterations {
                    let id = thread * iterations + step
                    do {
                        let layout = try Layout(
                            size: Int.random(in: 1...(16 * page), using: &random),
                            alignment: 1 << Int.random(in: 0...21, using: &random))
                        let entry = Entry(block: try os.allocate(layout), layout: layout, id: id)
                        stamp(entry)
                        shared.pool.withLock { $0.append(entry) }
                        // Take any block, often another thread's, and resize, reallocate or free it.
                        let taken: Entry? = shared.pool.withLock { pool in
                            pool.isEmpty ? nil : pool.remove(at: Int.random(in: 0..<pool.count, using: &random))
                        }
                        guard var other = taken else { continue }
                        guard intact(other, other.layout.size) else {
                            shared.failures.withLock { $0.append("block \(other.id) corrupted before step \(id)") }
                            continue
                        }
                        switch Int.random(in: 0..<3, using: &random) {
                        case 0:
                            os.deallocate(other.block, layout: other.layout)
                            shared.freed.withLock { $0.append(other.id) }
                            continue
                        case 1:
                            let newSize = Int.random(in: 1...(32 * page), using: &random)
                            if let resized = os.resize(other.block, from: other.layout, toSize: newSize) {
                                let kept = min(other.layout.size, newSize)
                                other.block = resized
                                other.layout = try Layout(size: newSize, alignment: other.layout.alignment)
                                if !intact(other, kept) {
                                    shared.failures.withLock { $0.append("resize lost block \(other.id)") }
                                }
                            }
                        default:
                            let newLayout = try Layout(
                                size: Int.random(in: 1...(32 * page), using: &random),
                                alignment: 1 << Int.random(in: 0...21, using: &random))
                            let kept = min(other.layout.size, newLayout.size)
                            other.block = try os.reallocate(other.block, from: other.layout, to: newLayout)
                            other.layout = newLayout
                            if !intact(other, kept) {
                                shared.failures.withLock { $0.append("reallocate lost block \(other.id)") }
                            }
                            if other.block.address % UInt(newLayout.alignment) != 0 {
                                shared.failures.withLock { $0.append("reallocate misaligned block \(other.id)") }
                            }
                        }
                        stamp(other)
                        shared.pool.withLock { $0.append(other) }
                    } catch {
                        shared.failures.withLock { $0.append("step \(id): \(error)") }
                    }
                }
            }.start()
        }
        group.wait()
        let remaining = shared.pool.withLock { pool in
            defer { pool.removeAll() }
            return pool
        }
        for entry in remaining {
            XCTAssertTrue(
                UnsafeRawBufferPointer(start: entry.block.start, count: min(entry.layout.size, 2 * page))
                    .allSatisfy { $0 == UInt8(truncatingIfNeeded: entry.id &* 31 &+ 7) },
                "block \(entry.id) [seed \(seed)]")
            os.deallocate(entry.block, layout: entry.layout)
        }
        let failures = shared.failures.withLock { $0 }
        XCTAssertEqual(failures, [], "[seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]")
        let ids = shared.freed.withLock { $0 } + remaining.map(\.id)
        XCTAssertEqual(ids.count, threads * iterations, "every block accounted for [seed \(seed)]")
        XCTAssertEqual(Set(ids).count, threads * iterations, "and exactly once [seed \(seed)]")
    }
}

// MARK: - Helpers

extension OSAllocatorTests {
    /// Whether every page of `block` is mapped (mincore fails with ENOMEM on unmapped ranges).
    func isMapped(_ block: UnsafeBlock) -> Bool {
        let pages = (block.size + page - 1) / page
        var vector = [UInt8](repeating: 0, count: pages)
        return mincore(block.start, block.size, &vector) == 0
    }

    func fill(_ block: UnsafeBlock, count: Int, seed: UInt8) {
        for i in 0..<count {
            block.start.storeBytes(of: seed &+ UInt8(truncatingIfNeeded: i &* 7), toByteOffset: i, as: UInt8.self)
        }
    }

    func check(_ block: UnsafeBlock, count: Int, seed: UInt8) -> Bool {
        for i in 0..<count
        where block.start.load(fromByteOffset: i, as: UInt8.self) != seed &+ UInt8(truncatingIfNeeded: i &* 7) {
            return false
        }
        return true
    }


    /// A `/proc/meminfo` field in bytes.
    func meminfo(_ field: String) -> Int? {
        readField(field, in: readText("/proc/meminfo") ?? "").map { $0 * 1024 }
    }

    /// The process's mapped address space in bytes (`VmSize` in /proc/self/status).
    func vmSize() -> Int { (readField("VmSize", in: readText("/proc/self/status") ?? "") ?? 0) * 1024 }

    /// The `VmFlags` of the mapping that contains `block.start` (see proc(5)).
    func smapsFlags(of block: UnsafeBlock) -> Set<String> {
        var inside = false
        for line in (readText("/proc/self/smaps") ?? "").split(separator: "\n") {
            let words = line.split(separator: " ")
            if let range = words.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= block.address && block.address < bounds[1]
            } else if inside, line.hasPrefix("VmFlags:") {
                return Set(words.dropFirst().map(String.init))
            }
        }
        return []
    }

    func readField(_ field: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.dropFirst(field.count + 1).split(separator: " ").first ?? "")
        }
        return nil
    }

    /// Sum of a `/proc/self/smaps` field (in kB) over the mappings that overlap `block`.
    func smapsField(_ field: String, of block: UnsafeBlock) -> Int {
        var total = 0
        var inside = false
        for line in (readText("/proc/self/smaps") ?? "").split(separator: "\n") {
            let words = line.split(separator: " ")
            if let range = words.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] < block.address + UInt(block.size) && block.address < bounds[1]
            } else if inside, line.hasPrefix(field + ":"), words.count >= 2 {
                total += Int(words[1]) ?? 0
            }
        }
        return total
    }
}
