import Atomics
import Divvy

/// One participant slot of a `SharedHeap`, as `SharedHeap.participantStatus(_:)` read it.
public struct SharedHeapParticipantStatus: Hashable, Sendable, CustomStringConvertible {
    /// The state of a participant slot.
    public enum State: Hashable, Sendable {
        /// Nobody has joined into the slot (or its participant left, or was recovered).
        case free
        /// A participant is joined (its process may have died since: see `SharedHeap.deadParticipants()`).
        case alive
        /// A recovery started and has not finished (`SharedHeap.recover(participant:)` resumes it).
        case dead
        /// The participant left with `leave(releasingSlot: false)`: it holds and owns nothing, and the slot waits
        /// for `SharedHeap.releaseSlot(participant:pid:)` (or for recovery once its process has exited).
        case leaving
    }

    /// The slot (also the participant's bit in block holder masks).
    public var index: Int
    /// The slot's state.
    public var state: State
    /// The process id recorded at join (0 for a slot never used).
    public var pid: Int32
    /// The start time of that process recorded at join, in clock ticks since boot (field 22 of /proc/PID/stat,
    /// low 40 bits); 0 when unknown. With the pid it names the process even after the pid is reused.
    public var processStartTime: UInt64 = 0
    /// The pages the participant owns (allocates from) now, in units of `SharedHeap.pageSize` (a span page counts
    /// `spanPageSize / pageSize`).
    public var ownedPages: Int
    /// The most pages it may own at once (same units); nil = no limit.
    public var pageAllowance: Int?
    /// The blocks it holds (non-empty entries of its held list).
    public var heldCount: Int

    /// One line.
    public var description: String {
        "participant \(index): \(state), pid \(pid), \(ownedPages) pages owned (allowance "
            + "\(pageAllowance.map(String.init) ?? "unlimited")), \(heldCount) blocks held"
    }
}

/// A summary of a `SharedHeap`'s pages and blocks, from `SharedHeap.usage()`.
public struct SharedHeapUsage: Hashable, Sendable, CustomStringConvertible {
    /// One size class's share of the heap.
    public struct SizeClass: Hashable, Sendable {
        /// The class's block size in bytes.
        public var blockSize: Int
        /// Pages dedicated to the class (owned or orphan): small pages for a small class, span pages for a large one.
        public var pages: Int
        /// The size of the class's pages (`pageSize`, or `spanPageSize` for a large class).
        public var pageBytes: Int
        /// Blocks allocated now (held by at least one participant). A block freed by another participant counts
        /// as free at once, even before the page's owner collects it.
        public var blocksInUse: Int
        /// The other blocks of the class's pages (on local free lists, or never handed out).
        public var blocksFree: Int
    }

    /// Heap pages in the data area, of both tiers.
    public var totalPages = 0
    /// Pages (of both tiers) in the pools, owned by a participant, and orphaned (owner gone, blocks still live).
    public var freePages = 0, ownedPages = 0, orphanPages = 0
    /// Owned or orphan pages with no block in use (an owner keeps an emptied current page for reuse; an orphan
    /// whose blocks were all freed waits for an allocator to reclaim it). Part of `ownedPages + orphanPages`.
    public var emptyPages = 0
    /// The small page size in bytes.
    public var pageSize = 0
    /// The span tier: its page size (0 when there is none), its pages, and how many of them are in its pool.
    public var spanPageSize = 0, spanPages = 0, freeSpanPages = 0
    /// Per size class, in the order of `SharedHeap.sizeClasses`.
    public var sizeClasses: [SizeClass] = []

    /// Bytes in blocks in use (allocated now), summed over the classes.
    /// The extent area: its unit (the page size) and units; extents allocated, their units, the free units and the
    /// longest free run (free extents next to each other count as one run: the next allocation merges them).
    public var extentUnitSize = 0, extentUnits = 0
    public var extentsInUse = 0, extentUnitsInUse = 0
    public var extentUnitsFree = 0, largestFreeExtentUnits = 0

    /// Bytes of the blocks allocated now: class blocks at their class's size, extents at their whole units.
    public var bytesInUse: Int {
        sizeClasses.reduce(0) { $0 + $1.blocksInUse * $1.blockSize } + extentUnitsInUse * extentUnitSize
    }

    /// A multi-line table: pages, then one line per class that has pages.
    public var description: String {
        var text = "pages: \(totalPages) total, \(freePages) free, \(ownedPages) owned, \(orphanPages) orphan, "
            + "\(emptyPages) of those empty "
            + "(\(pageSize) bytes each"
            + (spanPages > 0 ? "; \(spanPages) of them span pages of \(spanPageSize) bytes, \(freeSpanPages) free" : "")
            + "); \(bytesInUse) bytes in use"
            + (extentUnits > 0
                ? "\n  extents: \(extentsInUse) in use (\(extentUnitsInUse) of \(extentUnits) units of "
                    + "\(extentUnitSize) bytes), \(extentUnitsFree) units free, largest free run "
                    + "\(largestFreeExtentUnits)"
                : "")
        for c in sizeClasses where c.pages > 0 {
            text += "\n  \(c.blockSize) B: \(c.pages) pages, \(c.blocksInUse) blocks in use, \(c.blocksFree) free"
        }
        return text
    }
}

extension SharedHeap {
    /// Sets how many pages participant `participant` may own at once (nil = no limit): a quota for a daemon's
    /// clients. Callable from any process that maps the heap, while the participant runs. Pages are counted in
    /// units of `pageSize`: a span page (large blocks) counts `spanPageSize / pageSize`, so the allowance bounds
    /// bytes (`pages × pageSize`) whatever the tier.
    ///
    /// The allowance limits *new* pages only: a participant already owning more keeps them (nothing is taken
    /// away); its next allocation that needs a new page throws `.pageAllowanceExhausted` until it owns fewer pages
    /// than the allowance (pages go back when all their blocks are freed). `join` resets a slot's allowance to
    /// no limit, and so do `leave` and `recover`. Allowances of `UInt32.max` pages or more mean no limit.
    ///
    /// - Throws: `.outOfRange` (no such slot), `.participantLeft` (the slot is free: nobody to limit),
    ///   `.invalidConfiguration` (a negative allowance). Nothing changes then.
    /// - Complexity: O(1).
    public func setPageAllowance(participant p: Int, pages: Int?) throws(SharedHeapError) {
        guard p >= 0, p < layout.participantCapacity else {
            throw SharedHeapError(.outOfRange, "participant \(p) does not exist (capacity \(layout.participantCapacity))")
        }
        if let pages, pages < 0 {
            throw SharedHeapError(.invalidConfiguration, "a page allowance of \(pages) pages is negative")
        }
        guard region.access == .readWrite else {
            throw SharedHeapError(.invalidConfiguration, "the region is mapped read-only")
        }
        // Ordering: acquiring, so that the join that made the slot alive (and reset its allowance) happens before
        // our store.
        guard ParticipantWord.state(participantState(p).load(ordering: .acquiring)) == ParticipantWord.alive else {
            throw SharedHeapError(.participantLeft, "participant slot \(p) is not joined: nobody to set an allowance for")
        }
        let value = pages.map { UInt32(clamping: $0) } ?? unlimitedPages
        // Ordering: relaxed; the participant reads it with a relaxed load when it needs a page.
        pageAllowance(p).store(value, ordering: .relaxed)
    }

    /// The state of participant slot `p`, or nil when there is no such slot.
    ///
    /// Read from shared memory without stopping the participant: each field is exact as of its own read.
    ///
    /// - Complexity: O(held capacity).
    public func participantStatus(_ p: Int) -> SharedHeapParticipantStatus? {
        guard p >= 0, p < layout.participantCapacity else { return nil }
        // Ordering: acquiring, pairs with the releasing stores of join/leave/recover.
        let word = participantState(p).load(ordering: .acquiring)
        let state: SharedHeapParticipantStatus.State = switch ParticipantWord.state(word) {
        case ParticipantWord.alive: .alive
        case ParticipantWord.dead: .dead
        case ParticipantWord.leaving: .leaving
        default: .free
        }
        var heldCount = 0
        // (A lazy heap's slot never joined has no backed held list: nothing to count, and reading would back it.)
        for index in 0..<(heldListIsCommitted(p) ? layout.heldCapacity(of: p) : 0)
        where heldGeneration(p, index).load(ordering: .relaxed) != 0 {
            heldCount += 1
        }
        let allowance = pageAllowance(p).load(ordering: .relaxed)
        return SharedHeapParticipantStatus(
            index: p, state: state, pid: ParticipantWord.pid(word), processStartTime: ParticipantWord.startTime(word),
            ownedPages: Int(ownedPageCount(p).load(ordering: .relaxed)),
            pageAllowance: allowance == unlimitedPages ? nil : Int(allowance), heldCount: heldCount)
    }

    /// Counts pages by state and, per size class, pages and blocks in use or free; read-only.
    ///
    /// A block is *in use* when its block word says allocated: held by at least one participant. A block freed by
    /// another participant onto a page's remote-free stack, and not yet collected by the page's owner (or never:
    /// an orphan page has no owner to collect), is free, although the page's live counter still includes it: such
    /// pages' block words are read one by one, other owned pages are taken from their live counter. So
    /// `bytesInUse` equals the bytes of the blocks held at that moment, whatever died or left, up to operations
    /// in flight while it reads (each page is read at its own instant). Pages that are owned or orphaned while
    /// holding no block in use are counted in `emptyPages`.
    ///
    /// - Complexity: O(pages used so far + size classes), plus O(carved slots) of each orphan page and each page
    ///   with uncollected remote frees; allocates only the result.
    public func usage() -> SharedHeapUsage {
        var result = SharedHeapUsage()
        result.totalPages = layout.pageCount
        result.pageSize = layout.pageSize
        result.spanPageSize = layout.spanPageSize
        result.spanPages = layout.spanPageCount
        result.sizeClasses = layout.classSizes.indices.map {
            SharedHeapUsage.SizeClass(
                blockSize: layout.classSizes[$0], pages: 0,
                pageBytes: layout.isLarge($0) ? layout.spanPageSize : layout.pageSize, blocksInUse: 0, blocksFree: 0)
        }
        // The extent area (heads only: in a lazy heap every head is committed).
        result.extentUnitSize = layout.pageSize
        result.extentUnits = layout.extentUnits
        if layout.extentUnits > 0 {
            var run = 0
            for record in extentRecords().records {
                if BlockWord.state(record.word) & 1 == BlockWord.allocated {
                    result.extentsInUse += 1
                    result.extentUnitsInUse += record.units
                    run = 0
                } else {
                    result.extentUnitsFree += record.units
                    run += record.units
                    result.largestFreeExtentUnits = max(result.largestFreeExtentUnits, run)
                }
            }
        }
        // Pages above a tier's bump index never left the pool: free, and not read (a lazy heap has not committed
        // their descriptors).
        let readable = readablePages()
        result.freePages = layout.pageCount - readable[0].count - readable[1].count
        result.freeSpanPages = layout.spanPageCount - readable[1].count
        for page in readable.joined() {
            // Ordering: relaxed throughout: a statistic (see above).
            let word = pageState(page).load(ordering: .relaxed)
            let kind = PageWord.kind(word)
            switch kind {
            case PageWord.pooled:
                result.freePages += 1
                if layout.isSpan(page) { result.freeSpanPages += 1 }
                continue
            case PageWord.owned: result.ownedPages += 1
            case PageWord.orphan: result.orphanPages += 1
            default: continue
            }
            let sizeClass = PageWord.sizeClass(word)
            guard sizeClass < layout.classSizes.count else { continue }
            let slots = layout.pageBytes(page) / layout.classSizes[sizeClass]
            let inUse: Int
            let quiet = UInt32(truncatingIfNeeded: remoteHead(page).load(ordering: .relaxed)) == endOfSlots
                && collecting(page).load(ordering: .relaxed) == 0 && suspect(page).load(ordering: .relaxed) == 0
            if kind == PageWord.owned && quiet {
                // Nothing freed remotely and waiting: the owner's live counter is the number of allocated blocks.
                // Clamped: racing reads may see a live count from the page's previous use.
                inUse = min(slots, Int(live(page).load(ordering: .relaxed)))
            } else {
                inUse = allocatedBlocks(page, slots: slots)
            }
            if inUse == 0 { result.emptyPages += 1 }
            result.sizeClasses[sizeClass].pages += 1
            result.sizeClasses[sizeClass].blocksInUse += inUse
            result.sizeClasses[sizeClass].blocksFree += slots - inUse
        }
        return result
    }

    /// The page's carved slots whose block word says allocated.
    private func allocatedBlocks(_ page: Int, slots: Int) -> Int {
        let carvedSlots = min(slots, Int(carved(page).load(ordering: .relaxed)))
        var count = 0
        for slot in 0..<carvedSlots where BlockWord.state(blockWord(page, slot).load(ordering: .relaxed)) & 1
            == BlockWord.allocated
        {
            count += 1
        }
        return count
    }
}
