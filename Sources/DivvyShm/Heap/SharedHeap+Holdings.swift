import Atomics

// The records that make holdings recoverable: held-list entries and the pending operation, both two words (a
// handle's generation and offset do not fit one), written and read so that a reader never pairs one record's
// generation with another's offset. Field tables: `ParticipantRecordField` (pending) and the note under it (held).
extension SharedHeap {
    /// Bit 63 of a held entry's generation word: the entry is in use.
    @usableFromInline static let heldInUse: UInt64 = 1 << 63

    /// Records `handle` in entry `index` of `p`'s held list: the offset word, then the generation word, which
    /// commits the entry.
    @inlinable @inline(__always)
    internal func writeHeld(_ p: Int, _ index: Int, _ handle: SharedHeapHandle) {
        // Ordering: relaxed; published by the releasing store of the generation word below.
        heldOffset(p, index).store(handle.offsetUnits, ordering: .relaxed)
        // Ordering: releasing, so a reader that sees the generation word (acquiring) sees the offset word too.
        heldGeneration(p, index).store(handle.generation | Self.heldInUse, ordering: .releasing)
    }

    /// Empties entry `index` of `p`'s held list (its generation word is the commit).
    @inlinable @inline(__always)
    internal func clearHeld(_ p: Int, _ index: Int) {
        // Ordering: releasing: the entry goes after the block word's commit that ended the holding.
        heldGeneration(p, index).store(0, ordering: .releasing)
    }

    /// Entry `index` of `p`'s held list, or nil when empty: a consistent pair even while `p` rewrites the entry.
    ///
    /// The generation word is read before and after the offset word; when both reads agree, the offset belongs to
    /// that generation word's entry — or to a later entry with the same generation word, i.e. to a pair that was in
    /// the list at some instant between the two reads.
    internal func readHeld(_ p: Int, _ index: Int) -> (offsetUnits: UInt64, generation: UInt64)? {
        while true {
            // Ordering: acquiring, pairs with `writeHeld`'s releasing store: the offset word is at least as new.
            let first = heldGeneration(p, index).load(ordering: .acquiring)
            guard first != 0 else { return nil }
            // Ordering: acquiring, so the second generation load cannot move before it.
            let offset = heldOffset(p, index).load(ordering: .acquiring)
            if heldGeneration(p, index).load(ordering: .acquiring) == first {
                return (offset, first & BlockWord.maximumGeneration)
            }
        }
    }

    /// Announces `op` on `handle` in `p`'s pending words: the generation word, then the offset word (the commit).
    @inlinable @inline(__always)
    internal func announce(_ p: Int, _ op: PendingOperation, _ handle: SharedHeapHandle) {
        // Ordering: relaxed; published by the releasing store of the offset word.
        pendingGeneration(p).store(handle.generation | UInt64(op.rawValue) << 56, ordering: .relaxed)
        // Ordering: releasing, so that the announcement is visible no later than the block word it announces
        // (the block word's commit comes after it in program order and is itself releasing).
        pendingOffset(p).store(handle.offsetUnits &+ 1, ordering: .releasing)
    }

    /// Changes only the operation of `p`'s announcement (to or from a waiting state).
    @inlinable
    internal func reannounce(_ p: Int, _ op: PendingOperation, _ handle: SharedHeapHandle) {
        // Ordering: sequentially consistent: a recoverer that froze the block and then reads this word must see
        // the change once our failed compare-and-exchange saw the freeze (a store-load pattern across two words).
        pendingGeneration(p).store(handle.generation | UInt64(op.rawValue) << 56, ordering: .sequentiallyConsistent)
    }

    /// Ends `p`'s announcement.
    @inlinable @inline(__always)
    internal func clearPending(_ p: Int) {
        // Ordering: releasing: the announcement ends after the records it covered (block word, held entry).
        pendingOffset(p).store(0, ordering: .releasing)
    }

    /// `p`'s announced operation, or nil: a consistent triple even while `p` announces another (as `readHeld`).
    internal func readPending(_ p: Int) -> (handle: SharedHeapHandle, op: PendingOperation?)? {
        while true {
            // Ordering: acquiring, pairs with `announce`'s releasing store of the offset word.
            let first = pendingOffset(p).load(ordering: .sequentiallyConsistent)
            guard first != 0 else { return nil }
            let generation = pendingGeneration(p).load(ordering: .sequentiallyConsistent)
            if pendingOffset(p).load(ordering: .sequentiallyConsistent) == first {
                let handle = SharedHeapHandle(
                    heapID: heapID, dataOffset: Int(truncatingIfNeeded: (first &- 1) << 4),
                    generation: generation & BlockWord.maximumGeneration)
                return (handle, PendingOperation(rawValue: UInt8(truncatingIfNeeded: generation >> 56)))
            }
        }
    }

    /// The participants holding `handle`'s block per their held lists (in slot order): the truth that block words'
    /// counts cache. Lists of slots that are free or whose list is not backed are skipped.
    ///
    /// - Complexity: O(participant capacity × held capacity).
    internal func listedHolders(offsetUnits: UInt64, generation: UInt64, except excluded: Int = -1) -> [Int] {
        var holders: [Int] = []
        for q in 0..<layout.participantCapacity where q != excluded && heldListIsCommitted(q) {
            let state = ParticipantWord.state(participantState(q).load(ordering: .acquiring))
            guard state == ParticipantWord.alive || state == ParticipantWord.dead else { continue }
            for index in 0..<layout.heldCapacity {
                // A cheap filter first: most entries are for other blocks.
                let word = heldGeneration(q, index).load(ordering: .relaxed)
                guard word & BlockWord.maximumGeneration == generation, word != 0 else { continue }
                if let entry = readHeld(q, index), entry.generation == generation, entry.offsetUnits == offsetUnits {
                    holders.append(q)
                    break
                }
            }
        }
        return holders
    }
}
