/// Owns one block from an allocator and frees it exactly once.
///
/// The block is freed when the owner is destroyed, or earlier by `free()`, which consumes the owner so it cannot
/// be used again. Its bytes are reached through `bytes` / `mutableBytes` (`RawSpan` / `MutableRawSpan`, bounds-
/// checked and lifetime-checked by the compiler) or the `withUnsafe…` closures. Code that allocates through
/// `OwnedBlock` needs no unsafe construct at all.
///
/// ```swift
/// let slab = try SlabBuilder(size: 64).finishUnsynchronized(OSAllocator())
/// do {
///     var message = try OwnedBlock(byteCount: 64, in: slab)
///     var bytes = message.mutableBytes
///     bytes.storeBytes(of: 42, toByteOffset: 0, as: UInt64.self)
///     let answer = message.bytes.unsafeLoad(fromByteOffset: 0, as: UInt64.self)   // 42
/// }                                   // `message` is destroyed here: its block goes back to the slab
/// ```
///
/// The owner keeps its allocator alive: stateful allocators are classes, and the owner holds a reference.
@frozen
public struct OwnedBlock<A: Allocator>: ~Copyable {
    /// The allocator the block came from and goes back to.
    public let allocator: A
    @usableFromInline internal var block: UnsafeBlock
    @usableFromInline internal var _layout: Layout
    /// Set by `unsafeRelease()`, so that deinit does not free a block the caller now owns.
    @usableFromInline internal var released = false

    /// The layout the block was allocated (or last resized) with; `count` is its size.
    @inlinable
    public var layout: Layout { _layout }

    /// Allocates a block for `layout` from `allocator`.
    ///
    /// - Throws: the allocator's `AllocationError`.
    @inlinable
    public init(_ layout: Layout, in allocator: A) throws(AllocationError) {
        self.block = try allocator.allocate(layout)
        self.allocator = allocator
        self._layout = layout
    }

    /// Allocates `byteCount` bytes aligned to `alignment` from `allocator`.
    ///
    /// - Throws: `.invalidLayout` for a negative count or an alignment that is not a power of two; otherwise
    ///   the allocator's `AllocationError`.
    @inlinable
    public init(byteCount: Int, alignment: Int = Layout.defaultAlignment, in allocator: A) throws(AllocationError) {
        try self.init(Layout(size: byteCount, alignment: alignment), in: allocator)
    }

    /// Frees the block.
    deinit {
        if !released { allocator.deallocate(block, layout: _layout) }
    }

    /// The number of bytes requested, and reachable through the spans.
    @inlinable
    public var count: Int { layout.size }

    /// The bytes the allocator really gave (at least `count`); `goodSize` of the request.
    @inlinable
    public var capacity: Int { block.size }

    /// The block's bytes, read-only.
    public var bytes: RawSpan {
        @_lifetime(borrow self)
        borrowing get {
            // Safe: the block is valid for `layout.size` bytes for as long as `self` exists, and the span's
            // lifetime is tied to a borrow of `self`.
            let span = unsafe RawSpan(_unsafeStart: block.start, byteCount: layout.size)
            return unsafe _overrideLifetime(span, borrowing: self)
        }
    }

    /// The block's bytes, writable.
    public var mutableBytes: MutableRawSpan {
        @_lifetime(&self)
        mutating get {
            // Safe: as for `bytes`; the exclusive access to `self` makes the span exclusive too.
            let span = unsafe MutableRawSpan(_unsafeStart: block.start, byteCount: layout.size)
            return unsafe _overrideLifetime(span, mutating: &self)
        }
    }

    /// Calls `body` with the block's bytes as a raw buffer (for C APIs).
    @inlinable
    public func withUnsafeBytes<R: ~Copyable, E: Error>(
        _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: block.start, count: layout.size))
    }

    /// Calls `body` with the block's bytes as a mutable raw buffer (for C APIs).
    @inlinable
    public mutating func withUnsafeMutableBytes<R: ~Copyable, E: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: block.start, count: layout.size))
    }

    /// Changes the block's size to `byteCount`, keeping its first `min(count, byteCount)` bytes; the block may move.
    ///
    /// - Throws: the allocator's `AllocationError`; the block is unchanged then.
    @inlinable
    public mutating func resize(to byteCount: Int) throws(AllocationError) {
        let newLayout = try Layout(size: byteCount, alignment: layout.alignment)
        block = try allocator.reallocate(block, from: layout, to: newLayout)
        _layout = newLayout
    }

    /// Frees the block now.
    @inlinable
    public consuming func free() {
        // deinit runs here and frees the block exactly once.
    }

    /// Gives up ownership: returns the raw block, which the caller must now free with `allocator`.
    @inlinable
    public consuming func unsafeRelease() -> UnsafeBlock {
        released = true
        return block
    }
}

extension OwnedBlock: Sendable where A: Sendable {}
