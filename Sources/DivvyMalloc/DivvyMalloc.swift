// libDivvyMalloc.so: a Divvy composition as the process's malloc (`LD_PRELOAD=…/libDivvyMalloc.so program`).
//
// The exported symbols (`malloc`, `free`, …) are C, in `Sources/CDivvyMalloc/shim.c`: they keep a thread-local
// re-entry depth, serialise the heap with one process-wide lock (held across fork), and serve allocations made
// while the heap is being built from a static arena. They call the functions below, which hand each call to a
// `CAllocationAdapter` over the default composition.
//
// The default composition: `Segregator(threshold: 32 KiB, small: Pool(OSAllocator()), large: OSAllocator())`:
// size classes of slabs refilled from the OS for small blocks, one `mmap` per large block. It is single-threaded,
// hence the lock; per-thread `ConcurrentSlab.Local`s with remote frees are the planned replacement (issue 6).
//
// Nothing here allocates on the hot path: `DivvyMallocHeap` is created once (through the arena), reached through an
// unmanaged pointer without retain/release, and the adapter's paths are allocation-free (see `CAllocationAdapter`).
// A pool's first use of a size class builds a `Slab` object; that nested malloc lands in the arena.
import CDivvyMalloc
import Divvy

/// The composition libDivvyMalloc serves.
public typealias DivvyMallocComposition = Segregator<Pool<OSAllocator>, OSAllocator>

/// The one heap of the process: the adapter over the default composition.
public final class DivvyMallocHeap {
    /// The C functions, served by the composition.
    public let adapter: CAllocationAdapter<DivvyMallocComposition>

    /// Builds the default composition.
    ///
    /// - Throws: the pool's configuration error (cannot happen with the constants used).
    public init() throws(AllocationError) {
        let os = OSAllocator()
        adapter = CAllocationAdapter(Segregator(threshold: 32 << 10, small: try Pool(os), large: os))
    }
}

@inline(__always)
private func withHeap<R>(_ heap: UnsafeMutableRawPointer, _ body: (DivvyMallocHeap) -> R) -> R {
    // Safe: the heap was retained once by `divvy_malloc_swift_create` and is never released (it lives as long as
    // the process), so no retain/release is needed here.
    Unmanaged<DivvyMallocHeap>.fromOpaque(heap)._withUnsafeGuaranteedRef(body)
}

@_cdecl("divvy_malloc_swift_create")
public func divvyMallocSwiftCreate() -> UnsafeMutableRawPointer {
    guard let heap = try? DivvyMallocHeap() else {
        // Unreachable with the constant configuration; nothing can be reported from inside malloc anyway.
        fatalError("DivvyMalloc: cannot build the default composition")
    }
    return Unmanaged.passRetained(heap).toOpaque()
}

@_cdecl("divvy_malloc_swift_malloc")
public func divvyMallocSwiftMalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    withHeap(heap) { $0.adapter.malloc(size) }
}

@_cdecl("divvy_malloc_swift_free")
public func divvyMallocSwiftFree(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?) {
    withHeap(heap) { $0.adapter.free(pointer) }
}

@_cdecl("divvy_malloc_swift_calloc")
public func divvyMallocSwiftCalloc(_ heap: UnsafeMutableRawPointer, _ count: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    withHeap(heap) { $0.adapter.calloc(count, size) }
}

@_cdecl("divvy_malloc_swift_realloc")
public func divvyMallocSwiftRealloc(
    _ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?, _ size: Int
) -> UnsafeMutableRawPointer? {
    withHeap(heap) { $0.adapter.realloc(pointer, size) }
}

@_cdecl("divvy_malloc_swift_posix_memalign")
public func divvyMallocSwiftPosixMemalign(
    _ heap: UnsafeMutableRawPointer, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int,
    _ size: Int
) -> Int32 {
    withHeap(heap) { $0.adapter.posixMemalign(out, alignment: alignment, size: size) }
}

@_cdecl("divvy_malloc_swift_memalign")
public func divvyMallocSwiftMemalign(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    withHeap(heap) { $0.adapter.memalign(alignment: alignment, size: size) }
}

@_cdecl("divvy_malloc_swift_aligned_alloc")
public func divvyMallocSwiftAlignedAlloc(_ heap: UnsafeMutableRawPointer, _ alignment: Int, _ size: Int)
    -> UnsafeMutableRawPointer?
{
    withHeap(heap) { $0.adapter.alignedAlloc(alignment: alignment, size: size) }
}

@_cdecl("divvy_malloc_swift_valloc")
public func divvyMallocSwiftValloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    withHeap(heap) { $0.adapter.valloc(size) }
}

@_cdecl("divvy_malloc_swift_pvalloc")
public func divvyMallocSwiftPvalloc(_ heap: UnsafeMutableRawPointer, _ size: Int) -> UnsafeMutableRawPointer? {
    withHeap(heap) { $0.adapter.pvalloc(size) }
}

@_cdecl("divvy_malloc_swift_usable_size")
public func divvyMallocSwiftUsableSize(_ heap: UnsafeMutableRawPointer, _ pointer: UnsafeMutableRawPointer?) -> Int {
    withHeap(heap) { $0.adapter.mallocUsableSize(pointer) }
}
