import Atomics
@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The byte a block is filled with (the helper uses the same function).
private func pattern(_ handle: SharedHeapHandle) -> UInt8 {
    UInt8(truncatingIfNeeded: (handle.compact64 &* 0x9E37_79B9_7F4A_7C15) >> 56)
}


/// `adopt`, with the error returned (a `catch where` on a typed throw inside a nested function crashes the
/// Swift 6.3.1 compiler's SILGen).
private func adoptOrError(_ me: SharedHeap.Participant, _ handle: SharedHeapHandle) -> SharedHeapError? {
    do {
        try me.adopt(handle)
        return nil
    } catch {
        return error
    }
}


final class SharedHeapTests: ShmTestCase {
    /// A named region big enough for `configuration` on `dataSize` bytes of data, and a heap in it.
    func makeHeap(
        _ name: String = "heap", dataSize: Int = 4 << 20,
        configuration: SharedHeapConfiguration = .init(heldCapacity: 1024)
    ) throws -> (SharedRegion, SharedHeap) {
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

    func fill(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws {
        try fillBlock(heap, handle, with: pattern(handle))
    }

    func holdsPattern(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws -> Bool {
        try blockHolds(heap, handle, only: pattern(handle))
    }

    // MARK: Create and attach

    func testDefaultSizeClasses() {
        let classes = SharedHeapConfiguration.defaultSizeClasses(pageSize: 64 << 10)
        XCTAssertEqual(Array(classes.prefix(12)), [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256])
        XCTAssertEqual(classes.last, 8192)
        XCTAssertTrue(classes.allSatisfy { $0 % 16 == 0 })
        XCTAssertEqual(classes, classes.sorted())
    }

    func testCreateRefusesTooSmallRegionAndBadConfiguration() throws {
        let region = try SharedRegion.create(name: "small", configuration(dataSize: 1 << 20))
        assertHeapError(.invalidConfiguration) { _ = try SharedHeap.create(in: region) }
        do {
            _ = try SharedHeap.create(in: region)
        } catch {
            let needed = SharedHeap.requiredMetadataSize(dataSize: region.geometry.dataSize)
            XCTAssertTrue(error.message.contains("\(needed)"), "\(error)")
            XCTAssertTrue(error.message.contains("\(region.geometry.metadataSize)"), "\(error)")
        }
        let (big, _) = try makeHeap("big")
        assertHeapError(.invalidConfiguration) {
            _ = try SharedHeap.create(in: big, configuration: .init(pageSize: 3000))
        }
        assertHeapError(.invalidConfiguration) {
            _ = try SharedHeap.create(in: big, configuration: .init(sizeClasses: [32, 16]))
        }
        assertHeapError(.invalidConfiguration) {
            _ = try SharedHeap.create(in: big, configuration: .init(sizeClasses: [24]))
        }
        assertHeapError(.invalidConfiguration) {
            _ = try SharedHeap.create(in: big, configuration: .init(participantCapacity: 31))
        }
    }

    func testAttachChecksHeader() throws {
        let (region, heap) = try makeHeap()
        let me = try heap.join(name: "a")
        let handle = try me.allocate(100)
        try fill(heap, handle)

        // Attach through another mapping of the same region: same handles, same bytes, another address.
        let peer = try SharedHeap.attach(to: SharedRegion.open(name: "heap", namePrefix: prefix))
        XCTAssertEqual(peer.pageCount, heap.pageCount)
        XCTAssertEqual(peer.sizeClasses, heap.sizeClasses)
        XCTAssertNotEqual(try peer.pointer(for: handle), try heap.pointer(for: handle))
        XCTAssertTrue(try holdsPattern(peer, handle))
        XCTAssertEqual(try peer.handle(for: peer.pointer(for: handle)), handle)

        // A region without a heap.
        let bare = try SharedRegion.create(name: "bare", configuration())
        assertHeapError(.corruptHeader) { _ = try SharedHeap.attach(to: bare) }

        // A corrupted header field (page count): checksum mismatch.
        let meta = try region.mapping.unsafePointer(forOffset: region.geometry.metadataOffset, length: 256)
        let saved = meta.load(fromByteOffset: 16, as: UInt32.self)
        meta.storeBytes(of: saved + 1, toByteOffset: 16, as: UInt32.self)
        assertHeapError(.corruptHeader) { _ = try SharedHeap.attach(to: region) }
        meta.storeBytes(of: saved, toByteOffset: 16, as: UInt32.self)
        // A corrupted checksum.
        let sum = meta.load(fromByteOffset: 120, as: UInt64.self)
        meta.storeBytes(of: sum ^ 1, toByteOffset: 120, as: UInt64.self)
        assertHeapError(.corruptHeader) { _ = try SharedHeap.attach(to: region) }
        meta.storeBytes(of: sum, toByteOffset: 120, as: UInt64.self)
        // Another version.
        meta.storeBytes(of: UInt32(99), toByteOffset: 8, as: UInt32.self)
        assertHeapError(.corruptHeader) { _ = try SharedHeap.attach(to: region) }
        meta.storeBytes(of: SharedHeap.layoutVersion, toByteOffset: 8, as: UInt32.self)
        XCTAssertNoThrow(try SharedHeap.attach(to: region))
        // A read-only mapping may audit and read, not join.
        let reader = try SharedHeap.attach(to: SharedRegion.open(name: "heap", namePrefix: prefix, access: .readOnly))
        XCTAssertTrue(try holdsPattern(reader, handle))
        XCTAssertTrue(reader.verify().isClean, "\(reader.verify())")
        assertHeapError(.invalidConfiguration) { _ = try reader.join(name: "r") }
        heap._checkInvariants()
        try me.free(handle)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    // MARK: Single process

    func testAllocateWriteFreeAcrossClasses() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "one")
        var handles: [SharedHeapHandle] = []
        // Small classes, a large class (span pages), and the largest (one block per span page).
        XCTAssertEqual(heap.largestClassBlockSize, heap.spanPageSize)
        for size in [1, 16, 17, 100, 256, 1000, 4096, heap.largestSmallBlockSize + 1, heap.largestClassBlockSize] {
            for _ in 0..<(size == heap.largestClassBlockSize ? 1 : 40) {
                let handle = try me.allocate(size)
                XCTAssertGreaterThanOrEqual(try heap.blockSize(of: handle), size)
                XCTAssertEqual(UInt(bitPattern: try heap.pointer(for: handle)) % 16, 0)
                try fill(heap, handle)
                handles.append(handle)
            }
        }
        XCTAssertEqual(Set(handles).count, handles.count)
        // Blocks never overlap: every block still holds its own pattern after all were written.
        for handle in handles { XCTAssertTrue(try holdsPattern(heap, handle), "\(handle)") }
        var report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, handles.count)
        XCTAssertEqual(report.holdings, handles.count)
        for handle in handles { XCTAssertTrue(try me.free(handle)) }
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(report.holdings, 0)
        me.leave()
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.pooledPages, heap.pageCount, "every page back in the pool after leave: \(report)")
    }

    /// `allocateBlock` returns, without a second look-up, exactly what `blockSize(of:)` and `pointer(for:)` say of the
    /// new handle, in both tiers, for fresh and reused slots.
    func testAllocateBlockReturnsTheCheckedSizeAndAddress() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "one")
        for size in [1, 16, 17, 100, 1000, 4096, heap.largestSmallBlockSize + 1, heap.largestClassBlockSize,
                     heap.largestClassBlockSize + 1, heap.largestBlockSize] {
            for round in 0..<3 {
                let (handle, blockSize, address) = try me.allocateBlock(size)
                XCTAssertEqual(blockSize, try heap.blockSize(of: handle), "size \(size) round \(round)")
                XCTAssertEqual(address, try heap.pointer(for: handle), "size \(size) round \(round)")
                XCTAssertGreaterThanOrEqual(blockSize, size)
                try me.free(handle)  // The next round reuses the slot (a new generation, the same address).
            }
        }
        XCTAssertTrue(heap.verify().isClean)
    }

    func testFreedBlocksAreReusedWithNewGeneration() throws {
        let (_, heap) = try makeHeap()
        let me = try heap.join(name: "one")
        let first = try me.allocate(64)
        try me.free(first)
        let second = try me.allocate(64)
        XCTAssertEqual(first.dataOffset, second.dataOffset, "LIFO reuse of the freed slot")
        XCTAssertNotEqual(first.generation, second.generation)
        assertHeapError(.staleHandle) { _ = try heap.pointer(for: first) }
        XCTAssertNoThrow(try heap.pointer(for: second))
    }

    func testModelBasedRandomized() throws {
        let seed = SeededGenerator.testSeed()
        print("SharedHeapTests.testModelBasedRandomized seed \(seed) (rerun with DIVVY_TEST_SEED=\(seed))")
        var random = SeededGenerator(seed: seed)
        let (_, heap) = try makeHeap(dataSize: 2 << 20)
        let participants = try (0..<3).map { try heap.join(name: "p\($0)") }
        // The model: every live block, its holders and size.
        var model: [SharedHeapHandle: (holders: Set<Int>, size: Int)] = [:]
        var everFreed: [SharedHeapHandle] = []
        for step in 1...6000 {
            let p = random.below(participants.count)
            let me = participants[p]
            switch random.below(10) {
            case 0..<4:
                let size = random.below(4) == 0 ? randomBlockSize(heap, &random) : 1 + random.below(512)
                do {
                    let handle = try me.allocate(size)
                    XCTAssertNil(model[handle], "seed \(seed): handle reissued while live")
                    XCTAssertEqual(try heap.handle(for: heap.pointer(for: handle)), handle, "seed \(seed)")
                    XCTAssertGreaterThanOrEqual(try heap.blockSize(of: handle), size, "seed \(seed)")
                    try fill(heap, handle)
                    model[handle] = ([p], size)
                } catch let error as SharedHeapError where error.code == .heapFull {
                    continue
                }
            case 4..<6:
                guard let (handle, entry) = model.randomElement(using: &random) else { continue }
                if entry.holders.contains(p) {
                    assertHeapError(.alreadyHeld) { try me.adopt(handle) }
                } else {
                    try me.adopt(handle)
                    model[handle]!.holders.insert(p)
                }
            case 6..<9:
                guard let (handle, entry) = model.randomElement(using: &random) else { continue }
                XCTAssertTrue(try holdsPattern(heap, handle), "seed \(seed): \(handle) lost its contents")
                if entry.holders.contains(p) {
                    let released = try me.free(handle)
                    XCTAssertEqual(released, entry.holders.count == 1, "seed \(seed)")
                    model[handle]!.holders.remove(p)
                    if released {
                        model[handle] = nil
                        everFreed.append(handle)
                    }
                } else {
                    assertHeapError(.notHeld) { try me.free(handle) }
                }
            default:
                // A stale or double free from the history.
                guard let old = everFreed.randomElement(using: &random) else { continue }
                XCTAssertThrowsError(try me.free(old)) { error in
                    let code = (error as? SharedHeapError)?.code
                    XCTAssertTrue(code == .staleHandle || code == .doubleFree, "seed \(seed): \(error)")
                }
            }
            if step % 500 == 0 {
                let report = heap.verify()
                XCTAssertTrue(report.isClean, "seed \(seed) step \(step): \(report)")
                XCTAssertEqual(report.allocatedBlocks, model.count, "seed \(seed) step \(step)")
                XCTAssertEqual(report.holdings, model.values.reduce(0) { $0 + $1.holders.count }, "seed \(seed)")
            }
        }
        for (index, me) in participants.enumerated() {
            XCTAssertEqual(me.heldCount, model.values.filter { $0.holders.contains(index) }.count, "seed \(seed)")
            me.leave()
        }
        let report = heap.verify()
        XCTAssertTrue(report.isClean, "seed \(seed): \(report)")
        XCTAssertEqual(report.allocatedBlocks, 0, "seed \(seed)")
        XCTAssertEqual(report.liveParticipants, 0, "seed \(seed)")
    }

    // MARK: The audit

    /// verify() finds each kind of corruption, and never writes: the metadata bytes are identical afterwards.
    func testVerifyDetectsCorruptionAndIsReadOnly() throws {
        let (region, heap) = try makeHeap(dataSize: 1 << 20)
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        var handles: [SharedHeapHandle] = []
        for _ in 0..<10 { handles.append(try a.allocate(64)) }
        try b.adopt(handles[0])
        try a.free(handles[9])  // one slot on the local free list
        try b.free(handles[0])
        try b.adopt(handles[1])
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        let metadata = try region.mapping.unsafePointer(
            forOffset: region.geometry.metadataOffset, length: heap.layout.totalBytes)
        let snapshot = Array(UnsafeRawBufferPointer(start: metadata, count: heap.layout.totalBytes))
        let clean = heap.verify()
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: metadata, count: heap.layout.totalBytes)), snapshot,
                       "verify() wrote to the metadata area")
        let location = try heap.locate(handles[2])
        let page = location.page

        func expectViolation(_ fragment: String, line: UInt = #line, corrupt: () -> Void, restore: () -> Void) {
            corrupt()
            let report = heap.verify()
            XCTAssertFalse(report.isClean, "corruption not detected (\(fragment))", line: line)
            XCTAssertTrue(report.violations.contains { $0.contains(fragment) }, "\(report)", line: line)
            restore()
            XCTAssertEqual(heap.verify(), clean, line: line)
        }
        // A cycle in the local free list (slot 9 links to itself).
        let freeSlot = try heap.locate(handles[9]).slot
        let savedLink = heap.link(page, freeSlot).load(ordering: .relaxed)
        expectViolation("twice", corrupt: { heap.link(page, freeSlot).store(UInt32(freeSlot), ordering: .relaxed) },
                        restore: { heap.link(page, freeSlot).store(savedLink, ordering: .relaxed) })
        // A wrong local free count.
        let savedCount = heap.localCount(page).load(ordering: .relaxed)
        expectViolation("local free count", corrupt: { heap.localCount(page).store(savedCount + 1, ordering: .relaxed) },
                        restore: { heap.localCount(page).store(savedCount, ordering: .relaxed) })
        // A block both free and held: a held block's state set to free.
        let word = heap.blockWord(page, location.slot)
        let savedWord = word.load(ordering: .relaxed)
        expectViolation("not an allocated block", corrupt: {
            word.store(BlockWord.make(generation: location.generation, count: 0, state: BlockWord.free),
                       ordering: .relaxed)
        }, restore: { word.store(savedWord, ordering: .relaxed) })
        // A holder count above the held lists' entries.
        expectViolation("held lists name it", corrupt: {
            word.store(savedWord + (UInt64(1) << 48), ordering: .relaxed)
        }, restore: { word.store(savedWord, ordering: .relaxed) })
        // A held-list entry the holder count does not include.
        expectViolation("held lists name it", corrupt: { heap.writeHeld(b.index, 5, handles[2]) },
                        restore: {
            heap.clearHeld(b.index, 5)
            heap.heldOffset(b.index, 5).store(0, ordering: .relaxed)
        })
        // A held-list entry naming a freed block.
        expectViolation("not an allocated block", corrupt: { heap.writeHeld(b.index, 5, handles[9]) },
                        restore: {
            heap.clearHeld(b.index, 5)
            heap.heldOffset(b.index, 5).store(0, ordering: .relaxed)
        })
        // A frozen block (a recount that stopped half-way).
        expectViolation("is frozen", corrupt: {
            word.store(BlockWord.with(state: BlockWord.frozen, savedWord), ordering: .relaxed)
        }, restore: { word.store(savedWord, ordering: .relaxed) })
        // A block held by a participant that is not alive.
        let state = heap.participantState(b.index)
        let savedState = state.load(ordering: .relaxed)
        expectViolation("not alive", corrupt: {
            state.store(ParticipantWord.make(state: ParticipantWord.dead, pid: 1, startTime: 0), ordering: .relaxed)
        }, restore: { state.store(savedState, ordering: .relaxed) })
        // An operation left in flight.
        let savedPendingGeneration = heap.pendingGeneration(a.index).load(ordering: .relaxed)
        expectViolation("middle of an operation", corrupt: { heap.announce(a.index, .free, handles[3]) },
                        restore: {
            heap.clearPending(a.index)
            heap.pendingGeneration(a.index).store(savedPendingGeneration, ordering: .relaxed)
        })
        // The pool: a page in use marked free in the bitmap; a page that left the pool before, pooled, with its
        // bit clear (no claimer would find it); a bump index beyond the tier.
        expectViolation("bitmap bit set but is marked in use", corrupt: {
            _ = heap.poolBitmap(0, page / 64).loadThenBitwiseOr(with: UInt64(1) << UInt64(page % 64), ordering: .relaxed)
        }, restore: {
            _ = heap.poolBitmap(0, page / 64).loadThenBitwiseAnd(with: ~(UInt64(1) << UInt64(page % 64)),
                                                                 ordering: .relaxed)
        })
        let bumpPage = Int(heap.poolBump(0).load(ordering: .relaxed))
        expectViolation("bitmap bit is clear", corrupt: {
            heap.pageState(bumpPage).store(
                PageWord.make(kind: PageWord.pooled, sizeClass: 0, owner: 0, epoch: 3), ordering: .relaxed)
        }, restore: { heap.pageState(bumpPage).store(0, ordering: .relaxed) })
        expectViolation("beyond its", corrupt: {
            heap.poolBump(0).store(UInt64(heap.smallPageCount + 1), ordering: .relaxed)
        }, restore: { heap.poolBump(0).store(UInt64(bumpPage), ordering: .relaxed) })
        // A leaked block: carved, in no list, not allocated.
        let leak = heap.blockWord(page, freeSlot)
        let savedLeak = leak.load(ordering: .relaxed)
        let savedHead = heap.localHead(page).load(ordering: .relaxed)
        expectViolation("leaked block", corrupt: {
            heap.localHead(page).store(savedLink, ordering: .relaxed)
            heap.localCount(page).store(savedCount - 1, ordering: .relaxed)
        }, restore: {
            heap.localHead(page).store(savedHead, ordering: .relaxed)
            heap.localCount(page).store(savedCount, ordering: .relaxed)
            leak.store(savedLeak, ordering: .relaxed)
        })
        let after = Array(UnsafeRawBufferPointer(start: metadata, count: heap.layout.totalBytes))
        XCTAssertNil(after.indices.first { after[$0] != snapshot[$0] }, "metadata not restored (first differing byte)")
        // An operation on a block whose word was overwritten is refused, and changes nothing.
        word.store(BlockWord.make(generation: location.generation, count: 0, state: BlockWord.allocated),
                   ordering: .relaxed)
        let corrupted = heap.verify()
        assertHeapError(.corruptMetadata) { try a.free(handles[2]) }
        XCTAssertEqual(heap.verify(), corrupted)
        word.store(savedWord, ordering: .relaxed)
        XCTAssertEqual(heap.verify(), clean)
        try b.free(handles[1])
        for handle in handles[1..<9] { try a.free(handle) }
        XCTAssertTrue(heap.verify().isClean)
    }

    // MARK: Bad input

    func testBadInputIsRejectedAndChangesNothing() throws {
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 48, 512], participantCapacity: 3, heldCapacity: 8)
        let (_, heap) = try makeHeap(dataSize: 4 * 4096, configuration: configuration)
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        let block = try a.allocate(40)  // 48-byte class
        let shared = try a.allocate(16)
        try b.adopt(shared)
        let freed = try a.allocate(16)
        try a.free(freed)
        let before = heap.verify()
        XCTAssertTrue(before.isClean, "\(before)")

        func rejected(_ code: SharedHeapError.Code, line: UInt = #line, _ body: () throws -> Void) {
            assertHeapError(code, line: line, body)
            XCTAssertEqual(heap.verify(), before, "the heap changed after a rejected \(code)", line: line)
        }
        let outside = SharedHeapHandle(heap, compact64: UInt64(block.generation) << 32 | UInt64(heap.layout.dataBytes / 16))
        rejected(.outOfRange) { try a.free(outside) }
        rejected(.outOfRange) { try b.adopt(outside) }
        rejected(.outOfRange) { _ = try heap.pointer(for: outside) }
        rejected(.outOfRange) { try a.free(SharedHeapHandle(low: 0, high: 0)) }
        let inside = SharedHeapHandle(heap, compact64: block.compact64 + 1)  // 16 bytes into a 48-byte block
        rejected(.misaligned) { try a.free(inside) }
        rejected(.misaligned) { try b.adopt(inside) }
        rejected(.misaligned) { _ = try heap.handle(for: heap.pointer(for: block) + 16) }
        rejected(.misaligned) { _ = try heap.handle(for: heap.pointer(for: block) + 1) }
        let stale = SharedHeapHandle(heap, compact64: block.compact64 &+ (1 << 32))
        rejected(.staleHandle) { try a.free(stale) }
        rejected(.staleHandle) { try b.adopt(stale) }
        rejected(.staleHandle) { try b.adopt(freed) }
        rejected(.staleHandle) { _ = try heap.pointer(for: freed) }
        rejected(.doubleFree) { try a.free(freed) }
        rejected(.doubleFree) { try b.free(freed) }
        rejected(.notHeld) { try b.free(block) }
        rejected(.alreadyHeld) { try b.adopt(shared) }
        rejected(.unsupportedSize) { _ = try a.allocate(0) }
        rejected(.unsupportedSize) { _ = try a.allocate(heap.largestBlockSize + 1) }  // Above the extent area.
        rejected(.outOfRange) { _ = try heap.handle(for: UnsafeRawPointer(bitPattern: 0x1000)!) }
        // The participant table (capacity 3) and a full held list (capacity 8).
        let c = try heap.join(name: "c")
        let afterJoin = heap.verify()
        assertHeapError(.participantTableFull) { _ = try heap.join(name: "d") }
        XCTAssertEqual(heap.verify(), afterJoin)
        var cs: [SharedHeapHandle] = []
        for _ in 0..<8 { cs.append(try c.allocate(16)) }
        let full = heap.verify()
        assertHeapError(.heldListFull) { _ = try c.allocate(16) }
        assertHeapError(.heldListFull) { try c.adopt(block) }
        XCTAssertEqual(heap.verify(), full)
        for handle in cs { try c.free(handle) }
        c.leave()
        assertHeapError(.participantLeft) { _ = try c.allocate(16) }
        // Heap full: 4 pages; fill with 512-byte blocks (8 per page) from two participants' held lists.
        var big: [SharedHeapHandle] = []
        var owner = [a, b]
        do {
            while true {
                if owner[0].heldCount == 8 { owner.removeFirst() }
                guard let me = owner.first else { break }
                big.append(try me.allocate(512))
            }
        } catch {
            XCTAssertEqual(error.code, .heapFull, "\(error)")
        }
        XCTAssertTrue(heap.verify().isClean)
        XCTAssertEqual(heap.verify().pooledPages, 0, "\(heap.verify())")
    }

    func testHeapFullIsReportedAndRecoverable() throws {
        let configuration = SharedHeapConfiguration(pageSize: 4096, sizeClasses: [16, 512], heldCapacity: 64)
        let (_, heap) = try makeHeap(dataSize: 2 * 4096, configuration: configuration)
        let me = try heap.join(name: "a")
        var handles: [SharedHeapHandle] = []
        for _ in 0..<16 { handles.append(try me.allocate(512)) }
        let before = heap.verify()
        XCTAssertEqual(before.pooledPages, 0)
        assertHeapError(.heapFull) { _ = try me.allocate(512) }
        assertHeapError(.heapFull) { _ = try me.allocate(16) }
        XCTAssertEqual(heap.verify(), before)
        // Free one page's worth: its page goes back to the pool and serves another class.
        for handle in handles.prefix(8) { try me.free(handle) }
        XCTAssertNoThrow(try me.allocate(16))
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    // MARK: Cross-process

    func testCrossProcessAdoptReadAndFree() throws {
        let (_, heap) = try makeHeap("xproc", dataSize: 16 << 20)
        let me = try heap.join(name: "A")
        var handles: [SharedHeapHandle] = []
        var random = SeededGenerator(seed: 7)
        for _ in 0..<300 {
            let handle = try me.allocate(randomBlockSize(heap, &random))
            try fill(heap, handle)
            handles.append(handle)
        }
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let list = directory + "/handles"
        try handles.map { "\($0.compact64)\n" }.joined().write(toFile: list, atomically: true, encoding: .utf8)
        let helper = try HelperProcess.spawn([
            "heap", "xproc", prefix, "adopt", list, "touch", directory + "/ready", "wait-file", directory + "/go",
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
        XCTAssertEqual(report.holdings, 2 * handles.count, "B holds every block too")
        // A lets go first: B's holdings keep every block alive.
        for handle in handles { XCTAssertFalse(try me.free(handle)) }
        for handle in handles { XCTAssertTrue(try holdsPattern(heap, handle)) }
        _ = FileManager.default.createFile(atPath: directory + "/go", contents: nil)
        let exit = helper.wait()
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(exit.output, "allocated=0 released=\(handles.count) adopted=\(handles.count) stale=0")
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(report.remoteFreeBlocks, handles.count, "B's frees are on A's pages' remote stacks")
        // A collects them: allocating again reuses the same pages.
        // The same sizes again: the same pages serve them.
        let pagesBefore = report.ownedPages
        random = SeededGenerator(seed: 7)
        for _ in 0..<300 { _ = try me.allocate(randomBlockSize(heap, &random)) }
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.ownedPages, pagesBefore, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 300)
    }

    func testCrossProcessHelperAllocatesParentFrees() throws {
        let (_, heap) = try makeHeap("xproc2", dataSize: 16 << 20)
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let list = directory + "/handles"
        let helper = try HelperProcess.spawn([
            "heap", "xproc2", prefix, "alloc", "200", "11", list, "wait-file", directory + "/adopted", "free-all",
        ])
        var waited = 0
        while access(list, F_OK) != 0 && waited < 60_000 {
            usleep(1000)
            waited += 1
        }
        let handles = try String(contentsOfFile: list, encoding: .utf8).split(separator: "\n")
            .map { SharedHeapHandle(heap, compact64: UInt64($0.split(separator: " ")[0])!) }
        XCTAssertEqual(handles.count, 200)
        let me = try heap.join(name: "A")
        for handle in handles {
            try me.adopt(handle)
            XCTAssertTrue(try holdsPattern(heap, handle), "\(handle)")
        }
        _ = FileManager.default.createFile(atPath: directory + "/adopted", contents: nil)
        let exit = helper.wait()
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(exit.output, "allocated=200 released=0 adopted=0 stale=0")
        var report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertGreaterThan(report.orphanPages, 0, "the helper left pages with live blocks: \(report)")
        XCTAssertEqual(report.allocatedBlocks, 200)
        for handle in handles {
            XCTAssertTrue(try holdsPattern(heap, handle))
            XCTAssertTrue(try me.free(handle))
        }
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(report.remoteFreeBlocks, 200)
    }

    /// Another process's frees of blocks it does not hold, of stale handles and of garbage are rejected, and the
    /// heap is unchanged.
    func testCrossProcessBadFreesChangeNothing() throws {
        let (_, heap) = try makeHeap("xbad")
        let me = try heap.join(name: "A")
        let held = try (0..<20).map { _ in try me.allocate(100) }
        let freed = try (0..<5).map { _ in try me.allocate(100) }
        for handle in freed { try me.free(handle) }
        let before = heap.verify()
        XCTAssertTrue(before.isClean, "\(before)")
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func write(_ name: String, _ handles: [SharedHeapHandle]) throws -> String {
            let path = directory + "/" + name
            try handles.map { "\($0.compact64)\n" }.joined().write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let misaligned = held.map { SharedHeapHandle(heap, compact64: $0.compact64 + 1) }
        let outside = [SharedHeapHandle(heap, compact64: (held[0].compact64 >> 32) << 32 | UInt64(heap.layout.dataBytes / 16))]
        let stale = held.map { SharedHeapHandle(heap, compact64: $0.compact64 &+ (1 << 32)) }
        let exit = try HelperProcess.run([
            "heap", "xbad", prefix,
            "free-expect", try write("held", held), "notHeld",
            "free-expect", try write("freed", freed), "doubleFree",
            "free-expect", try write("stale", stale), "staleHandle",
            "free-expect", try write("misaligned", misaligned), "misaligned",
            "free-expect", try write("outside", outside), "outOfRange",
        ])
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(heap.verify(), before)
        for handle in held { XCTAssertTrue(try me.free(handle)) }
    }

    /// A process that exits without leaving keeps its holdings (nothing is freed under anyone), and verify()
    /// reports it as needing recovery.
    func testProcessExitingWithoutLeaveIsReported() throws {
        let (_, heap) = try makeHeap("gone")
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let exit = try HelperProcess.run(["heap", "gone", prefix, "alloc", "5", "3", directory + "/h", "exit-without-leave"])
        XCTAssertEqual(exit.status, 0, "\(exit)")
        let report = heap.verify()
        XCTAssertEqual(report.participantsWithoutProcess, 1, "\(report)")
        XCTAssertEqual(report.allocatedBlocks, 5)
        XCTAssertEqual(report.holdings, 5)
        XCTAssertTrue(report.violations.allSatisfy { $0.contains("is gone") }, "\(report)")
        // Its blocks are still intact and adoptable by survivors.
        let handles = try String(contentsOfFile: directory + "/h", encoding: .utf8).split(separator: "\n")
            .map { SharedHeapHandle(heap, compact64: UInt64($0.split(separator: " ")[0])!) }
        let me = try heap.join(name: "survivor")
        for handle in handles {
            try me.adopt(handle)
            XCTAssertTrue(try holdsPattern(heap, handle))
            XCTAssertFalse(try me.free(handle), "the dead participant's holding keeps the block")
        }
    }

    /// Orphan pages whose blocks were all freed remotely go back to the pool when another class needs a page.
    func testOrphanPagesAreReclaimed() throws {
        let configuration = SharedHeapConfiguration(pageSize: 4096, sizeClasses: [16, 512], heldCapacity: 64)
        let (_, heap) = try makeHeap(dataSize: 2 * 4096, configuration: configuration)
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        let blocks = try (0..<8).map { _ in try a.allocate(512) }
        let small = try b.allocate(16)
        for handle in blocks { try b.adopt(handle) }
        a.leave()
        var report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.orphanPages, 1)
        XCTAssertEqual(report.pooledPages, 0)
        for handle in blocks { XCTAssertTrue(try b.free(handle)) }
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.remoteFreeBlocks, 8)
        // c needs a 16-byte page: the pool is empty, but the orphan holds nothing live.
        let c = try heap.join(name: "c")
        let fresh = try c.allocate(16)
        report = heap.verify()
        XCTAssertTrue(report.isClean, "\(report)")
        XCTAssertEqual(report.orphanPages, 0)
        XCTAssertEqual(report.ownedPages, 2)
        try c.free(fresh)
        try b.free(small)
    }

    // MARK: Stress

    func testStressProcessesAndThreads() throws {
        let seed = SeededGenerator.testSeed() % (1 << 40)
        print("SharedHeapTests.testStressProcessesAndThreads seed \(seed)")
        let (_, heap) = try makeHeap("stress", dataSize: 8 << 20)
        let me = try heap.join(name: "mailbox")
        let slots = 64
        let mailbox = try me.allocate(8 * slots)
        try heap.pointer(for: mailbox).initializeMemory(as: UInt8.self, repeating: 0, count: 8 * slots)
        let helpers = try (0..<2).map { index in
            try HelperProcess.spawn([
                "heap", "stress", prefix, "stress", "3", "4000", "\(seed &+ UInt64(index))", "\(mailbox.compact64)",
                "\(slots)",
            ])
        }
        var totals = (allocated: 0, released: 0, adopted: 0)
        for helper in helpers {
            let exit = helper.wait()
            XCTAssertEqual(exit.status, 0, "seed \(seed): \(exit)")
            let fields = Dictionary(uniqueKeysWithValues: exit.output.split(separator: " ").compactMap { field in
                let parts = field.split(separator: "=")
                return parts.count == 2 ? (String(parts[0]), Int(parts[1]) ?? -1) : nil
            })
            totals.allocated += fields["allocated"] ?? -1
            totals.released += fields["released"] ?? -1
            totals.adopted += fields["adopted"] ?? -1
        }
        print("stress totals: \(totals)")
        XCTAssertGreaterThan(totals.allocated, 1000, "seed \(seed)")
        XCTAssertGreaterThan(totals.adopted, 0, "seed \(seed): no handle crossed threads")
        XCTAssertEqual(totals.allocated, totals.released, "seed \(seed): every block released exactly once")
        let report = heap.verify()
        XCTAssertTrue(report.isClean, "seed \(seed): \(report)")
        XCTAssertEqual(report.allocatedBlocks, 1, "only the mailbox is left: \(report)")
        XCTAssertEqual(report.holdings, 1)
    }

    /// The same exchange, threads of this process (run under ThreadSanitizer).
    func testConcurrentThreadsInProcess() throws {
        let seed = SeededGenerator.testSeed()
        print("SharedHeapTests.testConcurrentThreadsInProcess seed \(seed)")
        // 8 MiB, half of it span pages: each thread may hold up to ~64 large blocks (two span pages' worth).
        let (_, heap) = try makeHeap(
            "threads", dataSize: 8 << 20, configuration: .init(heldCapacity: 1024, spanFraction: 0.5))
        let slots = 16
        let mailbox = UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>.allocate(capacity: slots)
        mailbox.initialize(repeating: .init(0), count: slots)
        defer { mailbox.deallocate() }
        let mailboxAddress = UInt(bitPattern: mailbox)
        let totals = Locked((allocated: 0, released: 0, adopted: 0, failures: [String]()))
        let threads = 4
        let group = DispatchGroup()
        for thread in 0..<threads {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                let box = UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>(bitPattern: mailboxAddress)!
                var random = SeededGenerator(seed: seed ^ UInt64(thread))
                var counts = (allocated: 0, released: 0, adopted: 0)
                var failures: [String] = []
                do {
                    let me = try heap.join(name: "t\(thread)")
                    var mine: [SharedHeapHandle] = []
                    func takeOver(_ raw: UInt64) throws {
                        let handle = SharedHeapHandle(heap, compact64: raw)
                        if let error = adoptOrError(me, handle) {
                            if error.code == .staleHandle || error.code == .alreadyHeld { return }
                            throw error
                        }
                        counts.adopted += 1
                        let size = try heap.blockSize(of: handle)
                        let bytes = UnsafeRawBufferPointer(start: try heap.pointer(for: handle), count: size)
                        if !bytes.allSatisfy({ $0 == pattern(handle) }) { failures.append("\(handle) corrupted") }
                        if try me.free(handle) { counts.released += 1 }
                    }
                    for _ in 0..<8000 {
                        let slot = UnsafeAtomic<UInt64>(at: box + random.below(slots))
                        switch random.below(10) {
                        case 0..<4:
                            // Allocations outnumber frees: keep the holdings below the held capacity (1024).
                            if mine.count >= 512, try me.free(mine.removeFirst()) { counts.released += 1 }
                            let handle = try me.allocate([16, 40, 64, 100, 200, 512, 1000, 9000][random.below(8)])
                            counts.allocated += 1
                            let size = try heap.blockSize(of: handle)
                            try heap.pointer(for: handle).initializeMemory(
                                as: UInt8.self, repeating: pattern(handle), count: size)
                            mine.append(handle)
                            if random.below(2) == 0 {
                                // Ordering: publishes the contents; acquires the taken block's contents.
                                let previous = slot.exchange(handle.compact64, ordering: .acquiringAndReleasing)
                                if previous != 0 { try takeOver(previous) }
                            }
                        case 4..<7:
                            if mine.count > 8 || (!mine.isEmpty && random.below(4) == 0) {
                                if try me.free(mine.removeFirst()) { counts.released += 1 }
                            }
                        default:
                            let previous = slot.exchange(0, ordering: .acquiringAndReleasing)
                            if previous != 0 { try takeOver(previous) }
                        }
                    }
                    for handle in mine where try me.free(handle) { counts.released += 1 }
                    me.leave()
                } catch {
                    failures.append("thread \(thread): \(error)")
                }
                totals.withLock {
                    $0.allocated += counts.allocated
                    $0.released += counts.released
                    $0.adopted += counts.adopted
                    $0.failures += failures
                }
            }
        }
        group.wait()
        totals.withLock { totals in
            XCTAssertEqual(totals.failures, [], "seed \(seed)")
            XCTAssertEqual(totals.allocated, totals.released, "seed \(seed): every block released exactly once")
            XCTAssertGreaterThan(totals.adopted, 0, "seed \(seed)")
        }
        let report = heap.verify()
        XCTAssertTrue(report.isClean, "seed \(seed): \(report)")
        XCTAssertEqual(report.allocatedBlocks, 0)
        XCTAssertEqual(report.liveParticipants, 0)
    }
}
