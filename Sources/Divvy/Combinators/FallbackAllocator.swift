/// Tries one allocator, and another when the first fails.
///
/// Allocation asks `primary` first; if it throws (any error: out of memory, a limit, an unsupported layout), the
/// request goes to `secondary`, whose error is the one reported if it fails too. Deallocation asks
/// `primary.owns(block)` to send each block back where it came from, which is why the primary must be an
/// `OwnershipAwareAllocator` (and must answer exactly: no block of the secondary may look like its own).
///
/// ```swift
/// // A fixed arena for the common case, malloc when it is full.
/// let arena = try Arena(LimitAllocator(SystemAllocator(), limit: 1 << 20))
/// let allocator = FallbackAllocator(arena, SystemAllocator())
/// ```
///
/// A struct holding its two parts; copies share them (allocators have reference semantics). It adopts
/// `OwnershipAwareAllocator`, `ResettableAllocator`, `InPlaceResizingAllocator` and `CheckedDeallocatingAllocator`
/// when both parts do, and is `Sendable` when both are. It does not adopt `SizeRoundingAllocator`: which part
/// serves a request is known only once the primary has tried, so no size can be promised in advance.
public struct FallbackAllocator<Primary: OwnershipAwareAllocator, Secondary: Allocator>: Allocator {
    /// Asked first, and asked who owns each freed block.
    public let primary: Primary
    /// Asked when the primary fails.
    public let secondary: Secondary

    /// Combines `primary` and `secondary`.
    @inlinable
    public init(_ primary: Primary, _ secondary: Secondary) {
        self.primary = primary
        self.secondary = secondary
    }

    /// Allocates from the primary, or from the secondary if the primary throws.
    ///
    /// - Throws: the secondary's error when both fail; neither part is changed then.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        do {
            return try primary.allocate(layout)
        } catch {
            return try secondary.allocate(layout)
        }
    }

    /// Returns the block to the primary if it owns it, else to the secondary.
    ///
    /// - Complexity: the primary's `owns`, plus the deallocation.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        if primary.owns(block) {
            primary.deallocate(block, layout: layout)
        } else {
            secondary.deallocate(block, layout: layout)
        }
    }

    /// Reallocates within the part that owns the block; a primary block that the primary cannot reallocate moves
    /// to the secondary. A secondary block stays with the secondary.
    ///
    /// - Throws: the last error when no part can serve the new layout; the old block is untouched then.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        guard primary.owns(block) else { return try secondary.reallocate(block, from: old, to: new) }
        do {
            return try primary.reallocate(block, from: old, to: new)
        } catch {
            let moved = try secondary.allocate(new)
            moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
            primary.deallocate(block, layout: old)
            return moved
        }
    }
}

extension FallbackAllocator: Sendable where Primary: Sendable, Secondary: Sendable {}

extension FallbackAllocator: OwnershipAwareAllocator where Secondary: OwnershipAwareAllocator {
    /// Whether either part owns the block.
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { primary.owns(block) || secondary.owns(block) }
}

extension FallbackAllocator: ResettableAllocator where Primary: ResettableAllocator, Secondary: ResettableAllocator {
    /// Resets both parts.
    public func deallocateAll() {
        primary.deallocateAll()
        secondary.deallocateAll()
    }
}

extension FallbackAllocator: InPlaceResizingAllocator
where Primary: InPlaceResizingAllocator, Secondary: InPlaceResizingAllocator {
    /// Resizes in place within the part that owns the block.
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        primary.owns(block)
            ? primary.resize(block, from: layout, toSize: newSize)
            : secondary.resize(block, from: layout, toSize: newSize)
    }
}

extension FallbackAllocator: CheckedDeallocatingAllocator
where Primary: CheckedDeallocatingAllocator, Secondary: CheckedDeallocatingAllocator {
    /// Returns the block through the checked path of the part that owns it (the secondary unless the primary
    /// owns it).
    ///
    /// - Throws: that part's `.doubleFree` or `.foreignBlock`; nothing changes then.
    @inlinable
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        if primary.owns(block) {
            try primary.checkedDeallocate(block, layout: layout)
        } else {
            try secondary.checkedDeallocate(block, layout: layout)
        }
    }
}
