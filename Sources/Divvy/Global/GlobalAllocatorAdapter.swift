import CDivvy

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The C allocation functions (`malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
/// `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`) served by any Divvy allocator: the
/// original crate's `WrapAsGlobal`.
///
/// Swift has no global-allocator hook. On Linux the equivalent is the C allocation ABI, which a shared library can
/// export and `LD_PRELOAD` can install; this adapter is the library-level half of that. It gives each function its C
/// semantics (results as optional raw pointers, failures reported in `errno`), so a thin `@_cdecl` layer can export
/// it unchanged.
///
/// ```swift
/// let heap = CAllocationAdapter(Segregator(threshold: 32 << 10, small: try Pool(OSAllocator()), large: OSAllocator()))
/// guard let p = heap.malloc(100) else { /* errno == ENOMEM */ }
/// let q = heap.realloc(p, 1000)          // contents kept; on failure nil, ENOMEM, and `p` still valid
/// heap.free(q)
/// ```
///
/// ## How a bare pointer finds its layout
///
/// C's `free` gets only a pointer, but a Divvy allocator needs the block and the layout it was allocated with. Every
/// block therefore starts with room for a 16-byte header that ends exactly where the caller's memory begins:
///
/// ```
///  block.start                         p = block.start + pad   (pad = max(16, alignment))
///  |  … unused (pad > 16 only) …  | size | slack·shift·check |  caller's bytes …  | slack |
///                                 p-16   p-8
/// ```
///
/// - `size` (64 bits): the size the caller asked for, which gives back the layout passed to the allocator,
///   `(pad + max(size, 1), pad)`.
/// - `slack` (34 bits): `block.size − layout.size`, so the exact block (its real length, which `OSAllocator` needs to
///   unmap) is rebuilt too; `shift` (6 bits): `log2(pad)`; `check` (24 bits): a hash of `p` and the other fields.
///
/// The allocator is asked for `pad` alignment and the caller's pointer is `block.start + pad`, so for alignments
/// above 16 the header still sits right before the pointer (an alignment-`A` request costs `A` extra bytes, as it
/// does in most mallocs). The alternative, size classes plus `OwnershipAwareAllocator.owns(_:)` to find a block's
/// class, costs no memory per block but works only for compositions that can answer `owns` fast and exactly; the
/// header works for every allocator, costs 16 bytes per block and two loads per free, and lets the checks below find
/// bad frees cheaply.
///
/// ## Checks
///
/// With `checksFrees` (the default) `free`, `realloc` and `malloc_usable_size` verify the header's check field
/// first, and `free` marks the header freed: a double free or a pointer this adapter never returned is reported
/// (`checkedFree(_:)` throws; the others trap with a fixed message written to standard error, then `abort()`).
/// This is cheap detection, not a guarantee: a block already handed out again, a header the allocator overwrote
/// after the free, or two threads freeing the same block at once may go unnoticed, as in glibc.
///
/// ## C semantics chosen where C leaves a choice
///
/// - `malloc(0)` (and `calloc` with a zero product, `aligned_alloc(a, 0)`, …) returns a unique, non-null pointer to
///   a zero-byte block, which must be freed like any other (glibc does the same).
/// - `realloc(p, 0)` with `p != nil` frees `p` and returns nil without setting `errno` (glibc's behaviour);
///   `realloc(nil, n)` is `malloc(n)`.
/// - `realloc` keeps a block's alignment (blocks from `memalign` stay aligned) and preserves the first
///   `min(old size, new size)` requested bytes; bytes past the requested size that `malloc_usable_size` allowed the
///   caller to write are not guaranteed to move with the block.
/// - `calloc` always zeroes: no allocator here promises zeroed blocks (a reused block is dirty), so the memset is
///   never skipped.
/// - `aligned_alloc` requires a power-of-two alignment (C17, glibc 2.38); the size need not be a multiple of it.
///   `memalign` rounds a non-power-of-two alignment up, as glibc does.
/// - `pvalloc(0)` returns one page.
/// - Sizes are `Int` because Swift imports `size_t` as `Int`: a negative value is a `size_t` above `Int.max`, which
///   fails with `ENOMEM`. Alignments above `maximumAlignment` (1 TiB) fail with `ENOMEM`.
/// - Every failure sets `errno` (`ENOMEM`, or `EINVAL` for a bad alignment), except `posix_memalign`, which returns
///   the code and leaves both `errno` and its output untouched.
///
/// ## No re-entry
///
/// Once exported as the process's `malloc`, this code runs inside `malloc` itself, so nothing on these paths may
/// allocate: every path is `@inlinable` generic code over `Base` (no existentials, no closures that capture, no
/// class instances, arrays or strings), errors are `AllocationError` values with `StaticString` reasons (typed
/// throws, never boxed), `errno` is set through the C shim, and the traps write a `StaticString` with `write(2)` and
/// call `abort()` instead of formatting a message. `GlobalAllocatorAdapterTests` checks this with glibc's `mtrace`
/// in a child process. Whether the *allocator* allocates from the C heap is the composition's business: a `Pool`
/// builds each class's `Slab` object on first use, so the shared library warms its classes up or uses allocators
/// that never do.
///
/// Thread safety is the base allocator's: the adapter adds no state, and is `Sendable` when `Base` is.
@frozen
public struct CAllocationAdapter<Base: Allocator> {
    /// The allocator that serves every block.
    public let base: Base
    /// Whether `free`, `realloc` and `malloc_usable_size` verify each pointer's header (and `free` marks it freed)
    /// to catch double and invalid frees.
    public let checksFrees: Bool

    /// The bytes in front of every pointer the adapter returns.
    public static var headerSize: Int { 16 }

    /// The largest alignment the adapter accepts: 1 TiB, like `OSAllocator.maximumAlignment`. Stricter requests
    /// fail with `ENOMEM`.
    public static var maximumAlignment: Int { 1 << _Header.maximumShift }

    /// Serves the C allocation functions from `base`.
    ///
    /// - Parameters:
    ///   - base: any allocator. It must honour the alignments it is asked for, up to the largest the program
    ///     requests (16 for plain `malloc`), or throw.
    ///   - checksFrees: verify headers and detect double frees (default true; costs a multiply and a compare).
    @inlinable
    public init(_ base: Base, checksFrees: Bool = true) {
        self.base = base
        self.checksFrees = checksFrees
    }
}

extension CAllocationAdapter: Sendable where Base: Sendable {}

// MARK: The C functions

extension CAllocationAdapter {
    /// `malloc(3)`: `size` bytes aligned to 16.
    ///
    /// - Returns: the memory, or nil with `errno = ENOMEM`. `malloc(0)` returns a unique pointer to free later.
    /// - Complexity: the base allocator's `allocate`, plus a 16-byte header store.
    @inlinable
    public func malloc(_ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer = _allocate(size: size, shift: _Header.minimumShift) else { return _fail(ENOMEM) }
        return pointer
    }

    /// `free(3)`: returns a block to the base allocator. `free(nil)` does nothing.
    ///
    /// - Precondition: `pointer` came from this adapter (any of its functions) and was not freed since. With
    ///   `checksFrees`, a pointer that fails the header check traps (`"double free"` or `"invalid pointer"`).
    @inlinable
    public func free(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        let header = _liveHeader(of: pointer)
        if checksFrees { _Header.markFreed(pointer) }
        base.deallocate(header.block(at: pointer), layout: header.layout)
    }

    /// `free` that reports a bad pointer instead of trapping, whatever `checksFrees` says.
    ///
    /// - Throws: `.doubleFree` when the header says the block was already freed, `.foreignBlock` when `pointer` is
    ///   misaligned or its header does not check out; nothing is freed or changed then.
    @inlinable
    public func checkedFree(_ pointer: UnsafeMutableRawPointer?) throws(AllocationError) {
        guard let pointer else { return }
        switch _Header.status(of: pointer) {
        case .live(let header):
            _Header.markFreed(pointer)
            base.deallocate(header.block(at: pointer), layout: header.layout)
        case .freed:
            throw AllocationError(.doubleFree, "free(): the block was already freed")
        case .invalid:
            throw AllocationError(.foreignBlock, "free(): the pointer was not returned by this allocator")
        }
    }

    /// `calloc(3)`: `count × size` zeroed bytes aligned to 16.
    ///
    /// - Returns: the zeroed memory, or nil with `errno = ENOMEM` when the product overflows or the base fails.
    /// - Complexity: the allocation plus zeroing `count × size` bytes (always done: a reused block is dirty).
    @inlinable
    public func calloc(_ count: Int, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let bytes = _product(count, size),
            let pointer = _allocate(size: bytes, shift: _Header.minimumShift)
        else { return _fail(ENOMEM) }
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        return pointer
    }

    /// `realloc(3)`: resizes a block, in place when the base allocator can, preserving its contents.
    ///
    /// - `realloc(nil, size)` is `malloc(size)`.
    /// - `realloc(p, 0)` frees `p` and returns nil, leaving `errno` alone (glibc).
    /// - Otherwise the first `min(old size, size)` bytes are kept and the block keeps its alignment.
    ///
    /// - Returns: the block's new address, or nil with `errno = ENOMEM`; the old block is then untouched and
    ///   still owned by the caller.
    @inlinable
    public func realloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let pointer else { return malloc(size) }
        if size == 0 {
            free(pointer)
            return nil
        }
        let header = _liveHeader(of: pointer)
        guard let newLayout = _Header.layout(size: size, shift: header.shift) else { return _fail(ENOMEM) }
        // Mark the old header freed first: if the block moves, a later free of the old pointer is then reported as
        // a double free. A failed reallocation leaves the block with the caller, so the mark is undone.
        if checksFrees { _Header.markFreed(pointer) }
        let moved: UnsafeBlock
        do {
            moved = try base.reallocate(header.block(at: pointer), from: header.layout, to: newLayout)
        } catch {
            if checksFrees { _Header.markFreed(pointer) }  // flipping the check bits again restores them
            return _fail(ENOMEM)
        }
        let slack = moved.size &- newLayout.size
        let newPointer = moved.start + header.pad
        guard slack >= 0, slack <= _Header.maximumSlack else {
            // The moved block cannot be described by a header, and the old one is gone: only an allocator that
            // breaks its contract (a block smaller than asked) or rounds by more than 16 GiB gets here.
            _CAllocationAdapterFatal("realloc(): the allocator returned a block whose size cannot be recorded")
        }
        _Header.write(at: newPointer, size: size, slack: slack, shift: header.shift)
        return newPointer
    }

    /// `reallocarray(3)`: `realloc(pointer, count × size)` with an overflow check.
    ///
    /// - Returns: the new address, or nil with `errno = ENOMEM` when the product overflows or the base fails; the
    ///   old block is untouched then.
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
    /// - Returns: 0, `EINVAL` for a bad alignment, or `ENOMEM`. `errno` is never changed (POSIX).
    @inlinable
    public func posixMemalign(
        _ memptr: UnsafeMutablePointer<UnsafeMutableRawPointer?>, alignment: Int, size: Int
    ) -> Int32 {
        let bits = UInt(bitPattern: alignment)
        guard bits.nonzeroBitCount == 1, bits % UInt(MemoryLayout<UnsafeRawPointer>.size) == 0 else {
            return EINVAL
        }
        guard bits <= UInt(CAllocationAdapter.maximumAlignment),
            let pointer = _allocate(size: size, shift: Swift.max(bits.trailingZeroBitCount, _Header.minimumShift))
        else { return ENOMEM }
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
    /// The block's real size minus the header's room, recorded when the block was allocated: for a
    /// `SizeRoundingAllocator` base that is `goodSize(for:)` of the layout the adapter asked for, less the padding;
    /// for any other base it is the size the base reported, never less than the requested size (at least 1 for a
    /// zero-byte block). Every one of those bytes is writable.
    ///
    /// - Precondition: `pointer` is live and came from this adapter (checked like `free` when `checksFrees`).
    @inlinable
    public func mallocUsableSize(_ pointer: UnsafeMutableRawPointer?) -> Int {
        guard let pointer else { return 0 }
        let header = _liveHeader(of: pointer)
        // Safe: layout.size + slack is the block's size, an Int, and pad <= layout.size.
        return header.layout.size &+ header.slack &- header.pad
    }

    /// The size `pointer` was requested with (by `malloc`, `realloc`, …), for diagnostics and tests.
    ///
    /// - Precondition: as for `mallocUsableSize(_:)`.
    @inlinable
    public func requestedSize(_ pointer: UnsafeMutableRawPointer) -> Int {
        _liveHeader(of: pointer).size
    }
}

// MARK: Internals

extension CAllocationAdapter {
    /// Allocates a block for `size` caller bytes aligned to `2^shift` and writes its header; nil when the base
    /// fails or the size cannot be served. Does not touch errno.
    @inlinable
    internal func _allocate(size: Int, shift: Int) -> UnsafeMutableRawPointer? {
        guard let layout = _Header.layout(size: size, shift: shift) else { return nil }
        let block: UnsafeBlock
        do {
            block = try base.allocate(layout)
        } catch {
            return nil
        }
        let slack = block.size &- layout.size
        guard slack >= 0, slack <= _Header.maximumSlack else {
            base.deallocate(block, layout: layout)
            return nil
        }
        // Safe: pad <= layout.size <= block.size, so the pointer stays inside the block.
        let pointer = block.start + layout.alignment
        _Header.write(at: pointer, size: size, slack: slack, shift: shift)
        return pointer
    }

    /// The shared tail of `aligned_alloc`, `memalign`, `valloc` and `pvalloc`: `alignmentBits` is a power of two.
    @inlinable
    internal func _alignedAllocate(alignmentBits: UInt, size: Int) -> UnsafeMutableRawPointer? {
        guard alignmentBits <= UInt(CAllocationAdapter.maximumAlignment),
            let pointer = _allocate(
                size: size, shift: Swift.max(alignmentBits.trailingZeroBitCount, _Header.minimumShift))
        else { return _fail(ENOMEM) }
        return pointer
    }

    /// The header of a pointer about to be freed, resized or measured; traps on a bad one when `checksFrees`.
    @inlinable
    @inline(__always)
    internal func _liveHeader(of pointer: UnsafeMutableRawPointer) -> _Header {
        guard checksFrees else { return _Header.read(pointer) }
        switch _Header.status(of: pointer) {
        case .live(let header): return header
        case .freed: _CAllocationAdapterFatal("free()/realloc(): double free (the block was already freed)")
        case .invalid: _CAllocationAdapterFatal("free()/realloc(): invalid pointer (not from this allocator)")
        }
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
        divvy_set_errno(code)
        return nil
    }
}

/// The page size, from `sysconf(_SC_PAGESIZE)` (no lazy global: this runs inside `malloc`).
@inlinable
internal func _systemPageSize() -> Int {
    sysconf(Int32(_SC_PAGESIZE))
}

/// Writes `Divvy: <message>` to standard error and aborts, without allocating (this may run inside `malloc`).
@usableFromInline
@inline(never)
internal func _CAllocationAdapterFatal(_ message: StaticString) -> Never {
    let prefix: StaticString = "Divvy: "
    let suffix: StaticString = "\n"
    _writeToStandardError(prefix)
    _writeToStandardError(message)
    _writeToStandardError(suffix)
    abort()
}

/// `write(2, text)`, ignoring errors (the caller is about to abort).
@usableFromInline
internal func _writeToStandardError(_ text: StaticString) {
    text.withUTF8Buffer { buffer in
        _ = write(2, buffer.baseAddress, buffer.count)
    }
}

/// The 16 bytes before every pointer a `CAllocationAdapter` returns (see the type's discussion).
@frozen
@usableFromInline
internal struct _Header {
    /// The size the caller asked for.
    @usableFromInline let size: Int
    /// `block.size - layout.size`: the base's rounding.
    @usableFromInline let slack: Int
    /// `log2(pad)`: the padding before the pointer is also the block's alignment.
    @usableFromInline let shift: Int

    @inlinable
    init(size: Int, slack: Int, shift: Int) {
        self.size = size
        self.slack = slack
        self.shift = shift
    }

    /// 16-byte alignment (`max_align_t`), the least any block gets.
    @inlinable static var minimumShift: Int { 4 }
    /// 1 TiB.
    @inlinable static var maximumShift: Int { 40 }
    /// Bits of the info word holding the slack; the shift follows them.
    @inlinable static var slackBits: Int { 34 }
    /// 16 GiB of rounding: more than any allocator here rounds (1 GiB huge pages at most).
    @inlinable static var maximumSlack: Int { (1 << slackBits) - 1 }
    /// The check field is the info word's top 24 bits.
    @inlinable static var checkOffset: UInt64 { 40 }
    /// Flipping all 24 check bits marks a header freed.
    @inlinable static var freedFlip: UInt64 { 0xFF_FFFF << checkOffset }

    /// The padding before the pointer, `2^shift`.
    @inlinable var pad: Int { 1 &<< shift }

    /// The layout the adapter asked the base for.
    @inlinable var layout: Layout {
        // Safe: the same layout was validated by `layout(size:shift:)` when the block was allocated.
        Layout(uncheckedSize: pad &+ Swift.max(size, 1), alignment: pad)
    }

    /// The block the base returned, rebuilt from the pointer.
    @inlinable func block(at pointer: UnsafeMutableRawPointer) -> UnsafeBlock {
        let layout = self.layout
        return UnsafeBlock(start: pointer - layout.alignment, size: layout.size &+ slack)
    }

    /// The layout for `size` caller bytes aligned to `2^shift`: `(2^shift + max(size, 1), 2^shift)`, or nil when
    /// `size` is negative (a `size_t` above `Int.max`) or too large to lay out.
    @inlinable
    static func layout(size: Int, shift: Int) -> Layout? {
        let pad = 1 &<< shift
        // Safe: shift <= 40, so 2 * pad cannot overflow; size <= Int.max - 2 * pad keeps pad + size + pad in range,
        // which is what `Layout` requires.
        guard size >= 0, size <= Int.max &- 2 &* pad else { return nil }
        return Layout(uncheckedSize: pad &+ Swift.max(size, 1), alignment: pad)
    }

    /// The 24-bit check of a header at `pointer` whose low 40 bits are `low`.
    @inlinable
    static func check(_ pointer: UnsafeMutableRawPointer, _ low: UInt64) -> UInt64 {
        // A multiplicative hash (Fibonacci hashing) of the address and the fields: its top bits depend on all of
        // them, so a stale or random word matches with probability 2^-24.
        ((UInt64(UInt(bitPattern: pointer)) ^ low) &* 0x9E37_79B9_7F4A_7C15) >> checkOffset
    }

    /// Writes the header for a live block in front of `pointer`.
    @inlinable
    static func write(at pointer: UnsafeMutableRawPointer, size: Int, slack: Int, shift: Int) {
        let low = UInt64(slack) | UInt64(shift) << slackBits
        let info = low | check(pointer, low) << checkOffset
        (pointer - 16).storeBytes(of: UInt64(size), as: UInt64.self)
        (pointer - 8).storeBytes(of: info, as: UInt64.self)
    }

    /// Reads the header in front of `pointer` without checking it.
    @inlinable
    static func read(_ pointer: UnsafeMutableRawPointer) -> _Header {
        let size = Int(truncatingIfNeeded: (pointer - 16).load(as: UInt64.self))
        let info = (pointer - 8).load(as: UInt64.self)
        return _Header(
            size: size, slack: Int(truncatingIfNeeded: info & UInt64(maximumSlack)),
            shift: Int(truncatingIfNeeded: (info >> slackBits) & 63))
    }

    /// What the header in front of `pointer` says.
    @frozen
    @usableFromInline
    enum Status {
        case live(_Header)
        case freed
        case invalid
    }

    /// Checks the header in front of `pointer`: its check field, its alignment, its size.
    @inlinable
    static func status(of pointer: UnsafeMutableRawPointer) -> Status {
        let address = UInt(bitPattern: pointer)
        guard address & 15 == 0 else { return .invalid }
        let info = (pointer - 8).load(as: UInt64.self)
        let low = info & ((1 << checkOffset) - 1)
        let expected = check(pointer, low)
        let stored = info >> checkOffset
        if stored == expected ^ (freedFlip >> checkOffset) { return .freed }
        guard stored == expected else { return .invalid }
        let header = read(pointer)
        guard header.shift >= minimumShift, header.shift <= maximumShift, address & UInt(header.pad - 1) == 0,
            layout(size: header.size, shift: header.shift) != nil
        else { return .invalid }
        return .live(header)
    }

    /// Marks the header in front of `pointer` freed, so a second free is reported; marking twice restores it.
    @inlinable
    static func markFreed(_ pointer: UnsafeMutableRawPointer) {
        let info = (pointer - 8).load(as: UInt64.self)
        (pointer - 8).storeBytes(of: info ^ freedFlip, as: UInt64.self)
    }
}
