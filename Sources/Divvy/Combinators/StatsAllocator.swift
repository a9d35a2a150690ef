import Atomics

/// Counts of what passed through a `StatsAllocator`, at one moment.
///
/// Byte figures count requested bytes (`layout.size`), which is what the caller asked for and what comes back on
/// deallocation; the base allocator may hand out more.
public struct AllocationStats: Hashable, Sendable, CustomStringConvertible {
    /// Successful `allocate` calls.
    public var allocations: Int
    /// `deallocate` calls.
    public var deallocations: Int
    /// Successful `reallocate` calls and successful in-place `resize` calls.
    public var reallocations: Int
    /// `allocate` and `reallocate` calls that threw.
    public var failures: Int
    /// Requested bytes of the blocks currently live.
    public var liveBytes: Int
    /// Blocks currently live.
    public var liveBlocks: Int
    /// The most requested bytes ever live at once (the high-water mark of `liveBytes`).
    public var peakLiveBytes: Int
    /// Requested bytes of all successful allocations, plus the growth of successful reallocations.
    public var totalAllocatedBytes: Int

    /// Creates a snapshot from its figures.
    public init(
        allocations: Int = 0, deallocations: Int = 0, reallocations: Int = 0, failures: Int = 0, liveBytes: Int = 0,
        liveBlocks: Int = 0, peakLiveBytes: Int = 0, totalAllocatedBytes: Int = 0
    ) {
        self.allocations = allocations
        self.deallocations = deallocations
        self.reallocations = reallocations
        self.failures = failures
        self.liveBytes = liveBytes
        self.liveBlocks = liveBlocks
        self.peakLiveBytes = peakLiveBytes
        self.totalAllocatedBytes = totalAllocatedBytes
    }

    /// `"allocations 10, deallocations 8, reallocations 1, failures 0, live 2 blocks / 128 bytes, peak 640 bytes,
    /// total 1024 bytes"`.
    public var description: String {
        "allocations \(allocations), deallocations \(deallocations), reallocations \(reallocations), "
            + "failures \(failures), live \(liveBlocks) blocks / \(liveBytes) bytes, peak \(peakLiveBytes) bytes, "
            + "total \(totalAllocatedBytes) bytes"
    }
}

/// Forwards to a base allocator and counts exactly what passes through: calls, failures, live blocks and bytes,
/// the high-water mark of live bytes, and total bytes allocated.
///
/// ```swift
/// let counted = StatsAllocator(SystemAllocator())
/// let block = try counted.allocate(Layout(size: 100))
/// print(counted.stats)   // allocations 1, …, live 1 blocks / 100 bytes, peak 100 bytes, total 100 bytes
/// ```
///
/// Every counter is a `ManagedAtomic` updated with relaxed atomic operations, so the counts are exact however many
/// threads use the allocator, and the allocator is `Sendable` when its base is. Each counter is exact on its own;
/// a `stats` snapshot taken while other threads allocate is not one consistent instant across counters. The peak
/// is exact: every change of the live-byte counter returns the counter's new value, and the peak is raised to it.
///
/// Ordering with the base: live counters are raised after the base allocates and lowered before the base frees
/// (and before it shrinks a block), so they never count a block the base does not hold. Over a `LimitAllocator`,
/// `peakLiveBytes` therefore never exceeds the limit.
///
/// It adopts `OwnershipAwareAllocator`, `SizeRoundingAllocator`, `ResettableAllocator`, `InPlaceResizingAllocator`
/// and `CheckedDeallocatingAllocator` when the base does.
public final class StatsAllocator<Base: Allocator> {
    /// The allocator doing the real work.
    public let base: Base

    // Relaxed ordering on all counters: they guard no other memory, each is exact by itself (atomic
    // read-modify-write), and readers want figures, not synchronization.
    @usableFromInline internal let allocations = ManagedAtomic<Int>(0)
    @usableFromInline internal let deallocations = ManagedAtomic<Int>(0)
    @usableFromInline internal let reallocations = ManagedAtomic<Int>(0)
    @usableFromInline internal let failures = ManagedAtomic<Int>(0)
    @usableFromInline internal let liveBytes = ManagedAtomic<Int>(0)
    @usableFromInline internal let liveBlocks = ManagedAtomic<Int>(0)
    @usableFromInline internal let peakLiveBytes = ManagedAtomic<Int>(0)
    @usableFromInline internal let totalAllocatedBytes = ManagedAtomic<Int>(0)

    /// Wraps `base`; all counts start at zero.
    public init(_ base: Base) {
        self.base = base
    }

    /// The counts now. See the type's discussion for what "now" means under concurrency.
    public var stats: AllocationStats {
        AllocationStats(
            allocations: allocations.load(ordering: .relaxed), deallocations: deallocations.load(ordering: .relaxed),
            reallocations: reallocations.load(ordering: .relaxed), failures: failures.load(ordering: .relaxed),
            liveBytes: liveBytes.load(ordering: .relaxed), liveBlocks: liveBlocks.load(ordering: .relaxed),
            peakLiveBytes: peakLiveBytes.load(ordering: .relaxed),
            totalAllocatedBytes: totalAllocatedBytes.load(ordering: .relaxed))
    }

    /// Adds `bytes` to the live bytes and raises the peak to the new value if it is higher.
    @inlinable
    internal func addLive(_ bytes: Int) {
        let live = liveBytes.wrappingIncrementThenLoad(by: bytes, ordering: .relaxed)
        var peak = peakLiveBytes.load(ordering: .relaxed)
        while live > peak {
            let (exchanged, original) = peakLiveBytes.weakCompareExchange(
                expected: peak, desired: live, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
    }

    /// Allocates from the base and counts the allocation (or the failure).
    ///
    /// - Throws: the base's error, unchanged.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let block: UnsafeBlock
        do {
            block = try base.allocate(layout)
        } catch {
            failures.wrappingIncrement(ordering: .relaxed)
            throw error
        }
        allocations.wrappingIncrement(ordering: .relaxed)
        liveBlocks.wrappingIncrement(ordering: .relaxed)
        totalAllocatedBytes.wrappingIncrement(by: layout.size, ordering: .relaxed)
        addLive(layout.size)
        return block
    }

    /// Counts the deallocation, then returns the block to the base.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        deallocations.wrappingIncrement(ordering: .relaxed)
        liveBlocks.wrappingDecrement(ordering: .relaxed)
        liveBytes.wrappingDecrement(by: layout.size, ordering: .relaxed)
        base.deallocate(block, layout: layout)
    }

    /// Reallocates through the base and counts it (or the failure). Live bytes change by the size difference.
    ///
    /// - Throws: the base's error, unchanged.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let growth = new.size - old.size
        // A shrink is counted before the base shrinks the block (see the type's discussion) and undone on failure.
        if growth < 0 { liveBytes.wrappingIncrement(by: growth, ordering: .relaxed) }
        let moved: UnsafeBlock
        do {
            moved = try base.reallocate(block, from: old, to: new)
        } catch {
            if growth < 0 { addLive(-growth) }
            failures.wrappingIncrement(ordering: .relaxed)
            throw error
        }
        reallocations.wrappingIncrement(ordering: .relaxed)
        if growth > 0 {
            totalAllocatedBytes.wrappingIncrement(by: growth, ordering: .relaxed)
            addLive(growth)
        }
        return moved
    }
}

extension StatsAllocator: Allocator {}

extension StatsAllocator: @unchecked Sendable where Base: Sendable {}
// @unchecked: all mutable state is in ManagedAtomic counters; `base` is immutable and Sendable.

extension StatsAllocator: OwnershipAwareAllocator where Base: OwnershipAwareAllocator {
    /// The base's answer.
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { base.owns(block) }
}

extension StatsAllocator: SizeRoundingAllocator where Base: SizeRoundingAllocator {
    /// The base's answer.
    @inlinable
    public func goodSize(for layout: Layout) -> Int { base.goodSize(for: layout) }
}

extension StatsAllocator: ResettableAllocator where Base: ResettableAllocator {
    /// Resets the base; live blocks and bytes drop to zero (the other counts, and the peak, are kept).
    ///
    /// Not to be called while other threads allocate through this allocator.
    public func deallocateAll() {
        liveBlocks.store(0, ordering: .relaxed)
        liveBytes.store(0, ordering: .relaxed)
        base.deallocateAll()
    }
}

extension StatsAllocator: InPlaceResizingAllocator where Base: InPlaceResizingAllocator {
    /// Resizes in place through the base; a success counts as a reallocation.
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        let growth = newSize - layout.size
        if growth < 0 { liveBytes.wrappingIncrement(by: growth, ordering: .relaxed) }
        guard let resized = base.resize(block, from: layout, toSize: newSize) else {
            if growth < 0 { addLive(-growth) }
            return nil
        }
        reallocations.wrappingIncrement(ordering: .relaxed)
        if growth > 0 {
            totalAllocatedBytes.wrappingIncrement(by: growth, ordering: .relaxed)
            addLive(growth)
        }
        return resized
    }
}

extension StatsAllocator: CheckedDeallocatingAllocator where Base: CheckedDeallocatingAllocator {
    /// Returns the block through the base's checked path; a rejected free is not counted.
    ///
    /// - Throws: the base's `.doubleFree` or `.foreignBlock`; the counts are as before the call then.
    @inlinable
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        // Lowered before the base frees (see the type's discussion), restored if the base rejects the block.
        liveBlocks.wrappingDecrement(ordering: .relaxed)
        liveBytes.wrappingDecrement(by: layout.size, ordering: .relaxed)
        do {
            try base.checkedDeallocate(block, layout: layout)
        } catch {
            liveBlocks.wrappingIncrement(ordering: .relaxed)
            addLive(layout.size)
            throw error
        }
        deallocations.wrappingIncrement(ordering: .relaxed)
    }
}
