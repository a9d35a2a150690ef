#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The `CAllocationStrategy` for any `Allocator`: a 16-byte header in front of every block records its layout, so a
/// bare pointer finds its block again. `CAllocationAdapter(allocator)` uses it.
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
/// `reallocate` keeps a block's alignment (blocks from `memalign` stay aligned) and resizes through the allocator's
/// own `reallocate`, so compositions that resize in place (a size class with room, `mremap`) do so.
///
/// ## Checks
///
/// With `checksFrees` (the default) `deallocate`, `reallocate` and `usableSize(of:)` verify the header's check field
/// first, and `deallocate` marks the header freed: a double free or a pointer this strategy never returned is
/// reported (`checkedDeallocate(_:)` throws; the others trap with a fixed message written to standard error, then
/// `abort()`). This is cheap detection, not a guarantee: a block already handed out again, a header the allocator
/// overwrote after the free, or two threads freeing the same block at once may go unnoticed, as in glibc.
///
/// Thread safety is the base allocator's: the strategy adds no state, and is `Sendable` when `Base` is.
@frozen
public struct HeaderStrategy<Base: Allocator>: CAllocationStrategy {
    /// The allocator that serves every block.
    public let base: Base
    /// Whether `deallocate`, `reallocate` and `usableSize(of:)` verify each pointer's header (and `deallocate` marks
    /// it freed) to catch double and invalid frees.
    public let checksFrees: Bool

    /// The bytes in front of every pointer the strategy returns.
    public static var headerSize: Int { 16 }

    /// Finds blocks of `base` through a header.
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

    /// 1 TiB, like `OSAllocator.maximumAlignment` (the header records alignments up to 2^40).
    @inlinable
    public var maximumAlignment: Int { 1 << _Header.maximumShift }

    /// Asks `base` for `(pad + max(size, 1), pad)` with `pad = max(alignment, 16)` and writes the header.
    ///
    /// - Returns: the caller's pointer, or nil when `base` throws or `size` is too large to lay out.
    /// - Complexity: the base allocator's `allocate`, plus a 16-byte header store.
    @inlinable
    public func allocate(size: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        // The header needs 16 bytes of padding, whatever a direct caller asks for (the adapter asks for >= 16).
        let shift = Swift.max(alignment.trailingZeroBitCount, _Header.minimumShift)
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

    /// Returns the block to `base`.
    ///
    /// - Precondition: `pointer` came from this strategy and was not freed since. With `checksFrees`, a pointer
    ///   that fails the header check traps (`"double free"` or `"invalid pointer"`).
    @inlinable
    public func deallocate(_ pointer: UnsafeMutableRawPointer) {
        let header = _liveHeader(of: pointer)
        if checksFrees { _Header.markFreed(pointer) }
        base.deallocate(header.block(at: pointer), layout: header.layout)
    }

    /// `deallocate(_:)` that reports a bad pointer instead of trapping, whatever `checksFrees` says.
    ///
    /// - Throws: `.doubleFree` when the header says the block was already freed, `.foreignBlock` when `pointer` is
    ///   misaligned or its header does not check out; nothing is freed or changed then.
    @inlinable
    public func checkedDeallocate(_ pointer: UnsafeMutableRawPointer) throws(AllocationError) {
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

    /// The block's real size minus the header's room, recorded when the block was allocated.
    ///
    /// For a `SizeRoundingAllocator` base that is `goodSize(for:)` of the layout asked for, less the padding; for any
    /// other base it is the size the base reported, never less than the requested size (at least 1 for a zero-byte
    /// block). Every one of those bytes is writable.
    ///
    /// - Precondition: `pointer` is live and came from this strategy (checked like `deallocate` when `checksFrees`).
    @inlinable
    public func usableSize(of pointer: UnsafeMutableRawPointer) -> Int {
        let header = _liveHeader(of: pointer)
        // Safe: layout.size + slack is the block's size, an Int, and pad <= layout.size.
        return header.layout.size &+ header.slack &- header.pad
    }

    /// Resizes through `base.reallocate` (in place when the base can), keeping the block's alignment and the first
    /// `min(old requested size, size)` bytes.
    ///
    /// - Returns: the new address, or nil with the old block untouched and live (its header restored).
    @inlinable
    public func reallocate(_ pointer: UnsafeMutableRawPointer, toSize size: Int) -> UnsafeMutableRawPointer? {
        let header = _liveHeader(of: pointer)
        guard let newLayout = _Header.layout(size: size, shift: header.shift) else { return nil }
        // Mark the old header freed first: if the block moves, a later free of the old pointer is then reported as
        // a double free. A failed reallocation leaves the block with the caller, so the mark is undone.
        if checksFrees { _Header.markFreed(pointer) }
        let moved: UnsafeBlock
        do {
            moved = try base.reallocate(header.block(at: pointer), from: header.layout, to: newLayout)
        } catch {
            if checksFrees { _Header.markFreed(pointer) }  // flipping the check bits again restores them
            return nil
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

    /// The size `pointer` was requested with (by `malloc`, `realloc`, …), for diagnostics and tests.
    ///
    /// - Precondition: as for `usableSize(of:)`.
    @inlinable
    public func requestedSize(of pointer: UnsafeMutableRawPointer) -> Int {
        _liveHeader(of: pointer).size
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
}

extension HeaderStrategy: Sendable where Base: Sendable {}

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

/// The 16 bytes before every pointer a `HeaderStrategy` returns (see the type's discussion).
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

    /// The layout the strategy asked the base for.
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
