#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a `CAllocationAdapter` gets blocks and finds them again from a bare pointer: the part of a C `malloc` that
/// depends on the memory underneath.
///
/// C's `free`, `realloc` and `malloc_usable_size` receive nothing but a pointer, so every C heap needs a way back from
/// a pointer to its block. There are two common ones, and a strategy is either:
///
/// - **A header** in front of every block that records its layout: works over any `Allocator`, costs a few bytes per
///   block. `HeaderStrategy` is this one.
/// - **An address map**: the block's size class and owner follow from its address alone (segments and pages aligned
///   to a power of two, as in mimalloc and in `libDivvyMalloc.so`'s per-thread heap). No bytes per block; the memory
///   must be laid out for it.
///
/// A strategy only allocates, frees, measures and resizes. Every rule of the C functions lives in the adapter, once,
/// for all strategies: sizes above `Int.max` (negative `Int`s) and overflowing products never reach the strategy,
/// alignments arrive validated (a power of two from 16 to `maximumAlignment`), `realloc(nil, n)` and `realloc(p, 0)`
/// never reach `reallocate`, and `errno` is set by the adapter on every failure. So the requirements below have
/// plain contracts and return nil on failure without touching `errno`.
///
/// Everything here runs inside `malloc` when the adapter is exported as the process's allocator: conforming types
/// must not allocate from the C heap on these paths (no class instances created, no arrays, strings, existentials or
/// escaping closures), and should be `@inlinable` (or in the same module as the `@_cdecl` functions) so the adapter
/// specializes and inlines away.
///
/// A minimal strategy over glibc's own heap (a header-less one: glibc finds its chunks itself). Swift's `Glibc` module
/// leaves out `<malloc.h>`, so `malloc_usable_size` comes from a C target of the program's own that includes it:
///
/// <!-- snippet: fragment -->
/// ```swift
/// import Glibc
/// import CMalloc   // your C target: a header with `#include <malloc.h>`
///
/// struct GlibcStrategy: CAllocationStrategy {
///     var maximumAlignment: Int { 1 << 30 }
///     func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
///         alignment == 16 ? Glibc.malloc(size) : aligned_alloc(alignment, size)
///     }
///     func deallocate(_ pointer: UnsafeMutableRawPointer) { Glibc.free(pointer) }
///     func usableSize(of pointer: UnsafeMutableRawPointer) -> Int { malloc_usable_size(pointer) }
/// }
/// let heap = CAllocationAdapter(GlibcStrategy())   // every C rule (calloc overflow, memalign rounding, …) included
/// ```
public protocol CAllocationStrategy {
    /// The strictest alignment `allocate(size:alignment:)` serves: a power of two, at least 16. The adapter fails
    /// stricter requests with `ENOMEM` without asking.
    var maximumAlignment: Int { get }

    /// A new block of at least `size` bytes aligned to `alignment`.
    ///
    /// - Parameters:
    ///   - size: `0...Int.max`. A zero-byte request still gets a unique pointer that `deallocate(_:)` accepts (the
    ///     adapter's `malloc(0)`).
    ///   - alignment: a power of two from 16 to `maximumAlignment`.
    /// - Returns: the block, or nil when it cannot be served; `errno` need not be set (the adapter sets it).
    func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer?

    /// `allocate(size:alignment:)` with the first `size` bytes zeroed (`calloc`).
    ///
    /// The default implementation allocates and zeroes; implement it when some blocks are known to be zero already
    /// (fresh pages from the kernel).
    func allocateZeroed(size: Int, alignment: Int) -> UnsafeMutableRawPointer?

    /// Gives back a block.
    ///
    /// - Parameter pointer: a live pointer returned by this strategy (never nil: the adapter handles `free(NULL)`).
    func deallocate(_ pointer: UnsafeMutableRawPointer)

    /// The bytes from `pointer` to the end of its block that the caller may use (`malloc_usable_size`), at least the
    /// size it was allocated with.
    ///
    /// - Parameter pointer: a live pointer returned by this strategy.
    func usableSize(of pointer: UnsafeMutableRawPointer) -> Int

    /// Resizes a block to `size` bytes: in place, or by moving it (allocate, copy, free).
    ///
    /// The default implementation keeps the block when `usableSize(of:)` already covers `size`, and otherwise moves
    /// it to a new 16-byte-aligned block, copying its usable bytes.
    ///
    /// - Parameters:
    ///   - pointer: a live pointer returned by this strategy.
    ///   - size: `1...Int.max` (the adapter turns `realloc(p, 0)` into a free and `realloc(nil, n)` into a malloc).
    /// - Returns: the block's address, its first `min(old size, size)` bytes preserved (the old size being what the
    ///   strategy knows of it: the requested size if it records one, else the usable size); or nil, and then the old
    ///   block is untouched and still live.
    func reallocate(_ pointer: UnsafeMutableRawPointer, toSize size: Int) -> UnsafeMutableRawPointer?
}

extension CAllocationStrategy {
    /// Allocates, then zeroes the first `size` bytes (every block may be a reused, dirty one).
    @inlinable
    public func allocateZeroed(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard let pointer = allocate(size: size, alignment: alignment) else { return nil }
        memset(pointer, 0, size)
        return pointer
    }

    /// In place when the block's usable size covers `size`; otherwise a new 16-byte-aligned block, the usable bytes
    /// copied, the old block freed. A strategy whose blocks have stricter alignments to keep, or that can grow in
    /// place, implements its own.
    @inlinable
    public func reallocate(_ pointer: UnsafeMutableRawPointer, toSize size: Int) -> UnsafeMutableRawPointer? {
        let usable = usableSize(of: pointer)
        if size <= usable { return pointer }
        guard let moved = allocate(size: size, alignment: 16) else { return nil }
        // Safe: usable < size, and both blocks hold at least that many bytes.
        memcpy(moved, pointer, usable)
        deallocate(pointer)
        return moved
    }
}
