import Atomics
import Divvy

#if canImport(Glibc)
import Glibc
#endif

/// What `SharedHeap.verify()` found: counts, and every violated invariant in words.
///
/// Two reports compare equal when every count and every violation is the same, so "the heap is unchanged" is
/// `heap.verify() == before`.
public struct SharedHeapReport: Hashable, Sendable, CustomStringConvertible {
    /// Pages in the pool, owned by a participant, and orphaned (owner left; blocks still live).
    public var pooledPages = 0, ownedPages = 0, orphanPages = 0
    /// Blocks allocated (held by at least one participant).
    public var allocatedBlocks = 0
    /// Extents of the extent area: allocated (also counted in `allocatedBlocks`) and free (after merging, a run of
    /// free extents counts each until the next allocation merges them).
    public var allocatedExtents = 0, freeExtents = 0
    /// Blocks on local free lists, on remote-free stacks, and carved slots in neither (should be 0).
    public var localFreeBlocks = 0, remoteFreeBlocks = 0
    /// Held-list entries across all participants (the sum of the holders' counts of every block).
    public var holdings = 0
    /// Free-page bitmap bits naming a page that is not pooled: a claim or release in flight (0 when quiescent;
    /// reported as a violation).
    public var stalePoolEntries = 0
    /// Participants alive (joined) and dead.
    public var liveParticipants = 0, deadParticipants = 0
    /// Participants marked alive whose process no longer exists (they need recovery).
    public var participantsWithoutProcess = 0
    /// Participants in the middle of an operation (pending word set): 0 when the heap is quiescent.
    public var operationsInFlight = 0
    /// Every broken invariant, one sentence each.
    public var violations: [String] = []

    /// True when no invariant is violated.
    public var isClean: Bool { violations.isEmpty }

    /// A multi-line summary, then the violations.
    public var description: String {
        var text = "heap: pages \(pooledPages) pooled / \(ownedPages) owned / \(orphanPages) orphan; blocks "
            + "\(allocatedBlocks) allocated (\(allocatedExtents) extents, \(freeExtents) free), "
            + "\(localFreeBlocks) locally free, \(remoteFreeBlocks) remotely freed; "
            + "\(holdings) holdings; participants \(liveParticipants) alive, \(deadParticipants) dead; "
            + "\(operationsInFlight) in flight; "
        text += violations.isEmpty ? "clean" : "\(violations.count) violation(s):"
        for violation in violations.prefix(50) { text += "\n  - " + violation }
        if violations.count > 50 { text += "\n  … and \(violations.count - 50) more" }
        return text
    }
}

extension SharedHeap {
    /// Audits the whole heap without writing anything, and returns what it found.
    ///
    /// Checks: per tier, the pool's bump index is in range, every page below it has left the pool at least once
    /// (epoch ≠ 0), a pooled page below it has its bitmap bit set and a set bit names a pooled page below it, and
    /// no bit is set below the cursor; for each page in use, its local free list and remote-free stack are in bounds, acyclic and disjoint, the local count
    /// matches, listed blocks are free (local) or freeing (remote), every other carved block is allocated, and
    /// the page's live count equals allocated + remotely freed; every allocated block has holders, each a live
    /// participant whose held list names the block exactly once, and its holder count equals the number of held-list
    /// entries naming it; every held-list entry names an allocated block of that generation; no block is frozen
    /// and no operation is in flight.
    ///
    /// Exact while no participant is operating (between phases of a program, or after its threads joined).
    /// Concurrent operations make it report transient states as violations; it never corrupts anything.
    ///
    /// Reads only committed metadata: pages above a tier's bump index never left the pool (they are counted as
    /// pooled without being read), and a lazy heap's held lists of slots never joined are skipped.
    ///
    /// - Complexity: O(metadata in use: participants' held lists, and pages up to the bump indices with their
    ///   carved slots); allocates its bookkeeping.
    public func verify() -> SharedHeapReport {
        var report = SharedHeapReport()
        let l = layout
        func violation(_ text: String) { report.violations.append(text) }

        // Participants and held lists.
        var alive = [Bool](repeating: false, count: l.participantCapacity)
        var heldEntries: [SharedHeapHandle: [Int]] = [:]  // handle → participants naming it
        for p in 0..<l.participantCapacity {
            let state = ParticipantWord.state(participantState(p).load(ordering: .acquiring))
            switch state {
            case ParticipantWord.free: break
            case ParticipantWord.alive:
                report.liveParticipants += 1
                alive[p] = true
                let word = participantState(p).load(ordering: .relaxed)
                let pid = ParticipantWord.pid(word)
                if !ProcessIdentity.isAlive(pid: pid, startTime: ParticipantWord.startTime(word)) {
                    report.participantsWithoutProcess += 1
                    violation("participant \(p) is alive but its process \(pid) is gone: it exited without "
                        + "leave() or was killed; its holdings and pages wait for recovery")
                }
            case ParticipantWord.dead: report.deadParticipants += 1
            case ParticipantWord.leaving: break
            default: violation("participant \(p) has an impossible state \(state)")
            }
            if let (handle, op) = readPending(p) {
                report.operationsInFlight += 1
                violation("participant \(p) is in the middle of an operation (\(op.map { "\($0)" } ?? "unknown")) on "
                    + "\(handle)")
            }
            // A lazy heap's slot never joined has no backed held list (a hole: zeros); reading would back it.
            for index in 0..<(heldListIsCommitted(p) ? l.heldCapacity(of: p) : 0) {
                guard let entry = readHeld(p, index) else { continue }
                let handle = SharedHeapHandle(
                    heapID: heapID, dataOffset: Int(truncatingIfNeeded: entry.offsetUnits << 4),
                    generation: entry.generation)
                if state == ParticipantWord.free || state == ParticipantWord.leaving {
                    violation("free (or leaving) participant slot \(p) still lists \(handle)")
                }
                if heldEntries[handle]?.contains(p) == true {
                    violation("participant \(p) lists \(handle) twice")
                }
                heldEntries[handle, default: []].append(p)
                report.holdings += 1
            }
        }

        // Page pools: per tier, the bump index, the cursor and the bitmap (`pooled` is indexed by page number).
        var pooled = [Bool](repeating: false, count: l.pageCount)
        let readable = readablePages()
        for tier in 0..<2 {
            let (first, count) = l.pages(ofTier: tier)
            guard count > 0 else { continue }
            let bump = Int(poolBump(tier).load(ordering: .acquiring))
            if bump > count { violation("tier \(tier)'s bump index \(bump) is beyond its \(count) pages") }
            let cursor = Int(poolCursor(tier).load(ordering: .acquiring) & 0xFFFF_FFFF)
            let seen = readable[tier].count
            report.pooledPages += count - seen  // Never used: pooled, not read.
            for w in 0..<((seen + 63) / 64) {
                var bits = poolBitmap(tier, w).load(ordering: .acquiring)
                while bits != 0 {
                    let index = w * 64 + bits.trailingZeroBitCount
                    bits &= bits &- 1
                    guard index < seen else {
                        violation("tier \(tier)'s bitmap marks page \(first + index) free, beyond the bump index")
                        continue
                    }
                    pooled[first + index] = true
                    if w < cursor {
                        violation("tier \(tier)'s bitmap marks page \(first + index) free below the cursor (word "
                            + "\(cursor)): no claimer would find it")
                    }
                }
            }
            for index in 0..<seen {
                let word = pageState(first + index).load(ordering: .acquiring)
                if PageWord.epoch(word) == 0 {
                    if index < bump || PageWord.kind(word) != PageWord.pooled {
                        violation("page \(first + index) is below its tier's bump index \(bump) but never left the pool")
                    }
                    if pooled[first + index] {
                        violation("page \(first + index) never left the pool but its bitmap bit is set")
                    }
                    pooled[first + index] = true  // The bump page itself, unused: in the pool.
                }
            }
        }

        // Pages and blocks.
        var allocatedByHandle: [SharedHeapHandle: Int] = [:]  // allocated block's handle → holder count
        var pagesOwnedBy = [Int](repeating: 0, count: 1 << 16)
        for page in readable.joined() {
            let word = pageState(page).load(ordering: .acquiring)
            let kind = PageWord.kind(word)
            if kind == PageWord.pooled {
                report.pooledPages += 1
                if !pooled[page] {
                    violation("page \(page) is marked pooled but its bitmap bit is clear (leaked page: no claimer "
                        + "would find it)")
                }
                continue
            }
            if pooled[page] {
                report.stalePoolEntries += 1
                violation("page \(page) has its bitmap bit set but is marked in use (a claim or release in flight)")
            }
            if kind == PageWord.owned {
                report.ownedPages += 1
                let owner = PageWord.owner(word)
                pagesOwnedBy[owner] += l.pageUnits(page)
                if owner >= l.participantCapacity || !alive[owner] {
                    violation("page \(page) is owned by participant \(owner), which is not alive")
                }
            } else if kind == PageWord.orphan {
                report.orphanPages += 1
            } else {
                violation("page \(page) has an impossible kind \(kind)")
                continue
            }
            let sizeClass = PageWord.sizeClass(word)
            guard sizeClass < l.classSizes.count, l.isLarge(sizeClass) == l.isSpan(page) else {
                violation("page \(page) has size class \(sizeClass), out of range or of the other tier")
                continue
            }
            let blockSize = l.classSizes[sizeClass]
            let slots = Int(slotCount(page).load(ordering: .relaxed))
            let carvedSlots = Int(carved(page).load(ordering: .relaxed))
            guard slots == l.pageBytes(page) / blockSize, carvedSlots <= slots else {
                violation("page \(page): slot count \(slots) / carved \(carvedSlots) do not fit class \(blockSize)")
                continue
            }
            var listed = [UInt8](repeating: 0, count: slots)  // 1 local, 2 remote
            func walk(_ start: UInt32, mark: UInt8, what: String) -> Int {
                var slot = start
                var count = 0
                while slot != endOfSlots {
                    guard Int(slot) < carvedSlots else {
                        violation("page \(page): \(what) reaches slot \(slot), beyond the \(carvedSlots) carved")
                        break
                    }
                    guard listed[Int(slot)] == 0 else {
                        violation("page \(page): \(what) reaches slot \(slot) twice (cycle, or on both lists)")
                        break
                    }
                    listed[Int(slot)] = mark
                    count += 1
                    slot = link(page, Int(slot)).load(ordering: .relaxed)
                }
                return count
            }
            let localListed = walk(localHead(page).load(ordering: .relaxed), mark: 1, what: "the local free list")
            var remoteListed = walk(
                UInt32(truncatingIfNeeded: remoteHead(page).load(ordering: .acquiring)), mark: 2,
                what: "the remote-free stack")
            // A suspect block recovery left to the page's owner (released by a dead participant, maybe never
            // pushed) is on its way back like a remotely freed block until the owner's next collect.
            let suspectRaw = suspect(page).load(ordering: .acquiring)
            if let slot = SuspectWord.slot(suspectRaw), slot < carvedSlots, listed[slot] == 0 {
                let block = blockWord(page, slot).load(ordering: .acquiring)
                if BlockWord.state(block) == BlockWord.freeing,
                    BlockWord.generation(block) == SuspectWord.generation(suspectRaw)
                {
                    listed[slot] = 2
                    remoteListed += 1
                }
            }
            if localListed != Int(localCount(page).load(ordering: .relaxed)) {
                violation("page \(page): local free count \(localCount(page).load(ordering: .relaxed)) but "
                    + "\(localListed) blocks on the list")
            }
            report.localFreeBlocks += localListed
            report.remoteFreeBlocks += remoteListed
            var allocatedHere = 0
            for slot in 0..<carvedSlots {
                let block = blockWord(page, slot).load(ordering: .acquiring)
                let state = BlockWord.state(block)
                switch listed[slot] {
                case 1 where state != BlockWord.free:
                    violation("page \(page) slot \(slot) is on the local free list but its state is \(state)")
                case 2 where state != BlockWord.freeing:
                    violation("page \(page) slot \(slot) is on the remote-free stack but its state is \(state)")
                case 0:
                    let handle = SharedHeapHandle(
                        heapID: heapID, dataOffset: l.pageBase(page) + slot * blockSize,
                        generation: BlockWord.generation(block))
                    if state == BlockWord.frozen {
                        violation("block \(handle) is frozen: a recovery is recounting its holders, or stopped "
                            + "half-way (recover the dead participant again)")
                        allocatedHere += 1
                    } else if state != BlockWord.allocated {
                        violation("page \(page) slot \(slot) is in no free list but not allocated (state \(state); "
                            + "leaked block)")
                    } else if BlockWord.count(block) == 0 {
                        violation("block \(handle) is allocated with no holder")
                    } else {
                        allocatedHere += 1
                        allocatedByHandle[handle] = BlockWord.count(block)
                    }
                default: break
                }
            }
            report.allocatedBlocks += allocatedHere
            let liveCount = Int(live(page).load(ordering: .relaxed))
            if liveCount != allocatedHere + remoteListed {
                violation("page \(page): live count \(liveCount) but \(allocatedHere) allocated + \(remoteListed) "
                    + "remotely freed")
            }
            if localListed + allocatedHere + remoteListed != carvedSlots {
                violation("page \(page): \(carvedSlots) carved slots but \(localListed) free + \(allocatedHere) "
                    + "allocated + \(remoteListed) remotely freed")
            }
        }
        // The extent area: the walk from unit 0 covers every unit; an allocated extent is a block like any other.
        if l.extentUnits > 0 {
            let (records, broken) = extentRecords()
            if let broken {
                violation("extent unit \(broken)'s length word (\(extentLength(broken).load(ordering: .relaxed))) "
                    + "does not fit the extent area of \(l.extentUnits) units: the walk of extents stops there")
            }
            for record in records {
                let state = BlockWord.state(record.word)
                if state == BlockWord.free {
                    report.freeExtents += 1
                    continue
                }
                guard state == BlockWord.allocated else {
                    violation("extent at unit \(record.unit) has block word state \(state) (frozen or freeing) while "
                        + "the heap is quiescent")
                    continue
                }
                report.allocatedExtents += 1
                report.allocatedBlocks += 1
                let handle = SharedHeapHandle(
                    heapID: heapID, dataOffset: l.extentDataOffset + record.unit * l.pageSize,
                    generation: BlockWord.generation(record.word))
                if BlockWord.generation(record.word) > extentSerial.load(ordering: .relaxed) {
                    violation("extent \(handle) has a generation above the extent area's serial")
                }
                allocatedByHandle[handle] = BlockWord.count(record.word)
            }
            let lock = extentLock.load(ordering: .acquiring)
            if lock != 0 {
                violation("the extent area's lock is held by participant \(Int(lock) - 1) while the heap is "
                    + "quiescent" + (extentLockHolderIsGone(lock)
                        ? " (gone: the next allocation or its recovery takes it over)" : ""))
            }
        }

        // Owned-page counters (exact while quiescent; a dead participant's is reset by its recovery).
        for p in 0..<l.participantCapacity {
            let counted = Int(ownedPageCount(p).load(ordering: .relaxed))
            let state = ParticipantWord.state(participantState(p).load(ordering: .relaxed))
            if state == ParticipantWord.alive, counted != pagesOwnedBy[p] {
                violation("participant \(p) records \(counted) owned pages but owns \(pagesOwnedBy[p])")
            } else if state == ParticipantWord.free || state == ParticipantWord.leaving,
                counted != 0 || pageAllowance(p).load(ordering: .relaxed) != unlimitedPages {
                violation("free participant slot \(p) still records \(counted) owned pages or a page allowance")
            }
        }

        // Holder counts versus held lists.
        for (handle, count) in allocatedByHandle {
            let named = heldEntries[handle] ?? []
            if named.count != count {
                violation("block \(handle) counts \(count) holders but \(named.count) held lists name it "
                    + "(participants \(named))")
            }
            for p in named where !alive[p] {
                violation("block \(handle) is held by participant \(p), which is not alive")
            }
        }
        for (handle, participants) in heldEntries where allocatedByHandle[handle] == nil {
            violation("participants \(participants) list \(handle), which is not an allocated block of that generation")
        }
        return report
    }
}
