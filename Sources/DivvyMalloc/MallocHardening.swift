// Hardened mode (DIVVY_MALLOC_HARDENED=1) and guard pages (DIVVY_MALLOC_GUARD=1), after mimalloc's secure mode.
//
// Both switches are read once, by the library's constructor, before any heap exists (Sources/CDivvyMalloc/
// hardening.c). When either is on, the exported functions call the entry points below instead of the ones in
// DivvyMalloc.swift: the same `CAllocationAdapter`, over `CheckedHeapStrategy` instead of `ThreadHeapStrategy`. The
// normal mode runs none of this, and its fast paths are the same instructions as before.
//
// Hardened mode:
// - **Encoded free-list links.** Every link stored in a free block is XORed with a random key (getrandom(2)), and a
//   link that decodes to anything but a carved block of its own page aborts when it is followed (`checkedLink`):
//   a write into a freed block is reported instead of handing out wild memory. The key is process-wide, not per
//   heap: pages change hands (abandoned pages are adopted, other threads push remote frees), and every party must
//   decode the same links.
// - **Checked frees.** `free` and `realloc` look their pointer up before trusting it (`checkLiveBlock`): it must lie
//   in a segment of this heap, at the start of a block the page has handed out, in a page that still has live blocks,
//   and not be on the page's free lists. Otherwise one line goes to stderr and the process aborts (SIGABRT).
// - **The C fast paths stand aside, by data, not by a branch.** They read links raw, so in hardened mode a heap
//   keeps its direct table empty (the malloc fast path finds no page) and stores its address in its pages' owner
//   word with bit 0 set (the free fast path finds no match, as for pages with interior pointers); `freeSlow`
//   masks that bit. Every call then takes the full path, where the checks are.
//
// Guard pages: each block over 16 KiB has a page to itself (a single-block page); with guard pages on, the 4 KiB
// after its usable size is made PROT_NONE (mprotect(2)), so writing past `malloc_usable_size` faults (SIGSEGV). The
// guard moves when `realloc` grows the block in place, and goes when the block is freed.
import Atomics
import CDivvyMalloc
import Divvy

#if canImport(Glibc)
    import Glibc
#endif

// MARK: Encoded links

extension HeapRef {
    /// What this heap stores in its pages' owner word: its address, with bit 0 set in hardened mode so that the C
    /// free fast path (which compares the word with the heap's address) always declines.
    @inline(__always)
    var ownerWord: Int { Int(bitPattern: raw) | (divvy_malloc_link_key() == 0 ? 0 : 1) }
}

/// Whether `address` is the start of a block `page` has carved (handed out at least once, or on a free list).
@inline(__always)
func isCarvedBlock(_ address: UInt, of page: PageRef) -> Bool {
    let start = UInt(bitPattern: page.start)
    let size = UInt(bitPattern: page.blockSize)
    let carved = UInt(UInt32(bitPattern: page.carved))
    // The range first: most addresses that are not blocks fail it without a division.
    guard size > 0, address >= start, address &- start < carved &* size else { return false }
    let offset = address &- start
    return offset % size == 0
}

/// A link read in hardened mode (`nextBlock`), already decoded: nil (the end of the list), or a carved block of the
/// same page. Anything else means the free block was written after it was freed: report it and abort.
@inline(never)
func checkedLink(from block: UnsafeMutableRawPointer, decoded: UInt) -> UnsafeMutableRawPointer? {
    guard decoded != 0 else { return nil }
    let page = SegmentRef.page(of: block)
    guard isCarvedBlock(decoded, of: page) else {
        divvy_malloc_report_corrupted_link(block, UInt64(decoded), page.blockSize, page.sizeClass)
    }
    return UnsafeMutableRawPointer(bitPattern: decoded)
}

/// A link decoded without trusting it: nil at the end of the list or when it is not a carved block of the page.
/// For walks over lists another thread may be changing (the double-free check), where a bad link is not proof of
/// corruption.
@inline(__always)
func tentativeLink(from block: UnsafeMutableRawPointer, of page: PageRef) -> UnsafeMutableRawPointer? {
    let decoded = block.load(as: UInt.self) ^ UInt(divvy_malloc_link_key())
    return isCarvedBlock(decoded, of: page) ? UnsafeMutableRawPointer(bitPattern: decoded) : nil
}

// MARK: Checked frees

extension SegmentRef {
    /// Whether this is the header of a segment of `global` holding pages or a huge block (not metadata, and not the
    /// middle of a huge run): it names the heap and has a page shift the heap uses.
    func isHeapSegment(of global: GlobalRef) -> Bool {
        // Offset 24 is `global`, read as an optional: metadata segments hold other words there.
        guard raw.load(fromByteOffset: 24, as: UnsafeMutableRawPointer?.self) == global.raw else { return false }
        let shift = pageShift
        return shift == 16 || shift == 20 || shift == 22 || shift == M.hugePageShift
    }
}

extension GlobalRef {
    /// Whether `address` lies in a segment of one of the heap's reservations that is in use (read without the lock:
    /// ranges are only ever added, and a bit that changes under us concerns a block that is not the caller's).
    func holdsSegment(containing address: UInt) -> Bool {
        for r in 0..<rangeCount {
            let base = UInt(bitPattern: rangeBase(r))
            guard address >= base else { continue }
            let index = Int((address &- base) >> UInt(M.segmentShift))
            guard index < rangeSegmentCount(r) else { continue }
            return bitmap(r)[index >> 6] & (1 << UInt64(index & 63)) != 0
        }
        return false
    }

    /// Whether `address` lies in one of the heap's reservations, in use or not.
    func reservationContains(_ address: UInt) -> Bool {
        for r in 0..<rangeCount {
            let base = UInt(bitPattern: rangeBase(r))
            if address >= base, Int((address &- base) >> UInt(M.segmentShift)) < rangeSegmentCount(r) { return true }
        }
        return false
    }

    /// Whether a huge run has been freed (caller holds the lock): `hugeFree` marks its segments free (retained or
    /// purged, MallocRetention.swift). A run whose segments were taken again since is in use: a double free after
    /// such a reuse is not detected (docs/malloc.md, "Hardened mode").
    func isFreedHugeRun(_ segment: SegmentRef) -> Bool {
        !holdsSegment(containing: UInt(bitPattern: segment.raw))
    }
}

/// Whether `offset` bytes into a block is where an aligned allocation can have put `address`: `alignedAllocate`
/// rounds the block's start up to the alignment, so the offset is below the alignment, which divides the address.
@inline(__always)
func isAlignedInterior(_ address: UInt, offset: UInt) -> Bool {
    offset == 0 || offset < (address & (0 &- address))
}

/// Whether `block` is on one of `page`'s free lists: the owner's two and the remote-free stack. Each walk is bounded
/// by the page's capacity and stops at a link that is not a block of the page, so a walk racing the owner (this may
/// be another thread's page) reads only the page's own memory and ends.
func isOnFreeList(_ block: UnsafeMutableRawPointer, of page: PageRef) -> Bool {
    let limit = Int(page.capacity)
    let remoteTop = UInt(bitPattern: page.remoteFree.load(ordering: .acquiring)) & remoteAddressMask
    for list in 0..<3 {
        var cursor: UnsafeMutableRawPointer?
        switch list {
        case 0: cursor = page.free
        case 1: cursor = page.localFree
        default: cursor = UnsafeMutableRawPointer(bitPattern: remoteTop)
        }
        var steps = 0
        while let current = cursor, steps <= limit {
            guard isCarvedBlock(UInt(bitPattern: current), of: page) else { break }
            if current == block { return true }
            cursor = tentativeLink(from: current, of: page)
            steps += 1
        }
    }
    return false
}

/// Checks that `pointer` is a live block of the heap before free or realloc trusts it, and returns its page; reports
/// and aborts otherwise (`divvy_malloc_report_misuse`: double free, a pointer outside the heap, an interior pointer,
/// a block never handed out, a block in a page with none live).
@inline(never)
func checkLiveBlock(_ pointer: UnsafeMutableRawPointer, inRealloc: Bool) -> PageRef {
    let realloc: Int32 = inRealloc ? 1 : 0
    let address = UInt(bitPattern: pointer)
    guard let globalRaw = divvy_malloc_global_state() else {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_NOT_OURS), realloc, pointer, 0, -1, 0)
    }
    let global = GlobalRef(globalRaw)
    guard global.holdsSegment(containing: address), SegmentRef(containing: pointer).isHeapSegment(of: global) else {
        // A freed huge block's segments are free, but while they stay retained (not purged) its run's header is
        // still there: name that a double free rather than a foreign pointer.
        if global.reservationContains(address) {
            let page = SegmentRef.page(of: pointer)
            let segment = SegmentRef(containing: pointer)
            if segment.isHeapSegment(of: global), page.kind == M.hugeKind, page.start == pointer {
                divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_DOUBLE_FREE), realloc, pointer, page.blockSize, -1, 0)
            }
        }
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_NOT_OURS), realloc, pointer, 0, -1, 0)
    }
    let page = SegmentRef.page(of: pointer)
    let start = UInt(bitPattern: page.start)
    let size = page.blockSize
    let cls = page.kind == M.hugeKind ? -1 : page.sizeClass
    guard size > 0, address >= start, address - start < UInt(bitPattern: page.areaSize) else {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_NOT_OURS), realloc, pointer, 0, -1, 0)
    }
    let offset = address - start
    if page.kind == M.hugeKind {
        guard offset == 0 else {
            divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_INTERIOR), realloc, pointer, size, cls, Int(offset))
        }
        divvy_malloc_lock()
        let freed = global.isFreedHugeRun(page.segment)
        divvy_malloc_unlock()
        if freed { divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_DOUBLE_FREE), realloc, pointer, size, cls, 0) }
        return page
    }
    let owner = page.owner.load(ordering: .relaxed) & ~1
    if page.singleBlock {
        guard offset < UInt(size) else {
            divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_NEVER_ALLOCATED), realloc, pointer, size, cls, 0)
        }
        guard isAlignedInterior(address, offset: offset) else {
            divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_INTERIOR), realloc, pointer, size, cls, Int(offset))
        }
        // A single-block page's owner is cleared when its block is freed (retired, or pooled by another thread).
        guard owner != 0 else {
            divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_DOUBLE_FREE), realloc, pointer, size, cls, 0)
        }
        return page
    }
    let within = offset % UInt(size)
    guard within == 0 || (page.hasAligned && isAlignedInterior(address, offset: within)) else {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_INTERIOR), realloc, pointer, size, cls, Int(within))
    }
    let block = UnsafeMutableRawPointer(bitPattern: address - within).unsafelyUnwrapped
    guard isCarvedBlock(address - within, of: page) else {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_NEVER_ALLOCATED), realloc, pointer, size, cls, 0)
    }
    // Racy when another thread owns the page, but never wrong for a live block: while it is live the page counts it.
    guard owner != 0 || page.used > 0 else {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_FREE_PAGE), realloc, pointer, size, cls, 0)
    }
    // A live block's first word is the program's data, which decodes to a block of this page only by a 2^-40
    // chance; a free block's decodes to its successor or nil. Only then are the lists walked.
    let decoded = block.load(as: UInt.self) ^ UInt(divvy_malloc_link_key())
    if decoded == 0 || isCarvedBlock(decoded, of: page), isOnFreeList(block, of: page) {
        divvy_malloc_report_misuse(Int32(DIVVY_MALLOC_DOUBLE_FREE), realloc, pointer, size, cls, 0)
    }
    return page
}

// MARK: Guard pages

/// Where the guard page of a single-block page's block starts (right after its usable size), or nil when the page
/// has no room for one after the block, or is not a single-block page.
@inline(__always)
func guardPage(of page: PageRef) -> UnsafeMutableRawPointer? {
    // Safe: `start` is 4 KiB-aligned and a single-block page's block size is a multiple of 4 KiB (its class sizes
    // step by 4 KiB from 20 KiB, and in-place growth rounds to a class or to 64 KiB).
    guard page.kind != M.hugeKind, page.singleBlock, page.blockSize + 4096 <= page.areaSize else { return nil }
    return page.start + page.blockSize
}

@inline(__always)
func addGuard(_ pointer: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard divvy_malloc_guard_pages() != 0, let pointer, let guardStart = guardPage(of: SegmentRef.page(of: pointer))
    else { return pointer }
    _ = mprotect(guardStart, 4096, PROT_NONE)
    return pointer
}

@inline(__always)
func removeGuard(_ page: PageRef) {
    guard divvy_malloc_guard_pages() != 0, let guardStart = guardPage(of: page) else { return }
    _ = mprotect(guardStart, 4096, PROT_READ | PROT_WRITE)
}

// MARK: The checked strategy and its C functions

/// `ThreadHeapStrategy` with the hardened checks and guard pages: what the exported functions use when
/// DIVVY_MALLOC_HARDENED or DIVVY_MALLOC_GUARD is on.
struct CheckedHeapStrategy: CAllocationStrategy {
    let plain: ThreadHeapStrategy

    @inline(__always)
    init(_ heap: HeapRef) { plain = ThreadHeapStrategy(heap) }

    @inline(__always)
    var maximumAlignment: Int { plain.maximumAlignment }

    func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard let pointer = plain.allocate(size: size, alignment: alignment) else { return nil }
        if divvy_malloc_link_key() != 0 { clearLink(pointer, alignment: alignment) }
        return addGuard(pointer)
    }

    func allocateZeroed(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        addGuard(plain.allocateZeroed(size: size, alignment: alignment))
    }

    func deallocate(_ pointer: UnsafeMutableRawPointer) {
        let page =
            divvy_malloc_link_key() != 0 ? checkLiveBlock(pointer, inRealloc: false) : SegmentRef.page(of: pointer)
        removeGuard(page)
        plain.deallocate(pointer)
    }

    func usableSize(of pointer: UnsafeMutableRawPointer) -> Int {
        plain.usableSize(of: pointer)
    }

    func reallocate(_ pointer: UnsafeMutableRawPointer, toSize size: Int) -> UnsafeMutableRawPointer? {
        let page =
            divvy_malloc_link_key() != 0 ? checkLiveBlock(pointer, inRealloc: true) : SegmentRef.page(of: pointer)
        guard divvy_malloc_guard_pages() != 0, let guardStart = guardPage(of: page) else {
            return plain.reallocate(pointer, toSize: size)
        }
        // A block over 4 KiB that still fits its usable size stays where it is, the same size (`HeapRef.realloc`):
        // its guard stays too, and the two mprotect calls are saved (a buffer grown by small appends does this).
        if size > 4096, size <= page.start + page.blockSize - pointer {
            let moved = plain.reallocate(pointer, toSize: size)
            // Should the heap move it after all, its old page must not keep the guard.
            if moved != pointer, moved != nil { _ = mprotect(guardStart, 4096, PROT_READ | PROT_WRITE) }
            return addGuardIfMoved(moved, from: pointer)
        }
        removeGuard(page)
        let moved = plain.reallocate(pointer, toSize: size)
        // In place or moved, the live block gets its guard back (the old one, when the realloc failed).
        _ = addGuard(moved ?? pointer)
        return moved
    }

    private func addGuardIfMoved(_ moved: UnsafeMutableRawPointer?, from pointer: UnsafeMutableRawPointer)
        -> UnsafeMutableRawPointer?
    {
        moved == pointer ? moved : addGuard(moved)
    }

    /// Zeroes the link word of a block just handed out, so that freeing it before writing to it does not look like
    /// a double free to `checkLiveBlock` (its old link would still decode to a block of the page, and send every
    /// such free on a walk of the page's free lists).
    @inline(__always)
    private func clearLink(_ pointer: UnsafeMutableRawPointer, alignment: Int) {
        guard alignment > 16 else { return pointer.storeBytes(of: 0, as: UInt.self) }
        let page = SegmentRef.page(of: pointer)
        guard page.kind != M.hugeKind else { return }
        page.blockStart(pointer).storeBytes(of: 0, as: UInt.self)
    }
}

extension CAllocationAdapter where Strategy == CheckedHeapStrategy {
    @inline(__always)
    init(checkedHeap heap: UnsafeMutableRawPointer) {
        self.init(CheckedHeapStrategy(HeapRef(heap)))
    }
}

@_cdecl("divvy_malloc_swift_checked_malloc")
public func divvyMallocSwiftCheckedMalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(checkedHeap: heap).malloc(size)
}

@_cdecl("divvy_malloc_swift_checked_free")
public func divvyMallocSwiftCheckedFree(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer) {
    CAllocationAdapter(checkedHeap: heap).free(pointer)
}

@_cdecl("divvy_malloc_swift_checked_calloc")
public func divvyMallocSwiftCheckedCalloc(_ heap: UnsafeMutableRawPointer, _ count: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(checkedHeap: heap).calloc(count, size)
}

@_cdecl("divvy_malloc_swift_checked_realloc")
public func divvyMallocSwiftCheckedRealloc(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ size: Int
) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(checkedHeap: heap).realloc(pointer, size)
}

@_cdecl("divvy_malloc_swift_checked_reallocarray")
public func divvyMallocSwiftCheckedReallocarray(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ count: Int, _ size: Int
) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(checkedHeap: heap).reallocarray(pointer, count, size)
}

@_cdecl("divvy_malloc_swift_checked_posix_memalign")
public func divvyMallocSwiftCheckedPosixMemalign(
    _ heap: UnsafeMutableRawPointer, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int,
    _ size: Int
) -> Int32 {
    CAllocationAdapter(checkedHeap: heap).posixMemalign(out, alignment: alignment, size: size)
}

@_cdecl("divvy_malloc_swift_checked_aligned_alloc")
public func divvyMallocSwiftCheckedAlignedAlloc(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(checkedHeap: heap).alignedAlloc(alignment: alignment, size: size)
}

@_cdecl("divvy_malloc_swift_checked_memalign")
public func divvyMallocSwiftCheckedMemalign(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(checkedHeap: heap).memalign(alignment: alignment, size: size)
}

@_cdecl("divvy_malloc_swift_checked_valloc")
public func divvyMallocSwiftCheckedValloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(checkedHeap: heap).valloc(size)
}

@_cdecl("divvy_malloc_swift_checked_pvalloc")
public func divvyMallocSwiftCheckedPvalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(checkedHeap: heap).pvalloc(size)
}

/// `divvy_malloc_swift_warm_up` for the checked functions (a debug build's generic metadata for
/// `CAllocationAdapter<CheckedHeapStrategy>` is created here, at set-up depth, not inside a real call).
@_cdecl("divvy_malloc_swift_checked_warm_up")
public func divvyMallocSwiftCheckedWarmUp(_ heap: UnsafeMutableRawPointer) {
    let adapter = CAllocationAdapter(checkedHeap: heap)
    adapter.free(adapter.malloc(24))
    adapter.free(adapter.calloc(3, 8))
    adapter.free(adapter.reallocarray(adapter.realloc(adapter.malloc(8), 40_000), 2, 30_000))
    _ = adapter.realloc(adapter.malloc(1), 0)
    var out: UnsafeMutableRawPointer? = nil
    if adapter.posixMemalign(&out, alignment: 64, size: 10) == 0 { adapter.free(out) }
    adapter.free(adapter.alignedAlloc(alignment: 256, size: 10))
    adapter.free(adapter.memalign(alignment: 100, size: 10))
    adapter.free(adapter.valloc(10))
    adapter.free(adapter.pvalloc(0))
    _ = adapter.malloc(-1)
    _ = adapter.calloc(Int.max, 2)
    _ = adapter.mallocUsableSize(nil)
    adapter.free(nil)
}
