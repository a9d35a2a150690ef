/// Configures a slab (fixed-size blocks of one layout) and builds it over a backing allocator.
///
/// ```swift
/// struct Node { var value: Int; var next: UnsafeMutableRawPointer? }
/// let slab = try SlabBuilder(Layout.of(Node.self))
///     .limit(64 << 20)
///     .growthPolicy(.pow2())
///     .finishUnsynchronized(OSAllocator())          // Slab<OSAllocator>, one thread
///
/// let (local, shared) = try SlabBuilder(Layout.of(Node.self)).finish(OSAllocator())
///     // local: allocates and frees, one thread at a time; shared: Sendable, frees from any thread
/// ```
///
/// The builder checks nothing until `finish…`: every impossible combination (a zero size, an alignment that is not
/// a power of two, a limit smaller than one block, a block larger than any refill the policy can produce) throws
/// `AllocationError` with code `.invalidConfiguration` there, never a trap later.
public struct SlabBuilder: Sendable {
    /// Requested block size in bytes.
    public let blockSize: Int
    /// Requested block alignment.
    public let blockAlignment: Int
    /// Byte limit on memory taken from the backing allocator (default: none).
    public private(set) var byteLimit: Int = Int.max
    /// How refills grow (default `.pow2()`).
    public private(set) var growth: SlabGrowthPolicy = .default
    /// Page size of the thread-safe slab (default 64 KiB): each page has its own free lists.
    public private(set) var pageBytes: Int = 64 * 1024

    /// A builder for blocks of `layout`.
    public init(_ layout: Layout) {
        self.blockSize = layout.size
        self.blockAlignment = layout.alignment
    }

    /// A builder for blocks of `size` bytes aligned to `alignment`; both are checked by `finish…`.
    public init(size: Int, alignment: Int = Layout.defaultAlignment) {
        self.blockSize = size
        self.blockAlignment = alignment
    }

    /// Caps the bytes the slab takes from its backing allocator. Past it, `allocate` throws `.limitExceeded`.
    public func limit(_ bytes: Int) -> SlabBuilder {
        var copy = self
        copy.byteLimit = bytes
        return copy
    }

    /// Sets how refills grow (the seed's `SlabGrowthPolicy`).
    public func growthPolicy(_ policy: SlabGrowthPolicy) -> SlabBuilder {
        var copy = self
        copy.growth = policy
        return copy
    }

    /// Sets the page size of the thread-safe slab: a power of two, at least 4 KiB. Refills are rounded up to it.
    public func pageSize(_ bytes: Int) -> SlabBuilder {
        var copy = self
        copy.pageBytes = bytes
        return copy
    }

    /// Builds a single-thread slab.
    ///
    /// - Throws: `.invalidConfiguration` if the configuration cannot work (see the type's discussion).
    public func finishUnsynchronized<Backing: Allocator>(_ backing: Backing) throws(AllocationError) -> Slab<Backing>
    {
        Slab(configuration: try validated(), backing: backing)
    }

    /// Checks the configuration and computes the slab's geometry.
    internal func validated() throws(AllocationError) -> SlabConfiguration {
        guard blockSize > 0 else {
            throw AllocationError(.invalidConfiguration, "slab block size must be positive", size: blockSize)
        }
        guard isPowerOfTwo(blockAlignment) else {
            throw AllocationError(
                .invalidConfiguration, "slab block alignment must be a power of two", size: blockSize,
                alignment: blockAlignment)
        }
        guard blockAlignment <= 1 << 30, blockSize <= 1 << 40 else {
            throw AllocationError(
                .invalidConfiguration, "slab block size or alignment is unreasonably large", size: blockSize,
                alignment: blockAlignment)
        }
        if let problem = growth.configurationProblem {
            throw AllocationError(.invalidConfiguration, problem, size: growth.initial)
        }
        // Free blocks hold a next pointer, so blocks are at least pointer-sized and pointer-aligned.
        let alignment = Swift.max(blockAlignment, MemoryLayout<UnsafeRawPointer>.alignment)
        let stride = alignUp(Swift.max(blockSize, MemoryLayout<UnsafeRawPointer>.size), to: alignment)
        let minimumRefill = SlabConfiguration.minimumRefill(stride: stride, alignment: alignment)
        guard growth.maximum >= minimumRefill else {
            throw AllocationError(
                .invalidConfiguration, "slab block does not fit in the largest refill the growth policy produces",
                size: blockSize, limit: growth.maximum)
        }
        guard byteLimit >= minimumRefill else {
            throw AllocationError(
                .invalidConfiguration, "slab limit is below one block (plus the refill's bookkeeping)",
                size: blockSize, limit: byteLimit)
        }
        guard isPowerOfTwo(pageBytes), pageBytes >= 4096, pageBytes <= 1 << 30 else {
            throw AllocationError(
                .invalidConfiguration, "slab page size must be a power of two between 4 KiB and 1 GiB",
                size: pageBytes)
        }
        return SlabConfiguration(
            requestedSize: blockSize, requestedAlignment: blockAlignment, stride: stride, alignment: alignment,
            limit: byteLimit, growth: growth, pageSize: pageBytes)
    }
}

/// A validated slab configuration and the geometry derived from it.
public struct SlabConfiguration: Hashable, Sendable {
    /// The block size asked for.
    public let requestedSize: Int
    /// The alignment asked for.
    public let requestedAlignment: Int
    /// The distance between blocks, and the usable size of each: the size rounded up to the alignment, at least
    /// a pointer.
    public let stride: Int
    /// The alignment every block has (at least pointer alignment).
    public let alignment: Int
    /// Byte limit on memory taken from the backing allocator.
    public let limit: Int
    /// Refill growth.
    public let growth: SlabGrowthPolicy
    /// Page size of the thread-safe slab.
    public let pageSize: Int

    /// Bytes at the end of every refill that the slab keeps for its own bookkeeping.
    internal static let refillTrailerSize = 32

    /// The smallest refill that holds one block: the block, alignment slack, and the trailer.
    internal static func minimumRefill(stride: Int, alignment: Int) -> Int {
        stride + refillTrailerSize + (alignment > 16 ? alignment : 0)
    }
}
