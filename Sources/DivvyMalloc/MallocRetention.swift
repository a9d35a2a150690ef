// Retention: which freed memory the heap keeps committed for reuse, and when it gives memory back to the kernel.
//
// Two kinds of freed memory can stay resident:
// - *retained segments*: segments of freed huge runs. They are free in the segment bitmap and marked in a second
//   bitmap, `retained`, one bit per segment. Any new run (huge block, new page segment) prefers them, so a freed
//   25 MiB block serves the next 5 MiB one without a page fault and the rest stays retained for the one after.
// - *pool pages*: empty pages in the global pools keep what their blocks touched (`extent`) until purged.
//
// Policy (all under the global lock, on slow paths only: huge malloc/free, a page entering or leaving a pool):
// - Nothing is given back when it is freed, as long as the retained total stays under the *budget*:
//   max(DIVVY_MALLOC_RETAIN (128 MiB), DIVVY_MALLOC_RETAIN_PERCENT (0) % of the segments in use). Past it, retained
//   memory is purged down to three quarters of the budget (so a program at the budget does not purge on every
//   free). The percentage is off by default: segments in use overstate memory in use (a 50 KiB block holds a 1 MiB
//   page), so a share of them let RSS grow well past mimalloc's in the many-thread workload.
// - *Decay*: time is cut into epochs of DIVVY_MALLOC_DECAY_MS (1000 ms, read with CLOCK_MONOTONIC_COARSE). The
//   lowest retained total seen during an epoch is memory nobody reused for a whole epoch: at the epoch's end that
//   much is purged. So retained memory that is not reused within one to two epochs goes back to the kernel, and a
//   program whose use falls keeps no more than it reused recently. (With no slow path at all, no epoch ends: a
//   program that frees and then only sleeps keeps its retention, as jemalloc does without its background thread.)
// - Purging uses MADV_DONTNEED for pool pages and a fresh `mmap(MAP_FIXED | MAP_NORESERVE)` over retained segments
//   (which also merges back the mappings `mremap` moves split). Not MADV_FREE: its pages stay in RSS until the kernel
//   is short of memory, so RSS (and the tests) could not see the policy, and its pages may come back with old or zero
//   contents, so a purged segment would still need zeroing by calloc. What MADV_FREE saves — faults on memory reused
//   soon after it was freed — the budget already saves by not purging that memory.
// - Victims are detached while they are purged (pages unlinked from their pool, segments marked in use), so the
//   system calls run without the lock and nobody can take memory that is being purged.
import Atomics
import CDivvyMalloc

#if canImport(Glibc)
    import Glibc
#endif

/// Where retention keeps its state in the global metadata (`GlobalRef`'s layout lists them too).
///
///     768   lastRetained[16]: per range, an upper bound of the highest retained segment's index + 1
///     896   retainedSegments, 904 retainedPageBytes (pool pages' bytes past `M.poolResidentBytes`)
///     912   floorBytes, 920 percent, 928 decayMs, 936 epochEnd (coarse ms), 944 epochLow (retained bytes)
///     952   purgedBytes (so far), 960 movedBlocks (huge reallocs done with mremap), 968 poolTails[3]
///     65536 retained bitmaps[16], 2048 bytes each (one bit per segment of each range)
extension GlobalRef {
    private enum Offset {
        static var lastRetained: Int { 768 }
        static var retainedSegments: Int { 896 }
        static var retainedPageBytes: Int { 904 }
        static var floorBytes: Int { 912 }
        static var percent: Int { 920 }
        static var decayMs: Int { 928 }
        static var epochEnd: Int { 936 }
        static var epochLow: Int { 944 }
        static var purgedBytes: Int { 952 }
        static var movedBlocks: Int { 960 }
        static var poolTails: Int { 968 }
        static var retainedBitmaps: Int { 65536 }
    }

    private func field(_ offset: Int) -> Int { raw.load(fromByteOffset: offset, as: Int.self) }
    private func setField(_ offset: Int, _ value: Int) { raw.storeBytes(of: value, toByteOffset: offset, as: Int.self) }

    /// Where thread heap structures start in the metadata segment (after the retained bitmaps).
    static var heapStructuresOffset: Int { Offset.retainedBitmaps + GlobalRef.maximumRanges * 2048 }

    /// Reads the knobs and starts the first epoch (from `create`).
    func initializeRetention() {
        var floor = 0
        var percent = 0
        var decay = 0
        divvy_malloc_retention_knobs(&floor, &percent, &decay)
        setField(Offset.floorBytes, floor)
        setField(Offset.percent, percent)
        setField(Offset.decayMs, decay)
        setField(Offset.epochEnd, divvy_malloc_coarse_ms() + decay)
    }

    /// Bytes of freed memory kept committed (retained segments and pool pages' touched bytes).
    var retainedBytes: Int {
        (field(Offset.retainedSegments) << M.segmentShift) &+ field(Offset.retainedPageBytes)
    }
    /// Bytes given back to the kernel by the policy so far, and huge blocks moved with mremap (statistics).
    var purgedBytes: Int { field(Offset.purgedBytes) }
    /// Bytes of freed huge runs kept committed (segments that are free and retained).
    var retainedSegmentBytes: Int { field(Offset.retainedSegments) << M.segmentShift }
    var movedBlocks: Int { field(Offset.movedBlocks) }

    /// The most that may stay retained now: the floor, or a share of the memory in use if that is more.
    var retentionBudget: Int {
        Swift.max(field(Offset.floorBytes), (segmentsInUse << M.segmentShift) / 100 &* field(Offset.percent))
    }

    private func lastRetained(_ r: Int) -> Int { field(Offset.lastRetained + r * 8) }
    private func setLastRetained(_ r: Int, _ value: Int) { setField(Offset.lastRetained + r * 8, value) }
    func retainedBitmap(_ r: Int) -> UnsafeMutablePointer<UInt64> {
        (raw + Offset.retainedBitmaps + r * 2048).assumingMemoryBound(to: UInt64.self)
    }

    /// A retained total went down: the epoch's low-water mark follows.
    private func noteDecrease() {
        let total = retainedBytes
        if total < field(Offset.epochLow) { setField(Offset.epochLow, total) }
    }

    // MARK: Segments (caller holds the lock)

    /// Finds and marks in use a run of `count` free segments of range `r`. With `preferRetained`, the window holding
    /// the most retained segments wins (ties: the lowest); without, the first window with the fewest (a run about to
    /// be overwritten by mremap would only throw retained pages away). Returns the run and how many of its segments
    /// were retained (their bits are cleared: the caller now owns whatever they hold).
    func takeSegments(_ count: Int, inRange r: Int, preferRetained: Bool) -> (SegmentRef, retained: Int)? {
        let used = bitmap(r)
        let kept = retainedBitmap(r)
        let total = rangeSegmentCount(r)
        // Past this index no segment is retained: the first fitting window there has none.
        let last = lastRetained(r)
        var index = 0
        var runStart = 0
        var window = 0  // retained segments in [index - count, index) while the run is at least `count` long
        var best = -1
        var bestRetained = 0
        while index < total {
            let usedWord = used[index >> 6]
            if usedWord == ~0 {
                index = (index | 63) + 1
                runStart = index
                window = 0
                continue
            }
            let bit: UInt64 = 1 << UInt64(index & 63)
            if usedWord & bit != 0 {
                index += 1
                runStart = index
                window = 0
                continue
            }
            if kept[index >> 6] & bit != 0 { window += 1 }
            let leaving = index - count
            if leaving >= runStart, kept[leaving >> 6] & (1 << UInt64(leaving & 63)) != 0 { window -= 1 }
            index += 1
            guard index - runStart >= count else { continue }
            let start = index - count
            if best < 0 || (preferRetained ? window > bestRetained : window < bestRetained) {
                best = start
                bestRetained = window
            }
            // Nothing better can follow: a fully retained window (or a clean one, for mremap), or only clean
            // segments ahead.
            if preferRetained ? (window == count || start >= last) : window == 0 { break }
        }
        guard best >= 0 else { return nil }
        for i in best..<(best + count) {
            used[i >> 6] |= 1 << UInt64(i & 63)
            kept[i >> 6] &= ~(1 << UInt64(i & 63))
        }
        segmentsInUse += count
        if bestRetained > 0 {
            setField(Offset.retainedSegments, field(Offset.retainedSegments) - bestRetained)
            noteDecrease()
        }
        return (SegmentRef(rangeBase(r) + (best << M.segmentShift)), bestRetained)
    }

    /// Segments `start..<start + count` of range `r` were just marked in use by growing a run in place: those that
    /// were retained are not any more.
    func claimRetained(_ r: Int, from start: Int, count: Int) {
        let kept = retainedBitmap(r)
        var claimed = 0
        for i in start..<(start + count) where kept[i >> 6] & (1 << UInt64(i & 63)) != 0 {
            kept[i >> 6] &= ~(1 << UInt64(i & 63))
            claimed += 1
        }
        guard claimed > 0 else { return }
        setField(Offset.retainedSegments, field(Offset.retainedSegments) - claimed)
        noteDecrease()
    }

    /// Frees a run of segments whose memory is resident (a freed huge block, or a shrunk one's tail): they become
    /// free and retained, then the policy runs.
    func retainSegments(_ segment: SegmentRef, count: Int) {
        guard let (r, index) = locate(segment) else { return }
        let used = bitmap(r)
        let kept = retainedBitmap(r)
        for i in index..<(index + count) {
            used[i >> 6] &= ~(1 << UInt64(i & 63))
            kept[i >> 6] |= 1 << UInt64(i & 63)
        }
        segmentsInUse -= count
        if index + count > lastRetained(r) { setLastRetained(r, index + count) }
        setField(Offset.retainedSegments, field(Offset.retainedSegments) + count)
        enforceRetention()
    }

    // MARK: Pool pages (caller holds the lock)

    /// A pool page's bytes past what every pool page keeps (`M.poolResidentBytes`): what retention counts for it.
    func poolExtraBytes(_ page: PageRef) -> Int {
        let extent = Swift.min((Swift.min(page.extent, page.areaSize) + 4095) & ~4095, page.areaSize)
        return Swift.max(0, extent - M.poolResidentBytes)
    }

    func poolTail(_ kind: Int) -> PageRef? {
        raw.load(fromByteOffset: Offset.poolTails + kind * 8, as: UnsafeMutableRawPointer?.self).map(PageRef.init)
    }
    func setPoolTail(_ kind: Int, _ page: PageRef?) {
        raw.storeBytes(of: page?.raw, toByteOffset: Offset.poolTails + kind * 8, as: UnsafeMutableRawPointer?.self)
    }

    /// A page entered a pool with `extra` bytes of touched memory: count them, and run the policy.
    func retainPoolPage(extra: Int) {
        guard extra > 0 else {
            tickRetention()
            return
        }
        setField(Offset.retainedPageBytes, field(Offset.retainedPageBytes) + extra)
        enforceRetention()
    }

    /// A page left a pool (reused): its bytes are no longer retained.
    func reusePoolPage(extra: Int) {
        guard extra > 0 else { return }
        setField(Offset.retainedPageBytes, field(Offset.retainedPageBytes) - extra)
        noteDecrease()
    }

    // MARK: The policy (caller holds the lock)

    /// Something was freed into retention: purge past the budget, and end the epoch if its time is up.
    func enforceRetention() {
        let budget = retentionBudget
        if retainedBytes > budget { purge(retainedBytes - budget / 4 * 3) }
        tickRetention()
    }

    /// Ends the epoch when its time is up: what stayed retained all through it (its low-water mark) is purged.
    func tickRetention() {
        let decay = field(Offset.decayMs)
        guard decay > 0 else { return }
        let now = divvy_malloc_coarse_ms()
        let end = field(Offset.epochEnd)
        guard now >= end else { return }
        // A whole epoch went by without a slow path: all of it was idle.
        let idle = now >= end + decay ? retainedBytes : field(Offset.epochLow)
        setField(Offset.epochEnd, now + decay)
        if idle > 0 { purge(idle) }
        setField(Offset.epochLow, retainedBytes)
    }

    /// Gives about `bytes` of retained memory back to the kernel: retained segments from the top of the highest
    /// range down (the search for new runs prefers low addresses, so the top is what is least likely reused next),
    /// then the pages at the old ends of the pools. The victims are detached, the lock is released for the system
    /// calls, and they come back clean.
    func purge(_ bytes: Int) {
        var remaining = bytes
        var segmentVictims: SegmentRef? = nil
        var r = rangeCount - 1
        while r >= 0, remaining > 0 {
            let used = bitmap(r)
            let kept = retainedBitmap(r)
            var i = lastRetained(r) - 1
            var runEnd = -1  // one past the last segment of the retained run being collected, or -1
            while true {
                if i >= 0, remaining > 0, kept[i >> 6] & (1 << UInt64(i & 63)) != 0 {
                    if runEnd < 0 { runEnd = i + 1 }
                    used[i >> 6] |= 1 << UInt64(i & 63)
                    kept[i >> 6] &= ~(1 << UInt64(i & 63))
                    remaining -= M.segmentSize
                } else if runEnd >= 0 {
                    // Segments i + 1 ..< runEnd are one victim; its first segment's header links the victims.
                    let run = SegmentRef(rangeBase(r) + ((i + 1) << M.segmentShift))
                    run.segments = runEnd - (i + 1)
                    run.cacheNext = segmentVictims
                    segmentVictims = run
                    setField(Offset.retainedSegments, field(Offset.retainedSegments) - run.segments)
                    runEnd = -1
                }
                if i < 0 || (remaining <= 0 && runEnd < 0) { break }
                i -= 1
            }
            if remaining > 0 { setLastRetained(r, 0) }  // every retained segment of the range went
            r -= 1
        }
        var pageVictims: PageRef? = nil
        for kind in 0..<M.kindCount where remaining > 0 {
            var cursor = poolTail(kind)
            while let page = cursor, remaining > 0 {
                cursor = page.prev
                let extra = poolExtraBytes(page)
                guard extra > 0 else { continue }
                unlinkPoolPage(page)
                page.next = pageVictims
                pageVictims = page
                setField(Offset.retainedPageBytes, field(Offset.retainedPageBytes) - extra)
                remaining -= extra
            }
        }
        noteDecrease()
        guard segmentVictims != nil || pageVictims != nil else { return }
        var purged = 0
        divvy_malloc_unlock()
        var segmentCursor = segmentVictims
        while let run = segmentCursor {
            segmentCursor = run.cacheNext
            let count = run.segments
            let length = count << M.segmentShift
            // Safe: the run is marked in use, so only this thread touches it. A fresh mapping over it drops its
            // pages (zero-filled when touched again) and, unlike MADV_DONTNEED, also replaces a mapping that
            // `mremap` moved in, so the reservation's mappings merge back into one.
            let mapped = mmap(
                run.raw, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
            if mapped == UnsafeMutableRawPointer(bitPattern: -1) { _ = madvise(run.raw, length, MADV_DONTNEED) }
            purged += length
            // The header went with the pages: write the link back for the release below (which zeroes it again,
            // so a clean segment reads as zero; this costs one resident 4 KiB page per victim).
            run.segments = count
            run.cacheNext = segmentCursor
        }
        var pageCursor = pageVictims
        while let page = pageCursor {
            pageCursor = page.next
            purged += trimPoolPage(page)
        }
        divvy_malloc_lock()
        segmentCursor = segmentVictims
        while let run = segmentCursor {
            segmentCursor = run.cacheNext
            let count = run.segments
            run.segments = 0
            run.cacheNext = nil
            if let (r, index) = locate(run) {
                let used = bitmap(r)
                for i in index..<(index + count) { used[i >> 6] &= ~(1 << UInt64(i & 63)) }
            }
        }
        pageCursor = pageVictims
        while let page = pageCursor {
            pageCursor = page.next
            appendPoolPage(page)
        }
        setField(Offset.purgedBytes, field(Offset.purgedBytes) + purged)
    }

    /// Gives back what an empty (detached) page touched past its first `M.poolResidentBytes` (MADV_DONTNEED:
    /// zero-filled when touched again). Returns the bytes given back. Called without the lock.
    private func trimPoolPage(_ page: PageRef) -> Int {
        let keep = M.poolResidentBytes
        let extent = Swift.min((Swift.min(page.extent, page.areaSize) + 4095) & ~4095, page.areaSize)
        guard extent > keep else { return 0 }
        // Safe: `start` is 4 KiB-aligned and the range is whole pages inside the page's area; nobody else touches a
        // detached empty page.
        _ = madvise(page.start + keep, extent - keep, MADV_DONTNEED)
        page.extent = keep
        return extent - keep
    }

    /// Takes `page` out of its pool (a doubly linked list: `pushPool` and `popPool` work at the head, where the most
    /// recently freed pages are; purging works from the tail, where the oldest are).
    private func unlinkPoolPage(_ page: PageRef) {
        let kind = Int(page.kind)
        if let prev = page.prev { prev.next = page.next } else { setPoolHead(kind, page.next) }
        if let next = page.next { next.prev = page.prev } else { setPoolTail(kind, page.prev) }
        page.next = nil
        page.prev = nil
    }

    /// Puts a purged page back at the tail of its pool (it is the coldest: reused last).
    private func appendPoolPage(_ page: PageRef) {
        let kind = Int(page.kind)
        page.next = nil
        page.prev = poolTail(kind)
        if let tail = poolTail(kind) { tail.next = page } else { setPoolHead(kind, page) }
        setPoolTail(kind, page)
    }

    // MARK: Huge blocks: shrinking in place and moving with mremap

    /// Shrinks a huge block in place to `size` bytes after `start` when that frees at least half of its run: the
    /// tail segments are retained (they are resident) like a freed run's. False when it would free too little.
    func hugeShrink(_ page: PageRef, to size: Int) -> Bool {
        let segment = page.segment
        let offset = page.start - segment.raw
        let count = segment.segments
        let newCount = Swift.max(1, (offset + size + M.segmentSize - 1) >> M.segmentShift)
        guard newCount * 2 <= count else { return false }
        divvy_malloc_lock()
        defer { divvy_malloc_unlock() }
        segment.segments = newCount
        page.areaSize = (newCount << M.segmentShift) - offset
        page.blockSize = page.areaSize
        retainSegments(SegmentRef(segment.raw + (newCount << M.segmentShift)), count: count - newCount)
        return true
    }

    /// Moves a huge block to a new run big enough for `size` bytes after `start`, without copying: a fresh run is
    /// taken from the segment bitmap (inside the heap's reservation, so `free` finds it like any other), the old
    /// run's pages — header, descriptor and data — are moved onto it with `mremap(MREMAP_FIXED)`, and the hole that
    /// leaves in the reservation is mapped again (fresh, `MAP_NORESERVE`) and freed as clean segments. The bytes
    /// past the old run are whatever the new run held (realloc leaves them unspecified). Nil when no run is free or
    /// the kernel refuses (the caller copies then). Only the caller's thread touches a huge block, so nothing else
    /// can see it move.
    func hugeMove(_ page: PageRef, to size: Int) -> UnsafeMutableRawPointer? {
        let segment = page.segment
        let offset = page.start - segment.raw
        guard size <= Int.max - offset - M.segmentSize else { return nil }
        let count = segment.segments
        let newCount = (offset + size + M.segmentSize - 1) >> M.segmentShift
        guard newCount > count else { return nil }
        divvy_malloc_lock()
        let taken = takeSegmentsAnywhere(newCount, preferRetained: false)
        divvy_malloc_unlock()
        guard let (target, _) = taken else { return nil }
        let length = count << M.segmentShift
        guard divvy_malloc_move_pages(segment.raw, length, target.raw) != nil else {
            divvy_malloc_lock()
            retainSegments(target, count: newCount)
            divvy_malloc_unlock()
            return nil
        }
        let remapped = mmap(
            segment.raw, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
        // The moved header and descriptor now describe the new run.
        target.segments = newCount
        let moved = target.page(0)
        moved.start = target.raw + offset
        moved.areaSize = (newCount << M.segmentShift) - offset
        moved.blockSize = moved.areaSize
        divvy_malloc_lock()
        // If the hole could not be mapped again its addresses are unusable: leave its segments marked in use.
        if remapped != UnsafeMutableRawPointer(bitPattern: -1) { releaseSegments(segment, count: count) }
        setField(Offset.movedBlocks, field(Offset.movedBlocks) + 1)
        divvy_malloc_unlock()
        return moved.start
    }
}
