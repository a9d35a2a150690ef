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
///     768   retention (MallocRetention.swift): per-range bounds, retained totals, knobs, epoch, pool tails
///     1024  abandoned[61]: pages with live blocks whose thread exited, by class, linked through `next`
///     2048  stats: 2048 abandoned pages now, 2056 pages adopted, 2064 segments in use, 2072 heaps live
///     4096  bitmaps[16]: one bit per segment of each range (set = in use), 2048 bytes each
///     65536 retained bitmaps[16] (MallocRetention.swift): one bit per segment (set = free but still resident)
///     98304 thread heap structures (`heapStructuresOffset`)
struct GlobalRef {
    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    static var maximumRanges: Int { 16 }
    /// Segments per range at most: 64 GiB (the bitmap holds 16384 bits).
    static var rangeSegments: Int { 16384 }

    func word(_ offset: Int) -> Int { raw.load(fromByteOffset: offset, as: Int.self) }
    func setWord(_ offset: Int, _ value: Int) { raw.storeBytes(of: value, toByteOffset: offset, as: Int.self) }
    func pointer(_ offset: Int) -> UnsafeMutableRawPointer? {
        raw.load(fromByteOffset: offset, as: UnsafeMutableRawPointer?.self)
    }
    func setPointer(_ offset: Int, _ value: UnsafeMutableRawPointer?) {
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
        global.setPointer(8, base + GlobalRef.heapStructuresOffset)
        global.setPointer(16, base + M.segmentSize)
        global.initializeRetention()
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
    /// Retained segments are preferred (see MallocRetention.swift); a segment that held data has its metadata area
    /// zeroed, as a fresh one has (page descriptors start at zero).
    func allocateSegments(_ count: Int) -> SegmentRef? {
        guard let (segment, retained) = takeSegmentsAnywhere(count, preferRetained: true) else { return nil }
        if retained > 0 { memset(segment.raw, 0, M.metadataSize) }
        return segment
    }

    /// `takeSegments(_:inRange:preferRetained:)` over every range, reserving another range when none fits.
    func takeSegmentsAnywhere(_ count: Int, preferRetained: Bool) -> (SegmentRef, retained: Int)? {
        for r in 0..<rangeCount {
            if let found = takeSegments(count, inRange: r, preferRetained: preferRetained) { return found }
        }
        guard rangeCount < GlobalRef.maximumRanges, count <= GlobalRef.rangeSegments,
            let (base, segments) = GlobalRef.reserveRange(atLeast: count),
            UInt(bitPattern: base) + UInt(segments << M.segmentShift) <= 1 << 48
        else { return nil }
        let r = rangeCount
        raw.storeBytes(of: base, toByteOffset: 64 + r * 16, as: UnsafeMutableRawPointer.self)
        setWord(72 + r * 16, segments)
        bitmap(r).initialize(repeating: 0, count: GlobalRef.rangeSegments / 64)
        retainedBitmap(r).initialize(repeating: 0, count: GlobalRef.rangeSegments / 64)
        rangeCount = r + 1
        return takeSegments(count, inRange: r, preferRetained: preferRetained)
    }

    func setBits(_ r: Int, from start: Int, count: Int, to value: Bool) {
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
    func locate(_ segment: SegmentRef) -> (range: Int, index: Int)? {
        let address = UInt(bitPattern: segment.raw)
        for r in 0..<rangeCount {
            let base = UInt(bitPattern: rangeBase(r))
            if address >= base, address < base + UInt(rangeSegmentCount(r) << M.segmentShift) {
                return (r, Int((address - base) >> UInt(M.segmentShift)))
            }
        }
        return nil
    }

    /// Returns a run of segments whose memory is already clean (zero-filled when reused); resident ones go through
    /// `retainSegments` instead.
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
        claimRetained(r, from: index + count, count: newCount - count)
        segmentsInUse += newCount - count
        return true
    }

    // MARK: Pages (caller holds the lock)

    /// The most recently pooled empty page of `kind` (pools are doubly linked through `next` and `prev`: the head
    /// is the warmest page, the tail the one retention purges first).
    func popPool(_ kind: Int) -> PageRef? {
        guard let page = pointer(512 + kind * 8).map(PageRef.init) else { return nil }
        setPointer(512 + kind * 8, page.next?.raw)
        if let next = page.next { next.prev = nil } else { setPoolTail(kind, nil) }
        page.next = nil
        reusePoolPage(extra: poolExtraBytes(page))
        return page
    }

    /// Gives an empty page to its pool, with whatever it touched still resident: retention decides what goes back
    /// to the kernel, and when (MallocRetention.swift).
    func pushPool(_ page: PageRef) {
        let kind = Int(page.kind)
        page.next = pointer(512 + kind * 8).map(PageRef.init)
        page.prev = nil
        if let head = page.next { head.prev = page } else { setPoolTail(kind, page) }
        setPointer(512 + kind * 8, page.raw)
        retainPoolPage(extra: poolExtraBytes(page))
    }

    func setPoolHead(_ kind: Int, _ page: PageRef?) { setPointer(512 + kind * 8, page?.raw) }

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
        let taken = takeSegmentsAnywhere(count, preferRetained: true)
        tickRetention()
        divvy_malloc_unlock()
        guard let (segment, retained) = taken else { return nil }
        let dirty = retained > 0
        // Every field is set: a retained segment's header holds whatever its last user wrote there.
        segment.segments = count
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
        page.singleBlock = false
        page.extent = 0
        page.used = 1
        return page.start
    }

    /// Gives a huge block's run back: its segments become free and stay resident (retained) until the retention
    /// policy purges them (MallocRetention.swift).
    func hugeFree(_ page: PageRef) {
        let segment = page.segment
        divvy_malloc_lock()
        retainSegments(segment, count: segment.segments)
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
