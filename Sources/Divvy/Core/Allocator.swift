/// Something that hands out blocks of memory and takes them back.
///
/// This is the one requirement every Divvy allocator meets. Optional capabilities are separate refining
/// protocols (`OwnershipAwareAllocator`, `InPlaceResizingAllocator`, `ResettableAllocator`,
/// `SizeRoundingAllocator`, `CheckedDeallocatingAllocator`) and an allocator adopts them only where it can
/// answer fast, after D's `std.experimental.allocator`. Combinators adopt them conditionally, when their parts do.
///
/// Allocators have reference semantics: copies of an allocator value share one heap. Stateful allocators are
/// classes (or hold one); stateless ones (`FailingAllocator`, `SystemAllocator`, `OSAllocator`) are structs.
/// An allocator is `Sendable` exactly when any thread may call it at any time.
///
/// Generic code over `Allocator` specializes to direct calls: the protocol's requirements are meant to be called
/// from `@inlinable` code, and the hot paths of Divvy's allocators are themselves inlinable.
public protocol Allocator {
    /// Allocates a block that fits `layout`.
    ///
    /// - Returns: a block whose `start` is aligned to `layout.alignment` and whose `size` is at least
    ///   `layout.size`. Its contents are unspecified.
    /// - Throws: `AllocationError` when the request cannot be served; the allocator is unchanged then.
    func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock

    /// Returns a block to the allocator.
    ///
    /// - Parameters:
    ///   - block: a block this allocator returned (from `allocate`, `reallocate` or `resize`) and that has not
    ///     been deallocated since.
    ///   - layout: the layout the block was allocated (or last resized) with.
    ///
    /// Passing anything else is a programmer error: allocators that can detect it cheaply trap with a message
    /// (or report it through `CheckedDeallocatingAllocator`); the others have undefined behaviour.
    func deallocate(_ block: UnsafeBlock, layout: Layout)

    /// Moves a block to a new layout, preserving the first `min(old.size, new.size)` bytes.
    ///
    /// The default allocates, copies and deallocates; allocators that can do better (in place, or `mremap`)
    /// provide their own. On failure the old block is untouched and still owned by the caller.
    ///
    /// - Throws: `AllocationError` if the new block cannot be allocated.
    func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError) -> UnsafeBlock
}

extension Allocator {
    /// Allocate, copy, deallocate.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let moved = try allocate(new)
        moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
        deallocate(block, layout: old)
        return moved
    }
}

extension Allocator where Self: InPlaceResizingAllocator {
    /// Resize in place when possible, otherwise allocate, copy, deallocate.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        if new.alignment <= old.alignment, let resized = resize(block, from: old, toSize: new.size) {
            return resized
        }
        let moved = try allocate(new)
        moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
        deallocate(block, layout: old)
        return moved
    }
}

/// An allocator that can tell whether it handed out a block. Used by `FallbackAllocator` to route frees.
public protocol OwnershipAwareAllocator: Allocator {
    /// Whether `block` lies in memory this allocator handed out (it may be free again by now).
    func owns(_ block: UnsafeBlock) -> Bool
}

/// An allocator that can sometimes grow or shrink a block without moving it.
public protocol InPlaceResizingAllocator: Allocator {
    /// Changes the block's size to at least `newSize` bytes without moving it.
    ///
    /// - Returns: the resized block (same `start`, new `size`), or nil if it cannot be done in place; the
    ///   block is unchanged then.
    func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock?
}

/// An allocator that can free everything it handed out at once (arenas, and combinators over them).
public protocol ResettableAllocator: Allocator {
    /// Frees every block this allocator handed out. Blocks from before the call must not be used again.
    func deallocateAll()
}

/// An allocator that can say how many bytes a request really gets.
public protocol SizeRoundingAllocator: Allocator {
    /// The usable size of a block allocated with `layout` (what `allocate(layout).size` would be).
    func goodSize(for layout: Layout) -> Int
}

/// An allocator that detects bad frees (double frees, foreign blocks) and reports them instead of trapping.
public protocol CheckedDeallocatingAllocator: Allocator {
    /// Returns a block to the allocator, or reports why it cannot be taken back.
    ///
    /// - Throws: `AllocationError` with code `.doubleFree` or `.foreignBlock`; the allocator is unchanged then.
    func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError)
}
