// The process-wide part of libDivvyMalloc's heap: the address-space reservation and its segment bitmap, the pools
// of empty pages, the lists of abandoned pages, and the thread heap structures. Everything here runs under the
// shim's one global lock (`divvy_malloc_lock`), and only on slow paths: taking a new page (once per page of blocks),
// huge blocks, thread start and exit. The small-size malloc/free paths never come here.
import Atomics
import CDivvyMalloc
import Divvy

#if canImport(Glibc)
    import Glibc
#endif

/// The global metadata (the first segment of the first reservation).
///
///     0     rangeCount
///     8     heapBump, 16 heapEnd: where new thread heap structures are carved
///     24    freeHeaps: heap structures of exited threads, linked through `HeapRef.freeNext`
///     64    ranges[16]: (base, segments)
///     512   pools[3]: empty pages by kind, linked through `next`
///     544   carving[3]: the segment new pages of each kind are cut from; 576 nextPage[3]
///     608   hugeCache: freed huge runs kept mapped for reuse (linked through `SegmentRef.cacheNext`);
///     616   hugeCacheSegments: their total length
///     1024  abandoned[61]: pages with live blocks whose thread exited, by class, linked through `next`
///     2048  stats: 2048 abandoned pages now, 2056 pages adopted, 2064 segments in use, 2072 heaps live
///     4096  bitmaps[16]: one bit per segment of each range (set = in use), 2048 bytes each
///     65536 thread heap structures
struct GlobalRef {
    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    static var maximumRanges: Int { 16 }
    /// Segments per range at most: 64 GiB (the bitmap holds 16384 bits).
    static var rangeSegments: Int { 16384 }

    private func word(_ offset: Int) -> Int { raw.load(fromByteOffset: offset, as: Int.self) }
    private func setWord(_ offset: Int, _ value: Int) { raw.storeBytes(of: value, toByteOffset: offset, as: Int.self) }
    private func pointer(_ offset: Int) -> UnsafeMutableRawPointer? {
        raw.load(fromByteOffset: offset, as: UnsafeMutableRawPointer?.self)
    }
    private func setPointer(_ offset: Int, _ value: UnsafeMutableRawPointer?) {
        raw.storeBytes(of: value, toByteOffset: offset, as: UnsafeMutableRawPointer?.self)
    }

    var rangeCount: Int {
        get { word(0) }
        nonmutating set { setWord(0, newValue) }
    }
    func rangeBase(_ r: Int) -> UnsafeMutableRawPointer { pointer(64 + r * 16).unsafelyUnwrapped }
    func rangeSegmentCount(_ r: Int) -> Int { word(72 + r * 16) }
    func bitmap(_ r: Int) -> UnsafeMutablePointer<UInt64> {
        (raw + 4096 + r * 2048).assumingMemoryBound(to: UInt64.self)
    }

    /// Statistics for tests and diagnostics (read without the lock: approximate while threads run).
    var abandonedPages: Int {
        get { word(2048) }
        nonmutating set { setWord(2048, newValue) }
    }
    var adoptedPages: Int {
        get { word(2056) }
        nonmutating set { setWord(2056, newValue) }
    }
    var segmentsInUse: Int {
        get { word(2064) }
        nonmutating set { setWord(2064, newValue) }
    }
    var liveHeaps: Int {
        get { word(2072) }
        nonmutating set { setWord(2072, newValue) }
    }

    // MARK: Creation

    /// Reserves the first range and lays out the global metadata in its first segment. Called once, by the shim,
    /// with allocations from the Swift runtime (if any) diverted to the bootstrap arena.
    static func create() -> GlobalRef? {
        guard let (base, segments) = reserveRange(atLeast: 2) else { return nil }
        // Invariant: remote-free words keep block addresses in 48 bits (see `HeapRef.freeSlow`).
        guard UInt(bitPattern: base) + UInt(segments << M.segmentShift) <= 1 << 48 else { return nil }
        let global = GlobalRef(base)
        // The reservation is fresh (zero-filled), so every field starts at zero/nil.
        global.raw.storeBytes(of: base, toByteOffset: 64, as: UnsafeMutableRawPointer.self)
        global.setWord(72, segments)
        global.rangeCount = 1
        global.bitmap(0)[0] = 1  // segment 0 is this metadata
        global.segmentsInUse = 1
        global.setPointer(8, base + 65536)
        global.setPointer(16, base + M.segmentSize)
        return global
    }

    /// Maps a reservation (read-write, `MAP_NORESERVE`: only touched pages are ever backed) of up to 64 GiB,
    /// aligned to a segment, with `OSAllocator`. Halves the request until the kernel agrees.
    private static func reserveRange(atLeast minimum: Int) -> (UnsafeMutableRawPointer, Int)? {
        #if !hasFeature(Embedded)
            let os = OSAllocator(.init(commit: .reserveOnly))
        #endif
        var segments = rangeSegments
        while segments >= minimum {
            #if hasFeature(Embedded)
                if let start = reserveAligned(segments << M.segmentShift) { return (start, segments) }
            #else
                if let layout = try? Layout(size: segments << M.segmentShift, alignment: M.segmentSize),
                    let block = try? os.allocate(layout)
                {
                    return (block.start, segments)
                }
            #endif
            if segments == minimum { break }
            segments = Swift.max(segments / 4, minimum)
        }
        return nil
    }

    #if hasFeature(Embedded)
        /// What `OSAllocator(.init(commit: .reserveOnly)).allocate(Layout(size: bytes, alignment: segmentSize))`
        /// does, for the no-runtime build (deploy/build-libdivvymalloc.sh), which does not compile `OSAllocator`: it
        /// needs swift-system and lazily initialised globals read from /sys into arrays, none of which Embedded Swift
        /// without allocations offers. Maps `bytes` plus one segment `MAP_NORESERVE` and unmaps the unaligned head
        /// and tail (mmap(2), munmap(2)).
        private static func reserveAligned(_ bytes: Int) -> UnsafeMutableRawPointer? {
            let slop = M.segmentSize
            let mapped = mmap(
                nil, bytes + slop, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            // MAP_FAILED is `(void *)-1`, a macro Swift does not import.
            guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else { return nil }
            let address = UInt(bitPattern: mapped)
            // Safe: slop is a power of two, and the aligned start leaves `bytes` inside the mapping.
            let start = (address + UInt(slop - 1)) & ~UInt(slop - 1)
            let head = Int(start - address)
            if head > 0 { _ = munmap(mapped, head) }
            if slop - head > 0 { _ = munmap(mapped + head + bytes, slop - head) }
            return mapped + head
        }
    #endif

    // MARK: Segments (caller holds the lock)

    /// Marks a run of `count` free segments in use and returns its first; reserves another range when none fits.
    func allocateSegments(_ count: Int) -> SegmentRef? {
        for r in 0..<rangeCount {
            if let segment = allocateSegments(count, inRange: r) { return segment }
        }
        guard rangeCount < GlobalRef.maximumRanges, count <= GlobalRef.rangeSegments,
            let (base, segments) = GlobalRef.reserveRange(atLeast: count),
            UInt(bitPattern: base) + UInt(segments << M.segmentShift) <= 1 << 48
        else { return nil }
        let r = rangeCount
        raw.storeBytes(of: base, toByteOffset: 64 + r * 16, as: UnsafeMutableRawPointer.self)
        setWord(72 + r * 16, segments)
        bitmap(r).initialize(repeating: 0, count: GlobalRef.rangeSegments / 64)
        rangeCount = r + 1
        return allocateSegments(count, inRange: r)
    }

    private func allocateSegments(_ count: Int, inRange r: Int) -> SegmentRef? {
        let bits = bitmap(r)
        let total = rangeSegmentCount(r)
        var index = 0
        var runStart = 0
        var runLength = 0
        while index < total {
            let word = bits[index >> 6]
            if word == ~0 {
                index = (index | 63) + 1
                runStart = index
                runLength = 0
                continue
            }
            if word & (1 << UInt64(index & 63)) != 0 {
                index += 1
                runStart = index
                runLength = 0
                continue
            }
            index += 1
            runLength += 1
            if runLength == count {
                setBits(r, from: runStart, count: count, to: true)
                segmentsInUse += count
                return SegmentRef(rangeBase(r) + (runStart << M.segmentShift))
            }
        }
        return nil
    }

    private func setBits(_ r: Int, from start: Int, count: Int, to value: Bool) {
        let bits = bitmap(r)
        for i in start..<(start + count) {
            if value {
                bits[i >> 6] |= 1 << UInt64(i & 63)
            } else {
                bits[i >> 6] &= ~(1 << UInt64(i & 63))
            }
        }
    }

    /// The range and index of `segment`.
    private func locate(_ segment: SegmentRef) -> (range: Int, index: Int)? {
        let address = UInt(bitPattern: segment.raw)
        for r in 0..<rangeCount {
            let base = UInt(bitPattern: rangeBase(r))
            if address >= base, address < base + UInt(rangeSegmentCount(r) << M.segmentShift) {
                return (r, Int((address - base) >> UInt(M.segmentShift)))
            }
        }
        return nil
    }

    /// Returns a run of segments (already emptied with `MADV_DONTNEED`, so it is zero-filled when reused).
    func releaseSegments(_ segment: SegmentRef, count: Int) {
        guard let (r, index) = locate(segment) else { return }
        setBits(r, from: index, count: count, to: false)
        segmentsInUse -= count
    }

    /// Extends a run in place by marking the segments after it in use, if they are free.
    func extendSegments(_ segment: SegmentRef, from count: Int, to newCount: Int) -> Bool {
        guard let (r, index) = locate(segment), index + newCount <= rangeSegmentCount(r) else { return false }
        let bits = bitmap(r)
        for i in (index + count)..<(index + newCount) where bits[i >> 6] & (1 << UInt64(i & 63)) != 0 {
            return false
        }
        setBits(r, from: index + count, count: newCount - count, to: true)
        segmentsInUse += newCount - count
        return true
    }

    // MARK: Pages (caller holds the lock)

    func popPool(_ kind: Int) -> PageRef? {
        guard let page = pointer(512 + kind * 8).map(PageRef.init) else { return nil }
        setPointer(512 + kind * 8, page.next?.raw)
        return page
    }

    func pushPool(_ page: PageRef) {
        let kind = Int(page.kind)
        page.next = pointer(512 + kind * 8).map(PageRef.init)
        setPointer(512 + kind * 8, page.raw)
    }

    func popAbandoned(_ cls: Int) -> PageRef? {
        guard let page = pointer(1024 + cls * 8).map(PageRef.init) else { return nil }
        setPointer(1024 + cls * 8, page.next?.raw)
        abandonedPages -= 1
        adoptedPages += 1
        return page
    }

    func pushAbandoned(_ page: PageRef) {
        let cls = page.sizeClass
        page.next = pointer(1024 + cls * 8).map(PageRef.init)
        setPointer(1024 + cls * 8, page.raw)
        abandonedPages += 1
    }

    /// A page never used before, cut from the current segment of its kind (a new segment when that one is used up).
    func newPage(_ kind: Int) -> PageRef? {
        let shift = M.pageShift(ofKind: kind)
        let pages = M.segmentSize >> shift
        var segment = pointer(544 + kind * 8).map { SegmentRef($0) }
        var index = word(576 + kind * 8)
        if segment == nil || index == pages {
            guard let fresh = allocateSegments(1) else { return nil }
            fresh.pageShift = shift
            fresh.kind = kind
            fresh.segments = 1
            fresh.global = self
            segment = fresh
            index = 0
            setPointer(544 + kind * 8, fresh.raw)
        }
        let owner = segment.unsafelyUnwrapped
        setWord(576 + kind * 8, index + 1)
        let page = owner.page(index)
        let offset = index == 0 ? M.metadataSize : index << shift
        page.start = owner.raw + offset
        page.areaSize = ((index + 1) << shift) - offset
        page.kind = UInt8(kind)
        return page
    }

    // MARK: Huge blocks

    /// A block of `size` bytes aligned to `alignment` (a power of two up to 2 MiB) in a run of its own segments.
    /// The run is zero-filled.
    func hugeAllocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard size >= 0, alignment > 0, alignment <= M.segmentSize / 2 else { return nil }
        // Safe: alignment is a power of two up to 2 MiB, so the offset is at most 2 MiB, inside the first segment.
        let offset = (M.metadataSize + alignment - 1) & ~(alignment - 1)
        guard size <= Int.max - offset - M.segmentSize else { return nil }
        let count = (offset + size + M.segmentSize - 1) >> M.segmentShift
        divvy_malloc_lock()
        var run = takeCachedRun(count)
        let dirty = run != nil
        if run == nil { run = allocateSegments(count) }
        divvy_malloc_unlock()
        guard let segment = run else { return nil }
        if !dirty { segment.segments = count }
        segment.pageShift = M.hugePageShift
        segment.kind = Int(M.hugeKind)
        segment.global = self
        segment.dirty = dirty
        let total = segment.segments
        let page = segment.page(0)
        page.remoteFree.store(0, ordering: .relaxed)
        page.owner.store(0, ordering: .relaxed)
        page.kind = M.hugeKind
        page.start = segment.raw + offset
        page.areaSize = (total << M.segmentShift) - offset
        page.blockSize = page.areaSize
        page.hasAligned = false
        page.used = 1
        return page.start
    }

    /// Freed huge runs kept mapped, at most this many segments in all (64 MiB): a program that allocates and frees
    /// multi-megabyte buffers in a loop reuses them instead of faulting fresh pages in each time.
    static var hugeCacheLimit: Int { 16 }

    /// (Internal, not private: the hardened free and the statistics walk read it, under the lock.)
    var hugeCache: SegmentRef? {
        get { pointer(608).map { SegmentRef($0) } }
        nonmutating set { setPointer(608, newValue?.raw) }
    }
    private var hugeCacheSegments: Int {
        get { word(616) }
        nonmutating set { setWord(616, newValue) }
    }

    /// A cached run of at least `count` segments and at most twice that (caller holds the lock).
    private func takeCachedRun(_ count: Int) -> SegmentRef? {
        var previous: SegmentRef? = nil
        var cursor = hugeCache
        while let run = cursor {
            if run.segments >= count, run.segments <= 2 * count {
                if let previous { previous.cacheNext = run.cacheNext } else { hugeCache = run.cacheNext }
                hugeCacheSegments -= run.segments
                return run
            }
            previous = run
            cursor = run.cacheNext
        }
        return nil
    }

    /// Gives a huge block's run back: into the cache of freed runs while it has room, else to the kernel at once.
    func hugeFree(_ page: PageRef) {
        let segment = page.segment
        let count = segment.segments
        divvy_malloc_lock()
        if hugeCacheSegments + count <= GlobalRef.hugeCacheLimit {
            segment.cacheNext = hugeCache
            hugeCache = segment
            hugeCacheSegments += count
            divvy_malloc_unlock()
            return
        }
        divvy_malloc_unlock()
        // Safe: the run is ours and nobody else uses it; MADV_DONTNEED makes it zero-filled for its next user.
        _ = madvise(segment.raw, count << M.segmentShift, MADV_DONTNEED)
        divvy_malloc_lock()
        releaseSegments(segment, count: count)
        divvy_malloc_unlock()
    }

    /// Whether a huge block's memory may hold old data (calloc must zero it then).
    func hugeIsDirty(_ page: PageRef) -> Bool { page.segment.dirty }

    /// Grows a huge block in place to hold `size` bytes after `start`, if the segments after its run are free.
    func hugeGrow(_ page: PageRef, to size: Int) -> Bool {
        let segment = page.segment
        let offset = page.start - segment.raw
        guard size <= Int.max - offset - M.segmentSize else { return false }
        let count = segment.segments
        let newCount = (offset + size + M.segmentSize - 1) >> M.segmentShift
        divvy_malloc_lock()
        defer { divvy_malloc_unlock() }
        guard extendSegments(segment, from: count, to: newCount) else { return false }
        segment.segments = newCount
        page.areaSize = (newCount << M.segmentShift) - offset
        page.blockSize = page.areaSize
        return true
    }

    // MARK: Thread heaps

    /// A zeroed heap structure for a new thread.
    func createHeap() -> HeapRef? {
        divvy_malloc_lock()
        defer { divvy_malloc_unlock() }
        var memory = pointer(24)
        if let reused = memory {
            setPointer(24, HeapRef(reused).freeNext)
        } else {
            var bump = pointer(8).unsafelyUnwrapped
            if bump + HeapRef.size > pointer(16).unsafelyUnwrapped {
                guard let segment = allocateSegments(1) else { return nil }
                bump = segment.raw
                setPointer(16, segment.raw + M.segmentSize)
            }
            setPointer(8, bump + HeapRef.size)
            memory = bump
        }
        let heap = HeapRef(memory.unsafelyUnwrapped)
        heap.raw.initializeMemory(as: UInt8.self, repeating: 0, count: HeapRef.size)
        heap.global = self
        liveHeaps += 1
        return heap
    }

    func destroyHeap(_ heap: HeapRef) {
        divvy_malloc_lock()
        heap.freeNext = pointer(24)
        setPointer(24, heap.raw)
        liveHeaps -= 1
        divvy_malloc_unlock()
    }
}
