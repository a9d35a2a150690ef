// libDivvyMalloc.so: a Divvy heap as the process's malloc (`LD_PRELOAD=…/libDivvyMalloc.so program`).
//
// The exported symbols (`malloc`, `free`, …) are C, in `Sources/CDivvyMalloc/shim.c`: they find the calling
// thread's heap in a C thread-local (initial-exec TLS: one load from %fs), check arguments and set errno, and call
// the functions below. The heap itself is Swift:
//
// - `MallocLayout.swift`: 4 MiB segments of 64 KiB / 1 MiB / 4 MiB pages; a block's page is found from its address.
// - `MallocThreadHeap.swift`: per-thread heaps (the local sides): small/medium/large size classes allocated and
//   freed without any lock or atomic; frees from other threads through each page's lock-free remote-free stack;
//   thread exit returns empty pages and abandons the others for adoption.
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
// count moves. (In a debug build the Swift runtime may allocate metadata the first time a generic type is used;
// that happens once, during warm-up, and is served by the arena.)
import CDivvyMalloc

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

@_cdecl("divvy_malloc_swift_malloc")
@inline(__always)
public func divvyMallocSwiftMalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    HeapRef(heap).malloc(size)
}

@_cdecl("divvy_malloc_swift_free")
@inline(__always)
public func divvyMallocSwiftFree(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer) {
    HeapRef(heap).free(pointer)
}

@_cdecl("divvy_malloc_swift_calloc")
public func divvyMallocSwiftCalloc(_ heap: UnsafeMutableRawPointer, _ bytes: Int) -> UnsafeMutableRawPointer? {
    HeapRef(heap).calloc(bytes)
}

@_cdecl("divvy_malloc_swift_realloc")
public func divvyMallocSwiftRealloc(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ size: Int
) -> UnsafeMutableRawPointer? {
    HeapRef(heap).realloc(pointer, size)
}

/// `size` bytes aligned to `alignment`, a power of two (the shim validates and rounds).
@_cdecl("divvy_malloc_swift_aligned")
public func divvyMallocSwiftAligned(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    HeapRef(heap).alignedAllocate(alignment: alignment, size: size)
}

@_cdecl("divvy_malloc_swift_usable_size")
public func divvyMallocSwiftUsableSize(_ pointer: UnsafeMutableRawPointer) -> Int {
    usableSize(pointer)
}

/// Statistics for tests: 0 abandoned pages now, 1 pages adopted so far, 2 segments in use, 3 live thread heaps.
@_cdecl("divvy_malloc_swift_stat")
public func divvyMallocSwiftStat(_ global: UnsafeMutableRawPointer, _ which: Int) -> Int {
    let global = GlobalRef(global)
    switch which {
    case 0: return global.abandonedPages
    case 1: return global.adoptedPages
    case 2: return global.segmentsInUse
    case 3: return global.liveHeaps
    default: return -1
    }
}
