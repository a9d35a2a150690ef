/// Sends small requests to one allocator and large ones to another, by size.
///
/// A request of at most `threshold` bytes goes to `small`, a larger one to `large`. Deallocation routes by the
/// layout's size the same way, so it needs no ownership test: O(1), one comparison.
///
/// ```swift
/// // Slab-backed pool for small objects, the system for the rest.
/// let allocator = Segregator(threshold: 4096, small: try Pool(SystemAllocator()), large: SystemAllocator())
/// ```
///
/// A struct holding its two parts; copies share them (allocators have reference semantics). It adopts
/// `OwnershipAwareAllocator`, `SizeRoundingAllocator`, `ResettableAllocator`, `InPlaceResizingAllocator` and
/// `CheckedDeallocatingAllocator` when both parts do, and is `Sendable` when both are. In-place resizing never
/// crosses the threshold, because the block would then be freed to the other part.
public struct Segregator<Small: Allocator, Large: Allocator>: Allocator {
    /// The largest size served by `small`.
    public let threshold: Int
    /// Serves requests of at most `threshold` bytes.
    public let small: Small
    /// Serves requests above `threshold` bytes.
    public let large: Large

    /// Combines `small` (sizes up to `threshold`) and `large` (sizes above it).
    ///
    /// - Precondition: `threshold >= 0`.
    @inlinable
    public init(threshold: Int, small: Small, large: Large) {
        precondition(threshold >= 0, "Segregator: the threshold must not be negative")
        self.threshold = threshold
        self.small = small
        self.large = large
    }

    /// Allocates from `small` if `layout.size <= threshold`, else from `large`.
    ///
    /// - Throws: the chosen part's error.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        layout.size <= threshold ? try small.allocate(layout) : try large.allocate(layout)
    }

    /// Returns the block to the part its layout's size routes to.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        if layout.size <= threshold {
            small.deallocate(block, layout: layout)
        } else {
            large.deallocate(block, layout: layout)
        }
    }

    /// Reallocates within one part when both sizes route to it; across the threshold allocates in the other
    /// part, copies and frees.
    ///
    /// - Throws: the error of the part that failed; the old block is untouched then.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let wasSmall = old.size <= threshold
        let isSmall = new.size <= threshold
        if wasSmall && isSmall { return try small.reallocate(block, from: old, to: new) }
        if !wasSmall && !isSmall { return try large.reallocate(block, from: old, to: new) }
        let moved = try allocate(new)
        moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
        deallocate(block, layout: old)
        return moved
    }
}

extension Segregator: Sendable where Small: Sendable, Large: Sendable {}

extension Segregator: OwnershipAwareAllocator where Small: OwnershipAwareAllocator, Large: OwnershipAwareAllocator {
    /// Whether either part owns the block (the block alone does not say which side it came from).
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { small.owns(block) || large.owns(block) }
}

extension Segregator: SizeRoundingAllocator where Small: SizeRoundingAllocator, Large: SizeRoundingAllocator {
    /// The good size of the part the layout routes to.
    @inlinable
    public func goodSize(for layout: Layout) -> Int {
        layout.size <= threshold ? small.goodSize(for: layout) : large.goodSize(for: layout)
    }
}

extension Segregator: ResettableAllocator where Small: ResettableAllocator, Large: ResettableAllocator {
    /// Resets both parts.
    public func deallocateAll() {
        small.deallocateAll()
        large.deallocateAll()
    }
}

extension Segregator: InPlaceResizingAllocator
where Small: InPlaceResizingAllocator, Large: InPlaceResizingAllocator {
    /// Resizes in place within the block's part when the new size routes to the same part; nil across the
    /// threshold.
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        let wasSmall = layout.size <= threshold
        guard wasSmall == (newSize <= threshold) else { return nil }
        return wasSmall
            ? small.resize(block, from: layout, toSize: newSize) : large.resize(block, from: layout, toSize: newSize)
    }
}

extension Segregator: CheckedDeallocatingAllocator
where Small: CheckedDeallocatingAllocator, Large: CheckedDeallocatingAllocator {
    /// Returns the block through the checked path of the part its layout's size routes to.
    ///
    /// - Throws: that part's `.doubleFree` or `.foreignBlock`; nothing changes then.
    @inlinable
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        if layout.size <= threshold {
            try small.checkedDeallocate(block, layout: layout)
        } else {
            try large.checkedDeallocate(block, layout: layout)
        }
    }
}
