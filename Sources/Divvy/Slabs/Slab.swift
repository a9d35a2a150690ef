/// A single-thread slab: fixed-size blocks of one layout, carved from refills taken from a backing allocator.
///
/// Free blocks form a singly linked list threaded through the blocks themselves (the first word of a free block
/// is the next free block), so allocation and deallocation are a pointer pop and push. Fresh refills are carved
/// lazily by a bump pointer, so a huge refill costs nothing until it is used.
///
/// Build one with `SlabBuilder(layout).finishUnsynchronized(backing)`. Not `Sendable`: one thread uses it (the
/// compiler enforces that). For a slab that other threads may free into, see `SlabBuilder.finish(_:)`.
///
/// - Every allocation must fit the slab's layout (`size <= stride`, `alignment <= alignment`); others throw
///   `.unsupportedLayout`.
/// - Past the builder's byte limit, allocation throws `.limitExceeded`; blocks already handed out are unaffected.
/// - Deinitializing the slab returns every refill to the backing allocator.
public final class Slab<Backing: Allocator> {
    /// The validated configuration the slab was built with.
    public let configuration: SlabConfiguration
    /// Where refills come from.
    public let backing: Backing

    @usableFromInline internal let stride: Int
    @usableFromInline internal let alignment: Int
    // Mutable state lives behind a pointer so the hot path pays no dynamic exclusivity check (class stored
    // properties would). Safe: the slab is not Sendable, so only one thread touches this at a time, and the
    // pointer lives exactly as long as the slab.
    @usableFromInline internal let state: UnsafeMutablePointer<State>

    @usableFromInline
    internal struct State {
        /// Head of the free list threaded through free blocks.
        @usableFromInline var freeList: UnsafeMutableRawPointer?
        /// Next uncarved byte of the newest refill.
        @usableFromInline var bump: UnsafeMutableRawPointer?
        /// Bytes left to carve at `bump`.
        @usableFromInline var bumpRemaining: Int
        /// Blocks handed out and not yet returned.
        @usableFromInline var liveBlocks: Int
        /// Newest refill's start; refills link through their trailers.
        @usableFromInline var newestRefill: UnsafeMutableRawPointer?
        /// Refills taken so far.
        @usableFromInline var refillCount: Int
        /// Bytes taken from the backing allocator (requested sizes).
        @usableFromInline var footprint: Int
        /// Blocks carved out of refills so far (free or live).
        @usableFromInline var carvedBlocks: Int
    }

    internal init(configuration: SlabConfiguration, backing: Backing) {
        self.configuration = configuration
        self.backing = backing
        self.stride = configuration.stride
        self.alignment = configuration.alignment
        self.state = .allocate(capacity: 1)
        state.initialize(
            to: State(
                freeList: nil, bump: nil, bumpRemaining: 0, liveBlocks: 0, newestRefill: nil, refillCount: 0,
                footprint: 0, carvedBlocks: 0))
    }

    deinit {
        releaseRefills()
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// Allocates one block. The block's `size` is the slab's stride.
    ///
    /// - Throws: `.unsupportedLayout` if `layout` does not fit a block; `.limitExceeded` past the byte limit;
    ///   the backing allocator's error if a refill fails.
    /// - Complexity: O(1); a refill calls the backing allocator once.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        guard layout.size <= stride, layout.alignment <= alignment else {
            throw AllocationError(
                .unsupportedLayout, "layout does not fit this slab's blocks", size: layout.size,
                alignment: layout.alignment, limit: stride)
        }
        if let head = state.pointee.freeList {
            state.pointee.freeList = head.load(as: UnsafeMutableRawPointer?.self)
            state.pointee.liveBlocks &+= 1
            return UnsafeBlock(start: head, size: stride)
        }
        if state.pointee.bumpRemaining >= stride, let bump = state.pointee.bump {
            state.pointee.bump = bump + stride
            state.pointee.bumpRemaining &-= stride
            state.pointee.liveBlocks &+= 1
            state.pointee.carvedBlocks &+= 1
            return UnsafeBlock(start: bump, size: stride)
        }
        try refill(for: layout)
        return try allocate(layout)
    }

    /// Returns a block to the slab's free list.
    ///
    /// - Complexity: O(1).
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        #if DIVVY_INTERNAL_CHECKS
        precondition(owns(block), "Slab.deallocate(\(block)): block is not from this slab")
        #endif
        block.start.storeBytes(of: state.pointee.freeList, as: UnsafeMutableRawPointer?.self)
        state.pointee.freeList = block.start
        state.pointee.liveBlocks &-= 1
    }

    /// Blocks handed out and not yet returned.
    public var liveBlocks: Int { state.pointee.liveBlocks }
    /// Bytes taken from the backing allocator so far.
    public var footprint: Int { state.pointee.footprint }
    /// Number of refills taken from the backing allocator.
    public var refillCount: Int { state.pointee.refillCount }

    // MARK: Refills

    /// Takes one more refill from the backing allocator and makes it the bump region.
    ///
    /// Each refill ends in a 32-byte trailer: the previous refill's trailer, the refill's start, the size the
    /// backing allocator gave, and the size requested. The slab keeps only the newest trailer's address, so it
    /// needs no side table (and no Swift heap allocation) to find its refills.
    @usableFromInline
    internal func refill(for layout: Layout) throws(AllocationError) {
        let minimum = SlabConfiguration.minimumRefill(stride: stride, alignment: alignment)
        let remaining = configuration.limit - state.pointee.footprint
        var size = Swift.max(configuration.growth.refillSize(state.pointee.refillCount), minimum)
        // Safe: capped at 2^48 so the layout's size stays far from Int.max (a pow2 policy may saturate there).
        size = Swift.min(size, remaining, SlabGrowthPolicy.linearMaximum) & ~15
        guard size >= minimum else {
            throw AllocationError(
                .limitExceeded, "slab byte limit reached", size: layout.size, limit: configuration.limit)
        }
        let refillLayout = Layout(uncheckedSize: size, alignment: Swift.max(alignment, 16))
        let block = try backing.allocate(refillLayout)
        // The trailer sits at the end of what the backing really gave us, 16-byte aligned.
        let trailerOffset = (block.size - SlabConfiguration.refillTrailerSize) & ~15
        let trailer = block.start + trailerOffset
        trailer.storeBytes(of: state.pointee.newestRefill, toByteOffset: 0, as: UnsafeMutableRawPointer?.self)
        trailer.storeBytes(of: block.start, toByteOffset: 8, as: UnsafeMutableRawPointer.self)
        trailer.storeBytes(of: block.size, toByteOffset: 16, as: Int.self)
        trailer.storeBytes(of: size, toByteOffset: 24, as: Int.self)
        state.pointee.newestRefill = trailer
        state.pointee.refillCount += 1
        state.pointee.footprint += size
        // Blocks are carved from the start; the refill's alignment is at least the blocks'.
        state.pointee.bump = block.start
        state.pointee.bumpRemaining = trailerOffset
    }

    /// Visits every refill, newest first: its carvable bytes (start up to the trailer), the backing block, and
    /// the layout it was requested with.
    internal func forEachRefill(_ body: (UnsafeMutableRawBufferPointer, UnsafeBlock, Layout) -> Void) {
        var current = state.pointee.newestRefill
        while let trailer = current {
            let next = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
            let start = trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self)
            let blockSize = trailer.load(fromByteOffset: 16, as: Int.self)
            let requested = trailer.load(fromByteOffset: 24, as: Int.self)
            body(
                UnsafeMutableRawBufferPointer(start: start, count: trailer - start),
                UnsafeBlock(start: start, size: blockSize),
                Layout(uncheckedSize: requested, alignment: Swift.max(alignment, 16)))
            current = next
        }
    }

    /// Returns every refill to the backing allocator and forgets all blocks.
    private func releaseRefills() {
        var current = state.pointee.newestRefill
        while let trailer = current {
            // Read the trailer before the memory holding it goes back to the backing allocator.
            current = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
            let start = trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self)
            let blockSize = trailer.load(fromByteOffset: 16, as: Int.self)
            let requested = trailer.load(fromByteOffset: 24, as: Int.self)
            backing.deallocate(
                UnsafeBlock(start: start, size: blockSize),
                layout: Layout(uncheckedSize: requested, alignment: Swift.max(alignment, 16)))
        }
        state.pointee = State(
            freeList: nil, bump: nil, bumpRemaining: 0, liveBlocks: 0, newestRefill: nil, refillCount: 0,
            footprint: 0, carvedBlocks: 0)
    }
}

extension Slab: OwnershipAwareAllocator {
    /// Whether `block` starts inside one of the slab's refills.
    ///
    /// - Complexity: O(refills): O(log limit) with `.pow2` growth.
    public func owns(_ block: UnsafeBlock) -> Bool {
        var found = false
        forEachRefill { carvable, _, _ in
            if !found, let base = carvable.baseAddress, block.start >= base, block.start < base + carvable.count {
                found = true
            }
        }
        return found
    }
}

extension Slab: ResettableAllocator {
    /// Returns every refill to the backing allocator. Every block handed out becomes invalid; the byte limit is
    /// available again.
    public func deallocateAll() {
        releaseRefills()
    }
}

extension Slab: SizeRoundingAllocator {
    /// The slab's stride, for any layout that fits its blocks.
    @inlinable
    public func goodSize(for layout: Layout) -> Int { stride }
}

extension Slab {
    /// Checks the slab's internal invariants and traps with a message if one is broken.
    ///
    /// Walks the free list: every free block lies in a refill on a block boundary, the list has no cycle, and
    /// free + live equals the blocks carved so far. Compiled to nothing unless `DIVVY_INTERNAL_CHECKS` is set
    /// (debug builds and tests).
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        var refills: [UnsafeMutableRawBufferPointer] = []
        forEachRefill { carvable, _, _ in refills.append(carvable) }
        let carved = state.pointee.carvedBlocks
        var free = 0
        var node = state.pointee.freeList
        while let current = node {
            free += 1
            precondition(free <= carved, "Slab invariant: free list longer than carved blocks (cycle?)")
            let home = refills.first { current >= $0.baseAddress! && current < $0.baseAddress! + $0.count }
            precondition(home != nil, "Slab invariant: free block \(current) outside every refill")
            precondition(
                (current - home!.baseAddress!) % stride == 0, "Slab invariant: free block not on a block boundary")
            node = current.load(as: UnsafeMutableRawPointer?.self)
        }
        precondition(
            free + state.pointee.liveBlocks == carved,
            "Slab invariant: \(free) free + \(state.pointee.liveBlocks) live != \(carved) carved")
        #endif
    }
}
