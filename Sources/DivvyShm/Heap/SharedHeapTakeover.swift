import Atomics

#if canImport(Glibc)
import Glibc
#endif

/// What `SharedHeap.takeOver(participant:name:)` did to the slot it took over.
public struct SharedHeapTakeoverReport: Hashable, Sendable, CustomStringConvertible {
    /// The slot, and the process id its dead occupant had joined with.
    public var participant: Int
    /// The process id recorded in the slot before the takeover.
    public var previousPID: Int32
    /// The operation the dead process was in the middle of, settled as not done (an allocate or adopt: the block
    /// is not held; a waiting free: still held) or done (a free: the block is not held), or nil when there was none.
    public var settledOperation: String?
    /// Blocks the slot holds after the takeover (every holding of the dead process except the one settled above).
    public var keptHoldings = 0
    /// Pages the slot owns after the takeover (repaired as `recover` repairs them; empty ones went to the pool).
    public var keptPages = 0
    /// Empty pages given back to the pool.
    public var pagesReleased = 0
    /// Slots put back on free lists and blocks collected from remote stacks while repairing the pages.
    public var restoredSlots = 0, collectedBlocks = 0

    /// One line.
    public var description: String {
        "took over participant \(participant) (was pid \(previousPID)): \(keptHoldings) holdings kept, "
            + "\(keptPages) pages kept, \(pagesReleased) released, \(restoredSlots) slots restored, "
            + "\(collectedBlocks) collected" + (settledOperation.map { ", in-flight \($0) settled" } ?? "")
    }
}

// Taking over a dead process's participant slot *with its holdings*: what a restarted daemon does with the slot its
// predecessor held (issue 12, restart without loss). `recover(participant:)` ends a dead participant's holdings;
// this keeps them, so the blocks it held on behalf of others stay held across the death.
extension SharedHeap {
    /// How many handles participant slot 0 may hold at once (`SharedHeapConfiguration.firstSlotHeldCapacity`): a
    /// daemon that re-attaches a heap reads its own slot's capacity here rather than from its configuration.
    public var firstSlotHeldCapacity: Int { layout.heldCapacity(of: 0) }

    /// Takes over participant slot `p`, whose process is gone, keeping every block it holds and every page it
    /// owns, and returns a participant for the calling thread in that slot.
    ///
    /// The dead process's in-flight operation (its announcement) is settled the way a caller that never got an
    /// answer expects: an allocate or adopt did not happen (the holding, if its commit was made, is dropped as
    /// recovery drops it, and its held-list entry emptied), a free did happen (the holding is dropped), a waiting
    /// adopt or free did not commit (nothing to do). Its pages are repaired as `recover(participant:)` repairs them
    /// (a collect it died in finished, slots between a list and a commit put back, counts recomputed) and stay
    /// owned by the slot, except pages with nothing live, which go back to the pool. Then the slot is marked alive
    /// with the caller's process id and start time. The returned participant's process-local state (its index of
    /// the held list, its owned pages) is rebuilt from the shared records.
    ///
    /// Runs under the heap's recovery lock, so it never meets a recovery of the same slot: a slot that a recovery
    /// already marked *dead* is refused (that recovery may have dropped holdings already; finish it with
    /// `recover(participant:)`).
    ///
    /// - Parameters:
    ///   - p: the slot.
    ///   - name: the label stored for diagnostics (nil keeps the dead participant's).
    /// - Returns: the participant and what was done.
    /// - Throws: `.outOfRange` (no such slot); `.participantLeft` (the slot is free, leaving, or already being
    ///   recovered); `.invalidConfiguration` (its process still runs, or the region is read-only);
    ///   `.recoveryIncomplete` (another recovery holds the lock, or an in-flight operation could not be settled
    ///   yet: call again; the slot is left as it was or resumable).
    /// - Complexity: O(held capacity + pages used so far + carved slots of the slot's pages).
    public func takeOver(
        participant p: Int, name: String? = nil
    ) throws(SharedHeapError) -> (participant: Participant, report: SharedHeapTakeoverReport) {
        try takeOver(participant: p, name: name, checkingProcess: true)
    }

    /// `takeOver(participant:name:)`; tests pass `checkingProcess: false` to take over a slot whose death they
    /// simulated in this process (`Participant._simulateDeath`).
    internal func takeOver(
        participant p: Int, name: String?, checkingProcess: Bool
    ) throws(SharedHeapError) -> (participant: Participant, report: SharedHeapTakeoverReport) {
        guard region.access == .readWrite else {
            throw SharedHeapError(.invalidConfiguration, "the region is mapped read-only: open it read-write to take over")
        }
        guard p >= 0, p < layout.participantCapacity else {
            throw SharedHeapError(.outOfRange, "participant \(p) does not exist (capacity \(layout.participantCapacity))")
        }
        let report = try withRecoveryLock { () throws(SharedHeapError) -> SharedHeapTakeoverReport in
            try takeOverLocked(participant: p, checkingProcess: checkingProcess)
        }
        if let name { storeParticipantName(p, name) }
        let participant = Participant(heap: self, index: p)
        participant.rebuildFromRecords()
        return (participant, report)
    }

    private func takeOverLocked(
        participant p: Int, checkingProcess: Bool
    ) throws(SharedHeapError) -> SharedHeapTakeoverReport {
        // Ordering: acquiring, pairs with the dead process's releasing stores (pending, held list, page fields).
        let word = participantState(p).load(ordering: .acquiring)
        switch ParticipantWord.state(word) {
        case ParticipantWord.alive: break
        case ParticipantWord.dead:
            throw SharedHeapError(
                .participantLeft, "participant \(p) is being recovered (its holdings may be dropped already): "
                    + "finish with recover(participant:), then join")
        case ParticipantWord.leaving:
            throw SharedHeapError(.participantLeft, "participant \(p) left the heap: there is nothing to take over")
        default:
            throw SharedHeapError(.participantLeft, "participant slot \(p) is free: there is nothing to take over")
        }
        guard !checkingProcess || !ProcessIdentity.isAlive(pid: ParticipantWord.pid(word), startTime: ParticipantWord.startTime(word))
        else {
            throw SharedHeapError(
                .invalidConfiguration, "participant \(p)'s process \(ParticipantWord.pid(word)) still runs: only a "
                    + "slot whose process is gone can be taken over")
        }
        // Mark it dead first, as recovery does: verify stops counting it alive, nobody else recovers it (we hold
        // the recovery lock), and a taker-over that dies below leaves it for `recover` (the holdings are then
        // dropped: the successor of a daemon that died twice restarts with what recovery leaves).
        let dead = ParticipantWord.with(state: ParticipantWord.dead, word)
        guard participantState(p).compareExchange(
            expected: word, desired: dead, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed
        ).exchanged else {
            throw SharedHeapError(.participantLeft, "participant \(p) changed state while being taken over")
        }
        var report = SharedHeapTakeoverReport(participant: p, previousPID: ParticipantWord.pid(word))
        var recovery = SharedHeapRecoveryReport(participant: p, pid: ParticipantWord.pid(word))
        var pagesToRepair: [Int] = []
        let heldEntries = heldListIsCommitted(p) ? layout.heldCapacity(of: p) : 0

        // The in-flight operation.
        if let (handle, op) = readPending(p) {
            report.settledOperation = op.map { "\($0)" } ?? "unknown"
            if let location = try? locate(handle) {
                // A last release that may not have been pushed: exactly as in recovery (step 2).
                let block = blockWord(location.page, location.slot).load(ordering: .acquiring)
                if BlockWord.state(block) == BlockWord.freeing, BlockWord.generation(block) == handle.generation,
                    BlockWord.count(block) == p
                {
                    let raw = SuspectWord.make(slot: location.slot, generation: handle.generation)
                    if try placeSuspect(raw, page: location.page, for: p) == .takenOver {
                        pagesToRepair.append(location.page)
                    }
                }
                let entry = (0..<heldEntries).first { index in
                    readHeld(p, index).map {
                        $0.offsetUnits == handle.offsetUnits && $0.generation == handle.generation
                    } ?? false
                }
                switch op {
                case .allocate?:
                    // Committed and listed, committed and not listed, or not committed: not done either way (the
                    // generation check makes the drop a no-op when the commit was not made).
                    note(try dropHolding(handle, location, of: p), in: &recovery)
                    if let entry { clearHeld(p, entry) }
                case .adopt?, .free?:
                    // The compare-and-exchange may or may not have happened: recount without p, which settles
                    // p as not holding the block (adopt not done, free done); then its entry goes.
                    note(try recount(handle, location, dropping: p), in: &recovery)
                    if let entry { clearHeld(p, entry) }
                default:
                    break  // Waiting: not committed; the held list says what p holds.
                }
            }
            clearPending(p)
        }

        // The extent area's lock, if p died holding it (every step of an extent allocation leaves the area
        // consistent; the allocation itself was settled above): the slot is about to be alive again, and a lock
        // naming a live slot is never taken over.
        unlockExtents(for: p)

        // Pages: repair every page p owns, give back the empty ones, keep the rest owned by p.
        for page in readablePages().joined() {
            let state = pageState(page).load(ordering: .acquiring)
            guard PageWord.kind(state) == PageWord.owned, PageWord.owner(state) == p, !pagesToRepair.contains(page)
            else { continue }
            pagesToRepair.append(page)
        }
        var ownedUnits = 0
        for page in pagesToRepair {
            if carved(page).load(ordering: .relaxed) != 0 { repairPage(page, report: &recovery) }
            if live(page).load(ordering: .relaxed) == 0 {
                releasePage(page, for: p)
                report.pagesReleased += 1
            } else {
                // A page `placeSuspect` took over from the orphans is owned by p now (it stored p as owner).
                report.keptPages += 1
                ownedUnits += layout.pageUnits(page)
            }
        }
        report.restoredSlots = recovery.restoredSlots
        report.collectedBlocks = recovery.collectedBlocks
        report.keptHoldings = (0..<heldEntries).count { readHeld(p, $0) != nil }
        // Ordering: relaxed; published by the releasing store of the slot below.
        ownedPageCount(p).store(UInt32(ownedUnits), ordering: .relaxed)

        // The slot is ours. Ordering: releasing, pairs with acquiring loads of the slot (verify, recount).
        let pid = getpid()
        participantState(p).store(
            ParticipantWord.make(
                state: ParticipantWord.alive, pid: pid, startTime: ProcessIdentity.startTime(of: pid) ?? 0),
            ordering: .releasing)
        return report
    }
}
