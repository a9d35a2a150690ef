import Atomics
@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `SharedHeap.recover(participant:)`: a death simulated after every step of allocate / adopt / free / collect,
/// then recovery, then the audit must be clean (no leaked block, nothing held by a dead participant) and every
/// block a survivor holds must still be allocated with its contents intact. Then the crash torture: real worker
/// processes SIGKILLed at random moments.
final class SharedHeapRecoveryTests: ShmTestCase {
    /// Small pages only (these tests count them): no extent area (the torture adds one).
    let smallConfiguration = {
        var configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 64)
        configuration.extentFraction = 0
        return configuration
    }()

    /// Make lazy heaps (a lazily committed region: commit on claim, held lists committed at join).
    var lazyHeaps = false

    func makeHeap(
        _ name: String = "heap", dataSize: Int = 16 * 4096, configuration: SharedHeapConfiguration? = nil
    ) throws -> (SharedRegion, SharedHeap) {
        let configuration = configuration ?? smallConfiguration
        let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
        let region = try SharedRegion.create(
            name: name, self.configuration(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096) {
                if self.lazyHeaps {
                    $0.commitment = .lazy
                    $0.lazyCommittedMetadataSize = SharedHeap.initialMetadataSize(
                        dataSize: dataSize, configuration: configuration)
                }
            })
        let heap = try SharedHeap.create(in: region, configuration: configuration)
        XCTAssertEqual(heap.lazyCommit, lazyHeaps)
        return (region, heap)
    }

    func pattern(_ handle: SharedHeapHandle) -> UInt8 { UInt8(truncatingIfNeeded: handle.compact64 % 251) | 1 }

    func fill(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws {
        try fillBlock(heap, handle, with: pattern(handle))
    }

    func holdsPattern(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws -> Bool {
        try blockHolds(heap, handle, only: pattern(handle))
    }

    /// Where the block a dying `free` releases lives.
    enum FreeTarget: CaseIterable { case ownSole, ownShared, survivorPage, orphanPage }

    /// Builds a heap with a survivor `s` and a dying participant `d` that share blocks both ways (and hold a block
    /// in an orphan page), kills `d` after `step` of `operation`, recovers it, and audits.
    /// With `large`, every block involved is a large one (span pages), except the survivor's 16-byte block.
    func checkDeath(_ operation: String, _ step: Int, target: FreeTarget = .ownSole, large: Bool = false,
                    file: StaticString = #filePath, line: UInt = #line) throws {
        let context = "death after \(operation) step \(step), target \(target)\(large ? ", large blocks" : "")"
        // The large variant: 8 small pages and 4 span pages of 8 KiB (classes 1024 and 2048).
        let (_, heap) = try makeHeap(
            "d-\(operation)-\(step)-\(target)-\(large)",
            configuration: large ? SharedHeapConfiguration(
                pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 64,
                spanPageSize: 8192, spanFraction: 0.5, largeSizeClasses: [1024, 2048]) : nil)
        let (size, orphanSize) = large ? (1000, 2000) : (64, 256)
        if large { XCTAssertEqual(heap.spanPageCount, 4, file: file, line: line) }
        let s = try heap.join(name: "survivor")
        let d = try heap.join(name: "dying")
        // d-only blocks, blocks shared both ways.
        let dOnly = try (0..<3).map { _ in try d.allocate(size) }
        let dShared = try (0..<2).map { _ in try d.allocate(size) }
        for handle in dShared { try fill(heap, handle); try s.adopt(handle) }
        let sShared = try (0..<2).map { _ in try s.allocate(size) }
        for handle in sShared { try fill(heap, handle); try d.adopt(handle) }
        let sOnly = try s.allocate(16)
        try fill(heap, sOnly)
        // A block only d holds in an orphan page (its allocator left), and one d and s share there.
        let o = try heap.join(name: "orphaner")
        let orphanSole = try o.allocate(orphanSize)
        let orphanShared = try o.allocate(orphanSize)
        try fill(heap, orphanShared)
        try d.adopt(orphanSole)
        try d.adopt(orphanShared)
        try s.adopt(orphanShared)
        o.leave()
        // A block in s's page only d holds (s allocated it, handed it over, dropped its holding).
        let survivorPageBlock = try s.allocate(size)
        try d.adopt(survivorPageBlock)
        try s.free(survivorPageBlock)
        XCTAssertTrue(heap.verify().isClean, "\(context): setup: \(heap.verify())", file: file, line: line)

        d._dieAfter = (operation, step)
        var adoptTarget: SharedHeapHandle?
        do {
            switch operation {
            case "allocate": _ = try d.allocate(size)
            case "adopt":
                let handle = try s.allocate(size)
                try fill(heap, handle)
                adoptTarget = handle
                try d.adopt(handle)
            default:
                let handle = switch target {
                case .ownSole: dOnly[0]
                case .ownShared: dShared[0]
                case .survivorPage: survivorPageBlock
                case .orphanPage: orphanSole
                }
                try d.free(handle)
            }
            XCTFail("\(context): the operation did not reach its crash point", file: file, line: line)
        } catch let error as SharedHeapError {
            XCTAssertEqual(error.code, .participantLeft, "\(context): \(error)", file: file, line: line)
        }
        let survivorHolds = s.heldHandles
        let report = try heap.recover(participant: d.index)
        s.collectRemoteFrees()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(context): \(report)\n\(audit)", file: file, line: line)
        XCTAssertEqual(audit.allocatedBlocks, survivorHolds.count, "\(context): only the survivor's blocks are left "
            + "(nothing leaked): \(audit)", file: file, line: line)
        XCTAssertEqual(audit.holdings, survivorHolds.count, "\(context)", file: file, line: line)
        for handle in survivorHolds {
            XCTAssertTrue(try holdsPattern(heap, handle), "\(context): \(handle) lost its contents", file: file,
                          line: line)
        }
        XCTAssertTrue(Set(survivorHolds).isSuperset(of: dShared + sShared + [sOnly, orphanShared]),
                      "\(context)", file: file, line: line)
        if let adoptTarget { XCTAssertTrue(survivorHolds.contains(adoptTarget), "\(context)", file: file, line: line) }
        XCTAssertEqual(heap.deadParticipants(), [], "\(context)", file: file, line: line)
        // Everything is reusable: the survivor frees all, fills the heap with 64-byte blocks, frees them.
        for handle in survivorHolds { try s.free(handle) }
        s.collectRemoteFrees()
        let empty = heap.verify()
        XCTAssertTrue(empty.isClean && empty.allocatedBlocks == 0, "\(context): \(empty)", file: file, line: line)
        var all: [SharedHeapHandle] = []
        while all.count < 64, let handle = try? s.allocate(16) { all.append(handle) }
        for handle in all { try s.free(handle) }
        XCTAssertTrue(heap.verify().isClean, "\(context): \(heap.verify())", file: file, line: line)
        s.leave()
    }

    func testDeathDuringAllocate() throws {
        for large in [false, true] {
            for step in 1...4 { try checkDeath("allocate", step, large: large) }
        }
    }

    func testDeathDuringAdopt() throws {
        for large in [false, true] {
            for step in 1...3 { try checkDeath("adopt", step, large: large) }
        }
    }

    func testDeathDuringFree() throws {
        for large in [false, true] {
            for target in FreeTarget.allCases {
                // A free that does not release the block (ownShared) has no push step (4).
                for step in 1...5 where target != .ownShared || step != 4 {
                    try checkDeath("free", step, target: target, large: large)
                }
            }
        }
    }

    /// The owner dies inside `collect` (before taking the stack, after, and after each moved block).
    func testDeathDuringCollect() throws {
        for stage in 0...5 {
            let context = "death in collect at stage \(stage)"
            var configuration = smallConfiguration
            configuration.heldCapacity = 2048
            let (_, heap) = try makeHeap("c\(stage)", configuration: configuration)
            let s = try heap.join(name: "survivor")
            let d = try heap.join(name: "dying")
            let blocks = try (0..<6).map { _ in try d.allocate(64) }
            let kept = blocks[5]
            for handle in blocks { try fill(heap, handle); try s.adopt(handle); try d.free(handle) }
            for handle in blocks.prefix(4) { try s.free(handle) }  // Onto d's page's remote stack.
            let page = try heap.locate(blocks[0]).page
            heap.collect(page, _stopAt: stage)
            d._simulateDeath()
            let report = try heap.recover(participant: d.index)
            let audit = heap.verify()
            XCTAssertTrue(audit.isClean, "\(context): \(report)\n\(audit)")
            XCTAssertEqual(audit.allocatedBlocks, 2, "\(context): \(audit)")
            XCTAssertTrue(try holdsPattern(heap, kept), context)
            // The survivor takes the orphan page over and can use every slot again.
            for handle in s.heldHandles { try s.free(handle) }
            var all: [SharedHeapHandle] = []
            while let handle = try? s.allocate(64) { all.append(handle) }
            XCTAssertEqual(Set(all).count, all.count, context)
            XCTAssertEqual(all.count, 16 * 4096 / 64, "\(context): every slot of every page is allocatable again")
            for handle in all { try s.free(handle) }
            XCTAssertTrue(heap.verify().isClean, "\(context): \(heap.verify())")
        }
    }

    /// A death in each step of a page move between the pool and a participant (the steps of `claimPooledPage`
    /// and `releasePage`, replayed by hand up to the death): recovery reads only the page state words, and puts
    /// every page back exactly once (every page is claimable again, once, and the audit is clean).
    func testDeathDuringPageMoves() throws {
        for stage in 0..<8 {
            let context = "page move, death at stage \(stage)"
            let (_, heap) = try makeHeap("m\(stage)")
            let s = try heap.join(name: "survivor")
            let kept = try s.allocate(64)
            try fill(heap, kept)
            let d = try heap.join(name: "dying")
            let p = d.index
            // A page that came back to the pool (for the stages that claim from the bitmap).
            let returned = heap.claimPooledPage(sizeClass: 2, for: s.index)!
            heap.releasePage(returned, for: s.index)
            let bump = Int(heap.poolBump(0).load(ordering: .relaxed))
            switch stage {
            case 0:  // Fresh claim: state claimed (owned by p, epoch 1), fields not written, bump not advanced.
                if heap.lazyCommit { XCTAssertNil(heap.commitPage(bump), context) }  // (Done before the claim.)
                heap.pageState(bump).store(
                    PageWord.make(kind: PageWord.owned, sizeClass: 1, owner: p, epoch: 1), ordering: .releasing)
            case 1:  // Fresh claim: claimed and initialized, bump not advanced.
                let page = heap.claimPooledPage(sizeClass: 1, for: p)!
                heap.poolBump(0).store(UInt64(page), ordering: .releasing)
            case 2:  // Claim of a returned page: state claimed, bit not cleared, fields not written.
                let word = heap.pageState(returned).load(ordering: .relaxed)
                heap.pageState(returned).store(
                    PageWord.make(kind: PageWord.owned, sizeClass: 1, owner: p, epoch: PageWord.epoch(word) + 1),
                    ordering: .releasing)
            case 3:  // Claimed, a few slots carved (all free: nothing was allocated yet).
                let page = heap.claimPooledPage(sizeClass: 1, for: p)!
                XCTAssertEqual(page, returned, "a returned page is taken before a fresh one")
                for slot in 0..<7 { heap.pushLocal(page, slot) }
                heap.carved(page).store(7, ordering: .relaxed)
            case 4:  // Release: fields reset and bit set, cursor not lowered, state not pooled.
                let page = heap.claimPooledPage(sizeClass: 1, for: p)!
                heap.carved(page).store(0, ordering: .relaxed)
                _ = heap.poolBitmap(0, page / 64).loadThenBitwiseOr(
                    with: UInt64(1) << UInt64(page % 64), ordering: .releasing)
            case 5:  // Release: bit set and cursor lowered, state not pooled.
                let page = heap.claimPooledPage(sizeClass: 1, for: p)!
                heap.releasePage(page, for: p)
                heap.pageState(page).store(
                    PageWord.make(kind: PageWord.owned, sizeClass: 1, owner: p, epoch: PageWord.epoch(
                        heap.pageState(page).load(ordering: .relaxed))), ordering: .releasing)
            case 6:  // Release complete.
                let page = heap.claimPooledPage(sizeClass: 1, for: p)!
                heap.releasePage(page, for: p)
            default:  // p claimed a page (the returned one); a lazy commit of a fresh one then failed.
                XCTAssertEqual(heap.claimPooledPage(sizeClass: 1, for: p), returned, context)
                if heap.lazyCommit {
                    heap._failingCommits.store(1, ordering: .relaxed)
                    XCTAssertNil(heap.claimPooledPage(sizeClass: 1, for: p), context)
                    XCTAssertEqual(heap._failingCommits.load(ordering: .relaxed), 0, context)
                }
            }
            d._simulateDeath()
            let report = try heap.recover(participant: p)
            let audit = heap.verify()
            XCTAssertTrue(audit.isClean, "\(context): \(report)\n\(audit)")
            XCTAssertEqual(audit.pooledPages + audit.ownedPages + audit.orphanPages, heap.pageCount, context)
            XCTAssertEqual(audit.ownedPages, 1, "\(context): only the survivor's page is in use: \(audit)")
            XCTAssertTrue(try holdsPattern(heap, kept), context)
            // Every page is claimable again, each once.
            var pages: [Int] = []
            while let page = heap.claimPooledPage(sizeClass: 0, for: s.index) { pages.append(page) }
            XCTAssertEqual(pages.count, heap.pageCount - 1, context)
            XCTAssertEqual(Set(pages).count, pages.count, context)
            for page in pages { heap.releasePage(page, for: s.index) }
            XCTAssertTrue(heap.verify().isClean, "\(context): \(heap.verify())")
        }
    }

    /// Page moves under SIGKILL: a worker process that does little but claim and release pages (rounds of 1…40
    /// allocations of random classes of both tiers, all freed) is killed at a random moment, many times over;
    /// recovery (which reads only records: no waiting, no snapshots) must leave the audit clean, every page but
    /// the parent's back in the pool and findable (verify checks each pooled page's bitmap bit), and the pages
    /// claimable again. Lazy and fully committed heaps. `DIVVY_TEST_SEED` replays a run.
    func testSIGKILLDuringPageMovesLosesNoPage() throws {
        let seed = ProcessInfo.processInfo.environment["DIVVY_TEST_SEED"].flatMap { UInt64($0) }
            ?? UInt64.random(in: 1...UInt64.max)
        print("SharedHeapRecoveryTests.testSIGKILLDuringPageMovesLosesNoPage: DIVVY_TEST_SEED=\(seed)")
        var random = SeededGenerator(seed: seed)
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 256,
            spanPageSize: 16384, largeSizeClasses: [1024, 4096])
        for lazy in [false, true] {
            lazyHeaps = lazy
            defer { lazyHeaps = false }
            let (_, heap) = try makeHeap("churn\(lazy)", dataSize: 256 * 4096, configuration: configuration)
            let me = try heap.join(name: "parent")
            let mailboxHandle = try me.allocate(64)
            let ready = UnsafeAtomic<UInt64>(
                at: try heap.pointer(for: mailboxHandle).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            var released = 0
            for trial in 0..<40 {
                let context = "lazy \(lazy), trial \(trial), DIVVY_TEST_SEED=\(seed)"
                ready.store(0, ordering: .relaxed)
                let worker = try HelperProcess.spawn(
                    ["page-churn", "churn\(lazy)", prefix, "\(mailboxHandle.compact64)", "\(random.next())"])
                var waited = 0
                // Ordering: acquiring, pairs with the worker's releasing store.
                while ready.load(ordering: .acquiring) == 0, waited < 20_000 {
                    usleep(500)
                    waited += 1
                }
                usleep(UInt32(random.next() % 3000))
                kill(worker.pid, SIGKILL)
                let exit = worker.wait()
                XCTAssertEqual(exit.signal, SIGKILL, "\(context): \(exit)")
                let dead = heap.deadParticipants()
                XCTAssertEqual(dead.count, 1, context)
                guard let p = dead.first else { break }
                let report = try heap.recover(participant: p)
                released += report.pagesReleased
                let audit = heap.verify()
                XCTAssertTrue(audit.isClean, "\(context): \(report)\n\(audit)")
                XCTAssertEqual(audit.ownedPages, 1, "\(context): \(audit)")
                XCTAssertEqual(audit.orphanPages, 0, "\(context): \(audit)")
                XCTAssertEqual(audit.pooledPages, heap.pageCount - 1, "\(context): \(audit)")
                if !audit.isClean { break }
            }
            XCTAssertGreaterThan(released, 0, "some kills must have left pages to give back")
            // Every page is claimable again, each once.
            var pages: [Int] = []
            for sizeClass in [0, heap.sizeClasses.count - 1] {
                while let page = heap.claimPooledPage(sizeClass: sizeClass, for: me.index) { pages.append(page) }
            }
            XCTAssertEqual(pages.count, heap.pageCount - 1, "lazy \(lazy)")
            XCTAssertEqual(Set(pages).count, pages.count, "lazy \(lazy)")
            for page in pages { heap.releasePage(page, for: me.index) }
            XCTAssertTrue(heap.verify().isClean, "lazy \(lazy): \(heap.verify())")
            try me.free(mailboxHandle)
        }
    }

    /// The same deaths in lazy heaps: recovery reads only what is committed (the dead participant's held list was
    /// committed when it joined; its pages when it claimed them), and every audit is clean.
    func testDeathsInLazyHeap() throws {
        lazyHeaps = true
        defer { lazyHeaps = false }
        for step in 1...4 { try checkDeath("allocate", step) }
        for step in 1...3 { try checkDeath("adopt", step) }
        for target in FreeTarget.allCases {
            for step in 1...5 where target != .ownShared || step != 4 { try checkDeath("free", step, target: target) }
        }
        try testDeathDuringPageMoves()
    }

    /// A suspect on a page whose owner is alive waits for the owner's collect; verify counts it as on its way.
    func testSuspectLeftToLiveOwner() throws {
        let (_, heap) = try makeHeap()
        let s = try heap.join(name: "survivor")
        let d = try heap.join(name: "dying")
        let handle = try s.allocate(64)
        try d.adopt(handle)
        try s.free(handle)
        d._dieAfter = ("free", 2)
        XCTAssertThrowsError(try d.free(handle))
        let report = try heap.recover(participant: d.index)
        XCTAssertEqual(report.suspectLeftToOwner, handle, "\(report)")
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        XCTAssertEqual(heap.verify().remoteFreeBlocks, 1)
        XCTAssertEqual(s.collectRemoteFrees(), 1)
        let after = heap.verify()
        XCTAssertTrue(after.isClean && after.remoteFreeBlocks == 0 && after.allocatedBlocks == 0, "\(after)")
    }

    func testRecoverRejectsBadParticipants() throws {
        let (_, heap) = try makeHeap()
        let before = heap.verify()
        for bad in [-1, 4, 100] {
            XCTAssertThrowsError(try heap.recover(participant: bad)) {
                XCTAssertEqual(($0 as? SharedHeapError)?.code, .outOfRange)
            }
        }
        XCTAssertThrowsError(try heap.recover(participant: 2)) {
            XCTAssertEqual(($0 as? SharedHeapError)?.code, .participantLeft)
        }
        XCTAssertEqual(heap.verify(), before)
    }

    /// A real process that exits without leaving is found by `deadParticipants()` and recovered.
    func testDeadProcessIsFoundAndRecovered() throws {
        let (_, heap) = try makeHeap("gone", dataSize: 64 * 4096)
        let directory = NSTemporaryDirectory() + prefix
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let exit = try HelperProcess.run(["heap", "gone", prefix, "alloc", "5", "3", directory + "/h", "exit-without-leave"])
        XCTAssertEqual(exit.status, 0, "\(exit)")
        let handles = try String(contentsOfFile: directory + "/h", encoding: .utf8).split(separator: "\n")
            .map { SharedHeapHandle(heap, compact64: UInt64($0.split(separator: " ")[0])!) }
        let me = try heap.join(name: "survivor")
        try me.adopt(handles[0])
        let dead = heap.deadParticipants()
        XCTAssertEqual(dead.count, 1)
        let report = try heap.recover(participant: dead[0])
        XCTAssertEqual(report.releasedBlocks, 4, "\(report)")
        XCTAssertEqual(report.droppedHoldings, 1, "\(report)")
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.allocatedBlocks, 1)
        XCTAssertEqual(heap.deadParticipants(), [])
        XCTAssertTrue(try me.free(handles[0]))
    }

    // MARK: Crash torture

    /// The helper's pattern (`heapPattern` in divvy-shm-helper).
    func torturePattern(_ handle: SharedHeapHandle) -> UInt8 {
        UInt8(truncatingIfNeeded: (handle.compact64 &* 0x9E37_79B9_7F4A_7C15) >> 56)
    }

    func tortureFill(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws {
        let size = try heap.blockSize(of: handle)
        try heap.pointer(for: handle).initializeMemory(as: UInt8.self, repeating: torturePattern(handle), count: size)
    }

    func tortureIntact(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws -> Bool {
        let size = try heap.blockSize(of: handle)
        return UnsafeRawBufferPointer(start: try heap.pointer(for: handle), count: size)
            .allSatisfy { $0 == torturePattern(handle) }
    }

    /// A worker process allocates, publishes, adopts and frees at random while this process (a survivor) adopts
    /// what it publishes, publishes its own blocks for it, allocates and frees; the worker is SIGKILLed at a random
    /// moment; `deadParticipants()` must name it, `recover` must run, and then the audit must be clean, only this
    /// process's blocks may be allocated, and each must hold its contents. `DIVVY_TORTURE_TRIALS` sets the trial
    /// count (default 200); `DIVVY_TEST_SEED` replays a run (the seed is printed).
    func testCrashTorture() throws {
        try runTorture(survivorProcess: false)
    }

    /// The same with a second worker process that keeps running (allocating, adopting what the victim published,
    /// freeing into the victim's pages) while the victim is killed and recovered; then it is told to stop, frees
    /// everything and leaves, and the audit runs. Recovery here runs concurrently with a live participant.
    func testCrashTortureWithLiveSurvivorProcess() throws {
        try runTorture(survivorProcess: true)
    }

    /// The crash torture in a lazy heap (a quarter of the trials): workers commit pages as they claim them, and
    /// are killed anywhere, also between a page's commit and its claim.
    func testCrashTortureInLazyHeap() throws {
        lazyHeaps = true
        defer { lazyHeaps = false }
        try runTorture(survivorProcess: false, name: "testCrashTortureInLazyHeap", share: 4)
    }

    func runTorture(survivorProcess: Bool, name: String? = nil, share: Int = 1) throws {
        let name = name ?? (survivorProcess ? "testCrashTortureWithLiveSurvivorProcess" : "testCrashTorture")
        let trials = max(1, (ProcessInfo.processInfo.environment["DIVVY_TORTURE_TRIALS"].flatMap { Int($0) } ?? 200)
            / share)
        let seed = ProcessInfo.processInfo.environment["DIVVY_TEST_SEED"].flatMap { UInt64($0) }
            ?? UInt64.random(in: 1...UInt64.max)
        var random = SeededGenerator(seed: seed)
        // Participants: this process (1), the victim process (`victims`) and the survivor process (`survivors`):
        // at least 64 in all (`DIVVY_TORTURE_PARTICIPANTS`, default 64), each step of a worker using one of its own
        // at random, so that one SIGKILL leaves dozens of participants dead, each at its own point.
        let total = max(4, ProcessInfo.processInfo.environment["DIVVY_TORTURE_PARTICIPANTS"].flatMap { Int($0) } ?? 64)
        let victims = survivorProcess ? (total - 1) / 2 : total - 1
        let survivors = survivorProcess ? total - 1 - victims : 0
        // 480 small pages and 16 span pages of 16 KiB for two large classes (the workers allocate both).
        // And an extent area of 64 units of 4 KiB: one in sixteen of the workers' allocations is an extent of one to
        // four units (`randomBlockSize`), so deaths land inside extent allocations too (holding the area's lock).
        var configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: total, heldCapacity: 256,
            spanPageSize: 16384, spanFraction: 0.125, largeSizeClasses: [1024, 4096])
        configuration.extentFraction = 0.125
        let (_, heap) = try makeHeap("torture", dataSize: 512 * 4096, configuration: configuration)
        XCTAssertEqual(heap.spanPageCount, 16)
        XCTAssertEqual(heap.extentUnitCount, 64)
        print("SharedHeapRecoveryTests.\(name): \(trials) trials, \(total) participants, DIVVY_TEST_SEED=\(seed)")
        let me = try heap.join(name: "parent")
        let mailboxHandle = try me.allocate(256)
        let mailbox = try heap.pointer(for: mailboxHandle)
        mailbox.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        func slot(_ index: Int) -> UnsafeAtomic<UInt64> {
            UnsafeAtomic<UInt64>(at: (mailbox + 8 * index).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
        }
        var held: [SharedHeapHandle] = []
        var kills = 0, adopted = 0, recoveredBlocks = 0, lockHeldAtKill = 0
        for trial in 0..<trials {
            let workerSeed = random.next()
            let context = "trial \(trial), DIVVY_TEST_SEED=\(seed), worker seed \(workerSeed)"
            for index in 0..<32 { slot(index).store(0, ordering: .relaxed) }
            let worker = try HelperProcess.spawn(
                ["torture", "torture", prefix, "\(tortureRaw(mailboxHandle))", "\(workerSeed)", "0", "-1", "\(victims)"])
            let survivor = survivorProcess ? try HelperProcess.spawn(
                ["torture", "torture", prefix, "\(tortureRaw(mailboxHandle))", "\(workerSeed ^ 0x5555)", "1", "2",
                 "\(survivors)"]) : nil
            var waited = 0
            // Ordering: acquiring, pairs with the workers' releasing stores of their indices.
            while slot(0).load(ordering: .acquiring) == 0 || (survivorProcess && slot(1).load(ordering: .acquiring) == 0),
                waited < 20_000
            {
                usleep(500)
                waited += 1
            }
            // Run alongside the worker for a random while (up to ~4 ms), then kill it.
            let iterations = Int(random.next() % 400)
            for _ in 0..<iterations {
                switch random.next() % 8 {
                case 0, 1:
                    // Ordering: acquiring, pairs with the worker's releasing publication.
                    let raw = slot(3 + Int(random.next() % 13)).exchange(0, ordering: .acquiringAndReleasing)
                    guard raw != 0, held.count < 200 else { break }
                    let handle = tortureHandle(heap, raw)
                    // (A `catch where` that breaks out of the switch crashes the 6.3 compiler: use a Result.)
                    let adoption = Result { () throws(SharedHeapError) in try me.adopt(handle) }
                    if case .failure(let error) = adoption {
                        XCTAssertEqual(error.code, .staleHandle, "\(context): adopting \(handle)")
                        break
                    }
                    held.append(handle)
                    adopted += 1
                    XCTAssertTrue(try tortureIntact(heap, handle), "\(context): adopted \(handle) is not intact")
                case 2:
                    guard let handle = held.randomElement(using: &random) else { break }
                    // Ordering: releasing: the worker's acquiring exchange sees the contents.
                    _ = slot(16 + Int(random.next() % 16)).compareExchange(
                        expected: 0, desired: tortureRaw(handle), successOrdering: .releasing, failureOrdering: .relaxed)
                case 3:
                    guard held.count < 200 else { break }
                    let allocation = Result { () throws(SharedHeapError) in try me.allocate(1 + Int(random.next() % 256)) }
                    switch allocation {
                    case .success(let handle):
                        try tortureFill(heap, handle)
                        held.append(handle)
                    case .failure(let error):
                        XCTAssertEqual(error.code, .heapFull, context)
                    }
                case 4, 5:
                    guard !held.isEmpty else { break }
                    let handle = held.remove(at: Int(random.next() % UInt64(held.count)))
                    // The handle may still sit in a slot for the worker: it then adopts a stale handle or not.
                    XCTAssertTrue(try tortureIntact(heap, handle), "\(context): \(handle) is not intact")
                    try me.free(handle)
                default:
                    usleep(UInt32(random.next() % 20))
                }
            }
            kill(worker.pid, SIGKILL)
            let exit = worker.wait()
            guard exit.signal == SIGKILL else {
                XCTFail("\(context): the worker ended on its own: \(exit)")
                if let survivor { kill(survivor.pid, SIGKILL); _ = survivor.wait() }
                break
            }
            kills += 1
            // A victim killed inside an extent allocation holds the area's lock: its recovery releases it (and an
            // allocator that meets it first takes it over); the audit below refuses a lock left held.
            if heap.extentLock.load(ordering: .acquiring) != 0 { lockHeldAtKill += 1 }
            let dead = heap.deadParticipants()
            guard dead.count == victims else {
                XCTFail("\(context): deadParticipants() = \(dead), expected \(victims)\n\(heap.verify())")
                if let survivor { kill(survivor.pid, SIGKILL); _ = survivor.wait() }
                break
            }
            var report = SharedHeapRecoveryReport(participant: -1, pid: 0)
            var failure: String?
            for participant in dead {
                var recovered: SharedHeapRecoveryReport?
                var lastError: SharedHeapError?
                for _ in 0..<20 where recovered == nil {
                    // (A typed `catch … where` here crashes the 6.3 compiler: use a Result.)
                    switch Result(catching: { () throws(SharedHeapError) in try heap.recover(participant: participant) }) {
                    case .success(let one): recovered = one
                    case .failure(let error):
                        lastError = error
                        if error.code != .recoveryIncomplete { break }
                        usleep(10_000)  // The survivor process has not collected an earlier suspect yet.
                    }
                }
                guard let recovered else {
                    failure = "recovery of \(participant) failed: \(lastError.map { "\($0)" } ?? "?")"
                    break
                }
                report.releasedBlocks += recovered.releasedBlocks
                report.droppedHoldings += recovered.droppedHoldings
            }
            if let failure {
                XCTFail("\(context): \(failure)")
                if let survivor { kill(survivor.pid, SIGKILL); _ = survivor.wait() }
                break
            }
            recoveredBlocks += report.releasedBlocks
            if let survivor {
                usleep(UInt32(random.next() % 2000))  // Let it work on the recovered heap a little.
                // Ordering: releasing; the survivor acquires the stop flag.
                slot(2).store(1, ordering: .releasing)
                let ended = survivor.wait()
                guard ended.status == 0 else {
                    XCTFail("\(context): the survivor process failed: \(ended)")
                    break
                }
            }
            for index in 0..<32 { slot(index).store(0, ordering: .relaxed) }
            me.collectRemoteFrees()
            let audit = heap.verify()
            guard audit.isClean, audit.allocatedBlocks == held.count + 1, audit.holdings == held.count + 1 else {
                XCTFail("\(context): after \(report):\n\(audit)\n(this process holds \(held.count + 1))")
                break
            }
            for handle in held where !(try tortureIntact(heap, handle)) {
                XCTFail("\(context): \(handle), held by a survivor, lost its contents")
            }
            // `usage()` is exact after the kill: the bytes in use are those of the blocks this process holds.
            let heldBytes = try held.reduce(try heap.blockSize(of: mailboxHandle)) { $0 + (try heap.blockSize(of: $1)) }
            guard heap.usage().bytesInUse == heldBytes else {
                XCTFail("\(context): usage() counts \(heap.usage().bytesInUse) bytes in use, the holdings \(heldBytes)")
                break
            }
        }
        print("SharedHeapRecoveryTests.\(name): \(kills) kills, \(adopted) adoptions, "
            + "\(recoveredBlocks) blocks released by recovery, extent lock held at \(lockHeldAtKill) kills, "
            + "extent serial \(heap.extentSerial.load(ordering: .relaxed)), DIVVY_TEST_SEED=\(seed)")
        for handle in held { try me.free(handle) }
        try me.free(mailboxHandle)
        me.collectRemoteFrees()
        let final = heap.verify()
        XCTAssertTrue(final.isClean && final.allocatedBlocks == 0, "DIVVY_TEST_SEED=\(seed): \(final)")
    }
}

/// The torture mailbox's 64-bit form of a handle (the helper's `tortureRaw`): generation (high 32 bits) |
/// offset / 16 (low 32 bits); the heap id is the heap's own.
func tortureRaw(_ handle: SharedHeapHandle) -> UInt64 {
    (handle.generation & 0xFFFF_FFFF) << 32 | UInt64(handle.dataOffset >> 4)
}

/// The handle a mailbox word names (see `tortureRaw`).
func tortureHandle(_ heap: SharedHeap, _ raw: UInt64) -> SharedHeapHandle {
    SharedHeapHandle(heapID: heap.heapID, dataOffset: Int(raw & 0xFFFF_FFFF) << 4, generation: raw >> 32)
}
