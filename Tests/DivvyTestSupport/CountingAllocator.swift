import Divvy

/// A test double that forwards to a real allocator and counts what passes through it, so tests can check that
/// owners free exactly once and that allocators return their memory. Single-threaded.
public final class CountingAllocator<Base: Allocator>: Allocator {
    /// The allocator doing the real work.
    public let base: Base
    /// Successful allocations (including reallocations' new blocks).
    public private(set) var allocations = 0
    /// Deallocations.
    public private(set) var deallocations = 0
    /// Addresses currently handed out, with their layouts.
    public private(set) var live: [UInt: Layout] = [:]

    /// Wraps `base`.
    public init(_ base: Base) { self.base = base }

    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let block = try base.allocate(layout)
        allocations += 1
        precondition(live[block.address] == nil, "CountingAllocator: address handed out twice")
        live[block.address] = layout
        return block
    }

    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        precondition(live[block.address] == layout, "CountingAllocator: bad free of \(block) with \(layout)")
        live[block.address] = nil
        deallocations += 1
        base.deallocate(block, layout: layout)
    }
}
