#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The C allocation functions (`malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
/// `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`) over any source of blocks: the original
/// crate's `WrapAsGlobal`.
///
/// Swift has no global-allocator hook. On Linux the equivalent is the C allocation ABI, which a shared library can
/// export and `LD_PRELOAD` can install; this adapter is the library-level half of that. It gives each function its C
/// semantics (results as optional raw pointers, failures reported in `errno`), so a thin `@_cdecl` layer can export
/// it unchanged. `libDivvyMalloc.so` is exactly that: this adapter over its per-thread heap.
///
/// The memory underneath is a `CAllocationStrategy`: how blocks are allocated and found again from a bare pointer.
/// Over any `Allocator` that is `HeaderStrategy` (a 16-byte header per block), which the convenience initializer
/// picks:
///
/// ```swift
/// let heap = CAllocationAdapter(Segregator(threshold: 32 << 10, small: try Pool(OSAllocator()), large: OSAllocator()))
/// if let p = heap.malloc(100) {           // nil and errno == ENOMEM when out of memory
///     let q = heap.realloc(p, 1000) ?? p  // contents kept; on failure nil, ENOMEM, and `p` still valid
///     heap.free(q)
/// }
/// ```
///
/// A memory layout that finds blocks from their addresses (segments and pages, as the per-thread heap does) needs no
/// header: it conforms to `CAllocationStrategy` itself and gets the same C functions with `CAllocationAdapter(mine)`.
///
/// ## The C rules, in one place for every strategy
///
/// - `malloc(0)` (and `calloc` with a zero product, `aligned_alloc(a, 0)`, …) returns a unique, non-null pointer to
///   a zero-byte block, which must be freed like any other (glibc does the same).
/// - `free(nil)` does nothing.
/// - `realloc(p, 0)` with `p != nil` frees `p` and returns nil without setting `errno` (glibc's behaviour);
///   `realloc(nil, n)` is `malloc(n)`. A failed `realloc` leaves the old block untouched and owned by the caller.
///   Whether a block keeps an alignment stricter than 16 across `realloc` is the strategy's (`HeaderStrategy` keeps
///   it; C does not promise it).
/// - `calloc` and `reallocarray` check `count × size` for overflow before anything is allocated; `calloc` always
///   zeroes (through the strategy's `allocateZeroed`, which may skip memory it knows is zero).
/// - `aligned_alloc` requires a power-of-two alignment (C17, glibc 2.38); the size need not be a multiple of it.
///   `memalign` rounds a non-power-of-two alignment up, as glibc does; `posix_memalign` requires a power of two that
///   is a multiple of `sizeof(void *)`. Alignments below 16 are served at 16 (`max_align_t`).
/// - `valloc` aligns to the page; `pvalloc` also rounds the size up to whole pages, and `pvalloc(0)` returns one.
/// - Sizes are `Int` because Swift imports `size_t` as `Int`: a negative value is a `size_t` above `Int.max`, which
///   fails with `ENOMEM` before the strategy is asked. Alignments above the strategy's `maximumAlignment` fail with
///   `ENOMEM` too.
/// - Every failure sets `errno` (`ENOMEM`, or `EINVAL` for a bad alignment), except `posix_memalign`, which returns
///   the code and leaves both `errno` and its output untouched.
///
/// ## No re-entry
///
/// Once exported as the process's `malloc`, this code runs inside `malloc` itself, so nothing on these paths may
/// allocate: every path is `@inlinable` generic code over `Strategy` (no existentials, no closures that capture, no
/// class instances, arrays or strings, no dynamic casts), errors are `AllocationError` values with `StaticString`
/// reasons (typed throws, never boxed), `errno` is set through the C shim, and traps write a `StaticString` with
/// `write(2)` and call `abort()` instead of formatting a message. Specialized for a concrete strategy, the adapter
/// inlines down to the strategy's own calls plus the checks above. `GlobalAllocatorAdapterTests` checks this with
/// glibc's `mtrace` in a child process, and `DivvyMallocPreloadTests` with the shared library's re-entry counter.
/// Whether the *strategy* allocates from the C heap is its business: a `Pool` builds each class's `Slab` object on
/// first use, so a shared library warms its classes up or uses allocators that never do.
///
/// Thread safety is the strategy's: the adapter adds no state, and is `Sendable` when `Strategy` is.
@frozen
public struct CAllocationAdapter<Strategy: CAllocationStrategy> {
    /// How blocks are allocated, freed and found from a bare pointer.
    public let strategy: Strategy

    /// Serves the C allocation functions from `strategy`.
    @inlinable
    public init(_ strategy: Strategy) {
        self.strategy = strategy
    }

    /// The alignment every block gets at least: 16 bytes, `alignof(max_align_t)` on x86_64 and arm64.
    @inlinable
    public static var minimumAlignment: Int { 16 }

    /// The strictest alignment served (the strategy's); stricter requests fail with `ENOMEM`.
    @inlinable
    public var maximumAlignment: Int { strategy.maximumAlignment }
}

extension CAllocationAdapter: Sendable where Strategy: Sendable {}

// MARK: Any allocator, through a header

extension CAllocationAdapter {
    /// Serves the C allocation functions from any allocator, finding blocks through a 16-byte header
    /// (`HeaderStrategy`).
    ///
    /// - Parameters:
    ///   - base: any allocator. It must honour the alignments it is asked for, up to the largest the program
    ///     requests (16 for plain `malloc`), or throw.
    ///   - checksFrees: verify headers and detect double frees (default true; costs a multiply and a compare).
    @inlinable
    public init<Base: Allocator>(_ base: Base, checksFrees: Bool = true) where Strategy == HeaderStrategy<Base> {
        self.init(HeaderStrategy(base, checksFrees: checksFrees))
    }

    /// `free` that reports a bad pointer instead of trapping, whatever `checksFrees` says.
    ///
    /// - Throws: `.doubleFree` when the header says the block was already freed, `.foreignBlock` when `pointer` is
    ///   misaligned or its header does not check out; nothing is freed or changed then.
    @inlinable
    public func checkedFree<Base>(_ pointer: UnsafeMutableRawPointer?) throws(AllocationError)
    where Strategy == HeaderStrategy<Base> {
        guard let pointer else { return }
        try strategy.checkedDeallocate(pointer)
    }

    /// The size `pointer` was requested with (by `malloc`, `realloc`, …), for diagnostics and tests.
    ///
    /// - Precondition: `pointer` is live and came from this adapter (checked when `checksFrees`).
    @inlinable
    public func requestedSize<Base>(_ pointer: UnsafeMutableRawPointer) -> Int where Strategy == HeaderStrategy<Base> {
        strategy.requestedSize(of: pointer)
    }
}

// MARK: The C functions

extension CAllocationAdapter {
    /// `malloc(3)`: `size` bytes aligned to 16.
    ///
    /// - Returns: the memory, or nil with `errno = ENOMEM`. `malloc(0)` returns a unique pointer to free later.
    /// - Complexity: the strategy's `allocate`.
    @inlinable
    @inline(__always)  // the hot pair: inlined into the exported function, not called from it
    public func malloc(_ size: Int) -> UnsafeMutableRawPointer? {
        guard size >= 0, let pointer = strategy.allocate(size: size, alignment: Self.minimumAlignment) else {
            return _fail(ENOMEM)
        }
        return pointer
    }

    /// `free(3)`: gives a block back. `free(nil)` does nothing.
    ///
    /// - Precondition: `pointer` came from this adapter (any of its functions) and was not freed since. What a bad
    ///   pointer does is the strategy's (`HeaderStrategy` with `checksFrees` traps with `"double free"` or
    ///   `"invalid pointer"`).
    @inlinable
    @inline(__always)  // the hot pair: inlined into the exported function, not called from it
    public func free(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        strategy.deallocate(pointer)
    }

    /// `calloc(3)`: `count × size` zeroed bytes aligned to 16.
    ///
    /// - Returns: the zeroed memory, or nil with `errno = ENOMEM` when the product overflows or the strategy fails.
    /// - Complexity: the allocation plus zeroing `count × size` bytes (unless the strategy knows they are zero).
    @inlinable
    public func calloc(_ count: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let bytes = _product(count, size),
            let pointer = strategy.allocateZeroed(size: bytes, alignment: Self.minimumAlignment)
        else { return _fail(ENOMEM) }
        return pointer
    }

    /// `realloc(3)`: resizes a block, in place when the strategy can, preserving its contents.
    ///
    /// - `realloc(nil, size)` is `malloc(size)`.
    /// - `realloc(p, 0)` frees `p` and returns nil, leaving `errno` alone (glibc).
    /// - Otherwise the first `min(old size, size)` bytes are kept.
    ///
    /// - Returns: the block's new address, or nil with `errno = ENOMEM`; the old block is then untouched and
    ///   still owned by the caller.
    @inlinable
    public func realloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return malloc(size) }
        if size == 0 {
            strategy.deallocate(pointer)
            return nil
        }
        guard size > 0, let moved = strategy.reallocate(pointer, toSize: size) else { return _fail(ENOMEM) }
        return moved
    }

    /// `reallocarray(3)`: `realloc(pointer, count × size)` with an overflow check.
    ///
    /// - Returns: the new address, or nil with `errno = ENOMEM` when the product overflows or the strategy fails;
    ///   the old block is untouched then. A zero product frees, as `realloc(pointer, 0)` does.
    @inlinable
    public func reallocarray(_ pointer: UnsafeMutableRawPointer?, _ count: Int, _ size: Int)
        -> UnsafeMutableRawPointer?
    {
        guard let bytes = _product(count, size) else { return _fail(ENOMEM) }
        return realloc(pointer, bytes)
    }

    /// `posix_memalign(3)`: `size` bytes aligned to `alignment`, stored in `memptr`.
    ///
    /// - Parameters:
    ///   - memptr: where the address is stored on success; untouched on failure.
    ///   - alignment: a power of two and a multiple of `sizeof(void *)`.
    ///   - size: bytes wanted; 0 gives a unique pointer.
    /// - Returns: 0, `EINVAL` for a bad alignment, or `ENOMEM`. `errno` is never changed (POSIX), even by a
    ///   strategy whose failing system call set it.
    @inlinable
    public func posixMemalign(
        _ memptr: UnsafeMutablePointer<UnsafeMutableRawPointer?>, alignment: Int, size: Int
    ) -> Int32 {
        let bits = UInt(bitPattern: alignment)
        guard bits.nonzeroBitCount == 1, bits % UInt(MemoryLayout<UnsafeRawPointer>.size) == 0 else {
            return EINVAL
        }
        guard size >= 0, bits <= UInt(strategy.maximumAlignment) else { return ENOMEM }
        let saved = _errno
        // Safe: bits <= maximumAlignment, an Int.
        let pointer = strategy.allocate(
            size: size, alignment: Swift.max(Int(bitPattern: bits), Self.minimumAlignment))
        _errno = saved
        guard let pointer else { return ENOMEM }
        memptr.pointee = pointer
        return 0
    }

    /// `aligned_alloc(3)` (C11): `size` bytes aligned to `alignment`, a power of two (any size, per C17).
    ///
    /// - Returns: the memory, or nil with `errno = EINVAL` (alignment not a power of two) or `ENOMEM`.
    @inlinable
    public func alignedAlloc(alignment: Int, size: Int) -> UnsafeMutableRawPointer? {
        let bits = UInt(bitPattern: alignment)
        guard bits.nonzeroBitCount == 1 else { return _fail(EINVAL) }
        return _alignedAllocate(alignmentBits: bits, size: size)
    }

    /// `memalign(3)` (obsolete): `size` bytes aligned to `alignment`, rounded up to a power of two as glibc does.
    ///
    /// - Returns: the memory, or nil with `errno = EINVAL` (alignment above 2^63) or `ENOMEM`.
    @inlinable
    public func memalign(alignment: Int, size: Int) -> UnsafeMutableRawPointer? {
        let bits = UInt(bitPattern: alignment)
        guard bits <= 1 << (UInt.bitWidth - 1) else { return _fail(EINVAL) }
        // Safe: bits <= 2^63, so rounding up to a power of two cannot overflow.
        let rounded: UInt = bits <= 1 ? 1 : 1 << (UInt.bitWidth - (bits &- 1).leadingZeroBitCount)
        return _alignedAllocate(alignmentBits: rounded, size: size)
    }

    /// `valloc(3)` (obsolete): `size` bytes aligned to the page size.
    ///
    /// - Returns: the memory, or nil with `errno = ENOMEM`.
    @inlinable
    public func valloc(_ size: Int) -> UnsafeMutableRawPointer? {
        _alignedAllocate(alignmentBits: UInt(_systemPageSize()), size: size)
    }

    /// `pvalloc(3)` (obsolete): `size` rounded up to a whole number of pages (one page for 0), page-aligned.
    ///
    /// - Returns: the memory, or nil with `errno = ENOMEM` (also when rounding overflows).
    @inlinable
    public func pvalloc(_ size: Int) -> UnsafeMutableRawPointer? {
        let page = _systemPageSize()
        guard size >= 0, let rounded = alignUpChecked(Swift.max(size, 1), to: page) else { return _fail(ENOMEM) }
        return _alignedAllocate(alignmentBits: UInt(page), size: rounded)
    }

    /// `malloc_usable_size(3)`: how many bytes at `pointer` may be used; 0 for nil.
    ///
    /// At least the size the block was requested with; every one of those bytes is writable. See the strategy's
    /// `usableSize(of:)` for what else it counts (`HeaderStrategy`: the base allocator's rounding).
    ///
    /// - Precondition: `pointer` is live and came from this adapter.
    @inlinable
    public func mallocUsableSize(_ pointer: UnsafeMutableRawPointer?) -> Int {
        guard let pointer else { return 0 }
        return strategy.usableSize(of: pointer)
    }
}

// MARK: Internals

extension CAllocationAdapter {
    /// The shared tail of `aligned_alloc`, `memalign`, `valloc` and `pvalloc`: `alignmentBits` is a power of two.
    @inlinable
    internal func _alignedAllocate(alignmentBits: UInt, size: Int) -> UnsafeMutableRawPointer? {
        // Safe: alignmentBits <= maximumAlignment, an Int, once the guard passed.
        guard size >= 0, alignmentBits <= UInt(strategy.maximumAlignment),
            let pointer = strategy.allocate(
                size: size, alignment: Swift.max(Int(bitPattern: alignmentBits), Self.minimumAlignment))
        else { return _fail(ENOMEM) }
        return pointer
    }

    /// `count × size` for C callers: nil when either is a `size_t` above `Int.max` or the product overflows.
    @inlinable
    internal func _product(_ count: Int, _ size: Int) -> Int? {
        guard count >= 0, size >= 0 else { return nil }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
        return overflow ? nil : bytes
    }

    /// Sets errno and returns nil: every failing C function ends here.
    @inlinable
    internal func _fail(_ code: Int32) -> UnsafeMutableRawPointer? {
        _errno = code
        return nil
    }
}

/// The calling thread's `errno`. C's `errno` is a macro over `__errno_location()` (glibc and musl alike); calling
/// that directly needs no C shim, and works in Embedded Swift too, which has no Glibc overlay
/// (deploy/build-libdivvymalloc.sh). Not a system call, so not in DivvySystem: this file is also compiled without it.
@inlinable
internal var _errno: Int32 {
    get { __errno_location().pointee }
    set { __errno_location().pointee = newValue }
}

/// The page size, from `sysconf(_SC_PAGESIZE)` (no lazy global: this runs inside `malloc`).
@inlinable
internal func _systemPageSize() -> Int {
    sysconf(Int32(_SC_PAGESIZE))
}
