// The per-thread heap as a `CAllocationStrategy`, so libDivvyMalloc's C functions are `CAllocationAdapter`'s.
//
// The heap finds a block from its address (segment, then page: see MallocLayout.swift), so this strategy keeps no
// header; each requirement is one call into `HeapRef`. The adapter adds the C rules (size 0, alignment validation and
// rounding, calloc/reallocarray overflow, realloc(p, 0), errno); everything here is inlined into the `@_cdecl`
// functions in DivvyMalloc.swift.
import Divvy

#if canImport(Glibc)
    import Glibc
#endif

/// The calling thread's heap, as the adapter sees it.
struct ThreadHeapStrategy: CAllocationStrategy {
    /// The heap of the thread making the call (or the shim's placeholder, which owns no page, for a thread that has
    /// none: its frees take the remote path).
    let heap: HeapRef

    @inline(__always)
    init(_ heap: HeapRef) { self.heap = heap }

    /// 2 MiB: up to 64 KiB from an over-sized block, beyond that from a huge run aligned inside its first segment.
    @inline(__always)
    var maximumAlignment: Int { M.segmentSize / 2 }

    @inline(__always)
    func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        // The adapter's malloc passes the constant 16, so this folds to the heap's inlined fast path.
        alignment <= 16 ? heap.malloc(size) : heap.alignedAllocate(alignment: alignment, size: size)
    }

    /// The heap's `calloc` skips the memset for fresh huge runs (already zero from the kernel).
    @inline(__always)
    func allocateZeroed(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard alignment > 16 else { return heap.calloc(size) }
        guard let pointer = heap.alignedAllocate(alignment: alignment, size: size) else { return nil }
        memset(pointer, 0, size)
        return pointer
    }

    @inline(__always)
    func deallocate(_ pointer: UnsafeMutableRawPointer) {
        heap.free(pointer)
    }

    @inline(__always)
    func usableSize(of pointer: UnsafeMutableRawPointer) -> Int {
        DivvyMalloc.usableSize(pointer)
    }

    /// The heap's own `realloc`: in place when the block has room, huge runs grown in place, and room to double
    /// given to a block that moves (so growth chains copy O(log n) times). Blocks come back 16-byte aligned.
    @inline(__always)
    func reallocate(_ pointer: UnsafeMutableRawPointer, toSize size: Int) -> UnsafeMutableRawPointer? {
        heap.realloc(pointer, size)
    }
}

extension CAllocationAdapter where Strategy == ThreadHeapStrategy {
    /// The C functions over the heap at `heap` (a `HeapRef`'s address, as the shim passes it).
    @inline(__always)
    init(heap: UnsafeMutableRawPointer) {
        self.init(ThreadHeapStrategy(HeapRef(heap)))
    }
}
