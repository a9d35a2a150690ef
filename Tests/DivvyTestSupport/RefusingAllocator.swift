import Atomics
import Divvy

/// An allocator that refuses every request with `.outOfMemory` and remembers the largest size it was asked for.
///
/// Used to check what a higher-level allocator *asks* its backing for (e.g. that a saturated growth policy is
/// capped) without really asking the system for absurd sizes, which sanitizers' allocators treat as fatal.
public struct RefusingAllocator: Allocator, Sendable {
    private let largest = ManagedAtomic<Int>(0)
    private let requests = ManagedAtomic<Int>(0)

    public init() {}

    /// The largest `layout.size` requested so far.
    public var largestRequest: Int { largest.load(ordering: .relaxed) }
    /// How many requests were refused.
    public var requestCount: Int { requests.load(ordering: .relaxed) }

    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        requests.wrappingIncrement(ordering: .relaxed)
        var current = largest.load(ordering: .relaxed)
        while layout.size > current {
            let (exchanged, original) = largest.compareExchange(
                expected: current, desired: layout.size, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        throw AllocationError(.outOfMemory, "RefusingAllocator refuses every request", size: layout.size)
    }

    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        preconditionFailure("RefusingAllocator never hands out blocks, so none can come back")
    }
}
