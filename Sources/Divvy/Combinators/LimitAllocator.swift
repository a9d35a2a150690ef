import Atomics

/// An allocator with a byte quota: requests that would take the bytes in use past the limit fail cleanly with
/// `.limitExceeded`, without calling the base allocator.
///
/// The quota counts requested bytes (`layout.size`), the only size known both before allocating and when the block
/// comes back. Allocation reserves the bytes with a compare-and-swap before calling the base (and gives them back if
/// the base fails), so the bytes in use never exceed the limit, not even for an instant, however many threads
/// allocate. Deallocation returns the block to the base first and then releases its bytes, so the quota always
/// covers everything the base has handed out.
///
/// ```swift
/// let capped = LimitAllocator(SystemAllocator(), limit: 64 << 20)
/// let block = try capped.allocate(Layout(size: 4096))     // throws .limitExceeded past 64 MiB
/// ```
///
/// `Sendable` when the base is (the counter is atomic). It adopts `OwnershipAwareAllocator`,
/// `SizeRoundingAllocator`, `ResettableAllocator`, `InPlaceResizingAllocator` and `CheckedDeallocatingAllocator`
/// when the base does.
public final class LimitAllocator<Base: Allocator> {
    /// The allocator doing the real work.
    public let base: Base
    /// The most requested bytes that may be live at once.
    public let limit: Int
    @usableFromInline internal let used: ManagedAtomic<Int>

    /// Wraps `base` with a quota of `limit` bytes.
    ///
    /// - Precondition: `limit >= 0`.
    public init(_ base: Base, limit: Int) {
        precondition(limit >= 0, "LimitAllocator: the limit must not be negative")
        self.base = base
        self.limit = limit
        self.used = ManagedAtomic(0)
    }

    /// Requested bytes currently live (reserved).
    public var usedBytes: Int { used.load(ordering: .relaxed) }
    /// Bytes that can still be reserved.
    public var remainingBytes: Int { limit - usedBytes }

    /// Reserves `bytes` of the quota, or reports that it would be exceeded (changing nothing).
    @inlinable
    internal func reserve(_ bytes: Int) -> Bool {
        // Relaxed suffices: the counter guards no other memory; the base allocator synchronizes its own blocks.
        var current = used.load(ordering: .relaxed)
        while true {
            // Safe: current <= limit and bytes >= 0, so the subtraction below cannot overflow.
            guard bytes <= limit &- current else { return false }
            let (exchanged, original) = used.weakCompareExchange(
                expected: current, desired: current &+ bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Gives `bytes` back to the quota.
    @inlinable
    internal func release(_ bytes: Int) {
        used.wrappingDecrement(by: bytes, ordering: .relaxed)
    }

    /// Allocates from the base if `layout.size` more bytes fit the quota.
    ///
    /// - Throws: `.limitExceeded` (with the limit) when the quota would be exceeded; the base is not called then.
    ///   The base's error when it fails; the reservation is released then.
    /// - Complexity: O(1) plus the base; the reservation retries only under contention.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        guard reserve(layout.size) else {
            throw AllocationError(
                .limitExceeded, "LimitAllocator byte quota exceeded", size: layout.size,
                alignment: layout.alignment, limit: limit)
        }
        do {
            return try base.allocate(layout)
        } catch {
            release(layout.size)
            throw error
        }
    }

    /// Returns the block to the base, then releases its bytes.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        base.deallocate(block, layout: layout)
        release(layout.size)
    }

    /// Reallocates through the base when the growth fits the quota (shrinking always fits).
    ///
    /// - Throws: `.limitExceeded` when the growth would exceed the quota (the base is not called, the block is
    ///   untouched); the base's error otherwise.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let growth = new.size - old.size
        if growth > 0 {
            guard reserve(growth) else {
                throw AllocationError(
                    .limitExceeded, "LimitAllocator byte quota exceeded", size: new.size, alignment: new.alignment,
                    limit: limit)
            }
            do {
                return try base.reallocate(block, from: old, to: new)
            } catch {
                release(growth)
                throw error
            }
        }
        let moved = try base.reallocate(block, from: old, to: new)
        release(-growth)
        return moved
    }
}

extension LimitAllocator: Allocator {}

extension LimitAllocator: @unchecked Sendable where Base: Sendable {}
// @unchecked: the only mutable state is the ManagedAtomic counter; `base` and `limit` are immutable.

extension LimitAllocator: OwnershipAwareAllocator where Base: OwnershipAwareAllocator {
    /// The base's answer.
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { base.owns(block) }
}

extension LimitAllocator: SizeRoundingAllocator where Base: SizeRoundingAllocator {
    /// The base's answer (the quota still counts requested bytes).
    @inlinable
    public func goodSize(for layout: Layout) -> Int { base.goodSize(for: layout) }
}

extension LimitAllocator: ResettableAllocator where Base: ResettableAllocator {
    /// Resets the base and the quota's used bytes to zero.
    ///
    /// Not to be called while other threads allocate through this allocator.
    public func deallocateAll() {
        base.deallocateAll()
        used.store(0, ordering: .relaxed)
    }
}

extension LimitAllocator: InPlaceResizingAllocator where Base: InPlaceResizingAllocator {
    /// Resizes in place through the base when the growth fits the quota.
    ///
    /// - Returns: nil when the quota would be exceeded or the base cannot resize in place; nothing changes then.
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        let growth = newSize - layout.size
        if growth > 0 {
            guard reserve(growth) else { return nil }
            guard let resized = base.resize(block, from: layout, toSize: newSize) else {
                release(growth)
                return nil
            }
            return resized
        }
        guard let resized = base.resize(block, from: layout, toSize: newSize) else { return nil }
        release(-growth)
        return resized
    }
}

extension LimitAllocator: CheckedDeallocatingAllocator where Base: CheckedDeallocatingAllocator {
    /// Returns the block through the base's checked path, then releases its bytes.
    ///
    /// - Throws: the base's `.doubleFree` or `.foreignBlock`; the quota is unchanged then.
    @inlinable
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        try base.checkedDeallocate(block, layout: layout)
        release(layout.size)
    }
}
