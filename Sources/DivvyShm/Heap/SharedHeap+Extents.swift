import Atomics
import Divvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The extent area: blocks larger than the largest class, cut from the end of the data area in whole `pageSize`
// units (layout version 10).
//
// | word | where | who writes | ordering |
// |---|---|---|---|
// | block word of unit `u` | block-word array, slot `extentSlotBase + u` | allocator (free → allocated, under the lock), holders (adopt, free: the same compare-and-exchange as any block), recoverer | as any block word (`ParticipantRecordField`) |
// | length word of unit `u` | `extentLengthsOffset + 8u` | allocator, under the lock | releasing stores, acquiring loads |
// | lock | header 168 | allocators: participant index + 1, 0 = free | acquiring-and-releasing take, releasing release |
// | serial | header 176 | allocator, under the lock | releasing store before the block word it numbers |
// | frontier | header 184 | allocator, under the lock (lazy heaps) | releasing store after the commit, acquiring loads in `locate` |
//
// An *extent* is a run of units whose first unit (its *head*) has a length word giving the run's length in units;
// the heads are found by walking from unit 0 by lengths, and the walk covers every unit exactly once. An extent is
// allocated while its head's block word says allocated (or frozen) and free otherwise; the block word's generation
// is the area's serial when the extent was allocated, so it is unique among every allocation the area ever made,
// whatever splits and merges happened since: a freed extent's handle is never accepted again, whichever extent
// later starts at its offset. A length word of a unit that is not a head (it was absorbed by a merge, or never was
// a head) is left as it was; it is never reached by the walk, and a handle naming that unit fails the block-word
// check (a unit that stops being a head was free, so its block word is not allocated, and nobody but an allocator
// changes a free block word).
//
// Concurrency and crashes. Adopt and free are one compare-and-exchange of the head's block word, as for any block;
// the last free stores *free* (nothing to push: the extent is free from that store on). Only allocators write
// length words, the serial and the frontier, one at a time under the lock, and every one of their steps is a
// single store after which the area is consistent, so a dead allocator leaves nothing to replay (a refinement of
// the redo journal docs/heap-v2.md planned: no step needs more than one word):
//
// 1. merge: while scanning, a free extent followed by free extents gets its length raised (one store); the
//    absorbed heads become interior units;
// 2. serial := generation (a death after this burns the generation, harmlessly);
// 3. split: the remainder's length is written at its future head, still an interior unit (invisible);
// 4. the head's length := the allocation's units: the split's commit;
// 5. the head's block word := allocated, generation, one holder: the allocation's commit (announced first in the
//    participant's pending words, as every allocation; recovery treats it as any allocation);
// 6. the lock is released.
//
// A death between 4 and 5 leaves a free extent (merged again later); after 5 recovery drops the holding like any
// other. The lock names the allocating participant; it is taken over when that participant's process is gone
// (pid and start time) or its slot is marked dead, and a recovery of the participant releases it.
extension SharedHeap {
    // MARK: Words

    /// The length word of extent unit `unit`: the extent's length in units when the unit is a head.
    @inlinable @inline(__always) internal func extentLength(_ unit: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.extentLengthsOffset &+ unit &* 8)
    }
    /// The block word of extent unit `unit` (meaningful for heads).
    @inlinable @inline(__always) internal func extentWord(_ unit: Int) -> UnsafeAtomic<UInt64> {
        blockWord(layout.pageCount &+ unit, 0)
    }
    internal var extentLock: UnsafeAtomic<UInt64> { word64(SharedHeapHeaderField.extentLock) }
    internal var extentSerial: UnsafeAtomic<UInt64> { word64(SharedHeapHeaderField.extentSerial) }
    internal var extentFrontier: UnsafeAtomic<UInt64> { word64(SharedHeapHeaderField.extentFrontier) }

    // MARK: Handles

    /// `locate` for a data offset in the extent area (`unit`, `within` the unit): the extent's head, or an error.
    @usableFromInline @inline(never)
    internal func locateExtent(
        _ handle: SharedHeapHandle, unit: Int, within: Int
    ) throws(SharedHeapError) -> Location {
        guard within == 0 else {
            throw SharedHeapError(
                .misaligned, "handle \(handle) points at data offset \(handle.dataOffset), inside a unit of the "
                    + "extent area, not at the start of an extent")
        }
        // A lazy heap has not committed the metadata of units at or above the frontier (never part of an
        // allocation): don't read them. Ordering: acquiring, pairs with the allocator's releasing store.
        if lazyCommit, UInt64(unit) >= extentFrontier.load(ordering: .acquiring) {
            throw SharedHeapError(.staleHandle, "handle \(handle) is stale: no extent was ever allocated there")
        }
        guard handle.generation != 0 else {
            throw SharedHeapError(.staleHandle, "handle \(handle) is stale: generation 0 names no allocation")
        }
        // Ordering: acquiring; for an allocated extent the length is stable (only allocators write lengths, of
        // free extents), and the block word check that follows decides.
        let units = Int(truncatingIfNeeded: extentLength(unit).load(ordering: .acquiring))
        guard units > 0, units <= layout.extentUnits &- unit else {
            throw SharedHeapError(
                .misaligned, "handle \(handle) points at data offset \(handle.dataOffset), inside an extent of the "
                    + "extent area, not at its start")
        }
        return Location(page: layout.pageCount &+ unit, slot: 0, generation: handle.generation,
                        blockSize: units &* layout.pageSize)
    }

    // MARK: The lock

    /// Takes the extent area's lock for participant `p`: waits while a live participant holds it, takes it over
    /// from one whose process is gone or whose slot is marked dead.
    internal func lockExtents(for p: Int) {
        let mine = UInt64(p + 1)
        var expected: UInt64 = 0
        var spins = 0
        while true {
            // Ordering: acquiring and releasing: we see everything the previous holder wrote under the lock.
            let (taken, current) = extentLock.compareExchange(
                expected: expected, desired: mine, successOrdering: .acquiringAndReleasing,
                failureOrdering: .acquiring)
            if taken { return }
            if current == 0 {
                expected = 0
                continue
            }
            spins += 1
            if spins & 63 == 0, extentLockHolderIsGone(current) {
                expected = current  // Its holder died: take it over (nothing to repair, see above).
                continue
            }
            expected = 0
            if spins > 16 { sched_yield() }
        }
    }

    /// Whether the lock value `word` (participant + 1) names a participant that will never release it.
    internal func extentLockHolderIsGone(_ word: UInt64) -> Bool {
        let q = Int(word) - 1
        guard q >= 0, q < layout.participantCapacity else { return true }
        // Ordering: acquiring, as in `deadParticipants`.
        let state = participantState(q).load(ordering: .acquiring)
        guard ParticipantWord.state(state) == ParticipantWord.alive else { return true }
        return !ProcessIdentity.isAlive(pid: ParticipantWord.pid(state), startTime: ParticipantWord.startTime(state))
    }

    /// Releases the lock if `p` holds it.
    internal func unlockExtents(for p: Int) {
        // Ordering: releasing: the next holder sees our lengths, serial and block word.
        _ = extentLock.compareExchange(
            expected: UInt64(p + 1), desired: 0, successOrdering: .releasing, failureOrdering: .relaxed)
    }

    // MARK: Allocation steps (under the lock)

    /// The first free extent of at least `units` units, merging each free extent with the free extents after it
    /// on the way (step 1); nil when there is none. Under the lock.
    internal func findFreeExtent(units: Int) -> (unit: Int, length: Int)? {
        let n = layout.extentUnits
        var u = 0
        while u < n {
            // Ordering: acquiring (our predecessors' stores were released by the lock, but a reader-friendly
            // pairing costs nothing on x86 and arm64's ldar).
            let length = Int(truncatingIfNeeded: extentLength(u).load(ordering: .acquiring))
            guard length >= 1, length <= n - u else { return nil }  // Overwritten metadata: serve nothing.
            guard BlockWord.state(extentWord(u).load(ordering: .acquiring)) == BlockWord.free else {
                u += length
                continue
            }
            var merged = length
            while u + merged < n {
                let next = u + merged
                let nextLength = Int(truncatingIfNeeded: extentLength(next).load(ordering: .acquiring))
                guard nextLength >= 1, nextLength <= n - next,
                    BlockWord.state(extentWord(next).load(ordering: .acquiring)) == BlockWord.free
                else { break }
                merged += nextLength
            }
            if merged != length {
                // The merge's commit. Ordering: releasing, as every length store.
                extentLength(u).store(UInt64(merged), ordering: .releasing)
            }
            if merged >= units { return (u, merged) }
            u += merged
        }
        return nil
    }

    /// Lazy heaps: commits the data of `units` units from `unit`, and the metadata of every unit up to the
    /// remainder's head (`unit + units`), raising the frontier. Nil when done, else the error. Under the lock.
    internal func commitExtent(unit: Int, units: Int) -> Errno? {
        if let injected = lazyCommitFailure() { return injected }
        let g = region.geometry
        let frontier = Int(extentFrontier.load(ordering: .relaxed))
        let end = min(layout.extentUnits, unit + units + 1)
        if end > frontier {
            let words = g.metadataOffset + layout.blockWordsOffset + (layout.extentSlotBase + frontier) * 8
            let lengths = g.metadataOffset + layout.extentLengthsOffset + frontier * 8
            if let error = region.commitInPlace(offset: words, length: (end - frontier) * 8)
                ?? region.commitInPlace(offset: lengths, length: (end - frontier) * 8)
            {
                return error
            }
        }
        if let error = region.commitInPlace(
            offset: g.dataOffset + layout.extentDataOffset + unit * layout.pageSize, length: units * layout.pageSize)
        {
            return error
        }
        if end > frontier {
            // Ordering: releasing: a `locate` that sees the new frontier reads committed words.
            extentFrontier.store(UInt64(end), ordering: .releasing)
        }
        return nil
    }

    // MARK: Reports

    /// One extent as the walk from unit 0 finds it.
    internal struct ExtentRecord {
        var unit: Int
        var units: Int
        var word: UInt64
    }

    /// The extents, walking heads from unit 0 (relaxed reads: exact while quiescent, a consistent-enough snapshot
    /// otherwise). Stops at a length that leaves the area (reported by `verify`).
    internal func extentRecords() -> (records: [ExtentRecord], broken: Int?) {
        var records: [ExtentRecord] = []
        let n = layout.extentUnits
        var u = 0
        while u < n {
            // Ordering: acquiring, pairs with the allocator's releasing length stores (the split's remainder
            // length was stored before the head's).
            let length = Int(truncatingIfNeeded: extentLength(u).load(ordering: .acquiring))
            guard length >= 1, length <= n - u else { return (records, u) }
            records.append(ExtentRecord(unit: u, units: length, word: extentWord(u).load(ordering: .acquiring)))
            u += length
        }
        return (records, nil)
    }
}
