import Atomics
import Divvy
import SystemPackage

// Moving pages between the pools and owners: claim (with the lazy commit), adopt, reclaim, release.
extension SharedHeap {
    // MARK: Pages

    /// Pops a page from the pool and dedicates it to `sizeClass` for participant `p`; nil when the pool is empty.
    ///
    /// Crash discipline: the pool is a set of *hints*; the page's state word is the authority. `p` records
    /// "claiming" in its page-in-hand word before popping and the page right after, claims the page with one
    /// compare-and-exchange of its state word (pooled → owned), initializes the owner-only fields and only then
    /// clears the record. Recovery finds a page popped or half-initialized by a dead `p` in that word and puts it
    /// back. A popped page whose state is no longer pooled is a stale hint (see `releasePage`) and is dropped.
    ///
    /// In a lazy heap, a page that never left the pool before (epoch 0) is committed — data, block words, links —
    /// after it is popped and before it is claimed: the claim (which makes the epoch non-zero) then proves the page
    /// backed, so later claims skip the commit. A commit that fails (/dev/shm or memory full) pushes the page back
    /// while it is still pooled — the state popped-not-claimed that the page-in-hand record already covers:
    /// recovery of a death before the push finds the page pooled and unlisted and pushes it, after the push finds
    /// it listed — and returns nil with the reason in `commitFailure`; the allocation then ends in `heapFull`.
    internal func claimPooledPage(sizeClass: Int, for p: Int) -> Int? {
        var ignored: SharedHeapError?
        return claimPooledPage(sizeClass: sizeClass, for: p, commitFailure: &ignored)
    }

    /// `claimPooledPage(sizeClass:for:)`, reporting a failed lazy commit in `commitFailure`.
    internal func claimPooledPage(sizeClass: Int, for p: Int, commitFailure: inout SharedHeapError?) -> Int? {
        // Ordering: relaxed, for the page-in-hand word throughout: it is read only by a recoverer after `p`
        // died (its death orders everything before it).
        pageInHand(p).store(PageInHand.claimingNoPage, ordering: .relaxed)
        defer { pageInHand(p).store(0, ordering: .relaxed) }
        while true {
            let large = layout.isLarge(sizeClass)
            guard let stack = large ? spanPool : pool, let index = stack.pop() else { return nil }
            let page = Int(index) + (large ? layout.smallPageCount : 0)
            pageInHand(p).store(PageInHand.claiming | UInt64(page), ordering: .relaxed)
            var old = pageState(page).load(ordering: .acquiring)
            guard PageWord.kind(old) == PageWord.pooled else { continue }  // A stale hint: someone owns it.
            if lazyCommit, PageWord.epoch(old) == 0, let error = commitPage(page) {
                try? pushPooled(page)  // Still pooled; .doubleFree cannot happen: we popped it.
                commitFailure = SharedHeapError(
                    .heapFull, "the heap could not commit memory for page \(page) (\(layout.pageBytes(page)) bytes "
                        + "and its metadata) in \(region.describing): \(error); the backing store (/dev/shm, or "
                        + "memory) is full: free blocks or memory")
                return nil
            }
            var epoch = (PageWord.epoch(old) &+ 1) & 0xFFFF
            if epoch == 0 { epoch = 1 }
            // Ordering: acquiring and releasing: we see the last owner's fields; readers that acquire the state
            // word see our claim. Handles of the new epoch exist only after our first allocation, which follows
            // the field initialization below (and publishes it with the block word's releasing store).
            let (claimed, current) = pageState(page).compareExchange(
                expected: old,
                desired: PageWord.make(kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: epoch),
                successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            // Only the popper claims a page, so a failure means the page was not pooled (a stale hint): drop it.
            guard claimed else { old = current; continue }
            // Owner-only fields: nobody else writes them while the page is ours.
            localHead(page).store(endOfSlots, ordering: .relaxed)
            localCount(page).store(0, ordering: .relaxed)
            carved(page).store(0, ordering: .relaxed)
            live(page).store(0, ordering: .relaxed)
            slotCount(page).store(UInt32(layout.pageBytes(page) / layout.classSizes[sizeClass]), ordering: .relaxed)
            // Ordering: relaxed, published with the slot count (owner-only fields change hands with the page).
            epochStart(page).store(pageGeneration(page).load(ordering: .relaxed), ordering: .relaxed)
            remoteHead(page).store(UInt64(endOfSlots), ordering: .relaxed)
            collecting(page).store(0, ordering: .relaxed)
            return page
        }
    }

    /// Takes over an orphan page of `sizeClass`; nil when there is none.
    internal func adoptOrphanPage(sizeClass: Int, for p: Int) -> Int? {
        for page in 0..<layout.pageCount {
            let word = pageState(page).load(ordering: .relaxed)
            guard PageWord.kind(word) == PageWord.orphan, PageWord.sizeClass(word) == sizeClass else { continue }
            let desired = PageWord.make(
                kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: PageWord.epoch(word))
            // Ordering: acquiring on success: the previous owner's owner-only fields (stored before its releasing
            // store of the orphan state) are now ours to read and write.
            let (won, _) = pageState(page).compareExchange(
                expected: word, desired: desired, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if won { return page }
        }
        return nil
    }

    /// Takes over every orphan page of another class than `sizeClass`, collects its remote frees, and gives it
    /// back to the pool when nothing in it is live (else makes it an orphan again). Returns how many pages went
    /// back to the pool.
    internal func reclaimOrphanPages(except sizeClass: Int, for p: Int) -> Int {
        var reclaimed = 0
        for page in 0..<layout.pageCount {
            let word = pageState(page).load(ordering: .relaxed)
            guard PageWord.kind(word) == PageWord.orphan, PageWord.sizeClass(word) != sizeClass else { continue }
            let mine = PageWord.make(
                kind: PageWord.owned, sizeClass: PageWord.sizeClass(word), owner: p, epoch: PageWord.epoch(word))
            // Ordering: acquiring on success, as in `adoptOrphanPage`.
            let (won, _) = pageState(page).compareExchange(
                expected: word, desired: mine, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            guard won else { continue }
            collect(page)
            if live(page).load(ordering: .relaxed) == 0 {
                releasePage(page, for: p)
                reclaimed += 1
            } else {
                // Ordering: releasing, so the next adopter sees our updates of the owner-only fields.
                pageState(page).store(word, ordering: .releasing)
            }
        }
        return reclaimed
    }

    /// Gives an owned page with no live block back to the pool; `p` is the participant doing it (the owner, or
    /// the participant a recoverer acts for), whose page-in-hand word records the move until it is complete.
    ///
    /// The state word goes pooled first, then the page is pushed. A push that finds the page already in the pool
    /// (a stale hint left by a recovery race, now valid again) is fine: the pool is a set of hints.
    internal func releasePage(_ page: Int, for p: Int) {
        // Ordering: relaxed, as in `claimPooledPage`.
        pageInHand(p).store(PageInHand.releasing | UInt64(page), ordering: .relaxed)
        let word = pageState(page).load(ordering: .relaxed)
        // Ordering: releasing; the next claimer's pop of the pool (acquiring) sees the page as pooled.
        pageState(page).store(
            PageWord.make(kind: PageWord.pooled, sizeClass: PageWord.sizeClass(word), owner: 0,
                          epoch: PageWord.epoch(word)), ordering: .releasing)
        try? pushPooled(page)  // .doubleFree: already in the pool as a hint.
        pageInHand(p).store(0, ordering: .relaxed)
    }

    /// Pushes a page onto its tier's pool (exact double-push detection).
    internal func pushPooled(_ page: Int) throws(AllocationError) {
        if layout.isSpan(page), let spanPool {
            try spanPool.push(UInt32(page - layout.smallPageCount))
        } else {
            try pool.push(UInt32(page))
        }
    }

    /// The test hook's injected failure (ENOSPC), when one is due.
    internal func lazyCommitFailure() -> Errno? {
        guard _failingCommits.load(ordering: .relaxed) > 0 else { return nil }
        return _failingCommits.loadThenWrappingDecrement(ordering: .relaxed) > 0 ? .noSpace : nil
    }

    /// Lazy heaps: commits a page's data, block words and links (idempotent); nil when done, else the error.
    internal func commitPage(_ page: Int) -> Errno? {
        if let injected = lazyCommitFailure() { return injected }
        let g = region.geometry
        let slots = layout.isSpan(page) ? layout.spanMaxSlots : layout.maxSlots
        let first = layout.slotBase(page)
        let words = g.metadataOffset + layout.blockWordsOffset + first * 8
        let links = g.metadataOffset + layout.linksOffset + first * 4
        return region.commitInPlace(offset: words, length: slots * 8)
            ?? region.commitInPlace(offset: links, length: slots * 4)
            ?? region.commitInPlace(offset: g.dataOffset + layout.pageBase(page), length: layout.pageBytes(page))
    }
}
