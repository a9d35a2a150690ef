@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The extent area: blocks above the largest class, any size up to the area, in whole units, allocated under the
/// area's lock with single-store steps, freed with one compare-and-exchange, merged by the next allocator. Real
/// shared memory, real processes where another process matters.
final class SharedHeapExtentTests: ShmTestCase {
    /// 4 KiB units; 1 MiB of data: a quarter span pages (32 KiB, classes up to 32 KiB), half extents (128 units).
    var extentConfiguration: SharedHeapConfiguration {
        var configuration = SharedHeapConfiguration(pageSize: 4096, participantCapacity: 8, heldCapacity: 256)
        configuration.extentFraction = 0.5
        return configuration
    }

    func makeHeap(
        _ name: String = "extent", dataSize: Int = 1 << 20, configuration: SharedHeapConfiguration? = nil
    ) throws -> (SharedRegion, SharedHeap) {
        let configuration = configuration ?? extentConfiguration
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

    /// Writes `value` at both ends of the block and checks them.
    func touchEnds(_ heap: SharedHeap, _ handle: SharedHeapHandle, _ value: UInt8) throws {
        let size = try heap.blockSize(of: handle)
        let base = try heap.pointer(for: handle)
        base.storeBytes(of: value, as: UInt8.self)
        base.storeBytes(of: value, toByteOffset: size - 1, as: UInt8.self)
        XCTAssertEqual(base.load(as: UInt8.self), value)
        XCTAssertEqual(base.load(fromByteOffset: size - 1, as: UInt8.self), value)
    }

    /// 1 byte through odd sizes across the class/extent boundary: each gets its class's size or whole units, at
    /// the right place, and the audit and `usage()` agree on the bytes in use.
    func testSizesAcrossTheClassExtentBoundary() throws {
        let (_, heap) = try makeHeap()
        XCTAssertEqual(heap.extentUnitCount, 128)
        XCTAssertEqual(heap.extentUnitSize, 4096)
        XCTAssertEqual(heap.largestBlockSize, 128 * 4096)
        let largestClass = heap.largestClassBlockSize
        XCTAssertEqual(largestClass, 32768)
        let me = try heap.join(name: "sizes")
        var expectedBytes = 0
        var handles: [SharedHeapHandle] = []
        for size in [1, 17, 4095, largestClass - 1, largestClass, largestClass + 1, 40_001, 65_536, 100_000] {
            let (handle, blockSize, address) = try me.allocateBlock(size)
            XCTAssertGreaterThanOrEqual(blockSize, size)
            XCTAssertEqual(try heap.blockSize(of: handle), blockSize)
            XCTAssertEqual(try heap.pointer(for: handle), address)
            XCTAssertEqual(try heap.handle(for: address), handle)
            let isExtent = size > largestClass
            XCTAssertEqual(handle.dataOffset >= heap.layout.extentDataOffset, isExtent, "size \(size)")
            if isExtent { XCTAssertEqual(blockSize, (size + 4095) / 4096 * 4096, "size \(size): whole units") }
            try touchEnds(heap, handle, UInt8(truncatingIfNeeded: size))
            expectedBytes += blockSize
            handles.append(handle)
        }
        XCTAssertEqual(heap.usage().bytesInUse, expectedBytes)
        var report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedExtents, 4)
        XCTAssertEqual(report.allocatedBlocks, handles.count)
        for handle in handles { XCTAssertTrue(try me.free(handle)) }
        XCTAssertEqual(heap.usage().bytesInUse, 0)
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        // Zero and more than the area: unsupported; exactly the area: served (the next allocator merges).
        assertHeapError(.unsupportedSize) { _ = try me.allocate(0) }
        assertHeapError(.unsupportedSize) { _ = try me.allocate(128 * 4096 + 1) }
        let whole = try me.allocate(128 * 4096)
        XCTAssertEqual(whole.dataOffset, heap.layout.extentDataOffset)
        try touchEnds(heap, whole, 9)
        try me.free(whole)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// Exhaustion, `heapFull`, and recovery of the space by frees and merging: free A and B, adjacent, and an
    /// allocation of A + B's size succeeds at A's offset. A freed extent's handles are refused ever after,
    /// whatever extent later starts at its offset (split or merged).
    func testExhaustionCoalescingAndStaleHandlesAfterReuse() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "full")
        let unit = heap.extentUnitSize
        let a = try me.allocate(40 * unit)
        let b = try me.allocate(40 * unit)
        let c = try me.allocate(48 * unit)
        XCTAssertEqual(b.dataOffset, a.dataOffset + 40 * unit)
        XCTAssertEqual(c.dataOffset, b.dataOffset + 40 * unit)
        assertHeapError(.heapFull) { _ = try me.allocate(heap.largestClassBlockSize + 1) }
        XCTAssertEqual(heap.usage().extentUnitsFree, 0)
        try me.free(a)
        // 40 units are free, 41 are not in one run.
        assertHeapError(.heapFull) { _ = try me.allocate(41 * unit) }
        try me.free(b)
        var usage = heap.usage()
        XCTAssertEqual(usage.extentUnitsFree, 80)
        XCTAssertEqual(usage.largestFreeExtentUnits, 80)
        let ab = try me.allocate(80 * unit)
        XCTAssertEqual(ab.dataOffset, a.dataOffset, "A and B merged")
        XCTAssertEqual(try heap.blockSize(of: ab), 80 * unit)
        // A's handle names the same offset as AB's: refused, and AB is untouched.
        let peer = try heap.join(name: "peer")
        for stale in [a, b] {
            assertHeapError(.staleHandle) { _ = try heap.pointer(for: stale) }
            assertHeapError(.staleHandle) { try peer.adopt(stale) }
        }
        assertHeapError(.staleHandle) { try me.free(a) }  // AB's head now: another generation.
        assertHeapError(.doubleFree) { try me.free(b) }  // An interior unit now, whose word says B was freed.
        XCTAssertTrue(heap.verify().isClean)
        XCTAssertTrue(me.holds(ab))
        // Split reuse at the same offset: AB freed, a 9-unit extent there now (above the largest class, 8 units);
        // AB's and A's handles stay refused.
        try me.free(ab)
        let small = try me.allocate(9 * unit)
        XCTAssertEqual(small.dataOffset, a.dataOffset)
        XCTAssertNotEqual(small.generation, a.generation)
        XCTAssertNotEqual(small.generation, ab.generation)
        for stale in [a, ab] {
            assertHeapError(.staleHandle) { try peer.adopt(stale) }
            assertHeapError(.staleHandle) { _ = try heap.blockSize(of: stale) }
        }
        usage = heap.usage()
        XCTAssertEqual(usage.bytesInUse, 9 * unit + 48 * unit)
        XCTAssertEqual(usage.extentsInUse, 2)
        try me.free(small)
        try me.free(c)
        let report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(heap.extentSerial.load(ordering: .relaxed), 5, "five extents were allocated")
    }

    /// Bogus offsets into the extent area — inside a unit, the middle of an extent, its last unit, a free extent,
    /// generation 0, another generation, beyond the area — are refused with their error, and nothing changes.
    func testBadExtentHandlesAreRefusedAndChangeNothing() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "bad")
        let peer = try heap.join(name: "peer")
        let unit = heap.extentUnitSize
        let block = try me.allocate(10 * unit)
        try touchEnds(heap, block, 5)
        let base = block.dataOffset
        func handle(_ offset: Int, _ generation: UInt64 = block.generation) -> SharedHeapHandle {
            SharedHeapHandle(heapID: heap.heapID, dataOffset: offset, generation: generation)
        }
        let cases: [(SharedHeapHandle, SharedHeapError.Code)] = [
            (handle(base + 16), .misaligned),  // Inside the head unit.
            (handle(base + 5 * unit), .misaligned),  // The middle of the extent.
            (handle(base + 9 * unit), .misaligned),  // Its last unit.
            (handle(base + 10 * unit), .staleHandle),  // The free remainder's head: free, not this generation.
            (handle(base, 0), .staleHandle),
            (handle(base, block.generation + 1), .staleHandle),
            (handle(heap.layout.dataBytes), .outOfRange),
        ]
        let before = heap.verify()
        let usageBefore = heap.usage()
        for (bad, code) in cases {
            assertHeapError(code) { try peer.adopt(bad) }
            assertHeapError(code == .staleHandle ? .staleHandle : code) { _ = try heap.pointer(for: bad) }
            do {
                try me.free(bad)
                XCTFail("free of \(bad) succeeded")
            } catch {}
        }
        XCTAssertEqual(heap.verify(), before)
        XCTAssertEqual(heap.usage(), usageBefore)
        XCTAssertEqual(try heap.pointer(for: block).load(as: UInt8.self), 5)
        XCTAssertTrue(me.holds(block))
        XCTAssertFalse(peer.holds(block))
        try me.free(block)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// Holder counts of a large block: two holders in this process, a third in another process (the helper
    /// adopts, checks and frees); the block lives until the last holder's free, which frees the extent.
    func testLargeBlockAdoptAndFreeAcrossProcesses() throws {
        let (_, heap) = try makeHeap("xextent")
        let me = try heap.join(name: "A")
        let other = try heap.join(name: "B")
        let handles = try [40_000, 100_000, 200_001].map { try me.allocate($0) }
        for handle in handles {
            // The helper's pattern (`heapPattern`): it checks every byte when it adopts.
            try fillBlock(heap, handle, with: UInt8(truncatingIfNeeded: (handle.compact64 &* 0x9E37_79B9_7F4A_7C15) >> 56))
            try other.adopt(handle)
        }
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let list = directory + "/handles"
        try handles.map { "\($0.compact64)\n" }.joined().write(toFile: list, atomically: true, encoding: .utf8)
        let helper = try HelperProcess.spawn([
            "heap", "xextent", prefix, "adopt", list, "touch", directory + "/ready", "wait-file", directory + "/go",
            "free-file", list,
        ])
        var waited = 0
        while access(directory + "/ready", F_OK) != 0 && waited < 60_000 {
            usleep(1000)
            waited += 1
        }
        XCTAssertEqual(access(directory + "/ready", F_OK), 0, "the helper never adopted")
        var report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.holdings, 3 * handles.count)
        for handle in handles {
            XCTAssertEqual(BlockWord.count(heap.extentWord((handle.dataOffset - heap.layout.extentDataOffset)
                / heap.extentUnitSize).load(ordering: .relaxed)), 3, "three holders of \(handle)")
            XCTAssertFalse(try me.free(handle))
            XCTAssertFalse(try other.free(handle))
        }
        _ = FileManager.default.createFile(atPath: directory + "/go", contents: nil)
        let exit = helper.wait()
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(exit.output, "allocated=0 released=\(handles.count) adopted=\(handles.count) stale=0")
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(heap.usage().extentUnitsFree, heap.extentUnitCount, "the last free freed every extent")
        for handle in handles { assertHeapError(.staleHandle) { _ = try heap.pointer(for: handle) } }
    }

    /// A participant that dies after each step of an extent allocation (holding the area's lock for steps 1–5):
    /// its recovery releases the lock and drops a committed block; the audit is clean, nothing leaks, and the
    /// whole area can be allocated again (the half-split extents merge).
    func testAllocatorDeathAtEveryStepIsRecovered() throws {
        #if DIVVY_INTERNAL_CHECKS
        let (_, heap) = try makeHeap()
        let survivor = try heap.join(name: "survivor")
        let kept = try survivor.allocate(5 * heap.extentUnitSize)
        try touchEnds(heap, kept, 7)
        for step in 1...6 {
            let victim = try heap.join(name: "victim")
            victim._dieAfter = ("allocateExtent", step)
            assertHeapError(.participantLeft) { _ = try victim.allocate(17 * heap.extentUnitSize + 3) }
            XCTAssertEqual(heap.extentLock.load(ordering: .relaxed) != 0, step <= 5, "step \(step): the lock")
            XCTAssertEqual(heap.deadParticipants(), [], "its process lives: recovery is asked for explicitly")
            let report = try heap.recover(participant: victim.index)
            XCTAssertEqual(report.releasedBlocks, step >= 5 ? 1 : 0, "step \(step): \(report)")
            XCTAssertEqual(heap.extentLock.load(ordering: .relaxed), 0, "step \(step): recovery released the lock")
            let audit = heap.verify()
            XCTAssertTrue(audit.isClean, "step \(step): \(audit)")
            XCTAssertEqual(audit.allocatedBlocks, 1, "step \(step): only the survivor's block")
            // Everything but the survivor's 5 units, in one allocation: the victim's leftovers merged.
            let rest = try survivor.allocate((heap.extentUnitCount - 5) * heap.extentUnitSize)
            try survivor.free(rest)
        }
        XCTAssertEqual(try heap.pointer(for: kept).load(as: UInt8.self), 7)
        try survivor.free(kept)
        XCTAssertTrue(heap.verify().isClean)
        #endif
    }

    /// A process that takes over the slot of one that died after each step of an extent allocation (what a
    /// restarted daemon does): the lock is released (the slot is alive again, so nobody else would take it over),
    /// the in-flight allocation is settled as not done, the extents it held before are kept and counted against its
    /// allowance, and it goes on allocating extents.
    func testTakeoverOfAnExtentAllocatorReleasesTheLockAndKeepsItsExtents() throws {
        #if DIVVY_INTERNAL_CHECKS
        for step in 1...6 {
            let (_, heap) = try makeHeap("takeover\(step)")
            let dying = try heap.join(name: "dying")
            let kept = try dying.allocate(12 * heap.extentUnitSize)
            try touchEnds(heap, kept, 4)
            dying._dieAfter = ("allocateExtent", step)
            assertHeapError(.participantLeft) { _ = try dying.allocate(20 * heap.extentUnitSize) }
            let (successor, _) = try heap.takeOver(participant: dying.index, name: "successor", checkingProcess: false)
            XCTAssertEqual(heap.extentLock.load(ordering: .relaxed), 0, "step \(step)")
            XCTAssertEqual(Set(successor.heldHandles), [kept], "step \(step)")
            let audit = heap.verify()
            XCTAssertTrue(audit.isClean, "step \(step): \(audit)")
            XCTAssertEqual(audit.allocatedBlocks, 1, "step \(step)")
            // Its allowance counts the kept extent's 12 units.
            try heap.setPageAllowance(participant: successor.index, pages: 20)
            assertHeapError(.pageAllowanceExhausted) { _ = try successor.allocate(9 * heap.extentUnitSize) }
            try heap.setPageAllowance(participant: successor.index, pages: nil)
            let more = try successor.allocate(100 * heap.extentUnitSize)
            try successor.free(more)
            try successor.free(kept)
            XCTAssertTrue(heap.verify().isClean)
        }
        #endif
    }

    /// A lock left by a participant that will never release it (its slot not alive, as after its process died
    /// and before its recovery) is taken over by the next allocator, which then allocates normally.
    func testLockOfAGoneHolderIsTakenOver() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "me")
        heap.extentLock.store(UInt64(7 + 1), ordering: .relaxed)  // Slot 7: never joined.
        XCTAssertTrue(heap.extentLockHolderIsGone(8))
        XCTAssertFalse(heap.extentLockHolderIsGone(UInt64(me.index + 1)))
        let block = try me.allocate(9 * heap.extentUnitSize)
        XCTAssertEqual(block.dataOffset, heap.layout.extentDataOffset)
        XCTAssertEqual(heap.extentLock.load(ordering: .relaxed), 0)
        try me.free(block)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// A participant's page allowance counts the units of the extents it holds (allocated or adopted) with its
    /// pages: past it, `pageAllowanceExhausted` and nothing changes; a free makes room again.
    func testPageAllowanceCountsExtentUnits() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "quota")
        let other = try heap.join(name: "other")
        try heap.setPageAllowance(participant: me.index, pages: 30)
        let first = try me.allocate(20 * heap.extentUnitSize)
        let foreign = try other.allocate(9 * heap.extentUnitSize)
        try me.adopt(foreign)  // 29 units held.
        let before = heap.verify()
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(9 * heap.extentUnitSize) }
        XCTAssertEqual(heap.verify(), before)
        XCTAssertEqual(heap.extentLock.load(ordering: .relaxed), 0)
        // A page claim counts the extent units too: 29 held + 1 page is the allowance, a second page is not.
        let small = try me.allocate(64)
        assertHeapError(.pageAllowanceExhausted) { _ = try me.allocate(8192) }
        try me.free(small)
        try me.free(foreign)  // 20 units held.
        let second = try me.allocate(10 * heap.extentUnitSize)
        try me.free(first)
        try me.free(second)
        try other.free(foreign)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// A 1 GiB block in a 4 GiB lazily committed region with the default configuration (the extent area is a
    /// quarter of the data area: exactly 1 GiB): only what is allocated is committed; its ends are written and
    /// read; freed and allocated again at the same offset with a new generation; the old handle is refused.
    func testOneGibibyteBlockInAFourGibibyteLazyRegion() throws {
        let dataSize = 4 << 30
        let configuration = SharedHeapConfiguration(participantCapacity: 4, heldCapacity: 64)
        let region = try SharedRegion.create(
            name: "gib",
            self.configuration(
                dataSize: dataSize,
                metadataSize: SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
            ) {
                $0.commitment = .lazy
                $0.lazyCommittedMetadataSize = SharedHeap.initialMetadataSize(
                    dataSize: dataSize, configuration: configuration)
            })
        let heap = try SharedHeap.create(in: region, configuration: configuration)
        XCTAssertTrue(heap.lazyCommit)
        XCTAssertEqual(heap.largestBlockSize, 1 << 30)
        let atStart = try region.allocatedBytes()
        XCTAssertLessThan(atStart, 1 << 20, "a lazy heap commits a few pages at first")
        let me = try heap.join(name: "gib")
        let big = try me.allocate(1 << 30)
        XCTAssertEqual(try heap.blockSize(of: big), 1 << 30)
        let committed = try region.allocatedBytes()
        XCTAssertGreaterThanOrEqual(committed - atStart, 1 << 30, "the extent's data was committed")
        XCTAssertLessThan(committed - atStart, (1 << 30) + (4 << 20), "and little else")
        try touchEnds(heap, big, 0xA5)
        // Nothing else fits.
        assertHeapError(.heapFull) { _ = try me.allocate(1 << 20) }
        try me.free(big)
        let again = try me.allocate(1 << 30)
        XCTAssertEqual(again.dataOffset, big.dataOffset)
        XCTAssertNotEqual(again.generation, big.generation)
        assertHeapError(.staleHandle) { _ = try heap.pointer(for: big) }
        try touchEnds(heap, again, 0x5A)
        XCTAssertEqual(try region.allocatedBytes(), committed, "committed once, reused")
        try me.free(again)
        // Smaller blocks of 1 MiB … 512 MiB fit together.
        let mixed = try [1 << 20, 8 << 20, 64 << 20, 512 << 20].map { try me.allocate($0) }
        for handle in mixed { try touchEnds(heap, handle, 1) }
        for handle in mixed { try me.free(handle) }
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        try region.remove()
    }

    /// A failed commit of an extent's memory (lazy heap, /dev/shm full: injected) is `heapFull` and changes no
    /// extent; the next allocation succeeds.
    func testFailedExtentCommitIsHeapFullAndChangesNothing() throws {
        let dataSize = 1 << 20
        let configuration = extentConfiguration
        let region = try SharedRegion.create(
            name: "lazyextent",
            self.configuration(
                dataSize: dataSize,
                metadataSize: SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
            ) {
                $0.commitment = .lazy
                $0.lazyCommittedMetadataSize = SharedHeap.initialMetadataSize(
                    dataSize: dataSize, configuration: configuration)
            })
        let heap = try SharedHeap.create(in: region, configuration: configuration)
        let me = try heap.join(name: "lazy")
        let before = heap.verify()
        let committed = try region.allocatedBytes()
        heap._failingCommits.store(1, ordering: .relaxed)
        assertHeapError(.heapFull) { _ = try me.allocate(10 * heap.extentUnitSize) }
        XCTAssertEqual(heap.verify(), before)
        XCTAssertEqual(try region.allocatedBytes(), committed)
        XCTAssertEqual(heap.extentLock.load(ordering: .relaxed), 0)
        let block = try me.allocate(10 * heap.extentUnitSize)
        try touchEnds(heap, block, 3)
        // A handle into units never part of an allocation is stale without reading their (uncommitted) words.
        let far = SharedHeapHandle(
            heapID: heap.heapID, dataOffset: heap.layout.extentDataOffset + 100 * heap.extentUnitSize, generation: 1)
        let beforeBad = try region.allocatedBytes()
        assertHeapError(.staleHandle) { _ = try heap.pointer(for: far) }
        XCTAssertEqual(try region.allocatedBytes(), beforeBad)
        try me.free(block)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// Threads of this process allocate, fill, check and free extents and class blocks at once (run under
    /// ThreadSanitizer): no block is handed out twice, contents survive, the audit is clean.
    func testConcurrentExtentThreads() throws {
        let seed = SeededGenerator.testSeed()
        print("SharedHeapExtentTests.testConcurrentExtentThreads seed \(seed)")
        let (_, heap) = try makeHeap("extthreads", dataSize: 4 << 20)
        let failures = Locked([String]())
        let group = DispatchGroup()
        for thread in 0..<4 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                var random = SeededGenerator(seed: seed ^ UInt64(thread))
                do {
                    let me = try heap.join(name: "t\(thread)")
                    var mine: [(SharedHeapHandle, UInt8)] = []
                    for step in 0..<1500 {
                        if mine.count < 6, random.below(3) != 0 {
                            let size = random.below(4) == 0 ? 1 + random.below(2000)
                                : heap.largestClassBlockSize + 1 + random.below(12 * heap.extentUnitSize)
                            let result = Result { () throws(SharedHeapError) in try me.allocateBlock(size) }
                            guard case .success(let block) = result else {
                                if case .failure(let error) = result, error.code != .heapFull { throw error }
                                continue
                            }
                            let value = UInt8(truncatingIfNeeded: step &+ thread)
                            block.address.initializeMemory(as: UInt8.self, repeating: value, count: block.blockSize)
                            mine.append((block.handle, value))
                        } else if !mine.isEmpty {
                            let (handle, value) = mine.remove(at: random.below(mine.count))
                            let size = try heap.blockSize(of: handle)
                            let bytes = UnsafeRawBufferPointer(start: try heap.pointer(for: handle), count: size)
                            if !bytes.allSatisfy({ $0 == value }) {
                                failures.withLock { $0.append("\(handle) lost its contents") }
                            }
                            try me.free(handle)
                        }
                    }
                    for (handle, _) in mine { try me.free(handle) }
                    me.leave()
                } catch {
                    failures.withLock { $0.append("thread \(thread): \(error)") }
                }
            }
        }
        group.wait()
        XCTAssertEqual(failures.withLock { $0 }, [], "seed \(seed)")
        let report = heap.verify()
        XCTAssertTrue(report.isClean, "seed \(seed): \(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertGreaterThan(heap.extentSerial.load(ordering: .relaxed), 100, "extents were allocated")
    }
}
