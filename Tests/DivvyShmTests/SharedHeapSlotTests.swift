import Atomics
@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Participant slots: liveness that survives pid reuse (pid + process start time), slots handed back only by
/// whoever manages them (*leaving*), and `usage()` counting exactly the blocks held.
final class SharedHeapSlotTests: ShmTestCase {
    let smallConfiguration = SharedHeapConfiguration(
        pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 64)

    func makeHeap(_ name: String, dataSize: Int = 16 * 4096) throws -> (SharedRegion, SharedHeap) {
        let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: smallConfiguration)
        let region = try SharedRegion.create(
            name: name, configuration(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
        return (region, try SharedHeap.create(in: region, configuration: smallConfiguration))
    }

    // MARK: Process start times

    func testStartTimeIsField22OfProcStat() {
        // comm may hold spaces and parentheses: fields are counted from the last ')'.
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654321 1000 "
            + "200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        XCTAssertEqual(ProcessIdentity.parseStartTime(stat: line), 987_654_321)
        XCTAssertNil(ProcessIdentity.parseStartTime(stat: "4242 (short) S 1 2 3"))
        XCTAssertNil(ProcessIdentity.parseStartTime(stat: "no parenthesis at all"))
        XCTAssertNil(ProcessIdentity.parseStartTime(stat: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber"))
        // This process: a real value, the same on every read.
        let mine = ProcessIdentity.startTime(of: getpid())
        XCTAssertNotNil(mine)
        XCTAssertEqual(mine, ProcessIdentity.startTime(of: getpid()))
    }

    /// A participant record naming a live pid with another start time is a dead participant whose pid was reused:
    /// `deadParticipants()` names it and recovery takes it back; the true record stays alive.
    func testALivePidWithAnotherStartTimeIsDead() throws {
        let (_, heap) = try makeHeap("reuse")
        let me = try heap.join(name: "true")
        let startTime = try XCTUnwrap(ProcessIdentity.startTime(of: getpid()))
        let status = try XCTUnwrap(heap.participantStatus(me.index))
        XCTAssertEqual(status.pid, getpid())
        XCTAssertEqual(status.processStartTime, startTime & ParticipantWord.startTimeMask)
        XCTAssertEqual(heap.deadParticipants(), [], "a participant of this very process is alive")

        // The forged one: a participant that held blocks, then its process "died" and the pid went to us.
        let forged = try heap.join(name: "forged")
        let held = try (0..<3).map { _ in try forged.allocate(64) }
        let shared = try me.allocate(64)
        try forged.adopt(shared)
        forged._simulateDeath()
        let word = heap.participantState(forged.index).load(ordering: .relaxed)
        heap.participantState(forged.index).store(
            ParticipantWord.make(state: ParticipantWord.alive, pid: getpid(), startTime: startTime &+ 1),
            ordering: .relaxed)
        XCTAssertNotEqual(word, heap.participantState(forged.index).load(ordering: .relaxed))
        XCTAssertTrue(ProcessIdentity.isAlive(pid: getpid(), startTime: startTime))
        XCTAssertFalse(ProcessIdentity.isAlive(pid: getpid(), startTime: startTime &+ 1))
        XCTAssertEqual(heap.deadParticipants(), [forged.index], "kill(pid, 0) succeeds, the start time differs")
        let audit = heap.verify()
        XCTAssertEqual(audit.participantsWithoutProcess, 1, "\(audit)")

        let report = try heap.recover(participant: forged.index)
        XCTAssertEqual(report.releasedBlocks, 3, "\(report)")
        XCTAssertEqual(report.droppedHoldings, 1, "\(report)")
        XCTAssertEqual(heap.deadParticipants(), [])
        XCTAssertEqual(heap.participantStatus(forged.index)?.state, .free)
        for handle in held {
            XCTAssertThrowsError(try heap.pointer(for: handle), "released by recovery")
        }
        XCTAssertTrue(try me.free(shared), "the survivor's holding stayed")
        me.collectRemoteFrees()
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    /// A record without a start time (0: not known) falls back to the pid alone.
    func testARecordWithoutStartTimeFallsBackToThePid() throws {
        let (_, heap) = try makeHeap("nostart")
        let p = try heap.join(name: "old")
        heap.participantState(p.index).store(
            ParticipantWord.make(state: ParticipantWord.alive, pid: getpid(), startTime: 0), ordering: .relaxed)
        XCTAssertEqual(heap.deadParticipants(), [])
        XCTAssertTrue(ProcessIdentity.isAlive(pid: getpid(), startTime: 0))
    }

    // MARK: Leaving slots

    /// A participant that leaves without releasing its slot holds nothing, but no `join` takes the slot until the
    /// slot's manager releases it (only for the process that left it); a leaving slot whose process is gone is
    /// recovered (freed) like a dead participant.
    func testALeavingSlotIsOfferedOnlyOnceReleased() throws {
        let (_, heap) = try makeHeap("leaving")
        let participants = try (0..<4).map { try heap.join(name: "p\($0)") }
        let leaver = participants[1]
        let kept = try leaver.allocate(64)
        try participants[0].adopt(kept)
        _ = try leaver.allocate(16)
        XCTAssertEqual(heap.freeParticipantSlots, 0)
        leaver.leave(releasingSlot: false)
        let status = try XCTUnwrap(heap.participantStatus(leaver.index))
        XCTAssertEqual(status.state, .leaving)
        XCTAssertEqual(status.heldCount, 0)
        XCTAssertEqual(status.ownedPages, 0)
        XCTAssertEqual(heap.freeParticipantSlots, 0)
        XCTAssertThrowsError(try heap.join(name: "too early")) {
            XCTAssertEqual(($0 as? SharedHeapError)?.code, .participantTableFull)
        }
        XCTAssertTrue(heap.verify().isClean, "a leaving slot is a clean state: \(heap.verify())")
        XCTAssertEqual(heap.deadParticipants(), [], "its process runs")
        // Another pid's release is refused and changes nothing.
        XCTAssertFalse(heap.releaseSlot(participant: leaver.index, pid: getpid() &+ 1))
        XCTAssertEqual(heap.participantStatus(leaver.index)?.state, .leaving)
        XCTAssertFalse(heap.releaseSlot(participant: participants[2].index, pid: getpid()), "alive, not leaving")
        XCTAssertEqual(heap.participantStatus(participants[2].index)?.state, .alive)
        // The right one frees it.
        XCTAssertTrue(heap.releaseSlot(participant: leaver.index, pid: getpid()))
        XCTAssertEqual(heap.freeParticipantSlots, 1)
        let next = try heap.join(name: "next")
        XCTAssertEqual(next.index, leaver.index)

        // A leaving slot whose process is gone: recovered by deadParticipants()/recover (only the slot remains).
        next.leave(releasingSlot: false)
        let child = fork()
        if child == 0 { _exit(0) }
        var status2: Int32 = 0
        waitpid(child, &status2, 0)
        heap.participantState(next.index).store(
            ParticipantWord.make(state: ParticipantWord.leaving, pid: child, startTime: 0), ordering: .relaxed)
        XCTAssertEqual(heap.deadParticipants(), [next.index])
        try heap.recover(participant: next.index)
        XCTAssertEqual(heap.participantStatus(next.index)?.state, .free)
        XCTAssertTrue(try participants[0].free(kept))
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    // MARK: Usage

    /// The bytes of blocks held, summed over every participant's holdings (each block once).
    func heldBytes(_ heap: SharedHeap, _ holders: [SharedHeap.Participant]) throws -> Int {
        var blocks = Set<UInt64>()
        for p in holders { blocks.formUnion(p.heldHandles.map(\.compact64)) }
        return try blocks.reduce(0) { $0 + (try heap.blockSize(of: SharedHeapHandle(heap, compact64: $1))) }
    }

    /// `usage().bytesInUse` is the bytes of the blocks held at every step — also when blocks were freed onto the
    /// remote stack of a page whose owner has not collected them, or of an orphan page nobody will collect — and 0
    /// once every participant has left or died.
    func testUsageCountsExactlyTheBlocksHeld() throws {
        let (_, heap) = try makeHeap("usage", dataSize: 32 * 4096)
        let a = try heap.join(name: "a")
        let b = try heap.join(name: "b")
        let c = try heap.join(name: "c")
        var everyone = [a, b, c]
        func check(_ step: String, line: UInt = #line) throws {
            let usage = heap.usage()
            XCTAssertEqual(usage.bytesInUse, try heldBytes(heap, everyone), "\(step): \(usage)", line: line)
        }
        try check("empty")
        let aBlocks = try (0..<20).map { try a.allocate($0 % 2 == 0 ? 64 : 256) }
        let bBlocks = try (0..<10).map { _ in try b.allocate(16) }
        try check("allocated")
        for handle in aBlocks.prefix(10) { try b.adopt(handle) }
        for handle in bBlocks.prefix(5) { try c.adopt(handle) }
        try check("shared")
        // Remote frees into a's pages, not collected by a.
        for handle in aBlocks.suffix(5) { try b.adopt(handle) }
        for handle in aBlocks.suffix(5) {
            try a.free(handle)
            try b.free(handle)
        }
        try check("remote frees, uncollected")
        for handle in aBlocks.dropFirst(10).dropLast(5) { try a.free(handle) }
        try check("own frees")
        // a leaves: its pages with blocks b holds become orphans; b frees them onto orphan pages.
        a.leave()
        everyone.removeAll { $0 === a }
        try check("a left")
        XCTAssertGreaterThan(heap.usage().orphanPages, 0)
        for handle in aBlocks.prefix(10) { try b.free(handle) }
        try check("frees onto orphan pages")
        XCTAssertGreaterThan(heap.usage().emptyPages, 0, "orphans with nothing in use are reported")
        // c dies holding blocks of b's; recovery drops its holdings.
        c._simulateDeath()
        everyone.removeAll { $0 === c }
        try heap.recover(participant: c.index)
        try check("c died and was recovered")
        b.leave()
        everyone.removeAll { $0 === b }
        let usage = heap.usage()
        XCTAssertEqual(usage.bytesInUse, 0, "\(usage)")
        XCTAssertEqual(usage.sizeClasses.reduce(0) { $0 + $1.blocksInUse }, 0, "\(usage)")
    }
}
