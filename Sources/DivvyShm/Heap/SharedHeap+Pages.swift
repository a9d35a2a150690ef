import Atomics
import Divvy
import SystemPackage

// Moving pages between the pools and owners: claim (with the lazy commit), adopt, reclaim, release.
extension SharedHeap {
    // MARK: Pages

    /// Takes a page from the pool of `sizeClass`'s tier and dedicates it to that class for participant `p`; nil
    /// when the tier has no pooled page (or, with the reason in `commitFailure`, when a lazy heap cannot commit
    /// what the page needs).
    ///
    /// ## The pool, and why a page move is one word
    ///
    /// A tier's pool is not a list. Its pages are: every page at or above the tier's *bump* index (never used:
    /// pooled, epoch 0, descriptor all zeros — in a lazy heap not even committed), and every page that came back,
    /// whose bit is set in the tier's free-page bitmap. The page's state word (`PageWord`) is the only authority:
    /// a page leaves the pool by one compare-and-exchange of it, pooled → owned *by `p`*. Nothing else is part of
    /// the move: the bump index and the bitmap are hints that are put right by whoever finds them stale, so there
    /// is no state "taken from the pool but not yet claimed", no record of a page in hand, and a recoverer learns
    /// everything from the state words (a page owned by a dead participant is its to repair and give back).
    ///
    /// - **Pages that came back first** (`claimReturnedPage`): scan the bitmap from the tier's cursor; for a set
    ///   bit whose page is pooled, claim it by compare-and-exchange, then clear the bit. A set bit on a page that
    ///   is not pooled is transient (its releaser is about to store *pooled*, or its claimer about to clear the
    ///   bit; a dead one's recoverer finishes either) and is skipped, never cleared by a scanner.
    /// - **Then a fresh page** at the bump index `n`: in a lazy heap first commit the descriptor and bitmap word of
    ///   page `n + 1` (so every descriptor at or below the bump index is committed: readers stop there) and the
    ///   page's data, block words and links; then claim page `n` (pooled, epoch 0) by compare-and-exchange, then
    ///   advance the bump index by compare-and-exchange `n → n + 1`. A claimer that finds page `n` already taken
    ///   (its claimer has not advanced the index yet, or died first) advances it for it.
    ///
    /// A commit that fails (/dev/shm or memory full) comes before the claim: the page stays pooled, the bump index
    /// where it was, nothing changed but memory that is now committed; the allocation ends in `heapFull`.
    ///
    /// - Complexity: O(1) for a fresh page; O(bitmap words from the cursor to the first set bit) for one that came
    ///   back.
    internal func claimPooledPage(sizeClass: Int, for p: Int) -> Int? {
        var ignored: SharedHeapError?
        return claimPooledPage(sizeClass: sizeClass, for: p, commitFailure: &ignored)
    }

    /// `claimPooledPage(sizeClass:for:)`, reporting a failed lazy commit in `commitFailure`.
    internal func claimPooledPage(sizeClass: Int, for p: Int, commitFailure: inout SharedHeapError?) -> Int? {
        let tier = layout.isLarge(sizeClass) ? 1 : 0
        let (first, count) = layout.pages(ofTier: tier)
        guard count > 0 else { return nil }
        if let page = claimReturnedPage(tier: tier, sizeClass: sizeClass, for: p) { return page }
        func failed(_ page: Int, _ error: Errno) -> Int? {
            commitFailure = SharedHeapError(
                .heapFull, "the heap could not commit memory for page \(page) (\(layout.pageBytes(page)) bytes "
                    + "and its metadata) in \(region.describing): \(error); the backing store (/dev/shm, or "
                    + "memory) is full: free blocks or memory")
            return nil
        }
        while true {
            // Ordering: acquiring, pairs with the releasing advance: the page below it is claimed and its
            // descriptor (and the one at the index) committed.
            let n = Int(poolBump(tier).load(ordering: .acquiring))
            guard n < count else { break }
            let page = first + n
            if lazyCommit, n + 1 < count, let error = commitPoolEntry(tier: tier, index: n + 1) {
                return failed(page, error)
            }
            let old = pageState(page).load(ordering: .acquiring)
            guard PageWord.kind(old) == PageWord.pooled, PageWord.epoch(old) == 0 else {
                // Taken by a claimer that has not advanced the index yet (or died before it): advance it for it.
                advanceBump(tier: tier, from: n)
                continue
            }
            if lazyCommit, let error = commitPage(page) { return failed(page, error) }
            // Ordering: acquiring and releasing, as for a page that came back (below).
            let (claimed, _) = pageState(page).compareExchange(
                expected: old, desired: PageWord.make(kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: 1),
                successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            guard claimed else { continue }
            initializeClaimedPage(page, sizeClass: sizeClass)
            advanceBump(tier: tier, from: n)
            return page
        }
        // The tier's fresh pages are gone; one came back meanwhile?
        return claimReturnedPage(tier: tier, sizeClass: sizeClass, for: p)
    }

    /// Claims a page whose bit is set in `tier`'s bitmap (see `claimPooledPage`); nil when there is none.
    ///
    /// The cursor is the bitmap word below which no bit is set. Releasers set their bit and then lower the cursor
    /// to that word, bumping its tag; a scanner raises the cursor past words it saw empty with a compare-and-
    /// exchange that expects the tag it started with, so a release anywhere during its scan makes the raise fail
    /// (a scanner never raises it past a word with a bit it could not take: that bit is transient, not stale).
    private func claimReturnedPage(tier: Int, sizeClass: Int, for p: Int) -> Int? {
        let (first, count) = layout.pages(ofTier: tier)
        // Ordering: acquiring, pairs with the releasing lowering by releasers: their bits are visible below.
        let cursor = poolCursor(tier).load(ordering: .acquiring)
        let words = (readablePageCount(tier: tier) + 63) / 64
        let start = Int(cursor & 0xFFFF_FFFF)
        guard start < words else { return nil }
        var busy: Int?  // The first word with a bit we saw and could not take.
        func raiseCursor(to word: Int) {
            guard word > start else { return }
            // Ordering: relaxed on failure (someone released: leave the cursor to them), releasing on success.
            _ = poolCursor(tier).compareExchange(
                expected: cursor, desired: (cursor & ~0xFFFF_FFFF) | UInt64(word), successOrdering: .releasing,
                failureOrdering: .relaxed)
        }
        for w in start..<words {
            // Ordering: acquiring, pairs with the releaser's releasing fetch-or.
            var bits = poolBitmap(tier, w).load(ordering: .acquiring)
            while bits != 0 {
                let bit = bits.trailingZeroBitCount
                bits &= bits &- 1
                let index = w * 64 + bit
                guard index < count else { break }
                let page = first + index
                let old = pageState(page).load(ordering: .acquiring)
                if PageWord.kind(old) == PageWord.pooled, PageWord.epoch(old) != 0 {
                    var epoch = (PageWord.epoch(old) &+ 1) & 0xFFFF
                    if epoch == 0 { epoch = 1 }
                    // The move. Ordering: acquiring and releasing: we see what the releaser wrote before its
                    // releasing store of *pooled*; readers that acquire the state word see our claim. Handles of
                    // the new epoch exist only after our first allocation, which follows the initialization below.
                    let (claimed, _) = pageState(page).compareExchange(
                        expected: old,
                        desired: PageWord.make(kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: epoch),
                        successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
                    if claimed {
                        // The bit is ours to clear: nobody else can pool the page while we own it.
                        _ = poolBitmap(tier, w).loadThenBitwiseAnd(
                            with: ~(UInt64(1) << UInt64(bit)), ordering: .relaxed)
                        raiseCursor(to: busy ?? w)
                        initializeClaimedPage(page, sizeClass: sizeClass)
                        return page
                    }
                }
                if busy == nil { busy = w }
            }
        }
        _poolScanHook?()
        raiseCursor(to: busy ?? words)
        return nil
    }

    /// The owner-only fields of a page just claimed (nobody else writes them while the page is ours).
    private func initializeClaimedPage(_ page: Int, sizeClass: Int) {
        localHead(page).store(endOfSlots, ordering: .relaxed)
        localCount(page).store(0, ordering: .relaxed)
        carved(page).store(0, ordering: .relaxed)
        live(page).store(0, ordering: .relaxed)
        slotCount(page).store(UInt32(layout.pageBytes(page) / layout.classSizes[sizeClass]), ordering: .relaxed)
        // Ordering: relaxed, published with the slot count (owner-only fields change hands with the page).
        epochStart(page).store(pageGeneration(page).load(ordering: .relaxed), ordering: .relaxed)
        remoteHead(page).store(UInt64(endOfSlots), ordering: .relaxed)
        collecting(page).store(0, ordering: .relaxed)
    }

    /// Moves `tier`'s bump index from `n` to `n + 1` if it is still at `n` (the descriptor of page `n + 1` is
    /// committed already: every claimer commits it before it looks at page `n`).
    private func advanceBump(tier: Int, from n: Int) {
        // Ordering: releasing, pairs with the acquiring loads of the index: whoever sees the new index sees page
        // `n` claimed. Failure: someone else advanced it.
        _ = poolBump(tier).compareExchange(
            expected: UInt64(n), desired: UInt64(n + 1), successOrdering: .releasing, failureOrdering: .relaxed)
    }

    /// Lazy heaps: commits the OS pages holding tier page `index`'s descriptor and bitmap word, unless the
    /// previous page's, committed already, share them (one `fallocate` per 64 descriptors and per 32,768 bitmap
    /// bits with 4 KiB OS pages). Nil when done, else the error.
    internal func commitPoolEntry(tier: Int, index: Int) -> Errno? {
        let os = OSAllocator.pageSize
        let base = region.geometry.metadataOffset
        let first = layout.pages(ofTier: tier).first
        let descriptor = base + pageDescriptor(first + index)
        if index == 0 || descriptor / os != (descriptor - SharedHeapLayout.pageStride) / os {
            if let injected = lazyCommitFailure() { return injected }
            if let error = region.commitInPlace(offset: descriptor, length: SharedHeapLayout.pageStride) {
                return error
            }
        }
        let word = base + layout.bitmapOffset(ofTier: tier) + index / 64 * 8
        if index % 64 == 0, index == 0 || word / os != (word - 8) / os {
            if let injected = lazyCommitFailure() { return injected }
            if let error = region.commitInPlace(offset: word, length: 8) { return error }
        }
        return nil
    }

    /// How many of `tier`'s first pages have committed descriptors and bitmap bits, and may be in use: those up
    /// to and including the bump index (the page at the index may be claimed by a claimer that has not advanced
    /// it). Every other page of the tier is pooled with epoch 0 and is never read. Pages are counted from the
    /// tier's first.
    internal func readablePageCount(tier: Int) -> Int {
        let count = layout.pages(ofTier: tier).count
        // Ordering: acquiring, pairs with the releasing advance (the descriptors below are committed and claimed).
        return min(count, Int(poolBump(tier).load(ordering: .acquiring)) + 1)
    }

    /// The pages whose descriptors may be read and that may be in use: per tier, those up to the bump index.
    /// Everything that walks pages (verify, usage, recovery, orphan searches) walks only these.
    internal func readablePages() -> [Range<Int>] {
        (0..<2).map { tier in
            let first = layout.pages(ofTier: tier).first
            return first..<(first + readablePageCount(tier: tier))
        }
    }

    /// Whether `page`'s descriptor is committed (lazy heaps: a page above its tier's bump index never left the
    /// pool, and its descriptor must not be read). For `locate`, on every handle of a lazy heap.
    @inlinable @inline(__always)
    internal func descriptorIsCommitted(_ page: Int) -> Bool {
        let tier = page < layout.smallPageCount ? 0 : 1
        let first = tier == 0 ? 0 : layout.smallPageCount
        // Ordering: acquiring; a handle of the page reached us after its allocation, which followed the advance.
        return UInt64(page &- first) <= poolBump(tier).load(ordering: .acquiring)
    }

    /// Takes over an orphan page of `sizeClass`; nil when there is none.
    internal func adoptOrphanPage(sizeClass: Int, for p: Int) -> Int? {
        for page in readablePages()[layout.isLarge(sizeClass) ? 1 : 0] {
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
        for page in readablePages().joined() {
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

    /// Gives an owned page with no live block back to the pool; `p` is the participant doing it (the owner, or the
    /// participant a recoverer acts for).
    ///
    /// Three steps, while the page is still ours: reset its owner-only fields (so a page owned with nothing carved
    /// is known to hold nothing: see recovery), set its bit in the tier's bitmap and lower the tier's cursor to it,
    /// then store the state word *pooled* (the commit: from here anyone may claim it). A death before the store
    /// leaves the page owned by `p`, and `p`'s recovery gives it back again (every step is idempotent); a set bit on
    /// a page not yet pooled is skipped by claimers, and never cleared but by the page's next claimer.
    internal func releasePage(_ page: Int, for p: Int) {
        let word = pageState(page).load(ordering: .relaxed)
        localHead(page).store(endOfSlots, ordering: .relaxed)
        localCount(page).store(0, ordering: .relaxed)
        carved(page).store(0, ordering: .relaxed)
        live(page).store(0, ordering: .relaxed)
        remoteHead(page).store(UInt64(endOfSlots), ordering: .relaxed)
        collecting(page).store(0, ordering: .relaxed)
        let tier = layout.tier(ofPage: page)
        let index = page - layout.pages(ofTier: tier).first
        // Ordering: releasing, paired with the scanner's acquiring load of the word.
        _ = poolBitmap(tier, index / 64).loadThenBitwiseOr(with: UInt64(1) << UInt64(index % 64), ordering: .releasing)
        lowerCursor(tier: tier, to: index / 64)
        // Ordering: releasing; the next claimer's acquiring compare-and-exchange sees the fields reset above.
        pageState(page).store(
            PageWord.make(kind: PageWord.pooled, sizeClass: PageWord.sizeClass(word), owner: 0,
                          epoch: PageWord.epoch(word)), ordering: .releasing)
    }

    /// Lowers `tier`'s cursor to `word` (if it is above) and bumps its tag, so that a scan that started before
    /// cannot raise the cursor past the bit just set. The tag is 32 bits: a scan would have to overlap 2^32
    /// releases to be fooled.
    private func lowerCursor(tier: Int, to word: Int) {
        let cursor = poolCursor(tier)
        var observed = cursor.load(ordering: .relaxed)
        while true {
            let desired = (((observed >> 32) &+ 1) << 32) | UInt64(min(Int(observed & 0xFFFF_FFFF), word))
            // Ordering: acquiring and releasing: publishes our bit to the scanner that reads this cursor.
            let (done, current) = cursor.compareExchange(
                expected: observed, desired: desired, successOrdering: .acquiringAndReleasing,
                failureOrdering: .relaxed)
            if done { return }
            observed = current
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
