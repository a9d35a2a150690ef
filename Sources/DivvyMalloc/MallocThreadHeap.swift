// A thread's heap: the local side of every size class, after `ConcurrentSlab.Local` and mimalloc.
//
// Each thread owns its pages. Only the owner pops from or pushes onto a page's `free` list (plain loads and stores,
// no atomics, no lock). Any other thread frees into the page's `remoteFree` stack with one compare-and-swap; the
// owner takes the whole stack with one exchange when its free list runs dry (ABA-free: single consumer, whole-list
// take). Whether a free is local is decided by comparing the page's `owner` word with the caller's heap.
//
// Blocks over 16 KiB are not carved from shared pages: each gets an empty medium (1 MiB) or large (4 MiB) page to
// itself (`mallocSingle`), so `realloc` grows it in place to the end of that page instead of copying it. Such a page
// is in no queue; freeing its block empties it, and it goes straight back to a cache or pool (by any thread).
//
// The fast paths (`malloc`, `free` of a block the thread owns) are a size-class computation, two or three loads and
// two stores. Everything else is `@inline(never)` so the fast paths stay small.
import Atomics
import CDivvyMalloc

#if canImport(Glibc)
    import Glibc
#endif

extension HeapRef {
    // MARK: malloc

    /// `malloc(size)`; nil when out of memory (or for a `size_t` above `Int.max`).
    @inline(__always)
    func malloc(_ size: Int) -> UnsafeMutableRawPointer? {
        // The fast path is C (CDivvyMallocFastPath.h), shared with the exported `malloc`; Swift inlines it.
        if let block = divvy_malloc_fast_malloc(raw, size) { return block }
        return mallocFull(size)
    }

    /// `malloc` when the fast path declined: a small class whose current page has no free block, or a larger size.
    @inline(never)
    func mallocFull(_ size: Int) -> UnsafeMutableRawPointer? {
        // Invariant: a negative size (a size_t above Int.max) is a huge UInt and takes the large path, which fails.
        if UInt(bitPattern: size) <= UInt(DIVVY_MALLOC_FAST_MAX) { return mallocSlow(sizeClass(of: size)) }
        return mallocLarge(size)
    }

    @inline(never)
    func mallocLarge(_ size: Int) -> UnsafeMutableRawPointer? {
        guard UInt(bitPattern: size) <= UInt(M.largestClassSize) else {
            return global.hugeAllocate(size: size, alignment: 16)
        }
        let cls = sizeClass(of: size)
        if cls >= M.firstSingleBlockClass { return mallocSingle(cls) }
        if let page = head(cls), let block = page.free {
            page.free = nextBlock(block)
            page.used &+= 1
            return block
        }
        return mallocSlow(cls)
    }

    /// A block over 16 KiB: an empty medium or large page of its own (see `M.firstSingleBlockClass`).
    @inline(never)
    func mallocSingle(_ cls: Int) -> UnsafeMutableRawPointer? {
        guard let page = acquireEmptyPage(pageKind(ofClass: cls)) else { return nil }
        initialize(page, cls)
        page.extent = Swift.max(page.extent, page.blockSize)
        page.singleBlock = true
        page.capacity = 1
        page.carved = 1
        page.used = 1
        return page.start
    }

    /// The current page of `cls` has no free block: collect its remote frees, carve more of it, try a few other
    /// pages of the class, or take a new page.
    @inline(never)
    func mallocSlow(_ cls: Int) -> UnsafeMutableRawPointer? {
        countRefill()
        if let current = head(cls) {
            if let block = take(from: current) { return block }
            var candidate = current.next
            var scanned = 0
            while let page = candidate, scanned < M.scanLimit {
                candidate = page.next
                if let block = take(from: page) {
                    unlink(cls, page)
                    pushFront(cls, page)
                    return block
                }
                // Full: move it to the back so the next scan looks at other pages (round robin).
                unlink(cls, page)
                pushBack(cls, page)
                scanned += 1
            }
            if current.next != nil {
                unlink(cls, current)
                pushBack(cls, current)
            }
        }
        while true {
            guard let page = acquirePage(cls) else { return nil }
            if let block = take(from: page) {
                pushFront(cls, page)
                return block
            }
            // An adopted page may be full (its blocks are still out): keep it, and look further.
            pushBack(cls, page)
        }
    }

    /// A block from `page`: its free list, else its remote and local frees, else newly carved blocks; nil when it
    /// is full.
    @inline(__always)
    func take(from page: PageRef) -> UnsafeMutableRawPointer? {
        if page.free == nil {
            collect(page)
            if let local = page.localFree {
                page.localFree = nil
                if let free = page.free {
                    var last = local
                    while let next = nextBlock(last) { last = next }
                    setNextBlock(last, free)
                }
                page.free = local
            }
            if page.free == nil {
                guard page.carved < page.capacity else { return nil }
                carve(page)
            }
        }
        let block = page.free.unsafelyUnwrapped
        page.free = nextBlock(block)
        page.used &+= 1
        return block
    }

    /// Moves the page's remote frees onto its free list.
    ///
    /// The remote-free word holds the stack's top block in its low 48 bits and the stack's length in its top 16
    /// (see `freeSlow`), so taking the stack needs no walk over blocks another core just wrote: when the free list
    /// is empty (always, on the allocation path) the stack simply becomes the free list.
    @inline(__always)
    func collect(_ page: PageRef) {
        guard page.remoteFree.load(ordering: .relaxed) != 0 else { return }
        // Acquiring: pairs with the releasing CAS of every remote free, so the links written into the blocks before
        // they were pushed are visible here.
        let taken = UInt(bitPattern: page.remoteFree.exchange(0, ordering: .acquiring))
        guard let first = UnsafeMutableRawPointer(bitPattern: taken & remoteAddressMask) else { return }
        // Safe: the count is at most the page's capacity (4096), so it fits Int32.
        let count = Int32(truncatingIfNeeded: taken &>> 48)
        if let free = page.free {
            var last = first
            while let next = nextBlock(last) { last = next }
            setNextBlock(last, free)
        }
        page.free = first
        // Safe: every collected block was handed out and counted in `used`.
        page.used &-= count
    }

    /// Threads the next stretch of never-used blocks onto the (empty) free list. Only `carveBytes` at a time, so a
    /// page's memory is touched as it is used.
    @inline(never)
    func carve(_ page: PageRef) {
        let size = page.blockSize
        let remaining = Int(page.capacity &- page.carved)
        let count = Swift.min(remaining, Swift.max(1, M.carveBytes / size))
        // Safe: carved + count <= capacity, so every block lies in the page's area.
        let first = page.start + Int(page.carved) &* size
        var block = first
        for _ in 1..<count {
            let next = block + size
            setNextBlock(block, next)
            block = next
        }
        setNextBlock(block, page.free)
        page.free = first
        page.carved &+= Int32(count)
        page.extent = Swift.max(page.extent, Int(page.carved) &* size)
    }

    /// A page for `cls`: an empty one this thread kept, an abandoned one of the class, one from the global pool,
    /// or a new one.
    @inline(never)
    func acquirePage(_ cls: Int) -> PageRef? {
        let kind = pageKind(ofClass: cls)
        if let page = takeCached(kind) {
            initialize(page, cls)
            countPageAcquired()
            return page
        }
        let global = self.global
        divvy_malloc_lock()
        defer { divvy_malloc_unlock() }
        if let page = global.popAbandoned(cls) {
            // Adopted with its free list, carved blocks and pending remote frees as they are. The lock orders this
            // store after the exiting owner's last accesses.
            page.next = nil
            page.prev = nil
            page.owner.store(ownerWord | (page.hasAligned ? 1 : 0), ordering: .relaxed)
            countPageAcquired()
            return page
        }
        guard let page = global.popPool(kind) ?? global.newPage(kind) else { return nil }
        initialize(page, cls)
        countPageAcquired()
        return page
    }

    /// An empty page of `kind` (not yet initialised): one this thread kept, else from the global pool, else new.
    @inline(never)
    func acquireEmptyPage(_ kind: Int) -> PageRef? {
        countPageAcquired()
        if let page = takeCached(kind) { return page }
        let global = self.global
        divvy_malloc_lock()
        defer { divvy_malloc_unlock() }
        return global.popPool(kind) ?? global.newPage(kind)
    }

    /// An empty page of `kind` this thread kept for itself, if any.
    @inline(__always)
    func takeCached(_ kind: Int) -> PageRef? {
        guard let page = cache(kind) else { return nil }
        setCache(kind, page.next)
        setCacheCount(kind, cacheCount(kind) - 1)
        return page
    }

    /// Makes an empty page serve `cls` for this heap.
    @inline(never)
    func initialize(_ page: PageRef, _ cls: Int) {
        let size = blockSize(ofClass: cls)
        page.blockSize = size
        page.sizeClass = cls
        page.free = nil
        page.localFree = nil
        page.used = 0
        page.carved = 0
        page.capacity = Int32(truncatingIfNeeded: page.areaSize / size)
        page.hasAligned = false
        page.singleBlock = false
        page.next = nil
        page.prev = nil
        // Invariant: an empty page has no remote frees (every block was collected before it was retired).
        page.owner.store(ownerWord, ordering: .relaxed)
    }

    // MARK: Page queues (one doubly linked list per class; the head is the current page)

    @inline(__always)
    func pushFront(_ cls: Int, _ page: PageRef) {
        page.prev = nil
        page.next = head(cls)
        if let old = head(cls) { old.prev = page } else { setTail(cls, page) }
        setHead(cls, page)
    }

    @inline(__always)
    func pushBack(_ cls: Int, _ page: PageRef) {
        page.next = nil
        page.prev = tail(cls)
        if let old = tail(cls) { old.next = page } else { setHead(cls, page) }
        setTail(cls, page)
    }

    @inline(__always)
    func unlink(_ cls: Int, _ page: PageRef) {
        if let prev = page.prev { prev.next = page.next } else { setHead(cls, page.next) }
        if let next = page.next { next.prev = page.prev } else { setTail(cls, page.prev) }
        page.next = nil
        page.prev = nil
    }

    // MARK: free

    /// `free(pointer)` (not nil). `self` may be the shim's "no heap" placeholder, which owns no page: then every
    /// free takes the remote path.
    @inline(__always)
    func free(_ pointer: UnsafeMutableRawPointer) {
        // The fast path is C (CDivvyMallocFastPath.h), shared with the exported `free`: an own block whose page
        // keeps other blocks. It changes nothing when it declines.
        if divvy_malloc_fast_free(raw, pointer) != 0 { return }
        freeFull(pointer)
    }

    /// `free` when the fast path declined: the page's last block, another thread's page, an aligned or huge block.
    @inline(never)
    func freeFull(_ pointer: UnsafeMutableRawPointer) {
        let page = SegmentRef.page(of: pointer)
        // Relaxed: a thread reads its own heap's address in `owner` only if it stored it (or the page was handed to
        // it under the lock after the previous owner's last store), so a stale value can only mean "not mine".
        // A page that handed out aligned (interior) pointers has bit 0 of its owner word set: its frees must round
        // down to the block, so they miss this comparison and take `freeSlow` (one load and one compare here).
        if page.owner.load(ordering: .relaxed) == Int(bitPattern: raw) {
            setNextBlock(pointer, page.localFree)
            page.localFree = pointer
            page.used &-= 1
            if page.used == 0 { pageEmptied(page) }
            return
        }
        freeSlow(page, pointer)
    }

    @inline(never)
    func freeSlow(_ page: PageRef, _ pointer: UnsafeMutableRawPointer) {
        if page.kind == M.hugeKind {
            page.segment.global.hugeFree(page)
            return
        }
        let block = page.blockStart(pointer)
        if page.owner.load(ordering: .relaxed) & ~1 == Int(bitPattern: raw) {
            // Single-block pages land here too when their block was aligned; `pageEmptied` retires them.
            setNextBlock(block, page.localFree)
            page.localFree = block
            page.used &-= 1
            if page.used == 0 { pageEmptied(page) }
            return
        }
        if page.singleBlock {
            // Another thread's single-block page: its only block is freed, so the page is empty and referenced by
            // nobody (the owner keeps such pages in no queue): give it straight to the global pool.
            // `page.segment.global`, not `global`: `self` may be the shim's placeholder, which has no heap fields.
            returnToPool(page, page.segment.global)
            return
        }
        // Another thread's page (or an abandoned one): push onto its remote-free stack. The word is the top
        // block's address (below 2^48: user-space addresses on x86_64 and arm64 with 4-level page tables, and the
        // heap's reservations are made without address hints) plus the stack's length in the top 16 bits (a page
        // holds at most 4096 blocks).
        let remote = page.remoteFree
        var head = remote.load(ordering: .relaxed)
        while true {
            let word = UInt(bitPattern: head)
            setNextBlock(block, UnsafeMutableRawPointer(bitPattern: word & remoteAddressMask))
            let pushed = UInt(bitPattern: block) | ((word &>> 48) &+ 1) &<< 48
            // Releasing: the link just written is visible to the owner that takes the stack (acquiring exchange).
            let (exchanged, original) = remote.weakCompareExchange(
                expected: head, desired: Int(bitPattern: pushed), successOrdering: .releasing,
                failureOrdering: .relaxed)
            if exchanged { return }
            head = original
        }
    }

    /// The page's last block came back. The current page of a class is kept (a thread that allocates and frees one
    /// block at a time must not give its page back each time); any other goes to this thread's cache of empty pages
    /// or to the global pool.
    @inline(never)
    func pageEmptied(_ page: PageRef) {
        if page.singleBlock {
            retire(page)
            return
        }
        let cls = page.sizeClass
        guard head(cls) != page else { return }
        unlink(cls, page)
        retire(page)
    }

    func retire(_ page: PageRef) {
        countPageRetired()
        let kind = Int(page.kind)
        page.owner.store(0, ordering: .relaxed)
        if cacheCount(kind) < M.pageCacheLimit {
            page.next = cache(kind)
            setCache(kind, page)
            setCacheCount(kind, cacheCount(kind) + 1)
        } else {
            returnToPool(page, global)
        }
    }

    /// Gives an empty page (owned by nobody any more) to the global pool; retention decides when what it touched
    /// goes back to the kernel (MallocRetention.swift).
    func returnToPool(_ page: PageRef, _ global: GlobalRef) {
        divvy_malloc_lock()
        page.owner.store(0, ordering: .relaxed)
        global.pushPool(page)
        divvy_malloc_unlock()
    }

    // MARK: The other C functions

    /// `calloc` for `bytes` (the product, already checked for overflow). Fresh huge runs are zero-filled already.
    func calloc(_ bytes: Int) -> UnsafeMutableRawPointer? {
        guard let pointer = malloc(bytes) else { return nil }
        if bytes <= M.largestClassSize || global.hugeIsDirty(SegmentRef.page(of: pointer)) {
            memset(pointer, 0, bytes)
        }
        return pointer
    }

    /// `realloc(pointer, size)` for size > 0: in place when the block has room (and would not waste more than
    /// three quarters of it), else allocate (twice the size when growing, up to 1 MiB), copy, free. A block over
    /// 16 KiB grows in place to the end of its single-block page; huge blocks grow in place when the segments after
    /// them are free, else move with mremap (no copy), and shrink in place (MallocRetention.swift).
    func realloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return malloc(size) }
        guard size >= 0 else { return nil }
        let page = SegmentRef.page(of: pointer)
        let usable: Int
        if page.kind == M.hugeKind {
            usable = page.start + page.areaSize - pointer
            let global = page.segment.global
            if size <= usable, size > M.largestClassSize {
                // In place; a run that would be at least half empty gives its tail segments back (retained).
                _ = global.hugeShrink(page, to: size + (pointer - page.start))
                return pointer
            }
            if size > usable {
                if global.hugeGrow(page, to: size + (pointer - page.start)) { return pointer }
                // Move the pages instead of copying them (mremap), when a run is free for them. (The old
                // descriptor is gone after the move: the offset is taken before.)
                let offset = pointer - page.start
                if let start = global.hugeMove(page, to: size + offset) { return start + offset }
            }
        } else if page.singleBlock {
            // The block has its page to itself: grow or shrink in place up to the page's end, unless it shrinks
            // to a small size (then it moves to a small class and the page is freed for another big block).
            let offset = pointer - page.start
            usable = page.blockSize - offset
            if size <= page.areaSize - offset, size > 4096 || size >= usable / 4 {
                let needed = offset + size
                if needed > page.blockSize {
                    // Safe: needed <= areaSize; the usable size grows by size class (or by 64 KiB past 1 MiB).
                    page.blockSize = needed <= M.largestClassSize
                        ? blockSize(ofClass: sizeClass(of: needed))
                        : Swift.min((needed + 0xFFFF) & ~0xFFFF, page.areaSize)
                    page.extent = Swift.max(page.extent, page.blockSize)
                }
                return pointer
            }
        } else {
            let block = page.blockStart(pointer)
            usable = block + page.blockSize - pointer
            // Invariant: the shrink threshold stays below 1/2.5. A growing block is given twice its size, rounded up
            // to a class (≤ 25 % more), so right after a move `usable` ≤ 2.5 × `size`: with a threshold of 1/2 the
            // next small growth would "shrink" it back to a tight block and every growth would copy
            // (`testReallocGrowthByAppendingMovesLogarithmicallyOften` catches that).
            if size <= usable, usable <= 128 || size >= usable / 4 { return pointer }
        }
        // A block that grows by realloc tends to grow again (string builders, dynamic arrays, buffers read in
        // pieces): give it room to double in place, so a chain of growths costs amortised O(1) copies per byte, as
        // in-place extension does in glibc. Only the bytes actually written are ever committed. Past the largest
        // class, huge runs already round to 4 MiB and extend in place.
        var request = size
        if size > usable, size >= 256 {
            request = Swift.max(size, Swift.min(size &* 2, M.largestClassSize))
        }
        guard let moved = malloc(request) ?? malloc(size) else { return nil }
        memcpy(moved, pointer, Swift.min(usable, size))
        free(pointer)
        return moved
    }

    /// `size` bytes aligned to `alignment` (a power of two). Up to 64 KiB of alignment is served by a block large
    /// enough to hold an aligned pointer (its page then rounds frees down to the block); beyond, by a huge run.
    func alignedAllocate(alignment: Int, size: Int) -> UnsafeMutableRawPointer? {
        if alignment <= 16 { return malloc(size) }
        guard size >= 0 else { return nil }
        if alignment <= 64 << 10, size < M.largestClassSize - alignment {
            // Invariant: the aligned pointer is at most `alignment - 16` bytes into the block (blocks are 16-byte
            // aligned) and needs max(size, 1) bytes there, so it never reaches the next block (a zero-byte request
            // must not get a pointer to the next block's start, which `blockStart` would then round to).
            guard let block = malloc(Swift.max(size, 1) + alignment - 16) else { return nil }
            let address = UInt(bitPattern: block)
            let aligned = (address + UInt(alignment - 1)) & ~UInt(alignment - 1)
            if aligned != address {
                // Safe: the block came from this heap, so its page is ours (set before the pointer escapes). Bit 0
                // of the owner word sends this page's local frees to `freeSlow`, which rounds them down.
                let page = SegmentRef.page(of: block)
                if !page.hasAligned {
                    page.hasAligned = true
                    page.owner.store(Int(bitPattern: raw) | 1, ordering: .relaxed)
                }
            }
            return UnsafeMutableRawPointer(bitPattern: aligned)
        }
        return global.hugeAllocate(size: size, alignment: alignment)
    }

    // MARK: Thread exit

    /// The thread is exiting: empty pages go back to the global pool; pages with live blocks are abandoned (their
    /// owner becomes 0, so every later free is a remote free) and wait, by class, for another thread to adopt them.
    func abandon() {
        let global = self.global
        for cls in 0..<M.classCount {
            var cursor = head(cls)
            while let page = cursor {
                cursor = page.next
                collect(page)
                page.next = nil
                page.prev = nil
                divvy_malloc_lock()
                page.owner.store(0, ordering: .relaxed)
                if page.used == 0 {
                    global.pushPool(page)
                } else {
                    global.pushAbandoned(page)
                }
                divvy_malloc_unlock()
            }
            setHead(cls, nil)
            setTail(cls, nil)
        }
        for kind in 0..<M.kindCount {
            var cursor = cache(kind)
            while let page = cursor {
                cursor = page.next
                returnToPool(page, global)
            }
            setCache(kind, nil)
            setCacheCount(kind, 0)
        }
        global.destroyHeap(self)
    }
}

/// The address bits of a page's remote-free word (the top 16 bits count the stack).
@inline(__always)
var remoteAddressMask: UInt { (1 << 48) - 1 }

/// `malloc_usable_size(pointer)` (not nil): the bytes from `pointer` to the end of its block.
func usableSize(_ pointer: UnsafeMutableRawPointer) -> Int {
    let page = SegmentRef.page(of: pointer)
    if page.kind == M.hugeKind { return page.start + page.areaSize - pointer }
    return page.blockStart(pointer) + page.blockSize - pointer
}
