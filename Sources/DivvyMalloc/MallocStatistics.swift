// libDivvyMalloc's statistics (`divvy_malloc_statistics`, `malloc_stats`, `malloc_info`: Sources/CDivvyMalloc/
// statistics.c formats them). Nothing is counted on the fast paths: blocks and bytes in use are derived, when asked,
// by walking every segment in use and reading each page's own counters (`used`, `capacity`, the length of its
// remote-free stack), and the only running counters are three per thread heap, bumped on slow paths that already
// take a page or give one back.
import Atomics
import CDivvyMalloc

// MARK: Slow-path counters of a thread heap (HeapRef layout: 1608, 1616, 1624)

extension HeapRef {
    var refills: Int { raw.load(fromByteOffset: 1608, as: Int.self) }
    var pagesAcquired: Int { raw.load(fromByteOffset: 1616, as: Int.self) }
    var pagesRetired: Int { raw.load(fromByteOffset: 1624, as: Int.self) }

    @inline(__always)
    private func bump(_ offset: Int) {
        // Only the owning thread writes its heap's counters; readers (the statistics walk) may see a stale value.
        raw.storeBytes(of: raw.load(fromByteOffset: offset, as: Int.self) &+ 1, toByteOffset: offset, as: Int.self)
    }

    /// A class's current page ran out of free blocks (`mallocSlow`).
    @inline(__always) func countRefill() { bump(1608) }
    /// The heap took a page: new, pooled, cached or adopted (`acquirePage`, `acquireEmptyPage`).
    @inline(__always) func countPageAcquired() { bump(1616) }
    /// The heap gave an empty page back to its cache or the pool (`retire`).
    @inline(__always) func countPageRetired() { bump(1624) }
}

/// Fills `statistics` (zeroed by the caller, who holds the heap's lock; `global` is nil before the first heap).
@_cdecl("divvy_malloc_swift_statistics")
public func divvyMallocSwiftStatistics(
    _ global: UnsafeMutableRawPointer?, _ statistics: UnsafeMutablePointer<divvy_malloc_statistics_t>
) {
    for cls in 0..<M.classCount { classEntry(statistics, cls).pointee.block_size = blockSize(ofClass: cls) }
    if let global { GlobalRef(global).collectStatistics(into: statistics) }
}

@inline(__always)
private func classEntry(_ s: UnsafeMutablePointer<divvy_malloc_statistics_t>, _ cls: Int)
    -> UnsafeMutablePointer<divvy_malloc_class_statistics_t>
{
    // Safe: 0 ≤ cls < DIVVY_MALLOC_STATISTICS_CLASSES (= M.classCount), an element of the struct's array.
    divvy_malloc_statistics_class(s, cls).unsafelyUnwrapped
}

@inline(__always)
private func heapEntry(_ s: UnsafeMutablePointer<divvy_malloc_statistics_t>, _ slot: Int)
    -> UnsafeMutablePointer<divvy_malloc_heap_statistics_t>
{
    // Safe: 0 ≤ slot < DIVVY_MALLOC_STATISTICS_HEAPS.
    divvy_malloc_statistics_heap(s, slot).unsafelyUnwrapped
}

extension GlobalRef {
    /// Walks every segment in use: huge runs count whole (freed ones are not in use;
    /// the retained ones are `huge_bytes_cached`), and every page that has served a
    /// class adds to its class and to its owner's heap entry. Pages are read while their owners may be allocating
    /// (the lock only keeps pages and segments from changing hands), so under load the figures are a moment's
    /// approximation; in a quiet process they are exact.
    func collectStatistics(into s: UnsafeMutablePointer<divvy_malloc_statistics_t>) {
        s.pointee.segments_in_use = segmentsInUse
        s.pointee.bytes_mapped = segmentsInUse << M.segmentShift
        s.pointee.thread_heaps = liveHeaps
        for r in 0..<rangeCount {
            let count = rangeSegmentCount(r)
            s.pointee.bytes_reserved += count << M.segmentShift
            let bits = bitmap(r)
            var index = 0
            while index < count {
                if bits[index >> 6] == 0 {
                    index = (index | 63) + 1
                    continue
                }
                let inUse = bits[index >> 6] & (1 << UInt64(index & 63)) != 0
                let segment = SegmentRef(rangeBase(r) + (index << M.segmentShift))
                index += 1
                guard inUse, segment.isHeapSegment(of: self) else { continue }
                if segment.pageShift == M.hugePageShift {
                    // Invariant: a run's segments are consecutive and all in use; skip the rest of it.
                    let run = Swift.max(1, Swift.min(segment.segments, count - index + 1))
                    index += run - 1
                    // Freed runs are not in use (their bits are clear): `huge_bytes_cached` counts them below.
                    s.pointee.huge_blocks += 1
                    s.pointee.huge_bytes_in_use += segment.page(0).blockSize
                    continue
                }
                for p in 0..<(M.segmentSize >> segment.pageShift) {
                    addPage(segment.page(p), to: s)
                }
            }
        }
        var classBytes = 0
        for cls in 0..<M.classCount { classBytes += classEntry(s, cls).pointee.bytes_in_use }
        s.pointee.bytes_in_use = classBytes + s.pointee.huge_bytes_in_use
        s.pointee.huge_bytes_cached = retainedSegmentBytes
    }

    private func addPage(_ page: PageRef, to s: UnsafeMutablePointer<divvy_malloc_statistics_t>) {
        let size = page.blockSize
        let cls = page.sizeClass
        // Never used yet (the rest of the segment its kind is being cut from).
        guard size > 0, cls < M.classCount else { return }
        let owner = page.owner.load(ordering: .relaxed) & ~1
        let used = Int(page.used)
        // A page nobody owns is empty (in a thread's cache or the pool), unless it was abandoned with live blocks.
        // A single-block page's owner is cleared when its block is freed (its `used` may stay 1).
        if owner == 0, page.singleBlock || used <= 0 {
            s.pointee.pages_empty += 1
            s.pointee.bytes_in_empty_pages += page.areaSize
            return
        }
        let blocks: Int
        let capacity: Int
        if page.singleBlock {
            blocks = 1
            capacity = 1
        } else {
            // Blocks other threads freed onto the page but its owner has not collected yet count as freed.
            let pending = Int(UInt(bitPattern: page.remoteFree.load(ordering: .relaxed)) &>> 48)
            blocks = Swift.max(0, used - pending)
            capacity = Int(page.capacity)
        }
        let bytes = blocks * size
        s.pointee.pages_in_use += 1
        if owner == 0 { s.pointee.pages_abandoned += 1 }
        let entry = classEntry(s, cls)
        entry.pointee.pages += 1
        entry.pointee.blocks_in_use += blocks
        entry.pointee.blocks_capacity += capacity
        entry.pointee.bytes_in_use += bytes
        // The owner's entry (owner 0: the abandoned pages' entry), found by a linear search of at most 64.
        let listed = s.pointee.heaps_listed
        var slot = 0
        while slot < listed, heapEntry(s, slot).pointee.heap != owner { slot += 1 }
        if slot == listed {
            guard listed < DIVVY_MALLOC_STATISTICS_HEAPS else {
                s.pointee.pages_unlisted += 1
                return
            }
            s.pointee.heaps_listed = listed + 1
            let heap = heapEntry(s, slot)
            heap.pointee.heap = owner
            if owner != 0, let address = UnsafeMutableRawPointer(bitPattern: owner) {
                let counters = HeapRef(address)
                heap.pointee.refills = counters.refills
                heap.pointee.pages_acquired = counters.pagesAcquired
                heap.pointee.pages_retired = counters.pagesRetired
            }
        }
        let heap = heapEntry(s, slot)
        heap.pointee.pages += 1
        heap.pointee.bytes_in_use += bytes
    }
}
