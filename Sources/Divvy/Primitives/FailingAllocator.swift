/// An allocator whose every allocation fails: the original crate's `Never`.
///
/// Useful as the terminal case of a composition (`FallbackAllocator(primary, FailingAllocator())` fails
/// cleanly when the primary is exhausted), and in tests of out-of-memory handling.
///
/// ```swift
/// let nothing = FailingAllocator()
/// _ = try nothing.allocate(Layout.of(Int.self))   // throws .outOfMemory
/// ```
@frozen
public struct FailingAllocator: Allocator, OwnershipAwareAllocator, ResettableAllocator,
    CheckedDeallocatingAllocator, Sendable
{
    /// Creates the allocator. It has no state.
    @inlinable
    public init() {}

    /// Always throws `.outOfMemory`.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        throw AllocationError(
            .outOfMemory, "FailingAllocator never allocates", size: layout.size, alignment: layout.alignment)
    }

    /// Traps: no block can have come from this allocator.
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        preconditionFailure("FailingAllocator.deallocate(\(block)): this allocator never hands out blocks")
    }

    /// Always throws `.foreignBlock`: no block can have come from this allocator.
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        throw AllocationError(.foreignBlock, "FailingAllocator never hands out blocks", size: layout.size)
    }

    /// Always false.
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { false }

    /// Does nothing: there is nothing to free.
    @inlinable
    public func deallocateAll() {}
}
