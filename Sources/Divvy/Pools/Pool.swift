/// A general-purpose allocator: small requests are served by one slab per size class, large ones by the backing
/// allocator.
///
/// A request's size picks its class (`SizeClasses`: multiples of 16 up to 128 bytes, then four classes per
/// doubling) with a few instructions of bit arithmetic; each class is a single-thread `Slab` built lazily on its
/// first use, with refills from the backing allocator. Requests above `largestSmallSize` (32 KiB by default) go
/// straight to the backing allocator.
///
/// ```swift
/// let pool = try Pool(SystemAllocator())
/// let node = try pool.allocate(Layout(size: 40))     // a 48-byte block from the 48-byte class
/// pool.deallocate(node, layout: try Layout(size: 40))
/// ```
///
/// Alignment: every class's slab is aligned to the largest power of two dividing its size (a 320-byte class to 64,
/// a 256-byte class to 256). A request aligned to more than 16 bytes is served from the class holding its size
/// rounded up to the alignment: that class's size is always a multiple of the alignment (classes in
/// (2^k, 2^(k+1)] are multiples of 2^(k-2), and the multiples of larger powers of two in that range are classes
/// themselves), so its blocks are aligned. When the rounded size is above `largestSmallSize` the request goes to
/// the backing allocator.
///
/// Deallocation and reallocation find the class from the layout alone, so they must be given the layout the block
/// was allocated (or last reallocated) with, as the `Allocator` contract requires.
///
/// Not `Sendable`: one thread uses a pool at a time. Deinitializing the pool returns every slab's memory to the
/// backing allocator; large blocks still live are not tracked and stay allocated.
public final class Pool<Backing: Allocator> {
    /// Where slab refills and large blocks come from.
    public let backing: Backing
    /// How each class's slab grows its refills.
    public let growth: SlabGrowthPolicy
    /// The largest class size; larger requests go to the backing allocator.
    public let largestSmallSize: Int
    /// Number of size classes served by slabs.
    public let classCount: Int

    // One slot per class, nil until the class is first used. Unmanaged so the hot path does no reference
    // counting; the pool holds one retain per slab, dropped in deinit. Safe: the pool is not Sendable, so one
    // thread touches the slots at a time, and they live exactly as long as the pool.
    @usableFromInline internal let slabs: UnsafeMutablePointer<Unmanaged<Slab<Backing>>?>

    /// Creates a pool over `backing`. No memory is taken until the first allocation.
    ///
    /// - Parameters:
    ///   - backing: where slab refills and large blocks come from.
    ///   - largestSmallSize: requests up to this size are served by slabs (rounded down to a class size);
    ///     between 16 bytes and 1 MiB. Default 32 KiB.
    ///   - growth: each slab's refill growth; the default doubles from 64 KiB up to 1 MiB.
    /// - Throws: `.invalidConfiguration` if `largestSmallSize` is out of range or a class does not fit the
    ///   largest refill of `growth`.
    public init(
        _ backing: Backing, largestSmallSize: Int = 32 * 1024,
        growth: SlabGrowthPolicy = .pow2(initial: 64 * 1024, maximum: 1024 * 1024)
    ) throws(AllocationError) {
        guard largestSmallSize >= SizeClasses.granularity, largestSmallSize <= 1 << 20 else {
            throw AllocationError(
                .invalidConfiguration, "pool largest small size must be between 16 bytes and 1 MiB",
                size: largestSmallSize)
        }
        var count = SizeClasses.index(forSize: largestSmallSize) + 1
        if SizeClasses.size(ofClass: count - 1) > largestSmallSize { count -= 1 }
        // Check every class's slab configuration now, so that lazily building one later cannot fail.
        for index in 0..<count {
            _ = try Pool.builder(forClass: index, growth: growth).validated()
        }
        self.backing = backing
        self.growth = growth
        self.classCount = count
        self.largestSmallSize = SizeClasses.size(ofClass: count - 1)
        self.slabs = .allocate(capacity: count)
        slabs.initialize(repeating: nil, count: count)
    }

    deinit {
        for index in 0..<classCount { slabs[index]?.release() }
        slabs.deinitialize(count: classCount)
        slabs.deallocate()
    }

    /// The slab configuration of class `index`: blocks of the class size, aligned to its largest power-of-two
    /// divisor.
    internal static func builder(forClass index: Int, growth: SlabGrowthPolicy) -> SlabBuilder {
        let size = SizeClasses.size(ofClass: index)
        return SlabBuilder(size: size, alignment: size & -size).growthPolicy(growth)
    }

    // MARK: Hot path

    /// The class serving `layout`, or `classCount` when the backing allocator serves it.
    @inlinable
    @inline(__always)
    internal func classIndex(for layout: Layout) -> Int {
        var size = layout.size
        if layout.alignment > SizeClasses.granularity {
            // The class holding a multiple of the alignment has blocks with that alignment (see the type's
            // discussion). Safe: Layout guarantees size + alignment does not overflow.
            size = alignUp(Swift.max(size, 1), to: layout.alignment)
        }
        return size > largestSmallSize ? classCount : SizeClasses.index(forSize: size)
    }

    /// Allocates from the slab of the request's class, or from the backing allocator for a large request.
    ///
    /// The block's size is the class size (for large requests, whatever the backing allocator gives).
    ///
    /// - Throws: the backing allocator's error when a slab refill or a large request fails; the pool is unchanged
    ///   then.
    /// - Complexity: O(1).
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let index = classIndex(for: layout)
        if _fastPath(index < classCount) {
            if let slab = slabs[index] {
                // `_withUnsafeGuaranteedRef`, not `takeUnretainedValue()`: the latter costs a retain/release pair
                // per call (measured: 23 ns instead of 4 ns per pair). Safe: the pool holds the slab's +1 until
                // deinit, so the reference is valid for the whole call.
                let result = slab._withUnsafeGuaranteedRef { slab in
                    Result { () throws(AllocationError) in try slab.allocate(layout) }
                }
                return try result.get()
            }
            return try makeSlab(index).allocate(layout)
        }
        return try backing.allocate(layout)
    }

    /// Returns a block to its class's slab, or to the backing allocator if it is large.
    ///
    /// - Precondition: `layout` is the layout the block was allocated (or last reallocated) with.
    /// - Complexity: O(1).
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        let index = classIndex(for: layout)
        if _fastPath(index < classCount) {
            guard let slab = slabs[index] else { Pool.neverAllocated(block) }
            // Safe: as in `allocate`, the pool keeps the slab alive; no retain/release on the hot path.
            slab._withUnsafeGuaranteedRef { $0.deallocate(block, layout: layout) }
        } else {
            backing.deallocate(block, layout: layout)
        }
    }

    /// Keeps the block when the new layout is in the same class, hands large-to-large moves to the backing
    /// allocator's `reallocate`, and allocates, copies and frees otherwise.
    ///
    /// - Throws: the error of the allocation that failed; the old block is untouched then.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let oldIndex = classIndex(for: old)
        let newIndex = classIndex(for: new)
        if oldIndex == newIndex {
            if oldIndex < classCount {
                return UnsafeBlock(start: block.start, size: SizeClasses.size(ofClass: oldIndex))
            }
            return try backing.reallocate(block, from: old, to: new)
        }
        let moved = try allocate(new)
        moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
        deallocate(block, layout: old)
        return moved
    }

    /// Traps for a free whose layout names a class that never allocated (kept out of the inlined path).
    @usableFromInline
    @inline(never)
    internal static func neverAllocated(_ block: UnsafeBlock) -> Never {
        preconditionFailure("Pool.deallocate(\(block)): no block of this layout was ever allocated here")
    }

    /// Builds the slab of class `index` on its first use.
    @usableFromInline
    internal func makeSlab(_ index: Int) throws(AllocationError) -> Slab<Backing> {
        // Cannot throw: init validated every class's configuration.
        let slab = try Pool.builder(forClass: index, growth: growth).finishUnsynchronized(backing)
        slabs[index] = Unmanaged.passRetained(slab)
        return slab
    }

    // MARK: Introspection

    /// Blocks handed out by the slabs and not yet returned (large blocks are not counted).
    public var smallLiveBlocks: Int {
        (0..<classCount).reduce(0) { $0 + (slabs[$1]?.takeUnretainedValue().liveBlocks ?? 0) }
    }

    /// Bytes the slabs took from the backing allocator.
    public var smallFootprint: Int {
        (0..<classCount).reduce(0) { $0 + (slabs[$1]?.takeUnretainedValue().footprint ?? 0) }
    }

    /// Classes whose slab has been built.
    public var activeClassCount: Int {
        (0..<classCount).reduce(0) { $0 + (slabs[$1] == nil ? 0 : 1) }
    }

    /// The slab of class `index`, if it has been built (for tests and diagnostics).
    public func slab(forClass index: Int) -> Slab<Backing>? {
        precondition(index >= 0 && index < classCount, "Pool.slab(forClass:): no class \(index)")
        return slabs[index]?.takeUnretainedValue()
    }

    /// Checks every built slab's invariants and traps with a message if one is broken. Compiled to nothing unless
    /// `DIVVY_INTERNAL_CHECKS` is set (debug builds and tests).
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        for index in 0..<classCount {
            guard let slab = slabs[index]?.takeUnretainedValue() else { continue }
            precondition(
                slab.configuration.stride == SizeClasses.size(ofClass: index), "Pool invariant: class \(index) stride")
            slab._checkInvariants()
        }
        #endif
    }
}

extension Pool: SizeRoundingAllocator {
    /// The class size for a small request; for a large one, the backing allocator's `goodSize` if it rounds
    /// sizes, otherwise the requested size.
    @inlinable
    public func goodSize(for layout: Layout) -> Int {
        let index = classIndex(for: layout)
        if index < classCount { return SizeClasses.size(ofClass: index) }
        if let rounding = backing as? any SizeRoundingAllocator { return rounding.goodSize(for: layout) }
        return Swift.max(layout.size, 1)
    }
}

extension Pool: InPlaceResizingAllocator {
    /// Resizes in place when the new size falls in the block's class.
    ///
    /// - Returns: the block with the class size, or nil when the new size needs another class or the block is
    ///   large.
    /// - Complexity: O(1).
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        guard newSize >= 0, newSize <= Int.max - layout.alignment else { return nil }
        let index = classIndex(for: layout)
        guard index < classCount, index == classIndex(for: Layout(uncheckedSize: newSize, alignment: layout.alignment))
        else { return nil }
        return UnsafeBlock(start: block.start, size: SizeClasses.size(ofClass: index))
    }
}

extension Pool: OwnershipAwareAllocator where Backing: OwnershipAwareAllocator {
    /// Whether the backing allocator owns `block`: every slab refill and every large block comes from it.
    ///
    /// If the backing allocator also serves others, their blocks count too; give the pool a backing of its own
    /// when the answer must be exact (as `FallbackAllocator` needs).
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool { backing.owns(block) }
}

extension Pool: ResettableAllocator where Backing: ResettableAllocator {
    /// Returns every slab's refills to the backing allocator, then resets the backing allocator (which frees the
    /// large blocks). Every block handed out becomes invalid.
    public func deallocateAll() {
        for index in 0..<classCount { slabs[index]?.takeUnretainedValue().deallocateAll() }
        backing.deallocateAll()
    }
}
