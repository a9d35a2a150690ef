import Atomics
@testable import DivvyShm
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Layout version 6's holdings: exact 48-bit generations, holder counts with held lists as the truth, thousands
/// of participants, and the recount recovery of an adopt or free a death left ambiguous.
extension SharedHeapTests {
    // MARK: Exact handles

    /// One slot reused 2^16 + 1 and then 2^20 times: every old handle stays refused, in every operation, and the
    /// live block is untouched by them. (Layout version 4 handed the first handle's value out again after exactly
    /// 65,536 reuses.)
    func testAHandleIsNeverAcceptedAgainAfterItsBlockIsFreed() throws {
        let (_, heap) = try makeHeap("exact")
        let me = try heap.join(name: "reuser")
        let other = try heap.join(name: "other")
        let first = try me.allocate(64)
        try me.free(first)
        var seen: Set<UInt64> = [first.generation]
        var checkpoints: [SharedHeapHandle] = []
        var latest = first
        for reuse in 1...(1 << 20) {
            latest = try me.allocate(64)
            XCTAssertEqual(latest.dataOffset, first.dataOffset, "the local list hands the same slot back")
            if reuse == (1 << 16) + 1 || reuse == 1 << 16 || reuse == 1 << 20 { checkpoints.append(latest) }
            if reuse <= (1 << 16) + 2 { XCTAssertTrue(seen.insert(latest.generation).inserted, "reuse \(reuse)") }
            if reuse < 1 << 20 { try me.free(latest) }
        }
        try fill(heap, latest)
        let before = heap.verify()
        XCTAssertTrue(before.isClean, "\(before)")
        for stale in [first] + checkpoints.dropLast() {
            assertHeapError(.staleHandle) { _ = try heap.pointer(for: stale) }
            assertHeapError(.staleHandle) { try other.adopt(stale) }
            assertHeapError(.staleHandle) { try other.free(stale) }
            assertHeapError(.staleHandle) { _ = try me.free(stale) }
            // The same slot with every generation a 16- or 32-bit counter would confuse with the live one.
            for wrap in [UInt64(1) << 16, 1 << 32] where latest.generation > wrap {
                let alias = SharedHeapHandle(
                    heapID: heap.heapID, dataOffset: latest.dataOffset, generation: latest.generation - wrap)
                assertHeapError(.staleHandle) { try other.adopt(alias) }
            }
        }
        XCTAssertEqual(heap.verify(), before)
        XCTAssertTrue(try holdsPattern(heap, latest))
        XCTAssertTrue(try me.free(latest))
    }

    /// A page that goes back to the pool and is claimed again keeps counting generations where it stopped, also
    /// when its 16-bit epoch wraps, and when it is carved for another class: a handle from before is stale.
    func testGenerationsSurviveThePageEpochWrapAndAClassChange() throws {
        let (_, heap) = try makeHeap("epochwrap")
        let me = try heap.join(name: "pager")
        let old = try me.allocate(64)
        let page = try heap.locate(old).page
        XCTAssertTrue(try me.free(old))
        me.leave()  // The page, empty, goes back to the pool.
        XCTAssertEqual(PageWord.kind(heap.pageState(page).load(ordering: .relaxed)), PageWord.pooled)
        // The epoch about to wrap (as after 65,535 claims).
        let word = heap.pageState(page).load(ordering: .relaxed)
        heap.pageState(page).store(
            PageWord.make(kind: PageWord.pooled, sizeClass: PageWord.sizeClass(word), owner: 0, epoch: 0xFFFF),
            ordering: .relaxed)
        let again = try heap.join(name: "again")
        var handles: [SharedHeapHandle] = []
        var reused: SharedHeapHandle?
        while reused == nil, handles.count < 10_000 {
            let handle = try again.allocate(48)  // Another class: the page is carved differently.
            if try heap.locate(handle).page == page { reused = handle }
            handles.append(handle)
        }
        let reclaimed = try XCTUnwrap(reused, "the pool handed the page out again")
        XCTAssertEqual(PageWord.epoch(heap.pageState(page).load(ordering: .relaxed)), 1, "the epoch wrapped past 0")
        XCTAssertGreaterThan(reclaimed.generation, old.generation)
        assertHeapError(.staleHandle) { _ = try heap.pointer(for: old) }
        assertHeapError(.staleHandle) { try again.adopt(old) }
        // The old offset under the new class, with the old generation: stale, not a way into the new block.
        let moved = SharedHeapHandle(heapID: heap.heapID, dataOffset: reclaimed.dataOffset, generation: old.generation)
        assertHeapError(.staleHandle) { try again.adopt(moved) }
        for handle in handles { try again.free(handle) }
        XCTAssertTrue(heap.verify().isClean)
    }

    /// A page whose allocation serial reaches 2^48 − 1 makes no more allocations rather than repeat a generation.
    func testAPageNeverWrapsItsGenerations() throws {
        let (_, heap) = try makeHeap("serial")
        let me = try heap.join(name: "serial")
        let first = try me.allocate(64)
        let page = try heap.locate(first).page
        heap.pageGeneration(page).store(BlockWord.maximumGeneration - 1, ordering: .relaxed)
        let last = try me.allocate(64)
        XCTAssertEqual(last.generation, BlockWord.maximumGeneration)
        let before = heap.verify()
        assertHeapError(.heapFull) { _ = try me.allocate(64) }
        let after = heap.verify()
        XCTAssertTrue(after.isClean, "\(after)")
        XCTAssertEqual(after.allocatedBlocks, before.allocatedBlocks, "the refused allocation allocated nothing")
        XCTAssertEqual(heap.pageGeneration(page).load(ordering: .relaxed), BlockWord.maximumGeneration)
        XCTAssertTrue(try me.free(last))
        XCTAssertTrue(try me.free(first))
        XCTAssertTrue(heap.verify().isClean)
    }

    // MARK: Many participants

    /// 1,024 participants (and the most a heap allows, 4,096, joined) hold one block at once: the count is exact,
    /// deaths are recovered, the last holder releases it.
    func testThousandsOfParticipantsShareABlock() throws {
        let capacity = 1024
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: capacity, heldCapacity: 8)
        let (_, heap) = try makeHeap("thousand", dataSize: 1 << 20, configuration: configuration)
        XCTAssertEqual(heap.participantCapacity, capacity)
        let participants = try (0..<capacity).map { try heap.join(name: "p\($0)") }
        assertHeapError(.participantTableFull) { _ = try heap.join(name: "one too many") }
        let block = try participants[0].allocate(100)
        try fill(heap, block)
        for p in participants.dropFirst() { try p.adopt(block) }
        XCTAssertEqual(try heap.holderCount(of: block), capacity)
        XCTAssertEqual(try heap.holders(of: block), Array(0..<capacity))
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        // Half of them die, one of them in the middle of a free (an ambiguous count: recounted).
        participants[1]._dieAfter = ("free", 1)
        assertHeapError(.participantLeft) { _ = try participants[1].free(block) }
        for p in participants[2...512] { p._simulateDeath() }
        for p in participants[1...512] { try heap.recover(participant: p.index) }
        XCTAssertEqual(try heap.holderCount(of: block), capacity - 512)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        XCTAssertTrue(try holdsPattern(heap, block))
        for p in participants[513...] { XCTAssertFalse(try p.free(block)) }
        XCTAssertTrue(try participants[0].free(block))
        participants[0].collectRemoteFrees()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean && audit.allocatedBlocks == 0, "\(audit)")
        // The most the layout allows.
        let most = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64], participantCapacity: SharedHeapConfiguration.maximumParticipants,
            heldCapacity: 2)
        let (_, big) = try makeHeap("most", dataSize: 1 << 20, configuration: most)
        let all = try (0..<SharedHeapConfiguration.maximumParticipants).map { try big.join(name: "q\($0)") }
        let shared = try all[0].allocate(16)
        for q in all.dropFirst() { try q.adopt(shared) }
        XCTAssertEqual(try big.holderCount(of: shared), SharedHeapConfiguration.maximumParticipants)
        XCTAssertTrue(big.verify().isClean)
        var tooMany = most
        tooMany.participantCapacity += 1
        let region = try SharedRegion.create(name: "toomany", self.configuration(dataSize: 1 << 20, metadataSize: 8 << 20))
        assertHeapError(.invalidConfiguration) { _ = try SharedHeap.create(in: region, configuration: tooMany) }
    }

    // MARK: Recount

    /// Recovery recounts a block whose adopt or free a death left ambiguous while other threads keep adopting and
    /// freeing that very block: no holding is lost or invented, whatever the interleaving.
    func testConcurrentRecountWithLiveParticipants() throws {
        let configuration = SharedHeapConfiguration(participantCapacity: 16, heldCapacity: 64)
        let (_, heap) = try makeHeap("recount", configuration: configuration)
        let owner = try heap.join(name: "owner")
        let block = try owner.allocate(256)
        try fill(heap, block)
        let stop = ManagedAtomic(false)
        let threads = 4
        let done = DispatchGroup()
        let failures = ManagedAtomic(0)
        for t in 0..<threads {
            done.enter()
            Thread {
                defer { done.leave() }
                guard let me = try? heap.join(name: "live\(t)") else {
                    failures.wrappingIncrement(ordering: .relaxed)
                    return
                }
                var holding = false
                while !stop.load(ordering: .relaxed) {
                    do {
                        if holding { _ = try me.free(block) } else { try me.adopt(block) }
                        holding.toggle()
                    } catch {
                        failures.wrappingIncrement(ordering: .relaxed)
                        return
                    }
                }
                if holding { _ = try? me.free(block) }
                me.leave()
            }.start()
        }
        var random = SystemRandomNumberGenerator()
        var recounts = 0
        for round in 0..<300 {
            let dying = try heap.join(name: "dying")
            let holdFirst = Bool.random(using: &random)
            if holdFirst { try dying.adopt(block) }
            dying._dieAfter = (holdFirst ? "free" : "adopt", Int.random(in: 1...2, using: &random))
            do {
                if holdFirst { _ = try dying.free(block) } else { try dying.adopt(block) }
                XCTFail("round \(round): no crash point reached")
            } catch let error as SharedHeapError {
                XCTAssertEqual(error.code, .participantLeft)
            }
            var report: SharedHeapRecoveryReport?
            while report == nil {
                do { report = try heap.recover(participant: dying.index) } catch let error as SharedHeapError {
                    XCTAssertEqual(error.code, .recoveryIncomplete, "round \(round): \(error)")
                }
            }
            recounts += 1
            XCTAssertTrue(heap.pointerIsLive(block), "round \(round): the owner still holds the block")
        }
        stop.store(true, ordering: .relaxed)
        done.wait()
        XCTAssertEqual(failures.load(ordering: .relaxed), 0)
        XCTAssertEqual(recounts, 300)
        XCTAssertEqual(try heap.holderCount(of: block), 1, "only the owner is left")
        XCTAssertEqual(try heap.holders(of: block), [owner.index])
        XCTAssertTrue(try holdsPattern(heap, block))
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        XCTAssertTrue(try owner.free(block))
    }

    /// A recoverer that died half-way through a recount leaves the block frozen: adopters wait, and the next
    /// recovery (which takes over the dead recoverer's lock) thaws it with the right count.
    func testAFrozenBlockLeftByADeadRecovererIsSettledByTheNextRecovery() throws {
        let (_, heap) = try makeHeap("frozen")
        let owner = try heap.join(name: "owner")
        let dying = try heap.join(name: "dying")
        let block = try owner.allocate(64)
        dying._dieAfter = ("adopt", 2)  // Counted, not listed: ambiguous.
        assertHeapError(.participantLeft) { try dying.adopt(block) }
        // The dead recoverer: it froze the block and held the recovery lock when it died.
        let location = try heap.locate(block)
        let word = heap.blockWord(location.page, location.slot)
        word.store(BlockWord.with(state: BlockWord.frozen, word.load(ordering: .relaxed)), ordering: .relaxed)
        let lock = heap.word64(SharedHeapHeaderField.recoveryLock)
        lock.store(deadProcessIdentity(), ordering: .relaxed)
        XCTAssertFalse(heap.verify().isClean, "a frozen block is reported")
        XCTAssertNoThrow(try heap.pointer(for: block), "readers see a frozen block as allocated")
        try heap.recover(participant: dying.index)
        XCTAssertEqual(lock.load(ordering: .relaxed), 0, "the lock was taken over and released")
        XCTAssertEqual(try heap.holderCount(of: block), 1)
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        XCTAssertTrue(try owner.free(block))
    }

    /// A recovery lock held by a live process (here: this one, as if another thread were recovering) refuses a
    /// second recovery, which changes nothing.
    func testARecoveryInProgressRefusesAnother() throws {
        let (_, heap) = try makeHeap("lock")
        let dying = try heap.join(name: "dying")
        let block = try dying.allocate(64)
        dying._simulateDeath()
        let lock = heap.word64(SharedHeapHeaderField.recoveryLock)
        let pid = getpid()
        lock.store(
            ParticipantWord.make(state: ParticipantWord.alive, pid: pid, startTime: ProcessIdentity.startTime(of: pid) ?? 0),
            ordering: .relaxed)
        let before = heap.verify()
        assertHeapError(.recoveryIncomplete) { try heap.recover(participant: dying.index) }
        XCTAssertEqual(heap.verify(), before)
        XCTAssertEqual(try heap.holderCount(of: block), 1)
        lock.store(0, ordering: .relaxed)
        let report = try heap.recover(participant: dying.index)
        XCTAssertEqual(report.releasedBlocks, 1)
    }
}

/// A process identity (`ParticipantWord` layout) of a process that has exited.
private func deadProcessIdentity() -> UInt64 {
    let pid = fork()
    if pid == 0 { _exit(0) }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return ParticipantWord.make(state: ParticipantWord.alive, pid: pid, startTime: 1)
}

extension SharedHeap {
    /// Whether the handle names an allocated block (`pointer(for:)` succeeds).
    fileprivate func pointerIsLive(_ handle: SharedHeapHandle) -> Bool { (try? pointer(for: handle)) != nil }
}
