extension SlabBuilder {
    /// Builds a thread-safe slab: a `Local` side that allocates and frees (one thread at a time) and a `Shared`
    /// side that frees from any thread, lock-free.
    ///
    /// Refills (sized by the growth policy, rounded up to the page size, clipped to the limit) are requested from
    /// `backing` aligned to the page size, and cut into pages. Each page starts with a 128-byte header.
    ///
    /// ```swift
    /// struct Node { var value: Int; var next: UnsafeMutableRawPointer? }
    /// let (local, shared) = try SlabBuilder(Layout.of(Node.self)).limit(64 << 20).finish(SystemAllocator())
    /// ```
    ///
    /// - Parameter backing: where refills come from; `Sendable`, because the last owner to go away (on any thread)
    ///   returns the refills to it.
    /// - Throws: `.invalidConfiguration` if the configuration cannot work: everything `finishUnsynchronized`
    ///   rejects, plus a block that does not fit in a page after the page header (raise `pageSize`), and a limit
    ///   below one page.
    public func finish<Backing: Allocator & Sendable>(_ backing: Backing) throws(AllocationError) -> (
        local: ConcurrentSlab<Backing>.Local, shared: ConcurrentSlab<Backing>.Shared
    ) {
        let configuration = try validated()
        let firstBlockOffset = alignUp(_ConcurrentSlabPage.headerSize, to: configuration.alignment)
        // Safe: validated() bounds stride (≤ 2^40 + alignment) and the page size (≤ 2^30); no overflow.
        guard firstBlockOffset + configuration.stride <= configuration.pageSize else {
            throw AllocationError(
                .invalidConfiguration, "slab block plus the 128-byte page header does not fit in a page; raise pageSize",
                size: blockSize, alignment: blockAlignment, limit: configuration.pageSize)
        }
        guard configuration.limit >= configuration.pageSize else {
            throw AllocationError(
                .invalidConfiguration, "slab limit is below one page of the thread-safe slab; raise it or lower pageSize",
                size: configuration.pageSize, limit: configuration.limit)
        }
        let core = ConcurrentSlab<Backing>.Core(
            configuration: configuration, backing: backing, firstBlockOffset: firstBlockOffset,
            blocksPerPage: (configuration.pageSize - firstBlockOffset) / configuration.stride)
        return (ConcurrentSlab<Backing>.Local(core: core), ConcurrentSlab<Backing>.Shared(core: core))
    }
}
