// libDivvyMalloc.so: a Divvy heap as the process's malloc (`LD_PRELOAD=…/libDivvyMalloc.so program`).
//
// The library is `CAllocationAdapter` (Sources/Divvy/Global) over the per-thread heap, composed here: each C function
// below is one line, `CAllocationAdapter(heap: heap).malloc(size)` and so on, where the adapter applies every C rule
// (size 0, alignment validation and rounding, calloc/reallocarray overflow, realloc(p, 0), pvalloc's pages, errno,
// posix_memalign's codes) and `ThreadHeapStrategy` (MallocStrategy.swift) maps allocate / deallocate / usable size /
// reallocate onto the heap's own calls. Specialized and inlined, malloc and free are the heap's own paths plus a
// sign check. The exported symbols (`malloc`, `free`, …) are C, in `Sources/CDivvyMalloc/shim.c`, and only gate:
// `malloc` and `free` first try the heap's call-free fast paths (CDivvyMallocFastPath.h, which serve no C rule: a
// small malloc from a non-empty list, an owner's free); otherwise every function finds the calling thread's heap in a
// C thread-local (initial-exec TLS: one load from %fs), marks the thread as inside the heap, and calls these
// functions; the bootstrap arena serves whatever comes before the heap is ready or from inside it. The heap itself
// is Swift:
//
// - `MallocLayout.swift`: 4 MiB segments of 64 KiB / 1 MiB / 4 MiB pages; a block's page is found from its address.
// - `MallocThreadHeap.swift`: per-thread heaps (the local sides): small/medium/large size classes allocated and
//   freed without any lock or atomic; frees from other threads through each page's lock-free remote-free stack;
//   blocks over 16 KiB in a page of their own, which `realloc` grows in place; thread exit returns empty pages and
//   abandons the others for adoption.
// - `MallocGlobal.swift`: the slow, locked parts: the address-space reservation (mapped with `OSAllocator`), page
//   pools, abandoned pages, huge blocks (runs of whole segments), heap structures.
//
// ## Why nothing here re-enters malloc
//
// Every path below works on raw memory the heap mapped itself, through one-pointer structs (`HeapRef`, `PageRef`,
// `SegmentRef`, `GlobalRef`) whose properties are loads and stores at fixed offsets: no class instances (so no
// allocation, retain or release), no arrays, strings, existentials or escaping closures, no lazy globals (constants
// are computed properties), no Swift-runtime calls. Atomics are swift-atomics' `UnsafeAtomic` over words in that
// memory. The shim enforces the rest: while a thread is inside these functions its re-entry depth is non-zero, and a
// malloc made then is served by the static bootstrap arena and *counted* (`divvy_malloc_reentries()`);
// `DivvyMallocPreloadTests.testTheHotPathNeverReentersMalloc` runs a workload under the preload and fails if the
// count moves. In a debug build nothing is specialized, and the Swift runtime allocates metadata the first time a
// generic type (`CAllocationAdapter<ThreadHeapStrategy>`) is used: `divvyMallocSwiftWarmUp` runs every entry point
// once when the first heap is created, at the shim's set-up depth, so that happens before any real call and is not a
// re-entry (`testNoCallReentersMallocFromTheFirstOne` checks the count is 0 from a process's first call on). The two
// C fast paths run before the depth is raised, which is safe because they call nothing at all:
// `testTheFastPathsCallNothingButTheFullPaths` reads the exported malloc's and free's machine code to make sure.
import CDivvyMalloc
import Divvy

/// Creates the process-wide state (called once, by the shim). Nil when no address space can be reserved.
@_cdecl("divvy_malloc_swift_global_create")
public func divvyMallocSwiftGlobalCreate() -> UnsafeMutableRawPointer? {
    GlobalRef.create()?.raw
}

/// A heap for the calling thread (called by the shim on a thread's first allocation).
@_cdecl("divvy_malloc_swift_heap_create")
public func divvyMallocSwiftHeapCreate(_ global: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
    GlobalRef(global).createHeap()?.raw
}

/// The thread owning `heap` is exiting (the shim's pthread key destructor).
@_cdecl("divvy_malloc_swift_heap_abandon")
public func divvyMallocSwiftHeapAbandon(_ heap: UnsafeMutableRawPointer) {
    HeapRef(heap).abandon()
}

// MARK: The C allocation functions: CAllocationAdapter over the calling thread's heap

/// `malloc(size)` from the calling thread's heap.
@_cdecl("divvy_malloc_swift_malloc")
@inline(__always)
public func divvyMallocSwiftMalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(heap: heap).malloc(size)
}

/// `free(pointer)`, not NULL (the shim returns early for NULL and for arena blocks).
@_cdecl("divvy_malloc_swift_free")
@inline(__always)
public func divvyMallocSwiftFree(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer) {
    CAllocationAdapter(heap: heap).free(pointer)
}

/// `calloc(count, size)`.
@_cdecl("divvy_malloc_swift_calloc")
public func divvyMallocSwiftCalloc(_ heap: UnsafeMutableRawPointer, _ count: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(heap: heap).calloc(count, size)
}

/// `realloc(pointer, size)` of a heap block (or NULL).
@_cdecl("divvy_malloc_swift_realloc")
public func divvyMallocSwiftRealloc(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ size: Int
) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(heap: heap).realloc(pointer, size)
}

/// `reallocarray(pointer, count, size)` of a heap block (or NULL).
@_cdecl("divvy_malloc_swift_reallocarray")
public func divvyMallocSwiftReallocarray(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ count: Int, _ size: Int
) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(heap: heap).reallocarray(pointer, count, size)
}

/// `posix_memalign(out, alignment, size)`.
@_cdecl("divvy_malloc_swift_posix_memalign")
public func divvyMallocSwiftPosixMemalign(
    _ heap: UnsafeMutableRawPointer, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int,
    _ size: Int
) -> Int32 {
    CAllocationAdapter(heap: heap).posixMemalign(out, alignment: alignment, size: size)
}

/// `aligned_alloc(alignment, size)`.
@_cdecl("divvy_malloc_swift_aligned_alloc")
public func divvyMallocSwiftAlignedAlloc(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(heap: heap).alignedAlloc(alignment: alignment, size: size)
}

/// `memalign(alignment, size)`.
@_cdecl("divvy_malloc_swift_memalign")
public func divvyMallocSwiftMemalign(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    CAllocationAdapter(heap: heap).memalign(alignment: alignment, size: size)
}

/// `valloc(size)`.
@_cdecl("divvy_malloc_swift_valloc")
public func divvyMallocSwiftValloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(heap: heap).valloc(size)
}

/// `pvalloc(size)`.
@_cdecl("divvy_malloc_swift_pvalloc")
public func divvyMallocSwiftPvalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    CAllocationAdapter(heap: heap).pvalloc(size)
}

/// `malloc_usable_size(pointer)` of a heap block (or NULL). `heap` may be the placeholder: it is not used.
@_cdecl("divvy_malloc_swift_usable_size")
public func divvyMallocSwiftUsableSize(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?) -> Int {
    CAllocationAdapter(heap: heap).mallocUsableSize(pointer)
}

/// Runs every function above once, successes and failures, on the heap just created for the calling thread (the
/// shim calls it once per process from set-up code, where the depth allows allocations).
///
/// In a debug build the adapter is not specialized: its generic code asks the Swift runtime for the metadata of
/// `CAllocationAdapter<ThreadHeapStrategy>` (and whatever else a path touches) on first use, and the runtime
/// allocates it with malloc. Inside a malloc-family call that nested malloc would be counted as a re-entry; here it is
/// a set-up allocation served by the arena. A release build specializes everything, and this only costs a few calls.
@_cdecl("divvy_malloc_swift_warm_up")
public func divvyMallocSwiftWarmUp(_ heap: UnsafeMutableRawPointer) {
    let adapter = CAllocationAdapter(heap: heap)
    adapter.free(adapter.malloc(24))
    adapter.free(adapter.calloc(3, 8))
    adapter.free(adapter.reallocarray(adapter.realloc(adapter.malloc(8), 5000), 2, 4000))
    _ = adapter.realloc(adapter.malloc(1), 0)
    var out: UnsafeMutableRawPointer? = nil
    if adapter.posixMemalign(&out, alignment: 64, size: 10) == 0 {
        _ = adapter.mallocUsableSize(out)
        adapter.free(out)
    }
    adapter.free(adapter.alignedAlloc(alignment: 256, size: 10))
    adapter.free(adapter.memalign(alignment: 100, size: 10))
    adapter.free(adapter.valloc(10))
    adapter.free(adapter.pvalloc(0))
    // The failure paths (they set errno; the shim restores it).
    _ = adapter.malloc(-1)
    _ = adapter.calloc(Int.max, 2)
    _ = adapter.reallocarray(nil, Int.max, 2)
    _ = adapter.posixMemalign(&out, alignment: 24, size: 8)
    _ = adapter.posixMemalign(&out, alignment: 1 << 30, size: 8)
    _ = adapter.alignedAlloc(alignment: 3, size: 8)
    _ = adapter.memalign(alignment: Int.min + 1, size: 8)
    _ = adapter.pvalloc(Int.max)
    _ = adapter.mallocUsableSize(nil)
    adapter.free(nil)
}

/// Statistics for tests: 0 abandoned pages now, 1 pages adopted so far, 2 segments in use, 3 live thread heaps,
/// 5 bytes retained (freed but resident), 6 bytes purged by the retention policy so far, 7 huge blocks moved by
/// mremap so far (4 is the shim's: thread exits).
@_cdecl("divvy_malloc_swift_stat")
public func divvyMallocSwiftStat(_ global: UnsafeMutableRawPointer, _ which: Int) -> Int {
    let global = GlobalRef(global)
    switch which {
    case 0: return global.abandonedPages
    case 1: return global.adoptedPages
    case 2: return global.segmentsInUse
    case 3: return global.liveHeaps
    case 5: return global.retainedBytes
    case 6: return global.purgedBytes
    case 7: return global.movedBlocks
    default: return -1
    }
}
