import Atomics

#if canImport(Glibc)
import Glibc
#endif

// Dropping a dead participant's holdings: one decrement of the block word's holder count per held-list entry, and,
// for the one operation a death can leave ambiguous (an adopt or free whose compare-and-exchange may or may not
// have happened), a recount of the block's holders from everybody's held lists while the block is frozen.
// Recoveries run one at a time per heap (`withRecoveryLock`), so a recount never meets another recoverer.
extension SharedHeap {
    internal enum HoldingDrop { case none, dropped, released }

    internal func note(_ drop: HoldingDrop, in report: inout SharedHeapRecoveryReport) {
        switch drop {
        case .dropped: report.droppedHoldings += 1
        case .released: report.releasedBlocks += 1
        case .none: break
        }
    }

    /// Drops participant `p`'s holding of `handle`'s block, which its records prove is counted: one decrement,
    /// generation checked; the last one releases the block (freeing with `p` as releaser, pushed onto the page's
    /// remote stack, as a remote free).
    internal func dropHolding(
        _ handle: SharedHeapHandle, _ location: Location, of p: Int
    ) throws(SharedHeapError) -> HoldingDrop {
        let word = blockWord(location.page, location.slot)
        // Ordering: acquiring, as in `Participant.free`.
        var observed = word.load(ordering: .acquiring)
        while true {
            guard BlockWord.generation(observed) == handle.generation else { return .none }
            if BlockWord.state(observed) == BlockWord.frozen {
                // Left frozen by a recoverer that died half-way (we hold the recovery lock, so no one else is
                // recounting): recount it, which settles p's holding too.
                return try recount(handle, location, dropping: p)
            }
            guard BlockWord.state(observed) == BlockWord.allocated, BlockWord.count(observed) >= 1 else { return .none }
            let count = BlockWord.count(observed) - 1
            let isExtent = layout.isExtent(location.page)
            let desired = count == 0
                ? (isExtent ? BlockWord.make(generation: handle.generation, count: 0, state: BlockWord.free)
                    : BlockWord.make(generation: handle.generation, count: p, state: BlockWord.freeing))
                : BlockWord.make(generation: handle.generation, count: count, state: BlockWord.allocated)
            // Ordering: acquiring and releasing, as in `Participant.free`.
            let (done, current) = word.compareExchange(
                expected: observed, desired: desired, successOrdering: .acquiringAndReleasing,
                failureOrdering: .acquiring)
            if done {
                if count != 0 { return .dropped }
                if !isExtent { pushRemote(location.page, location.slot) }
                return .released
            }
            observed = current
        }
    }

    /// Settles the holder count of `handle`'s block from the held lists, without participant `p` (dead, being
    /// recovered), whose announced adopt or free on it may or may not have committed.
    ///
    /// 1. **Freeze** the block (allocated → frozen, one compare-and-exchange): from now on no adopt or free of
    ///    it commits; each that tries re-announces itself as *waiting* and waits.
    /// 2. **Wait out live participants** whose announced adopt or free of the block is not waiting: their
    ///    compare-and-exchange happened before the freeze (they are about to write or empty their held entry and
    ///    end the announcement) or will fail on the frozen word (they re-announce as waiting). Either way they
    ///    settle within a few of their own instructions; a participant that does not (stopped, or its process
    ///    gone without recovery yet) makes us thaw the block unchanged and throw `.recoveryIncomplete`.
    /// 3. **Settle the dead**: another dead participant's announced adopt or free of the block is re-announced as
    ///    waiting — "not committed" — which its own recovery then reads as definite. (Whatever it really did, the
    ///    count is about to be recomputed from the records, so the choice only has to be written down.)
    /// 4. **Count** the held-list entries naming the block (generation and offset), p's excluded: once 1–3 are
    ///    done, an entry is present exactly for the holdings the block has, and no entry for it can appear or
    ///    vanish while it is frozen (both need a committed compare-and-exchange).
    /// 5. **Thaw** with that count (one store of the frozen word's owner, us), or release the block when it is 0.
    ///
    /// Idempotent up to the thaw: a recoverer that dies half-way leaves `p` dead with its announcement, and the
    /// next recovery of `p` finds the block frozen and starts again at step 2.
    internal func recount(
        _ handle: SharedHeapHandle, _ location: Location, dropping p: Int
    ) throws(SharedHeapError) -> HoldingDrop {
        let word = blockWord(location.page, location.slot)
        // 1. Freeze. Ordering: sequentially consistent, so that the participant loads of step 2 come after it in
        // every process's view (a store-load pattern with each participant's announcement).
        var observed = word.load(ordering: .sequentiallyConsistent)
        while true {
            guard BlockWord.generation(observed) == handle.generation else { return .none }  // Released, reused.
            if BlockWord.state(observed) == BlockWord.frozen { break }  // Ours (a predecessor's, resumed).
            // Free or freeing with this generation: no holding of p is counted any more.
            guard BlockWord.state(observed) == BlockWord.allocated else { return .none }
            let (frozen, current) = word.compareExchange(
                expected: observed, desired: BlockWord.with(state: BlockWord.frozen, observed),
                ordering: .sequentiallyConsistent)
            if frozen {
                observed = BlockWord.with(state: BlockWord.frozen, observed)
                break
            }
            observed = current
        }
        func sameBlock(_ other: SharedHeapHandle) -> Bool {
            other.offsetUnits == handle.offsetUnits && other.generation == handle.generation
        }
        // 2. Live participants with an unsettled announcement on the block.
        var gone: [Int] = []
        for q in 0..<layout.participantCapacity where q != p {
            let state = participantState(q).load(ordering: .sequentiallyConsistent)
            switch ParticipantWord.state(state) {
            case ParticipantWord.dead:
                gone.append(q)
                continue
            case ParticipantWord.alive: break
            default: continue  // Free or leaving: holds nothing.
            }
            var spins = 0
            while let (other, op) = readPending(q), sameBlock(other), op == .adopt || op == .free {
                spins += 1
                if spins & 1023 == 0,
                    !ProcessIdentity.isAlive(pid: ParticipantWord.pid(state), startTime: ParticipantWord.startTime(state))
                {
                    gone.append(q)  // Its process is gone: it will never settle; settle it as the dead.
                    break
                }
                if spins > 200_000 {
                    // Ordering: releasing; the count is unchanged, nothing was decided.
                    word.store(BlockWord.with(state: BlockWord.allocated, observed), ordering: .releasing)
                    throw SharedHeapError(
                        .recoveryIncomplete, "participant \(p): participant \(q) is in the middle of an operation on "
                            + "\(handle) and did not finish it; call recover again later")
                }
                if spins > 64 { sched_yield() }
            }
        }
        // 3. The dead (and the alive whose process is gone): "not committed".
        for q in gone {
            if let (other, op) = readPending(q), sameBlock(other) {
                if op == .adopt { reannounce(q, .adoptWaiting, other) }
                if op == .free { reannounce(q, .freeWaiting, other) }
            }
        }
        // 4. Count.
        let holders = listedHolders(offsetUnits: handle.offsetUnits, generation: handle.generation, except: p).count
        // 5. Thaw. Ordering: releasing, pairs with the acquiring loads of waiting adopters and freers.
        if holders > 0 {
            word.store(
                BlockWord.make(generation: handle.generation, count: holders, state: BlockWord.allocated),
                ordering: .releasing)
            return .dropped
        }
        if layout.isExtent(location.page) {
            // An extent is free from this store on (nothing to push).
            word.store(
                BlockWord.make(generation: handle.generation, count: 0, state: BlockWord.free), ordering: .releasing)
            return .released
        }
        word.store(BlockWord.make(generation: handle.generation, count: p, state: BlockWord.freeing), ordering: .releasing)
        pushRemote(location.page, location.slot)
        return .released
    }

    /// Runs `body` holding the heap's recovery lock (header word `SharedHeapHeaderField.recoveryLock`: the
    /// recovering process's pid and start time, 0 when free). A lock whose holder's process is gone is taken over.
    ///
    /// - Throws: `.recoveryIncomplete` when another live process (or another thread of this one) is recovering.
    internal func withRecoveryLock<T>(_ body: () throws(SharedHeapError) -> T) throws(SharedHeapError) -> T {
        let lock = word64(SharedHeapHeaderField.recoveryLock)
        let pid = getpid()
        let me = ParticipantWord.make(
            state: ParticipantWord.alive, pid: pid, startTime: ProcessIdentity.startTime(of: pid) ?? 0)
        var expected: UInt64 = 0
        while true {
            // Ordering: acquiring and releasing: what the previous recoverer wrote is visible to us.
            let (taken, current) = lock.compareExchange(
                expected: expected, desired: me, successOrdering: .acquiringAndReleasing, failureOrdering: .acquiring)
            if taken { break }
            if current != 0, current != me,
                !ProcessIdentity.isAlive(pid: ParticipantWord.pid(current), startTime: ParticipantWord.startTime(current))
            {
                expected = current  // Its recoverer died: take it over.
                continue
            }
            if current == 0 {
                expected = 0
                continue
            }
            throw SharedHeapError(
                .recoveryIncomplete, "another recovery of this heap is in progress (process "
                    + "\(ParticipantWord.pid(current))); call recover again later")
        }
        defer {
            // Ordering: releasing: the next recoverer sees everything this one wrote.
            lock.store(0, ordering: .releasing)
        }
        return try body()
    }
}
