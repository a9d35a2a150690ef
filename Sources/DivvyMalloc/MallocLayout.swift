// The memory layout of libDivvyMalloc's heap: segments, pages, size classes, and typed views over raw memory.
//
// Nothing in this file (or anywhere on the malloc/free paths) allocates from the Swift runtime: the heap's metadata
// lives in memory the heap maps itself, and is reached through the small `…Ref` views below — structs holding one
// raw pointer, with computed properties at fixed byte offsets. They compile to plain loads and stores: no class
// instances (no retain/release), no exclusivity checks (raw pointer accesses are not tracked), no arrays, no
// existentials, no lazy globals (every constant is a computed static property, folded by the optimizer).
//
// ## Segments and pages (after mimalloc)
//
// All memory comes from one large address-space reservation (`MAP_NORESERVE`, 64 GiB, more reserved when it runs
// out), cut into 4 MiB *segments*, each aligned to 4 MiB. A segment starts with a 16 KiB metadata area: a header and
// one descriptor per page. So the page that owns any block is found from the block's address alone, in a few
// instructions and without any lock or table:
//
//     segment = address & ~(4 MiB − 1)
//     page    = segment.descriptors[(address − segment) >> segment.pageShift]
//
// A segment holds pages of one kind: 64 small pages of 64 KiB, 4 medium pages of 1 MiB, or 1 large page of 4 MiB.
// Page 0 starts after the metadata. A *huge* block (over 1 MiB) is a run of whole segments whose header says
// `pageShift = 40`, so every address in its first segment maps to descriptor 0.
import Atomics
import CDivvyMalloc

/// Constants of the layout (computed properties, so no lazy global and no runtime initialisation).
enum M {
    @inline(__always) static var segmentShift: Int { DIVVY_MALLOC_SEGMENT_SHIFT }
    @inline(__always) static var segmentSize: Int { 1 << segmentShift }
    @inline(__always) static var segmentMask: UInt { ~UInt(segmentSize - 1) }
    /// Segment header plus page descriptors; page 0's blocks start here.
    @inline(__always) static var metadataSize: Int { 16384 }
    @inline(__always) static var descriptorOffset: Int { DIVVY_MALLOC_DESCRIPTOR_OFFSET }
    @inline(__always) static var descriptorSize: Int { DIVVY_MALLOC_DESCRIPTOR_SIZE }
    /// Size classes: 0…8 are 16-byte steps (class 0 serves `malloc(0)`), then four classes per power of two up to
    /// 1 MiB (class 60).
    @inline(__always) static var classCount: Int { 61 }
    @inline(__always) static var largestClassSize: Int { 1 << 20 }
    /// Page kinds: 0 small (64 KiB pages, blocks up to 8 KiB), 1 medium (1 MiB, up to 128 KiB), 2 large (4 MiB,
    /// up to 1 MiB), 3 huge (a run of segments, one block).
    @inline(__always) static var kindCount: Int { 3 }
    @inline(__always) static var hugeKind: UInt8 { 3 }
    /// The page shift of a huge run's segments: every offset inside the segment maps to descriptor 0.
    @inline(__always) static var hugePageShift: Int { 40 }
    /// How many bytes of a page are carved into free blocks at a time (RSS grows with use, not with pages).
    @inline(__always) static var carveBytes: Int { 16 << 10 }
    /// Empty pages a thread keeps for itself (per kind) before giving them back to the global pool.
    @inline(__always) static var pageCacheLimit: Int { 4 }
    /// What an empty page keeps committed when it goes to the global pool (the rest is given back to the kernel).
    @inline(__always) static var poolResidentBytes: Int { 64 << 10 }
    /// The largest class reachable through a heap's direct table (1024-byte blocks; `DIVVY_MALLOC_FAST_MAX`).
    @inline(__always) static var lastDirectClass: Int { 20 }
    /// Full pages the allocation slow path looks at (collecting their remote frees) before taking a new page.
    @inline(__always) static var scanLimit: Int { 8 }
    /// The first class served by *single-block pages* (blocks over 16 KiB): each such block has a medium (1 MiB) or
    /// large (4 MiB) page to itself, so `realloc` grows it in place up to the end of the page, the way glibc grows
    /// a chunk into its heap's free top. Only the bytes written are ever committed; the cost is address space and
    /// one page-table page per 2 MiB, which is small next to blocks of this size.
    @inline(__always) static var firstSingleBlockClass: Int { 37 }

    @inline(__always)
    static func pageShift(ofKind kind: Int) -> Int {
        kind == 0 ? 16 : (kind == 1 ? 20 : 22)
    }
}

/// The size class serving `size` bytes (0 ≤ size ≤ 1 MiB); written once, in C, for the fast paths too.
@inline(__always)
func sizeClass(of size: Int) -> Int {
    divvy_malloc_size_class(size)
}

/// The block size of a class (the inverse of `sizeClass(of:)`).
@inline(__always)
func blockSize(ofClass cls: Int) -> Int {
    if cls <= 8 { return cls == 0 ? 16 : cls &* 16 }
    let j = cls &- 9
    let bits = 8 &+ j / 4
    return (1 &<< (bits &- 1)) &+ ((j & 3) &+ 1) &<< (bits &- 3)
}

/// The page kind of a class: small pages for blocks up to 8 KiB, medium up to 128 KiB, large up to 1 MiB.
@inline(__always)
func pageKind(ofClass cls: Int) -> Int {
    cls <= 32 ? 0 : (cls <= 48 ? 1 : 2)
}

/// A typed view of a word-sized atomic at `address`.
@inline(__always)
func atomicWord(_ address: UnsafeMutableRawPointer) -> UnsafeAtomic<Int> {
    UnsafeAtomic<Int>(at: address.assumingMemoryBound(to: UnsafeAtomic<Int>.Storage.self))
}

/// The next-block link stored in the first word of every free block. In hardened mode (DIVVY_MALLOC_HARDENED) links
/// are stored XORed with a random key, and a link that decodes outside its page aborts (`checkedLink`,
/// MallocHardening.swift); otherwise the key is 0 and the link is the address itself, as the C fast paths read it.
@inline(__always)
func nextBlock(_ block: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
    let key = UInt(divvy_malloc_link_key())
    let stored = block.load(as: UInt.self)
    if _fastPath(key == 0) { return UnsafeMutableRawPointer(bitPattern: stored) }
    return checkedLink(from: block, decoded: stored ^ key)
}

@inline(__always)
func setNextBlock(_ block: UnsafeMutableRawPointer, _ next: UnsafeMutableRawPointer?) {
    block.storeBytes(of: UInt(bitPattern: next) ^ UInt(divvy_malloc_link_key()), as: UInt.self)
}

/// A segment's header (the first 64 bytes of every segment).
///
///     0  pageShift  Int   (16, 20, 22, or 40 for a huge run)
///     8  kind       Int
///     16 segments   Int   (huge: the run's length in segments)
///     24 global     pointer to the process's `GlobalRef` memory
///     32 dirty      huge runs: some of its segments were retained (hold old data), so calloc must zero it
///     40 cacheNext  retained runs being purged (MallocRetention.swift): the next one
struct SegmentRef {
    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    /// The segment holding `address` (any address inside its first 4 MiB).
    @inline(__always)
    init(containing address: UnsafeMutableRawPointer) {
        // Safe: every heap block lies in a segment (4 MiB-aligned), and a huge block's pointer lies in its run's
        // first segment; the masked address is non-zero because segments are never at address 0.
        raw = UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: address) & M.segmentMask).unsafelyUnwrapped
    }

    var pageShift: Int {
        @inline(__always) get { raw.load(as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, as: Int.self) }
    }
    var kind: Int {
        @inline(__always) get { raw.load(fromByteOffset: 8, as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 8, as: Int.self) }
    }
    var segments: Int {
        @inline(__always) get { raw.load(fromByteOffset: 16, as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 16, as: Int.self) }
    }
    var global: GlobalRef {
        @inline(__always) get { GlobalRef(raw.load(fromByteOffset: 24, as: UnsafeMutableRawPointer.self)) }
        nonmutating set { raw.storeBytes(of: newValue.raw, toByteOffset: 24, as: UnsafeMutableRawPointer.self) }
    }
    /// Huge runs: whether the run may hold old data (it took retained segments), so calloc must zero it.
    var dirty: Bool {
        get { raw.load(fromByteOffset: 32, as: Int.self) != 0 }
        nonmutating set { raw.storeBytes(of: newValue ? 1 : 0, toByteOffset: 32, as: Int.self) }
    }
    /// Retained runs being purged: the next one (a list private to the purging thread).
    var cacheNext: SegmentRef? {
        get { raw.load(fromByteOffset: 40, as: UnsafeMutableRawPointer?.self).map { SegmentRef($0) } }
        nonmutating set { raw.storeBytes(of: newValue?.raw, toByteOffset: 40, as: UnsafeMutableRawPointer?.self) }
    }

    @inline(__always)
    func page(_ index: Int) -> PageRef {
        PageRef(raw + (M.descriptorOffset &+ index &* M.descriptorSize))
    }

    /// The page owning the block at `address`.
    @inline(__always)
    static func page(of address: UnsafeMutableRawPointer) -> PageRef {
        let segment = SegmentRef(containing: address)
        // Safe: address − segment < 4 MiB, and a page shift of 16…40 gives an index below the page count.
        let index = (UInt(bitPattern: address) &- UInt(bitPattern: segment.raw)) &>> UInt(segment.pageShift & 63)
        return segment.page(Int(bitPattern: index))
    }
}

/// A page descriptor (192 bytes in its segment's metadata: three cache lines, so the owner's writes, other threads'
/// remote frees and everyone's reads of the fixed fields never share a line).
///
///     line 0, read by every free, written only when the page changes hands:
///     0   owner       atomic Int: the owning thread heap's address, 0 when the page is in a pool, abandoned or huge
///     8   blockSize   Int
///     16  start       the first block
///     24  areaSize    bytes from `start` to the page's end
///     40  extent      bytes from `start` handed out since the page was fresh or last trimmed (what may be resident)
///     32  sizeClass, 33 kind, 34 hasAligned (an interior pointer was handed out: frees must round down),
///     35  singleBlock (the page holds one block, which may grow in place to the page's end)
///     line 1, the owner's:
///     64  free        the owner's free list
///     72  used        Int32: blocks handed out and not yet freed back to `free` (remote frees count until collected)
///     76  capacity    Int32: blocks that fit in the page
///     80  carved      Int32: blocks carved so far (blocks past it were never touched)
///     88  next, 96 prev: links in the owner's queue for the class (or a pool / abandoned list: next only)
///     104 localFree   blocks the owner freed, moved to `free` when it runs dry
///     line 2, other threads':
///     128 remoteFree  atomic Int: a stack of blocks freed by other threads (any thread pushes, the owner takes all)
struct PageRef: Equatable {
    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    @inline(__always) var owner: UnsafeAtomic<Int> { atomicWord(raw + DIVVY_MALLOC_PAGE_OWNER) }
    @inline(__always) var remoteFree: UnsafeAtomic<Int> { atomicWord(raw + 128) }

    var free: UnsafeMutableRawPointer? {
        @inline(__always) get { raw.load(fromByteOffset: DIVVY_MALLOC_PAGE_FREE, as: UnsafeMutableRawPointer?.self) }
        @inline(__always) nonmutating set {
            raw.storeBytes(of: newValue, toByteOffset: DIVVY_MALLOC_PAGE_FREE, as: UnsafeMutableRawPointer?.self)
        }
    }
    /// Blocks the owner freed since `free` last ran dry (mimalloc's free-list sharding: `malloc` pops `free`
    /// while `free()` pushes here, so a malloc/free pair does not wait on its own store to one list head).
    var localFree: UnsafeMutableRawPointer? {
        @inline(__always) get {
            raw.load(fromByteOffset: DIVVY_MALLOC_PAGE_LOCAL_FREE, as: UnsafeMutableRawPointer?.self)
        }
        @inline(__always) nonmutating set {
            raw.storeBytes(of: newValue, toByteOffset: DIVVY_MALLOC_PAGE_LOCAL_FREE, as: UnsafeMutableRawPointer?.self)
        }
    }
    var used: Int32 {
        @inline(__always) get { raw.load(fromByteOffset: DIVVY_MALLOC_PAGE_USED, as: Int32.self) }
        @inline(__always) nonmutating set {
            raw.storeBytes(of: newValue, toByteOffset: DIVVY_MALLOC_PAGE_USED, as: Int32.self)
        }
    }
    var capacity: Int32 {
        @inline(__always) get { raw.load(fromByteOffset: 76, as: Int32.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 76, as: Int32.self) }
    }
    var blockSize: Int {
        @inline(__always) get { raw.load(fromByteOffset: 8, as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 8, as: Int.self) }
    }
    var next: PageRef? {
        @inline(__always) get { raw.load(fromByteOffset: 88, as: UnsafeMutableRawPointer?.self).map(PageRef.init) }
        @inline(__always) nonmutating set {
            raw.storeBytes(of: newValue?.raw, toByteOffset: 88, as: UnsafeMutableRawPointer?.self)
        }
    }
    var prev: PageRef? {
        @inline(__always) get { raw.load(fromByteOffset: 96, as: UnsafeMutableRawPointer?.self).map(PageRef.init) }
        @inline(__always) nonmutating set {
            raw.storeBytes(of: newValue?.raw, toByteOffset: 96, as: UnsafeMutableRawPointer?.self)
        }
    }
    var start: UnsafeMutableRawPointer {
        @inline(__always) get { raw.load(fromByteOffset: 16, as: UnsafeMutableRawPointer.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 16, as: UnsafeMutableRawPointer.self) }
    }
    var carved: Int32 {
        @inline(__always) get { raw.load(fromByteOffset: 80, as: Int32.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 80, as: Int32.self) }
    }
    var sizeClass: Int {
        @inline(__always) get { Int(raw.load(fromByteOffset: 32, as: UInt8.self)) }
        nonmutating set { raw.storeBytes(of: UInt8(truncatingIfNeeded: newValue), toByteOffset: 32, as: UInt8.self) }
    }
    var kind: UInt8 {
        @inline(__always) get { raw.load(fromByteOffset: 33, as: UInt8.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 33, as: UInt8.self) }
    }
    var hasAligned: Bool {
        @inline(__always) get { raw.load(fromByteOffset: 34, as: UInt8.self) != 0 }
        nonmutating set { raw.storeBytes(of: newValue ? 1 : 0, toByteOffset: 34, as: UInt8.self) }
    }
    /// The page holds one block (a class from `M.firstSingleBlockClass` on): `blockSize` is that block's current
    /// usable size and may grow in place up to `areaSize`. Such a page is in no class queue: it is either empty
    /// (in a cache or pool) or handed out whole.
    var singleBlock: Bool {
        @inline(__always) get { raw.load(fromByteOffset: 35, as: UInt8.self) != 0 }
        nonmutating set { raw.storeBytes(of: newValue ? 1 : 0, toByteOffset: 35, as: UInt8.self) }
    }
    /// How far into the page blocks have reached since it was fresh or last trimmed: the bytes that may be resident.
    /// Raised when blocks are carved and when a single-block page's block grows; retention's purge gives back what
    /// lies past `M.poolResidentBytes` (MallocRetention.swift).
    var extent: Int {
        get { raw.load(fromByteOffset: 40, as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 40, as: Int.self) }
    }
    var areaSize: Int {
        @inline(__always) get { raw.load(fromByteOffset: 24, as: Int.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 24, as: Int.self) }
    }

    /// The segment holding this descriptor.
    @inline(__always) var segment: SegmentRef { SegmentRef(containing: raw) }

    /// The start of the block containing `pointer` (an aligned allocation may point inside its block).
    @inline(__always)
    func blockStart(_ pointer: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        guard hasAligned else { return pointer }
        let offset = pointer - start
        // Safe: pointer lies in this page's area, so offset >= 0 and the rounded offset stays in the area.
        return start + (offset - offset % blockSize)
    }
}

/// A thread heap (`heapSize` bytes, in the global metadata segment).
///
///     0     heads[61]  the current page of each class (the front of its queue), or nil
///     512   tails[61]
///     1024  global
///     1032  cacheCounts[3] (Int32 each, 4 bytes apart)
///     1048  caches[3]      empty pages kept for this thread, linked through `next`
///     1072  freeNext       link in the global list of free heap structures
///     1088  direct[65]     the current page for each 16-byte size step up to 1024 bytes (`(size + 15) >> 4`): the
///                          head of that size's class, so the malloc fast path needs no class computation (kept in
///                          step with `heads` by `setHead`)
///     1608  refills, 1616 pagesAcquired, 1624 pagesRetired: slow-path counters (MallocStatistics.swift)
struct HeapRef: Equatable {
    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    @inline(__always) static var size: Int { 1664 }

    @inline(__always)
    func head(_ cls: Int) -> PageRef? {
        raw.load(fromByteOffset: cls &* 8, as: UnsafeMutableRawPointer?.self).map(PageRef.init)
    }
    @inline(__always)
    func setHead(_ cls: Int, _ page: PageRef?) {
        raw.storeBytes(of: page?.raw, toByteOffset: cls &* 8, as: UnsafeMutableRawPointer?.self)
        // Hardened mode leaves the direct table empty, so the C malloc fast path (which reads links raw) always
        // declines and every allocation pops through `nextBlock`, which checks the link.
        guard cls <= M.lastDirectClass, divvy_malloc_link_key() == 0 else { return }
        // The size steps this class serves: (previous class's block size, this class's block size], in 16s.
        let first = cls <= 8 ? cls : blockSize(ofClass: cls &- 1) / 16 &+ 1
        let last = cls <= 8 ? cls : blockSize(ofClass: cls) / 16
        // Invariant: class 20's blocks are 1024 bytes, so `last` ≤ 64 and every store stays in the 65-entry table.
        assert(last <= DIVVY_MALLOC_FAST_MAX / 16, "direct table overrun")
        for step in first...last {
            raw.storeBytes(
                of: page?.raw, toByteOffset: DIVVY_MALLOC_HEAP_DIRECT &+ step &* 8, as: UnsafeMutableRawPointer?.self)
        }
    }
    @inline(__always)
    func tail(_ cls: Int) -> PageRef? {
        raw.load(fromByteOffset: 512 &+ cls &* 8, as: UnsafeMutableRawPointer?.self).map(PageRef.init)
    }
    @inline(__always)
    func setTail(_ cls: Int, _ page: PageRef?) {
        raw.storeBytes(of: page?.raw, toByteOffset: 512 &+ cls &* 8, as: UnsafeMutableRawPointer?.self)
    }
    var global: GlobalRef {
        @inline(__always) get { GlobalRef(raw.load(fromByteOffset: 1024, as: UnsafeMutableRawPointer.self)) }
        nonmutating set { raw.storeBytes(of: newValue.raw, toByteOffset: 1024, as: UnsafeMutableRawPointer.self) }
    }
    @inline(__always)
    func cacheCount(_ kind: Int) -> Int { Int(raw.load(fromByteOffset: 1032 &+ kind &* 4, as: Int32.self)) }
    @inline(__always)
    func setCacheCount(_ kind: Int, _ count: Int) {
        raw.storeBytes(of: Int32(truncatingIfNeeded: count), toByteOffset: 1032 &+ kind &* 4, as: Int32.self)
    }
    @inline(__always)
    func cache(_ kind: Int) -> PageRef? {
        raw.load(fromByteOffset: 1048 &+ kind &* 8, as: UnsafeMutableRawPointer?.self).map(PageRef.init)
    }
    @inline(__always)
    func setCache(_ kind: Int, _ page: PageRef?) {
        raw.storeBytes(of: page?.raw, toByteOffset: 1048 &+ kind &* 8, as: UnsafeMutableRawPointer?.self)
    }
    var freeNext: UnsafeMutableRawPointer? {
        get { raw.load(fromByteOffset: 1072, as: UnsafeMutableRawPointer?.self) }
        nonmutating set { raw.storeBytes(of: newValue, toByteOffset: 1072, as: UnsafeMutableRawPointer?.self) }
    }
}
