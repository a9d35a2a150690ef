import Atomics

/// A thread-safe slab, split into a `Local` side that allocates and frees and a `Shared` side that only frees.
///
/// Build one with `SlabBuilder(layout).finish(backing)`, which returns the pair:
///
/// ```swift
/// struct Node { var value: Int; var next: UnsafeMutableRawPointer? }
/// let (local, shared) = try SlabBuilder(Layout.of(Node.self)).limit(64 << 20).finish(SystemAllocator())
/// let block = try local.allocate(Layout.of(Node.self))   // on the owning thread
/// // … hand `block` to another thread; there:
/// shared.deallocate(block, layout: Layout.of(Node.self))  // lock-free, from any thread
/// ```
///
/// The design is the seed crate's and mimalloc's (Leijen, Zorn, de Moura, *Mimalloc: Free List Sharding in
/// Action*, 2019). Memory comes from the backing allocator in refills (sized by the growth policy, rounded up to
/// the page size) that are cut into pages of `pageSize` bytes, aligned to `pageSize`. Every page has two free
/// lists:
///
/// - a **local free list**, touched only by the `Local` side: allocation pops from it and local frees push onto
///   it, with no atomic instruction at all;
/// - a **remote-free stack**: any thread holding a `Shared` pushes the blocks it frees onto it (a Treiber push,
///   one compare-and-exchange). The local side takes the whole stack with one atomic exchange when the page's
///   local list runs dry. Because the local side never pops a single node, only takes everything, the stack has
///   no ABA problem.
///
/// A remote free that makes a page's remote stack non-empty also puts the page on the slab's notification stack
/// (once, guarded by a per-page flag, like mimalloc's delayed-free list), so the local side finds pages with
/// remote frees without scanning every page.
///
/// `Local` is not `Sendable`: one thread owns it at a time (it may be handed over, e.g. through a `Mutex`, but never
/// shared). `Shared` is `Sendable` and may be copied to any number of threads. Memory returns to the backing
/// allocator when the local side and every copy of the shared side are gone; a block freed through `Shared` after
/// `Local` was dropped is safe (it is only recorded; nothing reuses it).
///
/// - Past the builder's byte limit, allocation throws `.limitExceeded` (after first collecting remote frees);
///   blocks already handed out are unaffected.
/// - Pages are never returned to the backing allocator while the slab lives; the footprint only grows.
public enum ConcurrentSlab<Backing: Allocator & Sendable> {}

// Memory ordering, in one place (each operation repeats its part of the argument where it happens).
//
// 1. Remote free → owner. A pusher writes the block's link, then publishes the block with a releasing CAS on the
//    page's remote head. The owner takes the stack with an acquiring exchange. Every push is a read-modify-write,
//    so all pushes since the owner's last exchange form one release sequence, and the owner's exchange
//    synchronizes with each of them: every link in the chain it took is visible. Only the owner ever removes
//    anything, and only by taking the whole stack, so a pusher's CAS can never succeed on a stale head (no ABA).
//
// 2. Owner → next holder. A collected block is handed out again by the owner; the user passes it to other threads
//    with their own synchronization, as with any allocator.
//
// 3. No lost notification. Let T be a push that finds the remote stack empty (a "transition"); its pusher then
//    exchanges the page's `queued` flag to 1 and, if it was 0, pushes the page onto the notification stack. The
//    owner, for each page it takes off the notification stack, stores `queued = 0` (releasing) *before* its
//    exchange E on the remote head (acquiring and releasing). If T reads E's nil, then T (acquiring) synchronizes
//    with E, so the store of 0 happens before the pusher's flag exchange, which therefore reads 0 (or a later 1 by
//    another transition that queues the page itself) and queues the page. If T precedes E, E collects T's block.
//    Either way, a completed remote free is collected by the owner's next `processNotifications`. E must be a
//    read-modify-write even when the stack looks empty: with a plain load in its place, the load may be satisfied
//    before the store of 0 is visible (store→load reordering, allowed even on x86), and a pusher could then see the
//    stale 1 and skip queueing a page whose block nobody collects. (The stress tests found exactly that.)
//
// 4. The notification link. Only the thread that flipped `queued` from 0 to 1 writes the page's link, and it
//    publishes it with a releasing CAS that the owner's acquiring exchange of the notification stack reads. The
//    owner reads the link before storing `queued = 0` (releasing), and the next flipper's exchange is acquiring,
//    so the owner's read happens before the next write of the link.
//
// 5. Teardown. The core (and with it every page) is freed by whichever owner drops the last reference, after ARC's
//    release/acquire on the reference count; `Shared.deallocate` keeps its core alive until it no longer touches
//    the page.

// MARK: - Core

extension ConcurrentSlab {
    /// What both sides share: the configuration, the backing allocator, the notification stack and the owner's
    /// state. Freed (with every refill) when the last of `Local` and the `Shared` copies goes away.
    @usableFromInline
    internal final class Core: @unchecked Sendable {
        // @unchecked Sendable: `configuration`, `backing` and the geometry are immutable; `notify` is only used
        // through atomic operations; `state` is touched only by the one thread owning the `Local` side (and by
        // `deinit`, which runs after every owner is gone, ordered by ARC's release/acquire on the refcount).

        /// The validated configuration.
        let configuration: SlabConfiguration
        /// Where refills come from.
        let backing: Backing
        /// Pages with remote frees that the owner has not looked at yet, linked through their headers.
        @usableFromInline let notify: UnsafeAtomic<UnsafeMutableRawPointer?>
        /// The owner's state; only the `Local` side reads or writes it.
        @usableFromInline let state: UnsafeMutablePointer<LocalState>
        /// Offset of the first block in every page.
        let firstBlockOffset: Int
        /// Blocks in every page.
        let blocksPerPage: Int

        init(configuration: SlabConfiguration, backing: Backing, firstBlockOffset: Int, blocksPerPage: Int) {
            self.configuration = configuration
            self.backing = backing
            self.firstBlockOffset = firstBlockOffset
            self.blocksPerPage = blocksPerPage
            // The notification head gets a cache line of its own: remote pushers write it, and it must not share a
            // line with the owner's state, which changes on every allocation.
            let line = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
            self.notify = UnsafeAtomic(
                at: line.initializeMemory(
                    as: UnsafeAtomic<UnsafeMutableRawPointer?>.Storage.self, repeating: .init(nil), count: 1))
            self.state = .allocate(capacity: 1)
            state.initialize(to: LocalState())
        }

        deinit {
            // Every owner is gone: nothing can push onto a page or the notification stack any more.
            var refill = state.pointee.newestRefill
            while let first = refill {
                // Read the record before its memory goes back to the backing allocator.
                refill = first.load(fromByteOffset: _ConcurrentSlabPage.refillNextOffset, as: UnsafeMutableRawPointer?.self)
                let bytes = first.load(fromByteOffset: _ConcurrentSlabPage.refillBytesOffset, as: Int.self)
                let backingSize = first.load(fromByteOffset: _ConcurrentSlabPage.refillBackingSizeOffset, as: Int.self)
                backing.deallocate(
                    UnsafeBlock(start: first, size: backingSize),
                    layout: Layout(uncheckedSize: bytes, alignment: configuration.pageSize))
            }
            // `destroy` deinitializes the storage and frees the line (free(3) ignores the alignment it had).
            notify.destroy()
            state.deinitialize(count: 1)
            state.deallocate()
        }
    }

    /// The owner's bookkeeping, behind a pointer so the hot path pays no exclusivity check.
    @usableFromInline
    internal struct LocalState {
        /// The page allocations come from, or nil before the first allocation and after it ran dry.
        @usableFromInline var current: UnsafeMutableRawPointer? = nil
        /// Stack of pages (other than `current`) with local free blocks or uncarved blocks.
        @usableFromInline var available: UnsafeMutableRawPointer? = nil
        /// Next never-used page of the newest refill.
        var freshPage: UnsafeMutableRawPointer? = nil
        /// Never-used pages left in the newest refill.
        var freshPages: Int = 0
        /// First page of the newest refill; refills link through their first page's record.
        var newestRefill: UnsafeMutableRawPointer? = nil
        /// Refills taken so far.
        var refillCount: Int = 0
        /// Bytes taken from the backing allocator (requested sizes).
        var footprint: Int = 0
        /// Pages formatted so far.
        var pagesInUse: Int = 0
        /// Blocks handed out and not yet known to be back (remote frees count once collected).
        @usableFromInline var liveBlocks: Int = 0
        /// Blocks collected from remote-free stacks so far.
        var remoteFreesCollected: Int = 0
    }
}

// MARK: - Local

extension ConcurrentSlab {
    /// The owning side of a thread-safe slab: allocates, and frees without atomics.
    ///
    /// One thread uses it at a time. It is deliberately not `Sendable`, so the compiler rejects sharing it between
    /// threads; ownership can still move (send it through a `Mutex` or as a `sending` value).
    ///
    /// Every allocation must fit the slab's layout (`size <= stride`, `alignment <= alignment`); others throw
    /// `.unsupportedLayout`.
    public final class Local {
        /// The shared core; keeps the memory alive.
        @usableFromInline internal let core: Core
        // Safe: the state lives as long as `core`, which this object keeps alive; only the owning thread touches it.
        @usableFromInline internal let state: UnsafeMutablePointer<LocalState>
        @usableFromInline internal let stride: Int
        @usableFromInline internal let alignment: Int
        /// `~(pageSize - 1)`: masks a block address to its page.
        @usableFromInline internal let pageMask: UInt

        internal init(core: Core) {
            self.core = core
            self.state = core.state
            self.stride = core.configuration.stride
            self.alignment = core.configuration.alignment
            self.pageMask = ~UInt(core.configuration.pageSize - 1)
        }

        /// The validated configuration the slab was built with.
        public var configuration: SlabConfiguration { core.configuration }
        /// Where refills come from.
        public var backing: Backing { core.backing }

        /// Allocates one block. The block's `size` is the slab's stride.
        ///
        /// Pops the current page's local free list; when that is empty, collects the page's remote frees, carves a
        /// new block, switches to another page with free blocks (collecting pages that received remote frees), or
        /// takes a refill from the backing allocator.
        ///
        /// - Throws: `.unsupportedLayout` if `layout` does not fit a block; `.limitExceeded` past the byte limit
        ///   (no block is free, remote frees included); the backing allocator's error if a refill fails, or
        ///   `.unsupportedLayout` if the backing returned a refill not aligned to the page size. A throw leaves every
        ///   block where it was (pending remote frees may have been collected into the local lists).
        /// - Complexity: O(1) amortized: collecting a remote stack walks it once; a refill calls the backing once.
        @inlinable
        public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
            guard layout.size <= stride, layout.alignment <= alignment else {
                throw AllocationError(
                    .unsupportedLayout, "layout does not fit this slab's blocks", size: layout.size,
                    alignment: layout.alignment, limit: stride)
            }
            if let page = state.pointee.current {
                let header = _ConcurrentSlabPage.header(page)
                if let head = header.pointee.localFree {
                    // Owner-only list: no atomics. The link was written by the owner (a local free) or published to
                    // it by the acquiring exchange that collected the remote stack.
                    header.pointee.localFree = _ConcurrentSlabPage.link(head).pointee
                    state.pointee.liveBlocks &+= 1
                    return UnsafeBlock(start: head, size: stride)
                }
            }
            return try allocateSlow(layout)
        }

        /// Returns a block to its page's local free list. Must be called by the owning thread.
        ///
        /// - Complexity: O(1), no atomic instructions.
        @inlinable
        public func deallocate(_ block: UnsafeBlock, layout: Layout) {
            #if DIVVY_INTERNAL_CHECKS
            precondition(owns(block), "ConcurrentSlab.Local.deallocate(\(block)): block is not from this slab")
            checkBlock(block)
            #endif
            // Safe: the block came from this slab, so the masked address is the start of one of its pages.
            let page = UnsafeMutableRawPointer(bitPattern: block.address & pageMask).unsafelyUnwrapped
            let header = _ConcurrentSlabPage.header(page)
            _ConcurrentSlabPage.bindLink(block.start).pointee = header.pointee.localFree
            header.pointee.localFree = block.start
            state.pointee.liveBlocks &-= 1
            if header.pointee.list == _ConcurrentSlabPageHeader.full {
                header.pointee.list = _ConcurrentSlabPageHeader.available
                header.pointee.nextAvailable = state.pointee.available
                state.pointee.available = page
            }
        }

        /// Moves every pending remote free into the local free lists, and returns how many blocks that was.
        ///
        /// Allocation does this by itself when it runs out of blocks; call it to make `liveBlocks` exact or to
        /// reuse remote frees before the slab would grow.
        ///
        /// - Complexity: O(pages that received remote frees + blocks collected).
        @discardableResult
        public func collectRemoteFrees() -> Int {
            var collected = 0
            if let page = state.pointee.current { collected += takeRemoteFrees(page) }
            collected += processNotifications()
            return collected
        }

        /// Blocks handed out and not yet returned, through either side.
        ///
        /// Collects pending remote frees first, so every `Shared.deallocate` that happened before this call is
        /// counted.
        public var liveBlocks: Int {
            collectRemoteFrees()
            return state.pointee.liveBlocks
        }
        /// Bytes taken from the backing allocator so far.
        public var footprint: Int { state.pointee.footprint }
        /// Number of refills taken from the backing allocator.
        public var refillCount: Int { state.pointee.refillCount }
        /// Pages formatted so far (each `pageSize` bytes; the rest of the newest refill is still untouched).
        public var pageCount: Int { state.pointee.pagesInUse }
        /// Blocks the local side has collected from remote-free stacks so far.
        public var remoteFreesCollected: Int { state.pointee.remoteFreesCollected }

        // MARK: Slow paths

        /// Finds a block when the current page's local free list is empty.
        @usableFromInline
        internal func allocateSlow(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
            while true {
                if let page = state.pointee.current {
                    let header = _ConcurrentSlabPage.header(page)
                    if header.pointee.localFree == nil { takeRemoteFrees(page) }
                    if let head = header.pointee.localFree {
                        header.pointee.localFree = _ConcurrentSlabPage.link(head).pointee
                        state.pointee.liveBlocks &+= 1
                        return UnsafeBlock(start: head, size: stride)
                    }
                    let carved = header.pointee.carve
                    if carved < header.pointee.carveEnd {
                        // Carve a batch of about 4 KiB (mimalloc's "extend"): the first block is returned, the rest
                        // go onto the local free list so the next allocations take the inlined fast path. Carving
                        // stays lazy enough that a fresh page costs no more memory than it serves.
                        // Safe: carve < carveEnd, and both lie in one page, so the counts are small and positive.
                        let remaining = (header.pointee.carveEnd - carved) / stride
                        let batch = Swift.min(remaining, Swift.max(1, 4096 / stride))
                        let end = carved + batch * stride
                        var next: UnsafeMutableRawPointer? = nil
                        var block = end
                        while block > carved + stride {
                            block -= stride
                            _ConcurrentSlabPage.bindLink(block).pointee = next
                            next = block
                        }
                        // Invariant: the local free list is empty here (the caller checked and found nothing).
                        header.pointee.localFree = next
                        header.pointee.carve = end
                        state.pointee.liveBlocks &+= 1
                        return UnsafeBlock(start: carved, size: stride)
                    }
                    // The page is exhausted. It comes back (onto `available`) when a block on it is freed locally,
                    // or when the owner collects remote frees it was notified about.
                    header.pointee.list = _ConcurrentSlabPageHeader.full
                    state.pointee.current = nil
                }
                if let page = state.pointee.available {
                    let header = _ConcurrentSlabPage.header(page)
                    state.pointee.available = header.pointee.nextAvailable
                    header.pointee.nextAvailable = nil
                    header.pointee.list = _ConcurrentSlabPageHeader.current
                    state.pointee.current = page
                    continue
                }
                if processNotifications() > 0 { continue }
                if let page = state.pointee.freshPage {
                    takeFreshPage(page)
                    continue
                }
                try refill(for: layout)
            }
        }

        /// Takes the whole remote-free stack of `page` and prepends it to the page's local free list.
        ///
        /// - Returns: the number of blocks collected.
        ///
        /// - Parameter mustExchange: always perform the exchange, even when the stack looks empty. Required right
        ///   after clearing the page's `queued` flag (see `processNotifications`).
        @discardableResult
        @usableFromInline
        internal func takeRemoteFrees(_ page: UnsafeMutableRawPointer, mustExchange: Bool = false) -> Int {
            let remote = _ConcurrentSlabPage.remoteHead(page)
            // Relaxed: only a hint to skip the read-modify-write when the stack looks empty; a push it misses is
            // found later, because that push queued the page on the notification stack. Not allowed right after
            // clearing `queued`: a plain load there could be satisfied before the cleared flag is visible to other
            // threads (store→load reordering, which even x86 does), so a pusher could find the stack empty, see the
            // stale flag 1, not queue the page, and its block would be stranded. The exchange, a read-modify-write
            // ordered after the flag's store, closes that window.
            if !mustExchange {
                guard remote.load(ordering: .relaxed) != nil else { return 0 }
            }
            // Acquiring: synchronizes with the releasing push of every block in the stack (each push is a
            // read-modify-write, so they form one release sequence), so the links inside the blocks, written
            // before each push, are visible. Releasing: a pusher that later finds the stack empty synchronizes
            // with this exchange (see `Shared.deallocate` and `processNotifications`).
            guard let chain = remote.exchange(nil, ordering: .acquiringAndReleasing) else { return 0 }
            var count = 1
            var tail = chain
            while let next = _ConcurrentSlabPage.link(tail).pointee {
                tail = next
                count &+= 1
            }
            let header = _ConcurrentSlabPage.header(page)
            _ConcurrentSlabPage.link(tail).pointee = header.pointee.localFree
            header.pointee.localFree = chain
            state.pointee.liveBlocks &-= count
            state.pointee.remoteFreesCollected &+= count
            return count
        }

        /// Takes the notification stack and collects the remote frees of every page on it; pages that gained free
        /// blocks go onto the available stack.
        ///
        /// - Returns: the number of blocks collected.
        @usableFromInline
        internal func processNotifications() -> Int {
            // Relaxed: a hint, as in `takeRemoteFrees`. Anything that happened before this call is seen (coherence).
            guard core.notify.load(ordering: .relaxed) != nil else { return 0 }
            // Acquiring: pairs with the releasing push in `Shared.notifyOwner`, making each page's link visible.
            var next = core.notify.exchange(nil, ordering: .acquiringAndReleasing)
            var collected = 0
            while let page = next {
                // Read the link before clearing the flag: once the flag is 0, a pusher may queue the page again and
                // overwrite the link.
                next = _ConcurrentSlabPage.nextNotified(page).pointee
                // Releasing: the pusher that next sets the flag (with an acquiring exchange) must see our read of
                // the link as done before it writes the link.
                //
                // Invariant (no lost remote free): the flag is cleared *before* the remote stack is taken. A pusher
                // whose push found the stack empty after our exchange synchronized with that exchange (it is
                // releasing, the push acquiring), so its later flag exchange sees this 0 and queues the page again.
                // A pusher whose push came before our exchange has its block collected right here.
                _ConcurrentSlabPage.queued(page).store(0, ordering: .releasing)
                let taken = takeRemoteFrees(page, mustExchange: true)
                collected &+= taken
                let header = _ConcurrentSlabPage.header(page)
                if taken > 0 && header.pointee.list == _ConcurrentSlabPageHeader.full {
                    header.pointee.list = _ConcurrentSlabPageHeader.available
                    header.pointee.nextAvailable = state.pointee.available
                    state.pointee.available = page
                }
            }
            return collected
        }

        /// Formats the next never-used page of the newest refill and makes it current.
        internal func takeFreshPage(_ page: UnsafeMutableRawPointer) {
            _ConcurrentSlabPage.initialize(
                page, firstBlockOffset: core.firstBlockOffset, blocks: core.blocksPerPage, stride: stride,
                owner: UnsafeRawPointer(Unmanaged.passUnretained(core).toOpaque()))
            state.pointee.freshPages -= 1
            state.pointee.freshPage = state.pointee.freshPages > 0 ? page + core.configuration.pageSize : nil
            state.pointee.pagesInUse += 1
            // Invariant: `current` is nil here (only called when no page had a free block).
            state.pointee.current = page
        }

        /// Takes one more refill from the backing allocator; its pages become fresh pages.
        @usableFromInline
        internal func refill(for layout: Layout) throws(AllocationError) {
            let configuration = core.configuration
            let pageSize = configuration.pageSize
            // Safe: footprint never exceeds the limit (each refill is clipped to what is left).
            let remaining = (configuration.limit &- state.pointee.footprint) & ~(pageSize &- 1)
            let wanted = alignUpChecked(configuration.growth.refillSize(state.pointee.refillCount), to: pageSize)
                ?? Int.max & ~(pageSize &- 1)
            // Safe: capped at 2^48 (page-aligned) so the layout stays far from Int.max when a policy saturates.
            let size = Swift.min(Swift.max(wanted, pageSize), remaining, SlabGrowthPolicy.linearMaximum)
            guard size >= pageSize else {
                throw AllocationError(
                    .limitExceeded, "slab byte limit reached", size: layout.size, limit: configuration.limit)
            }
            let refillLayout = Layout(uncheckedSize: size, alignment: pageSize)
            let block = try core.backing.allocate(refillLayout)
            // A backing allocator that breaks its contract (e.g. one that ignores alignment) gets its block back and
            // the caller a clear error, rather than a slab whose pages cannot be found by masking.
            guard block.address & ~pageMask == 0, block.size >= size else {
                core.backing.deallocate(block, layout: refillLayout)
                throw AllocationError(
                    .unsupportedLayout, "backing allocator returned a refill not aligned to the slab's page size",
                    size: size, alignment: pageSize)
            }
            let first = block.start
            first.storeBytes(
                of: state.pointee.newestRefill, toByteOffset: _ConcurrentSlabPage.refillNextOffset,
                as: UnsafeMutableRawPointer?.self)
            first.storeBytes(of: size, toByteOffset: _ConcurrentSlabPage.refillBytesOffset, as: Int.self)
            first.storeBytes(of: block.size, toByteOffset: _ConcurrentSlabPage.refillBackingSizeOffset, as: Int.self)
            first.storeBytes(of: size / pageSize, toByteOffset: _ConcurrentSlabPage.refillPagesOffset, as: Int.self)
            state.pointee.newestRefill = first
            state.pointee.refillCount += 1
            state.pointee.footprint += size
            // Invariant: the previous refill's fresh pages were all used (refills happen only when none is left).
            state.pointee.freshPage = first
            state.pointee.freshPages = size / pageSize
        }

        /// Visits every refill, newest first: its first page and its page count.
        internal func forEachRefill(_ body: (UnsafeMutableRawPointer, Int) -> Void) {
            var refill = state.pointee.newestRefill
            while let first = refill {
                refill = first.load(fromByteOffset: _ConcurrentSlabPage.refillNextOffset, as: UnsafeMutableRawPointer?.self)
                body(first, first.load(fromByteOffset: _ConcurrentSlabPage.refillPagesOffset, as: Int.self))
            }
        }

        /// Traps unless `block` starts on a block boundary of a formatted page of this slab.
        @usableFromInline
        internal func checkBlock(_ block: UnsafeBlock) {
            let page = UnsafeMutableRawPointer(bitPattern: block.address & pageMask).unsafelyUnwrapped
            let header = _ConcurrentSlabPage.header(page)
            let offset = block.start - page - core.firstBlockOffset
            precondition(
                offset >= 0 && offset % stride == 0 && block.start < header.pointee.carve,
                "ConcurrentSlab.Local: \(block) is not a block handed out by this slab")
        }
    }
}

@available(*, unavailable, message: "ConcurrentSlab.Local is owned by one thread; free from others through Shared")
extension ConcurrentSlab.Local: Sendable {}

extension ConcurrentSlab.Local: OwnershipAwareAllocator {
    /// Whether `block` starts inside one of the slab's formatted pages.
    ///
    /// - Complexity: O(refills): O(log limit) with `.pow2` growth.
    public func owns(_ block: UnsafeBlock) -> Bool {
        let pageSize = core.configuration.pageSize
        var found = false
        forEachRefill { first, pages in
            guard !found, block.start >= first, block.start < first + pages * pageSize else { return }
            let page = UnsafeMutableRawPointer(bitPattern: block.address & pageMask).unsafelyUnwrapped
            // Pages of the newest refill past `freshPage` are not formatted yet.
            if let fresh = state.pointee.freshPage, first == state.pointee.newestRefill, page >= fresh { return }
            found = block.start - page >= core.firstBlockOffset
        }
        return found
    }
}

extension ConcurrentSlab.Local: SizeRoundingAllocator {
    /// The slab's stride, for any layout that fits its blocks.
    @inlinable
    public func goodSize(for layout: Layout) -> Int { stride }
}

extension ConcurrentSlab.Local {
    /// Checks the slab's internal invariants and traps with a message if one is broken.
    ///
    /// Walks every formatted page: its local free list lies on block boundaries below the carve pointer and has no
    /// cycle; the current page and the available stack agree with each page's list marker, and every available
    /// page has a free block; carved minus locally free blocks equals `liveBlocks` (remote frees not yet collected
    /// count as live). Compiled to nothing unless `DIVVY_INTERNAL_CHECKS` is set (debug builds and tests).
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        let pageSize = core.configuration.pageSize
        let firstOffset = core.firstBlockOffset
        let corePointer = UnsafeRawPointer(Unmanaged.passUnretained(core).toOpaque())
        var available: Set<UnsafeMutableRawPointer> = []
        var node = state.pointee.available
        while let page = node {
            precondition(available.insert(page).inserted, "ConcurrentSlab invariant: available stack has a cycle")
            node = _ConcurrentSlabPage.header(page).pointee.nextAvailable
        }
        var pages = 0
        var live = 0
        var footprint = 0
        forEachRefill { first, count in
            footprint += count * pageSize
            for index in 0..<count {
                let page = first + index * pageSize
                if first == state.pointee.newestRefill, let fresh = state.pointee.freshPage, page >= fresh { break }
                pages += 1
                let header = _ConcurrentSlabPage.header(page).pointee
                precondition(header.owner == corePointer, "ConcurrentSlab invariant: page \(page) has a foreign owner")
                let carved = (header.carve - (page + firstOffset)) / stride
                precondition(
                    carved >= 0 && carved <= core.blocksPerPage && header.carve <= header.carveEnd,
                    "ConcurrentSlab invariant: carve pointer out of page \(page)")
                var free = 0
                var block = header.localFree
                while let current = block {
                    free += 1
                    precondition(free <= carved, "ConcurrentSlab invariant: local free list longer than carved (cycle?)")
                    let offset = current - (page + firstOffset)
                    precondition(
                        offset >= 0 && offset % stride == 0 && current < header.carve,
                        "ConcurrentSlab invariant: free block \(current) not a carved block of page \(page)")
                    block = _ConcurrentSlabPage.link(current).pointee
                }
                live += carved - free
                switch header.list {
                case _ConcurrentSlabPageHeader.current:
                    precondition(state.pointee.current == page, "ConcurrentSlab invariant: stray current marker")
                case _ConcurrentSlabPageHeader.available:
                    precondition(available.contains(page), "ConcurrentSlab invariant: available page not on stack")
                    precondition(
                        header.localFree != nil || header.carve < header.carveEnd,
                        "ConcurrentSlab invariant: available page \(page) has no free block")
                case _ConcurrentSlabPageHeader.full:
                    precondition(!available.contains(page), "ConcurrentSlab invariant: full page on available stack")
                default:
                    preconditionFailure("ConcurrentSlab invariant: bad list marker \(header.list)")
                }
            }
        }
        if let current = state.pointee.current {
            precondition(
                _ConcurrentSlabPage.header(current).pointee.list == _ConcurrentSlabPageHeader.current,
                "ConcurrentSlab invariant: current page not marked current")
        }
        precondition(pages == state.pointee.pagesInUse, "ConcurrentSlab invariant: \(pages) pages != pagesInUse")
        precondition(
            footprint == state.pointee.footprint, "ConcurrentSlab invariant: refills hold \(footprint) bytes != footprint")
        precondition(
            live == state.pointee.liveBlocks,
            "ConcurrentSlab invariant: carved - free = \(live) != liveBlocks \(state.pointee.liveBlocks)")
        #endif
    }
}

// MARK: - Shared

extension ConcurrentSlab {
    /// The freeing side of a thread-safe slab: `Sendable`, lock-free, usable from any number of threads.
    ///
    /// It cannot allocate, so it is not an `Allocator`. Copies share the slab; the slab's memory lives until the
    /// `Local` side and every copy are gone. Freeing after the `Local` side was dropped is allowed: the block is
    /// pushed onto its page's remote stack and the memory goes back with the rest when the last copy is dropped.
    public struct Shared: @unchecked Sendable {
        // @unchecked Sendable: `notify` points at the core's atomic word and is used only atomically; `core` is
        // Sendable; `pageMask` is a constant. (`UnsafeAtomic` of a pointer is not `Sendable` by itself, because raw
        // pointers are not.)

        /// Keeps the slab's memory alive.
        @usableFromInline internal let core: Core
        @usableFromInline internal let notify: UnsafeAtomic<UnsafeMutableRawPointer?>
        @usableFromInline internal let pageMask: UInt

        internal init(core: Core) {
            self.core = core
            self.notify = core.notify
            self.pageMask = ~UInt(core.configuration.pageSize - 1)
        }

        /// The validated configuration the slab was built with.
        public var configuration: SlabConfiguration { core.configuration }

        /// Returns a block to the slab from any thread: pushes it onto its page's remote-free stack.
        ///
        /// The owner reuses the block after it next collects that page's remote frees.
        ///
        /// - Parameters:
        ///   - block: a block the slab's `Local` side handed out and that has not been freed since.
        ///   - layout: the layout it was allocated with (unused; for symmetry with `Allocator`).
        /// - Complexity: O(1) expected: one compare-and-exchange (retried under contention); the first free into a
        ///   page since the owner last looked also queues the page (one more exchange and push).
        @inlinable
        public func deallocate(_ block: UnsafeBlock, layout: Layout) {
            // Safe: the block came from this slab, so the masked address is the start of one of its pages.
            let page = UnsafeMutableRawPointer(bitPattern: block.address & pageMask).unsafelyUnwrapped
            #if DIVVY_INTERNAL_CHECKS
            checkBlock(block, page: page)
            #endif
            let remote = _ConcurrentSlabPage.remoteHead(page)
            let link = _ConcurrentSlabPage.bindLink(block.start)
            var old = remote.load(ordering: .relaxed)
            while true {
                // The block is ours until the exchange below publishes it, so this plain write races with nothing.
                link.pointee = old
                // Releasing: publishes the link just written to the owner, whose exchange acquires.
                // Acquiring: if the stack was empty, this synchronizes with the owner's (releasing) exchange that
                // emptied it, so `notifyOwner` sees the owner's reset of the page's queued flag (no lost wakeup;
                // see `Local.processNotifications`). Relaxed on failure: we only retry with the value read.
                let (exchanged, current) = remote.weakCompareExchange(
                    expected: old, desired: block.start, successOrdering: .acquiringAndReleasing,
                    failureOrdering: .relaxed)
                if exchanged { break }
                old = current
            }
            if old == nil { notifyOwner(page) }
            // Keep the core (and so the page) alive until we are done with the page, even if this was the last copy.
            withExtendedLifetime(core) {}
        }

        /// Puts `page` on the notification stack unless it is already queued.
        @usableFromInline
        internal func notifyOwner(_ page: UnsafeMutableRawPointer) {
            // Acquiring: if the owner cleared the flag, its read of the page's old link happens before our write
            // below. The releasing half is not needed (the CAS below publishes the link); on x86 it costs nothing.
            guard _ConcurrentSlabPage.queued(page).exchange(1, ordering: .acquiringAndReleasing) == 0 else { return }
            var old = notify.load(ordering: .relaxed)
            while true {
                // Only the thread that set the flag writes the link, and the owner reads it only after taking the
                // stack, so this plain write races with nothing.
                _ConcurrentSlabPage.nextNotified(page).pointee = old
                // Releasing: publishes the link to the owner's acquiring exchange. The owner takes the whole stack,
                // never pops one node, so there is no ABA.
                let (exchanged, current) = notify.weakCompareExchange(
                    expected: old, desired: page, successOrdering: .releasing, failureOrdering: .relaxed)
                if exchanged { return }
                old = current
            }
        }

        /// Traps unless `block` lies on a block boundary of one of this slab's pages.
        ///
        /// Reads only what is immutable once the page is formatted (its owner), so it races with nothing.
        @usableFromInline
        internal func checkBlock(_ block: UnsafeBlock, page: UnsafeMutableRawPointer) {
            let header = _ConcurrentSlabPage.header(page)
            precondition(
                header.pointee.owner == UnsafeRawPointer(Unmanaged.passUnretained(core).toOpaque()),
                "ConcurrentSlab.Shared.deallocate(\(block)): block is not from this slab")
            let offset = block.start - page - core.firstBlockOffset
            precondition(
                offset >= 0 && offset % core.configuration.stride == 0 && offset / core.configuration.stride < core.blocksPerPage,
                "ConcurrentSlab.Shared.deallocate(\(block)): not on a block boundary")
        }
    }
}
