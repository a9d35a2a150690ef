import Atomics
import Divvy

#if canImport(Glibc)
import Glibc
#endif

/// What `SharedHeap.recover(participant:)` did.
public struct SharedHeapRecoveryReport: Hashable, Sendable, CustomStringConvertible {
    /// The recovered participant slot, and the process id it was registered with.
    public var participant: Int
    /// The process id recorded in the participant's slot.
    public var pid: Int32
    /// Holdings of the dead participant dropped on blocks a survivor still holds (the block stays allocated).
    public var droppedHoldings = 0
    /// Blocks only the dead participant held: released (pushed onto their pages' remote-free stacks).
    public var releasedBlocks = 0
    /// Slots the dead participant was between taking and committing (or releasing and listing) put back on
    /// their pages' free lists.
    public var restoredSlots = 0
    /// Blocks on the dead participant's pages' remote-free stacks (or in a collect it died in) moved to the
    /// local lists.
    public var collectedBlocks = 0
    /// The dead participant's pages: given back to the pool (nothing live) or left as orphans.
    public var pagesReleased = 0, pagesOrphaned = 0
    /// A block the dead participant had released but maybe not pushed, left for its page's owner to resolve
    /// at its next collect (nil when there was none, or recovery resolved it itself).
    public var suspectLeftToOwner: SharedHeapHandle?

    /// One line.
    public var description: String {
        "recovered participant \(participant) (pid \(pid)): \(droppedHoldings) holdings dropped, "
            + "\(releasedBlocks) blocks released, \(restoredSlots) slots restored, \(collectedBlocks) collected, "
            + "pages \(pagesReleased) released / \(pagesOrphaned) orphaned"
            + (suspectLeftToOwner.map { ", suspect \($0) left to its page's owner" } ?? "")
    }
}

extension SharedHeap {
    /// Participants that need recovery: slots marked alive (or leaving) whose process no longer exists, and slots
    /// marked dead (a recovery that stopped half-way, see `recover(participant:)`).
    ///
    /// A process "no longer exists" when `kill(pid, 0)` fails with `ESRCH`, or when the process now running
    /// under that pid started at another time than the one recorded at `join` (the pid was reused: see
    /// `ProcessIdentity`). A daemon that knows its clients' deaths from their sockets may still prefer that
    /// knowledge and call `recover(participant:)` directly.
    ///
    /// - Complexity: O(participant capacity) system calls.
    public func deadParticipants() -> [Int] {
        (0..<layout.participantCapacity).filter { p in
            let word = participantState(p).load(ordering: .acquiring)
            switch ParticipantWord.state(word) {
            case ParticipantWord.alive, ParticipantWord.leaving:
                return !ProcessIdentity.isAlive(
                    pid: ParticipantWord.pid(word), startTime: ParticipantWord.startTime(word))
            case ParticipantWord.dead: return true
            default: return false
            }
        }
    }

    /// Whether the process that joined participant slot `p` still runs: its pid exists and, when its start time
    /// was recorded, the process under that pid started at that time (not a later process that reuses the pid).
    /// False for a free slot or no such slot.
    ///
    /// - Complexity: one `kill(2)` and one read of /proc/PID/stat.
    public func participantProcessIsRunning(_ p: Int) -> Bool {
        guard p >= 0, p < layout.participantCapacity else { return false }
        let word = participantState(p).load(ordering: .acquiring)
        guard ParticipantWord.state(word) != ParticipantWord.free else { return false }
        return ProcessIdentity.isAlive(pid: ParticipantWord.pid(word), startTime: ParticipantWord.startTime(word))
    }

    /// Recovers a participant whose thread or process died at any instruction: undoes or finishes its in-flight
    /// operation, drops its holdings (releasing the blocks only it held, keeping every block a survivor holds),
    /// repairs and gives up its pages (back to the pool when nothing in them is live, else as orphans), and
    /// frees its slot. Survivors keep running meanwhile; nothing here waits for them, except for one short, bounded
    /// wait (a page's earlier suspect to be collected by its live owner).
    ///
    /// The caller asserts that the participant will never run again (its process is gone: see
    /// `deadParticipants()`, or a daemon's closed socket). Only one recoverer may work on a participant at a
    /// time; the first step (a compare-and-exchange alive → dead) makes a second, concurrent call on the same
    /// participant fail, and a call on a participant left *dead* by a recovery that threw resumes it (every step
    /// is idempotent). The recoverer itself must not die half-way (it is the daemon; if it does, the participant
    /// stays *dead* and the next recovery call resumes it).
    ///
    /// ## What it does, and why every death is covered
    ///
    /// Every operation of a participant `p` follows one discipline: (1) store the handle into `pending`,
    /// (2) commit with one store / compare-and-exchange of the block word, (3) one store into the held list,
    /// (4) clear `pending`; a release then pushes the slot onto a free list. Pages owned by `p` are written only
    /// by `p` (besides remote pushes). Recovery:
    ///
    /// 1. **Mark `p` dead** (compare-and-exchange alive → dead): nobody joins into the slot, verify stops calling
    ///    it alive, a second recoverer is refused.
    /// 2. **The released-but-maybe-unpushed block.** If `pending` names a block whose word is *freeing* with that
    ///    generation and `p`'s bit (a freeing word keeps its releaser's bit), `p` committed a release to a page it
    ///    does not own and may or may not have pushed it. Nobody but `p` pushes that block, so only the page's
    ///    consumer can tell, by taking the remote stack: recovery stores the handle into the page's *suspect*
    ///    word; the consumer's next `collect` reads the suspect *before* taking the stack (so a push that happened
    ///    before the death is in what it takes), and frees the block if it was not in the chain and is still
    ///    freeing. If the page is an orphan (or `p`'s own), recovery takes it over and is that consumer itself. If
    ///    another suspect is waiting on the page, recovery waits a little for the owner to collect it and
    ///    otherwise throws, leaving `p` dead and resumable. (The version-1 plan — suspect whenever the block is
    ///    freeing — was unsound: the block may have been released by a survivor whose push is still in flight;
    ///    the releaser's bit in the freeing word is what makes the case attributable.)
    /// 3. **Holdings.** For every handle in `p`'s held list and its `pending` handle: compare-and-exchange the
    ///    block word to clear bit `p`, generation checked. Bits are idempotent and attributable: if `p`'s
    ///    allocate/adopt committed (bit set) the bit goes, whether or not the held list was written (pending
    ///    covers that window); if its free committed (bit clear) nothing happens; an entry whose block was since
    ///    released and reused fails the generation check. When no holder is left the block is released exactly
    ///    like a remote free (freeing with `p`'s bit, pushed by recovery). A survivor's bit is never touched, so
    ///    its blocks are never released under it.
    /// 4. **Pages owned by `p`.** No one else writes their owner-only fields, so recovery acts as their owner:
    ///    (a) it finishes a `collect` `p` died in — the chain in flight is always recorded in the page's
    ///    *collecting* word, advanced past a block before the block's link is overwritten, so walking it and
    ///    marking its still-freeing blocks free is exact; (b) it collects the remote stack (resolving a suspect
    ///    left on the page); (c) every carved slot whose word is *free* and that is not on the local list was
    ///    between being popped and committed by `allocate`, or between being committed free and listed by an own-
    ///    page `free` or by (a): it goes back on the local list; (d) the local count is recounted from the list
    ///    and `live` set to carved − free, which is exact because every carved slot is then either listed free,
    ///    allocated, or freeing (on a remote stack or on its way there). The page then goes to the pool when
    ///    nothing is live, else becomes an orphan (taken over by the next allocator of its class, or reclaimed).
    /// 5. **Slot.** Clear the held list and `pending`, then store the slot free (releasing).
    ///
    /// **Page moves** (part of step 4). A page leaves the pool by one compare-and-exchange of its state word that
    /// names its claimer (`claimPooledPage`), and goes back by one store of *pooled* made while its owner still
    /// owns it, after resetting its fields and setting its bitmap bit (`releasePage`). So a page `p` was moving is,
    /// at `p`'s death, either pooled (the move had not started, or had finished: nothing to do — a released page's
    /// bit was set before its state) or owned by `p` (claimed and maybe not initialized, or being released and
    /// not yet pooled). Recovery reads only that: every page owned by `p` is in the loop above. One with nothing
    /// carved (`carved` is reset by every release and stored 0 by every claim before the first allocation) never
    /// handed out a block in its epoch, so it is given back as it is; the others are repaired. A stale hint that
    /// `p` leaves — the bump index not advanced past a page it claimed, a bit it had not cleared yet on a page it
    /// claimed — is put right by the next claimer that meets it (it advances the index; the release sets the bit
    /// anyway). No record of a page in hand, no snapshot of the pool, no waiting for live participants, no race.
    ///
    /// - Throws: `.outOfRange` (no such slot), `.participantLeft` (the slot is free, or alive and not ours to
    ///   take because another recoverer just marked it), `.recoveryIncomplete` (a suspect block could not be
    ///   handed to its page's owner yet: call again later; `p` stays dead, and what was done is kept).
    /// - Complexity: O(held capacity + pages used so far + carved slots of `p`'s pages).
    @discardableResult
    public func recover(participant p: Int) throws(SharedHeapError) -> SharedHeapRecoveryReport {
        guard p >= 0, p < layout.participantCapacity else {
            throw SharedHeapError(.outOfRange, "participant \(p) does not exist (capacity \(layout.participantCapacity))")
        }
        return try withRecoveryLock { () throws(SharedHeapError) -> SharedHeapRecoveryReport in
            try recoverLocked(participant: p)
        }
    }

    private func recoverLocked(participant p: Int) throws(SharedHeapError) -> SharedHeapRecoveryReport {
        // Step 1. Ordering: acquiring (on either outcome), pairs with the participant's releasing stores: we see
        // its pending word, held list and the fields of its pages (a death orders the rest).
        let word = participantState(p).load(ordering: .acquiring)
        switch ParticipantWord.state(word) {
        case ParticipantWord.leaving:
            // It left cleanly (holds nothing, owns nothing) and its process is gone: only the slot remains.
            let (freed, _) = participantState(p).compareExchange(
                expected: word, desired: ParticipantWord.free, successOrdering: .acquiringAndReleasing,
                failureOrdering: .relaxed)
            guard freed else {
                throw SharedHeapError(.participantLeft, "participant \(p) changed state while being recovered")
            }
            return SharedHeapRecoveryReport(participant: p, pid: ParticipantWord.pid(word))
        case ParticipantWord.alive:
            let dead = ParticipantWord.with(state: ParticipantWord.dead, word)
            let (marked, _) = participantState(p).compareExchange(
                expected: word, desired: dead, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            guard marked else {
                throw SharedHeapError(.participantLeft, "participant \(p) changed state while being recovered "
                    + "(another recoverer, or it left)")
            }
        case ParticipantWord.dead: break  // Resuming a recovery that threw.
        default:
            throw SharedHeapError(.participantLeft, "participant slot \(p) is free: nothing to recover")
        }
        var report = SharedHeapRecoveryReport(participant: p, pid: ParticipantWord.pid(word))
        var pagesToRepair: [Int] = []
        let announced = readPending(p)
        let announcedLocation = announced.flatMap { try? locate($0.handle) }

        // Step 2: the released-but-maybe-unpushed block: a freeing word that names p as its releaser.
        if let (handle, _) = announced, let location = announcedLocation {
            let block = blockWord(location.page, location.slot).load(ordering: .acquiring)
            if BlockWord.state(block) == BlockWord.freeing, BlockWord.generation(block) == handle.generation,
                BlockWord.count(block) == p
            {
                let raw = SuspectWord.make(slot: location.slot, generation: handle.generation)
                switch try placeSuspect(raw, page: location.page, for: p) {
                case .leftToOwner: report.suspectLeftToOwner = handle
                case .takenOver: pagesToRepair.append(location.page)
                case .ownPage: break
                }
            }
        }

        // Step 3: holdings. The operation in flight first: an allocate is committed exactly when the block word
        // has its generation; an adopt or free whose compare-and-exchange may or may not have happened is settled
        // by recounting the block's holders from the held lists (`recount`), which drops p's holding at once.
        let heldEntries = heldListIsCommitted(p) ? layout.heldCapacity(of: p) : 0  // (Lazy: a slot never joined: none.)
        var settled: UInt64?
        if let (handle, op) = announced, let location = announcedLocation {
            switch op {
            case .allocate?:
                let listed = (0..<heldEntries).contains { index in
                    readHeld(p, index).map { $0.offsetUnits == handle.offsetUnits && $0.generation == handle.generation }
                        ?? false
                }
                if !listed { note(try dropHolding(handle, location, of: p), in: &report) }
            case .adopt?, .free?:
                note(try recount(handle, location, dropping: p), in: &report)
                settled = handle.offsetUnits
            default: break  // Waiting (not committed) or nothing: the held list says it all.
            }
        }
        for index in 0..<heldEntries {
            guard let entry = readHeld(p, index), entry.offsetUnits != settled else { continue }
            let handle = SharedHeapHandle(
                heapID: heapID, dataOffset: Int(truncatingIfNeeded: entry.offsetUnits << 4),
                generation: entry.generation)
            guard let location = try? locate(handle) else { continue }
            note(try dropHolding(handle, location, of: p), in: &report)
        }

        // The extent lock, if p died holding it (an allocation between its steps 1 and 6: every step leaves the
        // area consistent, see SharedHeap+Extents.swift; the holding, if step 5 happened, was settled above).
        unlockExtents(for: p)

        // Step 4: p's pages (only pages up to each tier's bump index can be owned). One it claimed and carved
        // nothing from holds nothing: give it back as it is (its fields may be half initialized).
        for page in readablePages().joined() {
            let state = pageState(page).load(ordering: .acquiring)
            guard PageWord.kind(state) == PageWord.owned, PageWord.owner(state) == p, !pagesToRepair.contains(page)
            else { continue }
            if carved(page).load(ordering: .relaxed) == 0 {
                releasePage(page, for: p)
                report.pagesReleased += 1
            } else {
                pagesToRepair.append(page)
            }
        }
        for page in pagesToRepair {
            repairPage(page, report: &report)
            if live(page).load(ordering: .relaxed) == 0 {
                releasePage(page, for: p)
                report.pagesReleased += 1
            } else {
                let state = pageState(page).load(ordering: .relaxed)
                // Ordering: releasing: the next adopter (acquiring compare-and-exchange) sees the repaired fields.
                pageState(page).store(
                    PageWord.make(kind: PageWord.orphan, sizeClass: PageWord.sizeClass(state), owner: 0,
                                  epoch: PageWord.epoch(state)), ordering: .releasing)
                report.pagesOrphaned += 1
            }
        }

        // Step 5: the slot.
        for index in 0..<heldEntries where heldGeneration(p, index).load(ordering: .relaxed) != 0 {
            heldGeneration(p, index).store(0, ordering: .relaxed)
        }
        pendingOffset(p).store(0, ordering: .relaxed)
        ownedPageCount(p).store(0, ordering: .relaxed)
        pageAllowance(p).store(unlimitedPages, ordering: .relaxed)
        clearParticipantTag(p)
        // Ordering: releasing, pairs with the acquiring claim in `join`: the next occupant sees the cleared list.
        participantState(p).store(ParticipantWord.free, ordering: .releasing)
        return report
    }

    internal enum SuspectPlacement { case leftToOwner, takenOver, ownPage }

    /// Hands a released-but-maybe-unpushed block to its page's consumer: the page's suspect word. Takes an orphan
    /// page over (owner `p`, dead, so no one else touches it) and returns `.takenOver`: the caller repairs it.
    internal func placeSuspect(_ raw: UInt64, page: Int, for p: Int) throws(SharedHeapError) -> SuspectPlacement {
        var attempts = 0
        while true {
            let state = pageState(page).load(ordering: .acquiring)
            let kind = PageWord.kind(state)
            if kind == PageWord.orphan {
                let mine = PageWord.make(
                    kind: PageWord.owned, sizeClass: PageWord.sizeClass(state), owner: p, epoch: PageWord.epoch(state))
                // Ordering: acquiring on success, as in `adoptOrphanPage`.
                let (won, _) = pageState(page).compareExchange(
                    expected: state, desired: mine, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
                guard won else { continue }
                // The page is ours: resolve any older suspect first, then leave ours for `repairPage`'s collect.
                if suspect(page).load(ordering: .acquiring) != 0 { collect(page) }
                suspect(page).store(raw, ordering: .releasing)
                return .takenOver
            }
            if kind == PageWord.owned, PageWord.owner(state) == p {
                if suspect(page).load(ordering: .acquiring) != 0 { collect(page) }
                suspect(page).store(raw, ordering: .releasing)
                return .ownPage
            }
            if kind != PageWord.owned { return .ownPage }  // Pooled: impossible while the block is live.
            // Owned by someone else (alive, or dead and awaiting its own recovery, which collects its pages).
            // Ordering: releasing on success, pairs with the owner's acquiring load in `collect`.
            let (placed, current) = suspect(page).compareExchange(
                expected: 0, desired: raw, successOrdering: .releasing, failureOrdering: .relaxed)
            if placed || current == raw { return .leftToOwner }
            attempts += 1
            if attempts > 2000 {
                throw SharedHeapError(
                    .recoveryIncomplete, "participant \(p): page \(page) still has an unresolved suspect block "
                        + "(its owner \(PageWord.owner(state)) has not collected); call recover again later")
            }
            usleep(500)
        }
    }

    /// Acts as the owner of a page whose owner died: finishes its collect, collects, puts back slots that were
    /// between a list and a commit, recounts. See `recover(participant:)`, step 4.
    internal func repairPage(_ page: Int, report: inout SharedHeapRecoveryReport) {
        let carvedSlots = Int(carved(page).load(ordering: .relaxed))
        // (a) A collect the owner died in: its chain's remaining blocks are still freeing, linked.
        var next = collecting(page).load(ordering: .relaxed)
        var steps = 0
        while next != 0, Int(next - 1) < carvedSlots, steps <= carvedSlots {
            let s = Int(next - 1)
            let word = blockWord(page, s).load(ordering: .relaxed)
            if BlockWord.state(word) == BlockWord.freeing {
                blockWord(page, s).store(
                    BlockWord.make(generation: BlockWord.generation(word), count: 0, state: BlockWord.free),
                    ordering: .relaxed)
                report.collectedBlocks += 1
            }
            next = link(page, s).load(ordering: .relaxed) &+ 1
            steps += 1
        }
        collecting(page).store(0, ordering: .relaxed)
        // (b) The remote stack (and a suspect left on the page).
        report.collectedBlocks += collect(page)
        // (c) Free slots on no list.
        var listed = [Bool](repeating: false, count: carvedSlots)
        var slot = localHead(page).load(ordering: .relaxed)
        var count: UInt32 = 0
        while slot != endOfSlots, Int(slot) < carvedSlots, !listed[Int(slot)] {
            listed[Int(slot)] = true
            count += 1
            slot = link(page, Int(slot)).load(ordering: .relaxed)
        }
        if slot != endOfSlots {
            // A list cut by a death inside pushLocal cannot happen (the head is stored after the link); a bad
            // link means the metadata was overwritten: keep the prefix, the scan below re-lists the rest.
            if count > 0 {
                var last = localHead(page).load(ordering: .relaxed)
                for _ in 1..<count { last = link(page, Int(last)).load(ordering: .relaxed) }
                link(page, Int(last)).store(endOfSlots, ordering: .relaxed)
            } else {
                localHead(page).store(endOfSlots, ordering: .relaxed)
            }
        }
        localCount(page).store(count, ordering: .relaxed)
        for s in 0..<carvedSlots where !listed[s] {
            if BlockWord.state(blockWord(page, s).load(ordering: .acquiring)) == BlockWord.free {
                pushLocal(page, s)
                report.restoredSlots += 1
            }
        }
        // (d) Everything carved and not listed free is allocated or freeing (live).
        live(page).store(UInt32(carvedSlots) - localCount(page).load(ordering: .relaxed), ordering: .relaxed)
    }
}
