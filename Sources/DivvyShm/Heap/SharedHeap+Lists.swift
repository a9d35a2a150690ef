import Atomics
import Divvy
import SystemPackage

// A page's free lists: the owner's local list and the shared remote-free stack, and `collect` between them.
extension SharedHeap {
    /// Moves the page's whole remote-free stack onto its local list (owner only). Returns how many blocks came
    /// back.
    ///
    /// Crash discipline (see `SharedHeap.recover(participant:)`): the chain being moved is always recorded in the
    /// page's *collecting* word (slot + 1, 0 = none), stored before the stack is taken and advanced past each
    /// block before the block is linked into the local list, so a recoverer can finish a collect its owner died
    /// in. Before taking the stack the owner reads the page's *suspect* word (a handle recovery could not prove
    /// was pushed): if that block is still *freeing* and was not in the chain taken, it never reached the stack,
    /// and the owner frees it here.
    ///
    /// - Parameter _stopAt: test hook: stop (as if the owner died) after stage `_stopAt` — 0: the collecting word
    ///   is stored, the stack not taken; 1: the stack is taken; `1 + n`: `n` blocks moved.
    @discardableResult
    internal func collect(_ page: Int, _stopAt: Int = Int.max) -> Int {
        // Ordering: acquiring, pairs with the recoverer's releasing store of the suspect. Read *before* taking
        // the stack: the dead freer's push (if it happened) happened before the recoverer's store, so the
        // exchange below, coming after this load, sees it: "not in the chain" then proves "never pushed".
        let suspectRaw = suspect(page).load(ordering: .acquiring)
        let head = remoteHead(page)
        // Ordering: relaxed; a first guess, validated by the compare-and-exchange.
        var observed = head.load(ordering: .relaxed)
        var slot = UInt32(truncatingIfNeeded: observed)
        while slot != endOfSlots {
            // Ordering: relaxed; read only by a recoverer after this process died (death orders everything).
            collecting(page).store(slot &+ 1, ordering: .relaxed)
            if _stopAt == 0 { return 0 }
            // Ordering: acquiring, pairs with the releasing push of every block on the stack: we see their
            // words and links, and everything their holders wrote into the blocks.
            let (taken, current) = head.compareExchange(
                expected: observed, desired: UInt64(endOfSlots), successOrdering: .acquiring,
                failureOrdering: .relaxed)
            if taken { break }
            observed = current
            slot = UInt32(truncatingIfNeeded: observed)
        }
        if _stopAt == 1 { return 0 }
        // The suspect names a slot of this page and the generation it was released with.
        let suspectSlot = SuspectWord.slot(suspectRaw)
        var sawSuspect = false
        var count = 0
        while slot != endOfSlots {
            let s = Int(slot)
            let next = link(page, s).load(ordering: .relaxed)
            let word = blockWord(page, s).load(ordering: .relaxed)
            if s == suspectSlot { sawSuspect = true }
            // Ordering: relaxed; the slot is on no list now and only the owner touches freed slots.
            blockWord(page, s).store(
                BlockWord.make(generation: BlockWord.generation(word), count: 0, state: BlockWord.free),
                ordering: .relaxed)
            // Advance the record before linking the slot into the local list (which overwrites its link).
            collecting(page).store(next &+ 1, ordering: .relaxed)
            pushLocal(page, s)
            count += 1
            slot = next
            if count + 1 == _stopAt { return count }
        }
        collecting(page).store(0, ordering: .relaxed)
        if count > 0 {
            live(page).store(live(page).load(ordering: .relaxed) - UInt32(count), ordering: .relaxed)
        }
        if suspectRaw != 0 {
            let generation = SuspectWord.generation(suspectRaw)
            if let slot = suspectSlot, slot < Int(carved(page).load(ordering: .relaxed)), !sawSuspect {
                let word = blockWord(page, slot).load(ordering: .relaxed)
                if BlockWord.state(word) == BlockWord.freeing, BlockWord.generation(word) == generation {
                    // Never pushed: its freer died between the commit and the push. Ours now.
                    blockWord(page, slot).store(
                        BlockWord.make(generation: generation, count: 0, state: BlockWord.free), ordering: .relaxed)
                    pushLocal(page, slot)
                    live(page).store(live(page).load(ordering: .relaxed) - 1, ordering: .relaxed)
                    count += 1
                }
            }
            // Ordering: releasing, pairs with the recoverer's acquiring compare-and-exchange of the suspect word.
            suspect(page).store(0, ordering: .releasing)
        }
        return count
    }

    /// Owner only: puts a free slot on the local list.
    @inlinable @inline(__always)
    internal func pushLocal(_ page: Int, _ slot: Int) {
        // Ordering: relaxed everywhere; these fields are the owner's, read by others only for diagnostics.
        link(page, slot).store(localHead(page).load(ordering: .relaxed), ordering: .relaxed)
        localHead(page).store(UInt32(slot), ordering: .relaxed)
        localCount(page).store(localCount(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
    }

    /// Owner only: takes a slot from the local list, or carves a new one; nil when the page is full.
    /// Returns the slot and whether it was carved fresh in this epoch.
    @inlinable @inline(__always)
    internal func popLocal(_ page: Int) -> (slot: Int, fresh: Bool)? {
        let head = localHead(page).load(ordering: .relaxed)
        if head != endOfSlots {
            localHead(page).store(link(page, Int(head)).load(ordering: .relaxed), ordering: .relaxed)
            localCount(page).store(localCount(page).load(ordering: .relaxed) - 1, ordering: .relaxed)
            live(page).store(live(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
            return (Int(head), false)
        }
        let next = carved(page).load(ordering: .relaxed)
        guard next < slotCount(page).load(ordering: .relaxed) else { return nil }
        carved(page).store(next + 1, ordering: .relaxed)
        live(page).store(live(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
        return (Int(next), true)
    }

    /// Pushes a freed slot onto its page's remote-free stack (anyone).
    @inlinable
    internal func pushRemote(_ page: Int, _ slot: Int) {
        let head = remoteHead(page)
        // Ordering: relaxed; a first guess, validated by the compare-and-exchange.
        var observed = head.load(ordering: .relaxed)
        while true {
            // Ordering: relaxed; the slot is ours until the exchange below publishes it.
            link(page, slot).store(UInt32(truncatingIfNeeded: observed), ordering: .relaxed)
            // Ordering: releasing on success: the owner's acquiring exchange in `collect` sees the link, the
            // block word and the freed block's contents.
            let (done, current) = head.compareExchange(
                expected: observed, desired: UInt64(slot), successOrdering: .releasing, failureOrdering: .relaxed)
            if done { return }
            observed = current
        }
    }
}
