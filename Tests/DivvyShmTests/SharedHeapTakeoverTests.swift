import Atomics
@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `SharedHeap.takeOver(participant:name:)`: a new process takes a dead process's slot *with* its holdings (what a
/// restarted daemon does with its predecessor's slot). A death simulated after every step of allocate / adopt /
/// free, then a takeover: the audit must be clean, the new participant must hold exactly what the dead one held
/// (minus the in-flight operation, settled as not done for allocate and adopt, done for free), survivors keep
/// everything, and the new participant can free what it kept and go on allocating. Then real processes: one that
/// exits without leaving, and SIGKILLs at random moments under load.
final class SharedHeapTakeoverTests: ShmTestCase {
    let smallConfiguration = SharedHeapConfiguration(
        pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 64)

    func makeHeap(
        _ name: String, dataSize: Int = 16 * 4096, configuration: SharedHeapConfiguration? = nil
    ) throws -> (SharedRegion, SharedHeap) {
        let configuration = configuration ?? smallConfiguration
        let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
        let region = try SharedRegion.create(
            name: name, self.configuration(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
        return (region, try SharedHeap.create(in: region, configuration: configuration))
    }

    func pattern(_ handle: SharedHeapHandle) -> UInt8 { UInt8(truncatingIfNeeded: handle.dataOffset >> 4) | 1 }

    /// Kills `d` after `step` of `operation` (simulated: its slot, records and pages stay as they are), takes its
    /// slot over, and checks what the new participant holds, the audit, and that everything goes on working.
    func checkTakeover(
        _ operation: String, _ step: Int, freeingShared: Bool = false, file: StaticString = #filePath,
        line: UInt = #line
    ) throws {
        let context = "takeover after \(operation) step \(step)\(freeingShared ? ", shared block" : "")"
        let (_, heap) = try makeHeap("t-\(operation)-\(step)-\(freeingShared)")
        let s = try heap.join(name: "survivor")
        let d = try heap.join(name: "dying")
        let dOnly = try (0..<5).map { _ in try d.allocate(64) }
        let dShared = try (0..<2).map { _ in try d.allocate(256) }
        for handle in dOnly + dShared { try fillBlock(heap, handle, with: pattern(handle)) }
        for handle in dShared { try s.adopt(handle) }
        let sShared = try s.allocate(16)
        try fillBlock(heap, sShared, with: pattern(sShared))
        try d.adopt(sShared)
        let before = Set(d.heldHandles)

        d._dieAfter = (operation, step)
        var inFlight: SharedHeapHandle?
        do {
            switch operation {
            case "allocate": _ = try d.allocate(64)
            case "adopt":
                let handle = try s.allocate(64)
                try fillBlock(heap, handle, with: pattern(handle))
                inFlight = handle
                try d.adopt(handle)
            default:
                let handle = freeingShared ? dShared[0] : dOnly[0]
                inFlight = handle
                try d.free(handle)
            }
            XCTFail("\(context): the operation did not reach its crash point", file: file, line: line)
        } catch let error as SharedHeapError {
            XCTAssertEqual(error.code, .participantLeft, "\(context): \(error)", file: file, line: line)
        }
        let survivorHolds = Set(s.heldHandles)

        let (t, report) = try heap.takeOver(participant: d.index, name: "successor", checkingProcess: false)
        XCTAssertEqual(t.index, d.index, context, file: file, line: line)
        XCTAssertEqual(report.previousPID, getpid(), context, file: file, line: line)
        // What the successor holds: the dead participant's holdings before the operation, without the freed block
        // (a free is settled as done), without the allocated or adopted one (settled as not done).
        let expected = operation == "free" ? before.subtracting([inFlight!]) : before
        XCTAssertEqual(Set(t.heldHandles), expected, "\(context): \(report)", file: file, line: line)
        XCTAssertEqual(report.keptHoldings, expected.count, "\(context): \(report)", file: file, line: line)
        for handle in expected { XCTAssertTrue(t.holds(handle), context, file: file, line: line) }
        XCTAssertEqual(Set(s.heldHandles), survivorHolds, context, file: file, line: line)
        s.collectRemoteFrees()
        t.collectRemoteFrees()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(context): \(report)\n\(audit)", file: file, line: line)
        XCTAssertEqual(audit.holdings, expected.count + survivorHolds.count, "\(context): \(audit)", file: file,
                       line: line)
        XCTAssertEqual(audit.allocatedBlocks, expected.union(survivorHolds).count,
                       "\(context): nothing leaked, nothing lost: \(audit)", file: file, line: line)
        XCTAssertEqual(heap.deadParticipants(), [], context, file: file, line: line)
        for handle in expected.union(survivorHolds) {
            XCTAssertTrue(try blockHolds(heap, handle, only: pattern(handle)), "\(context): \(handle) lost its "
                + "contents", file: file, line: line)
        }
        // The successor is a working participant: it frees what it kept, allocates (from its pages), leaves.
        for handle in expected { try t.free(handle) }
        let fresh = try (0..<40).map { _ in try t.allocate(64) }
        for handle in fresh { try t.free(handle) }
        t.leave()
        for handle in survivorHolds { try s.free(handle) }
        s.collectRemoteFrees()
        let empty = heap.verify()
        XCTAssertTrue(empty.isClean && empty.allocatedBlocks == 0, "\(context): \(empty)", file: file, line: line)
        s.leave()
    }

    func testTakeoverAfterDeathDuringAllocate() throws {
        for step in 1...4 { try checkTakeover("allocate", step) }
    }

    func testTakeoverAfterDeathDuringAdopt() throws {
        for step in 1...3 { try checkTakeover("adopt", step) }
    }

    func testTakeoverAfterDeathDuringFree() throws {
        for step in 1...5 { try checkTakeover("free", step) }
        for step in [1, 2, 3, 5] { try checkTakeover("free", step, freeingShared: true) }
    }

    /// A participant that died between operations: everything it held is kept, its pages stay its own.
    func testTakeoverKeepsEverythingOfAQuiescentDeath() throws {
        let (_, heap) = try makeHeap("quiet")
        let d = try heap.join(name: "dying")
        let blocks = try (0..<50).map { _ in try d.allocate(16) } + (0..<12).map { _ in try d.allocate(256) }
        for handle in blocks { try fillBlock(heap, handle, with: pattern(handle)) }
        let pagesBefore = heap.verify().ownedPages
        d._simulateDeath()
        let (t, report) = try heap.takeOver(participant: d.index, name: nil, checkingProcess: false)
        XCTAssertNil(report.settledOperation, "\(report)")
        XCTAssertEqual(report.keptHoldings, blocks.count, "\(report)")
        XCTAssertEqual(report.pagesReleased, 0, "\(report)")
        XCTAssertEqual(Set(t.heldHandles), Set(blocks))
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.ownedPages, pagesBefore, "the pages stay owned by the slot")
        XCTAssertEqual(heap.participantName(t.index), "dying", "nil keeps the name")
        // Freed blocks go back to the successor's own pages (a local free: no remote stack involved).
        for handle in blocks { XCTAssertTrue(try t.free(handle)) }
        XCTAssertEqual(heap.verify().allocatedBlocks, 0)
        XCTAssertThrowsError(try t.free(blocks[0])) { XCTAssertEqual(($0 as? SharedHeapError)?.code, .doubleFree) }
        t.leave()
        XCTAssertTrue(heap.verify().isClean)
    }

    /// A slot's tag: set by its occupant, kept by a takeover, zeroed by leave, recovery and the next join.
    func testParticipantTagTravelsWithTheSlot() throws {
        let (_, heap) = try makeHeap("tag")
        let zeros = [UInt8](repeating: 0, count: SharedHeap.participantTagSize)
        let tag = (0..<SharedHeap.participantTagSize).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        let d = try heap.join(name: "dying")
        XCTAssertEqual(heap.tag(ofParticipant: d.index), zeros)
        try d.setTag(tag)
        XCTAssertEqual(heap.tag(ofParticipant: d.index), tag)
        try d.setTag([9, 9])
        XCTAssertEqual(heap.tag(ofParticipant: d.index), [9, 9] + zeros.dropFirst(2), "a shorter tag zeroes the rest")
        XCTAssertThrowsError(try d.setTag(tag + [1])) {
            XCTAssertEqual(($0 as? SharedHeapError)?.code, .invalidConfiguration)
        }
        XCTAssertEqual(heap.tag(ofParticipant: d.index), [9, 9] + zeros.dropFirst(2), "a refused tag changes nothing")
        try d.setTag(tag)
        let kept = try d.allocate(64)
        d._simulateDeath()
        XCTAssertThrowsError(try d.setTag(zeros)) { XCTAssertEqual(($0 as? SharedHeapError)?.code, .participantLeft) }
        let (t, _) = try heap.takeOver(participant: d.index, name: nil, checkingProcess: false)
        XCTAssertEqual(heap.tag(ofParticipant: t.index), tag, "a takeover keeps the tag")
        XCTAssertTrue(t.holds(kept))
        t.leave()
        XCTAssertNil(heap.tag(ofParticipant: t.index), "a free slot has no tag")
        let next = try heap.join(name: "next")
        XCTAssertEqual(next.index, t.index)
        XCTAssertEqual(heap.tag(ofParticipant: next.index), zeros, "leave cleared it")
        try next.setTag(tag)
        next._simulateDeath()
        try heap.recover(participant: next.index)
        XCTAssertNil(heap.tag(ofParticipant: next.index))
        // Recovery zeroed the bytes; a join would too, even over bytes someone left behind.
        let raw = heap.meta + heap.participantOffset(next.index) + 80
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: raw, count: 48)), zeros)
        raw.storeBytes(of: 0xFF, as: UInt8.self)
        let again = try heap.join(name: "again")
        XCTAssertEqual(heap.tag(ofParticipant: again.index), zeros)
        XCTAssertNil(heap.tag(ofParticipant: -1))
        XCTAssertNil(heap.tag(ofParticipant: 4))
    }

    /// Refusals leave the slot and the heap as they were.
    func testTakeoverRefusals() throws {
        let (_, heap) = try makeHeap("refuse")
        let live = try heap.join(name: "live")
        let kept = try live.allocate(64)
        let before = heap.verify()
        func refused(_ p: Int, _ code: SharedHeapError.Code, _ why: String) {
            XCTAssertThrowsError(try heap.takeOver(participant: p), why) {
                XCTAssertEqual(($0 as? SharedHeapError)?.code, code, "\(why): \($0)")
            }
            XCTAssertEqual(heap.verify(), before, why)
        }
        refused(live.index, .invalidConfiguration, "this process still runs")
        refused(live.index + 1, .participantLeft, "a free slot")
        refused(-1, .outOfRange, "no such slot")
        refused(4, .outOfRange, "no such slot")
        XCTAssertTrue(live.holds(kept))
        // A slot a recovery marked dead is refused (the recovery may have dropped its holdings already).
        let d = try heap.join(name: "dying")
        _ = try d.allocate(64)
        d._simulateDeath()
        let deadWord = ParticipantWord.with(
            state: ParticipantWord.dead, heap.participantState(d.index).load(ordering: .relaxed))
        heap.participantState(d.index).store(deadWord, ordering: .relaxed)
        XCTAssertThrowsError(try heap.takeOver(participant: d.index, name: nil, checkingProcess: false)) {
            XCTAssertEqual(($0 as? SharedHeapError)?.code, .participantLeft, "\($0)")
        }
        XCTAssertEqual(heap.participantState(d.index).load(ordering: .relaxed), deadWord)
        try heap.recover(participant: d.index)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// A real process that allocated, filled and exited without leaving: its slot is taken over with every block
    /// and its contents, and the successor frees them.
    func testTakeoverOfAProcessThatExited() throws {
        let (_, heap) = try makeHeap("exited", dataSize: 64 * 4096)
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let exit = try HelperProcess.run(
            ["heap", "exited", prefix, "alloc", "40", "7", directory + "/h", "exit-without-leave"])
        XCTAssertEqual(exit.status, 0, "\(exit)")
        let handles = try String(contentsOfFile: directory + "/h", encoding: .utf8).split(separator: "\n")
            .map { SharedHeapHandle(heap, compact64: UInt64($0.split(separator: " ")[0])!) }
        let dead = heap.deadParticipants()
        XCTAssertEqual(dead.count, 1)
        let (t, report) = try heap.takeOver(participant: dead[0], name: "successor")
        XCTAssertEqual(report.keptHoldings, 40, "\(report)")
        XCTAssertEqual(Set(t.heldHandles), Set(handles))
        XCTAssertEqual(heap.deadParticipants(), [], "the slot is alive again, under this process")
        XCTAssertTrue(heap.participantProcessIsRunning(t.index))
        // The helper's fill pattern survives (adopt by another participant checks it the way the helper does).
        let check = try HelperProcess.run(["heap", "exited", prefix, "adopt", directory + "/h", "free-all"])
        XCTAssertEqual(check.status, 0, "\(check)")
        for handle in handles { try t.free(handle) }
        t.leave()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean && audit.allocatedBlocks == 0, "\(audit)")
    }

    /// Worker processes with many participants allocate, publish, adopt and free at random and are SIGKILLed at a
    /// random moment; every dead slot is then taken over (not recovered). The audit must be clean, every holding
    /// the successors kept must be real (each frees without error), survivors' blocks keep their contents, and
    /// after the successors free everything and leave only this process's blocks remain.
    /// `DIVVY_TAKEOVER_TRIALS` (default 60), `DIVVY_TEST_SEED` replays.
    func testTakeoverAfterSIGKILLUnderLoad() throws {
        let trials = ProcessInfo.processInfo.environment["DIVVY_TAKEOVER_TRIALS"].flatMap { Int($0) } ?? 60
        let seed = ProcessInfo.processInfo.environment["DIVVY_TEST_SEED"].flatMap { UInt64($0) }
            ?? UInt64.random(in: 1...UInt64.max)
        var random = SeededGenerator(seed: seed)
        let victims = 15
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: victims + 1, heldCapacity: 256,
            spanPageSize: 16384, spanFraction: 0.125, largeSizeClasses: [1024, 4096])
        let (_, heap) = try makeHeap("sigkill", dataSize: 512 * 4096, configuration: configuration)
        print("SharedHeapTakeoverTests: \(trials) trials, DIVVY_TEST_SEED=\(seed)")
        let me = try heap.join(name: "parent")
        let mailboxHandle = try me.allocate(256)
        let mailbox = try heap.pointer(for: mailboxHandle)
        mailbox.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        func slot(_ index: Int) -> UnsafeAtomic<UInt64> {
            UnsafeAtomic<UInt64>(at: (mailbox + 8 * index).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
        }
        var held: [SharedHeapHandle] = []
        var kept = 0
        for trial in 0..<trials {
            let workerSeed = random.next()
            let context = "trial \(trial), DIVVY_TEST_SEED=\(seed), worker seed \(workerSeed)"
            for index in 0..<32 { slot(index).store(0, ordering: .relaxed) }
            let worker = try HelperProcess.spawn(
                ["torture", "sigkill", prefix, "\(tortureRaw(mailboxHandle))", "\(workerSeed)", "0", "-1", "\(victims)"])
            var waited = 0
            // Ordering: acquiring, pairs with the worker's releasing store of its index.
            while slot(0).load(ordering: .acquiring) == 0, waited < 20_000 {
                usleep(500)
                waited += 1
            }
            for _ in 0..<Int(random.next() % 300) {
                switch random.next() % 6 {
                case 0, 1:
                    // Ordering: acquiring, pairs with the worker's releasing publication.
                    let raw = slot(3 + Int(random.next() % 13)).exchange(0, ordering: .acquiringAndReleasing)
                    guard raw != 0, held.count < 150 else { break }
                    let handle = tortureHandle(heap, raw)
                    if case .success = Result(catching: { () throws(SharedHeapError) in try me.adopt(handle) }) {
                        held.append(handle)
                    }
                case 2, 3:
                    guard !held.isEmpty else { break }
                    try me.free(held.remove(at: Int(random.next() % UInt64(held.count))))
                default:
                    usleep(UInt32(random.next() % 20))
                }
            }
            kill(worker.pid, SIGKILL)
            guard worker.wait().signal == SIGKILL else {
                XCTFail("\(context): the worker ended on its own")
                break
            }
            let dead = heap.deadParticipants()
            guard dead.count == victims else {
                XCTFail("\(context): deadParticipants() = \(dead), expected \(victims)")
                break
            }
            var successors: [SharedHeap.Participant] = []
            for p in dead {
                var result: Result<(participant: SharedHeap.Participant, report: SharedHeapTakeoverReport), SharedHeapError>?
                for _ in 0..<20 {
                    result = Result { () throws(SharedHeapError) in try heap.takeOver(participant: p, name: "successor") }
                    if case .failure(let error) = result, error.code == .recoveryIncomplete {
                        usleep(10_000)
                        continue
                    }
                    break
                }
                switch result {
                case .success(let (participant, report))?:
                    successors.append(participant)
                    kept += report.keptHoldings
                case .failure(let error)?: XCTFail("\(context): takeover of \(p): \(error)")
                case nil: break
                }
            }
            for successor in successors { successor.collectRemoteFrees() }
            me.collectRemoteFrees()
            let audit = heap.verify()
            let successorHoldings = successors.reduce(0) { $0 + $1.heldCount }
            XCTAssertTrue(audit.isClean, "\(context):\n\(audit)")
            XCTAssertEqual(audit.holdings, held.count + 1 + successorHoldings, "\(context): \(audit)")
            for successor in successors {
                for handle in successor.heldHandles {
                    XCTAssertNoThrow(try successor.free(handle), "\(context): kept \(handle) is not a real holding")
                }
                successor.leave()
            }
            me.collectRemoteFrees()
            let after = heap.verify()
            guard after.isClean, after.allocatedBlocks == held.count + 1 else {
                XCTFail("\(context): after the successors left:\n\(after)\n(this process holds \(held.count + 1))")
                break
            }
        }
        print("SharedHeapTakeoverTests: \(kept) holdings kept across \(trials) kills, DIVVY_TEST_SEED=\(seed)")
        for handle in held { try me.free(handle) }
        try me.free(mailboxHandle)
        me.collectRemoteFrees()
        let final = heap.verify()
        XCTAssertTrue(final.isClean && final.allocatedBlocks == 0, "DIVVY_TEST_SEED=\(seed): \(final)")
    }
}
