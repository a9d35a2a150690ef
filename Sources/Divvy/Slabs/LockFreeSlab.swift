/// A fixed-capacity slab that any number of threads may allocate from and free into at the same time, lock-free.
///
/// The slab takes one region from its backing allocator when it is built and never grows: `capacity` blocks of one
/// layout, plus the free list, an `UnsafeLockFreeIndexStack` of block indices at the start of the region. Block
/// `i` lives at `blocksBase + i × stride`, so converting between a block and its index is arithmetic, and the free
/// list holds no pointers — the same design can live in shared memory.
///
/// ```swift
/// struct Node { var value: Int; var next: UnsafeMutableRawPointer? }
/// let slab = try LockFreeSlab(layout: Layout.of(Node.self), capacity: 4096, backing: SystemAllocator())
/// let block = try slab.allocate(Layout.of(Node.self))   // any thread
/// slab.deallocate(block, layout: Layout.of(Node.self))  // any thread, not necessarily the allocating one
/// ```
///
/// - Every allocation must fit the slab's layout (`size <= blockSize`, `alignment <= blockAlignment`); others
///   throw `.unsupportedLayout`.
/// - When every block is allocated, `allocate` throws `.outOfMemory`; it never blocks or waits.
/// - Freeing a block twice, or a pointer that is not one of the slab's blocks, traps in `deallocate` with a
///   message; `checkedDeallocate` reports it as `.doubleFree` / `.foreignBlock` instead and changes nothing. A
///   second free that comes after the block was allocated again (by anyone) cannot be detected here.
/// - Deinitializing the slab returns the region to the backing allocator; blocks still allocated become invalid.
///
/// `Sendable` when the backing allocator is (the backing is only called from `init` and `deinit`, which may run on
/// any thread).
public final class LockFreeSlab<Backing: Allocator> {
    /// Where the region came from, and where it goes back when the slab is deinitialized.
    public let backing: Backing
    /// The usable size of every block: the requested size rounded up to the block alignment.
    public let blockSize: Int
    /// The alignment of every block.
    public let blockAlignment: Int
    /// The number of blocks; fixed for the slab's lifetime.
    public let capacity: Int

    /// The free list of block indices, at the start of the region.
    @usableFromInline internal let stack: UnsafeLockFreeIndexStack
    /// Address of block 0.
    @usableFromInline internal let blocksBase: UnsafeMutableRawPointer
    /// `capacity × stride`: the bytes spanned by the blocks.
    @usableFromInline internal let blocksBytes: UInt
    /// The distance between blocks (equal to `blockSize`).
    @usableFromInline internal let stride: Int
    /// `log2(stride)` when the stride is a power of two (index ↔ address by shifts), otherwise -1 (division).
    @usableFromInline internal let strideShift: Int
    /// The region taken from `backing`, and the layout it was requested with.
    internal let region: UnsafeBlock
    internal let regionLayout: Layout

    /// Builds a slab of `capacity` blocks of `layout`, taking one region from `backing`.
    ///
    /// The region holds the free list (128 bytes + 4 bytes per block) followed by the blocks, and is aligned to
    /// `max(layout.alignment, 64)`.
    ///
    /// - Parameters:
    ///   - layout: the layout of every block; its size (at least 1) is rounded up to its alignment.
    ///   - capacity: the number of blocks, `1...UnsafeLockFreeIndexStack.maximumCapacity`.
    ///   - backing: the allocator that provides the region.
    /// - Throws: `.invalidConfiguration` for a zero-sized layout, an alignment above 1 GiB, a capacity of 0 or
    ///   beyond the 32-bit index range, or a region whose size overflows; the backing allocator's error if it
    ///   cannot provide the region.
    /// - Complexity: O(capacity) (the free list is linked up front); one call to the backing allocator.
    public init(layout: Layout, capacity: Int, backing: Backing) throws(AllocationError) {
        let geometry = try Self.geometry(layout: layout, capacity: capacity)
        let region = try backing.allocate(geometry.regionLayout)
        self.backing = backing
        self.blockSize = geometry.stride
        self.blockAlignment = geometry.alignment
        self.capacity = capacity
        self.stride = geometry.stride
        self.strideShift = isPowerOfTwo(geometry.stride) ? geometry.stride.trailingZeroBitCount : -1
        self.region = region
        self.regionLayout = geometry.regionLayout
        self.stack = UnsafeLockFreeIndexStack.initialize(at: region.start, capacity: capacity)
        // Safe: geometry.blocksOffset + capacity × stride == regionLayout.size <= region.size.
        self.blocksBase = region.start + geometry.blocksOffset
        self.blocksBytes = UInt(capacity &* geometry.stride)
    }

    deinit {
        backing.deallocate(region, layout: regionLayout)
    }

    /// The slab's geometry for `layout` and `capacity`, or why they cannot work.
    internal static func geometry(layout: Layout, capacity: Int) throws(AllocationError) -> (
        stride: Int, alignment: Int, blocksOffset: Int, regionLayout: Layout
    ) {
        guard layout.size > 0 else {
            throw AllocationError(
                .invalidConfiguration, "lock-free slab blocks must have a positive size", size: layout.size,
                alignment: layout.alignment)
        }
        guard layout.alignment <= 1 << 30 else {
            throw AllocationError(
                .invalidConfiguration, "lock-free slab block alignment is unreasonably large (over 1 GiB)",
                size: layout.size, alignment: layout.alignment)
        }
        guard capacity >= 1, capacity <= UnsafeLockFreeIndexStack.maximumCapacity else {
            throw AllocationError(
                .invalidConfiguration,
                "lock-free slab capacity must be between 1 and 4294967293 blocks (32-bit block indices)",
                size: capacity, limit: UnsafeLockFreeIndexStack.maximumCapacity)
        }
        let stride = layout.stride
        let regionAlignment = Swift.max(layout.alignment, UnsafeLockFreeIndexStack.requiredAlignment)
        // Safe: requiredBytes is at most ~16 GiB and the alignment at most 1 GiB.
        let blocksOffset = alignUp(UnsafeLockFreeIndexStack.requiredBytes(capacity: capacity), to: regionAlignment)
        let (blocksBytes, overflow) = stride.multipliedReportingOverflow(by: capacity)
        let (total, overflow2) = blocksOffset.addingReportingOverflow(blocksBytes)
        guard !overflow, !overflow2, total <= Int.max &- regionAlignment else {
            throw AllocationError(
                .invalidConfiguration, "lock-free slab region size overflows (capacity × block size)",
                size: layout.size, alignment: layout.alignment, limit: capacity)
        }
        return (stride, layout.alignment, blocksOffset, Layout(uncheckedSize: total, alignment: regionAlignment))
    }

    // MARK: Hot paths

    /// Allocates one block. The block's `size` is `blockSize`.
    ///
    /// - Throws: `.unsupportedLayout` if `layout` does not fit a block; `.outOfMemory` if every block is allocated.
    ///   The slab is unchanged then.
    /// - Complexity: O(1) without contention; lock-free.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        guard layout.size <= stride, layout.alignment <= blockAlignment else {
            throw AllocationError(
                .unsupportedLayout, "layout does not fit this lock-free slab's blocks", size: layout.size,
                alignment: layout.alignment, limit: stride)
        }
        guard let index = stack.pop() else {
            throw AllocationError(
                .outOfMemory, "lock-free slab is full: every block is allocated; free some or build a larger slab",
                size: layout.size, limit: capacity)
        }
        return block(at: index)
    }

    /// Returns a block to the slab. Any thread may free any block, whichever thread allocated it.
    ///
    /// Traps with a message if `block` is not one of the slab's blocks or is already free (a programmer error);
    /// use `checkedDeallocate` to get those reported as errors instead. Detection here is `.sequential` (see
    /// `UnsafeLockFreeIndexStack.DoubleFreeDetection`): it catches every double free except one that races with
    /// the first free of the same block; `checkedDeallocate` catches those too, at the cost of one more atomic
    /// operation. Frees that must be exact under races should all go through `checkedDeallocate`.
    ///
    /// - Complexity: O(1) without contention; lock-free.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        guard let index = blockIndex(of: block) else {
            preconditionFailure(
                "LockFreeSlab.deallocate(\(block)): not a block of this slab (outside it, or off a block boundary)"
            )
        }
        do {
            // `.sequential`: one atomic read-modify-write fewer than `.exact` (a pair is then two locked
            // instructions); a double free that races with the first free may go unnoticed, which is acceptable
            // here because a double free through `deallocate` is a programmer error. `checkedDeallocate` is exact.
            try stack.push(index, detection: .sequential)
        } catch {
            preconditionFailure("LockFreeSlab.deallocate(\(block)): \(error)")
        }
    }

    /// The block with index `index`. - Precondition: `index < capacity`.
    @inlinable
    internal func block(at index: UInt32) -> UnsafeBlock {
        // Safe: index < capacity, so index × stride < blocksBytes, which fit in the region.
        UnsafeBlock(start: blocksBase + Int(truncatingIfNeeded: index) &* stride, size: stride)
    }

    /// The index of the block starting at `block.start`, or nil if that is not the start of one of the slab's
    /// blocks.
    @inlinable
    internal func blockIndex(of block: UnsafeBlock) -> UInt32? {
        // Wraps to a huge value for addresses below the blocks, so one comparison checks both ends.
        let offset = UInt(bitPattern: block.start) &- UInt(bitPattern: blocksBase)
        guard offset < blocksBytes else { return nil }
        if strideShift >= 0 {
            guard offset & UInt(stride &- 1) == 0 else { return nil }
            // Safe: offset < capacity × stride, so the quotient is below capacity <= UInt32.max.
            return UInt32(truncatingIfNeeded: offset &>> UInt(strideShift))
        }
        let (quotient, remainder) = offset.quotientAndRemainder(dividingBy: UInt(stride))
        guard remainder == 0 else { return nil }
        return UInt32(truncatingIfNeeded: quotient)
    }

    // MARK: Statistics

    /// The number of free blocks; exact when no allocation or free is in progress.
    @inlinable
    public var approximateFreeCount: Int { stack.approximateCount }

    /// The number of allocated blocks (`capacity - approximateFreeCount`); exact when quiescent.
    @inlinable
    public var approximateLiveCount: Int { capacity &- stack.approximateCount }

    /// Checks the free list (see `UnsafeLockFreeIndexStack._checkInvariants()`); only while no thread allocates
    /// or frees. Compiled to nothing unless `DIVVY_INTERNAL_CHECKS` is set.
    public func _checkInvariants() {
        stack._checkInvariants()
    }
}

extension LockFreeSlab: @unchecked Sendable where Backing: Sendable {}
// @unchecked: every stored property is immutable; the mutable state is the free list, which is only touched
// atomically. `Backing` is called from `init` and `deinit` only, and must be Sendable because `deinit` may run on
// whichever thread drops the last reference.

extension LockFreeSlab: OwnershipAwareAllocator {
    /// Whether `block` starts inside the slab's blocks (allocated or free).
    ///
    /// - Complexity: O(1).
    @inlinable
    public func owns(_ block: UnsafeBlock) -> Bool {
        UInt(bitPattern: block.start) &- UInt(bitPattern: blocksBase) < blocksBytes
    }
}

extension LockFreeSlab: SizeRoundingAllocator {
    /// The slab's block size, for any layout that fits its blocks.
    @inlinable
    public func goodSize(for layout: Layout) -> Int { stride }
}

extension LockFreeSlab: InPlaceResizingAllocator {
    /// Every block is `blockSize` bytes, so a resize succeeds in place exactly when the new size fits.
    ///
    /// - Returns: the same block when `newSize <= blockSize`, otherwise nil.
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        newSize <= stride ? block : nil
    }
}

extension LockFreeSlab: CheckedDeallocatingAllocator {
    /// Returns a block to the slab, or reports why it cannot be taken back.
    ///
    /// - Throws: `.foreignBlock` if `block.start` is outside the slab's blocks or not on a block boundary;
    ///   `.doubleFree` if the block is already free. The slab is unchanged then. Of two threads freeing the same
    ///   block at once, exactly one succeeds.
    /// - Complexity: O(1) without contention; lock-free.
    @inlinable
    public func checkedDeallocate(_ block: UnsafeBlock, layout: Layout) throws(AllocationError) {
        guard let index = blockIndex(of: block) else {
            throw AllocationError(
                .foreignBlock,
                "block is not one of this lock-free slab's blocks (outside its region or not on a block boundary)",
                size: block.size, alignment: layout.alignment)
        }
        do {
            // `.exact`: of two racing frees of one block, exactly one succeeds.
            try stack.push(index, detection: .exact)
        } catch {
            throw AllocationError(
                error.code, "block is already free in this lock-free slab (double free)", size: block.size,
                alignment: layout.alignment)
        }
    }
}

extension SlabBuilder {
    /// Builds a fixed-capacity lock-free slab of this builder's block layout (see `LockFreeSlab`).
    ///
    /// The byte limit applies to the one region the slab takes; the growth policy and page size do not apply (the
    /// slab never grows).
    ///
    /// - Parameters:
    ///   - backing: provides the region.
    ///   - capacity: the number of blocks.
    /// - Throws: `.invalidConfiguration` if the size or alignment is invalid, the capacity is out of range, or the
    ///   region exceeds the byte limit; the backing allocator's error if it cannot provide the region.
    public func finishLockFree<Backing: Allocator>(_ backing: Backing, capacity: Int) throws(AllocationError)
        -> LockFreeSlab<Backing>
    {
        guard blockSize > 0 else {
            throw AllocationError(.invalidConfiguration, "slab block size must be positive", size: blockSize)
        }
        guard isPowerOfTwo(blockAlignment) else {
            throw AllocationError(
                .invalidConfiguration, "slab block alignment must be a power of two", size: blockSize,
                alignment: blockAlignment)
        }
        guard blockSize <= Int.max &- blockAlignment else {
            throw AllocationError(
                .invalidConfiguration, "slab block size overflows when aligned", size: blockSize,
                alignment: blockAlignment)
        }
        let layout = Layout(uncheckedSize: blockSize, alignment: blockAlignment)
        let geometry = try LockFreeSlab<Backing>.geometry(layout: layout, capacity: capacity)
        guard geometry.regionLayout.size <= byteLimit else {
            throw AllocationError(
                .invalidConfiguration, "lock-free slab region (free list + capacity × block size) exceeds the limit",
                size: geometry.regionLayout.size, limit: byteLimit)
        }
        return try LockFreeSlab(layout: layout, capacity: capacity, backing: backing)
    }
}
