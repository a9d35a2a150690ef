import DivvySystem
import SystemPackage


/// Memory straight from the kernel: `mmap` to allocate, `munmap` to free, `mremap` to grow. The seed crate's `Os`.
///
/// Every block is its own private anonymous mapping; `malloc` is never involved. That makes this allocator the
/// right backing for large, long-lived regions (slab refills, arenas, big arrays) and the wrong one for small
/// objects: each call is a system call and the smallest block is a page.
///
/// ```swift
/// let os = OSAllocator()
/// let layout = try Layout(size: 1 << 20, alignment: 4096)
/// let block = try os.allocate(layout)
/// os.deallocate(block, layout: layout)
///
/// // Reserve 64 GiB of address space; only the pages you touch are ever backed.
/// let lazy = OSAllocator(.init(commit: .reserveOnly))
///
/// // Ask for 2 MiB huge pages, and find out what you got.
/// let mapping = try OSAllocator(.init(hugePages: .explicit2MiB)).map(Layout(size: 1 << 30))
/// print(mapping.kind)   // .explicit2MiB, or .transparent / .base when the system has none to give
/// ```
///
/// ## Semantics
/// - **`block.size` is the true mapping length**: the requested size rounded up to the *granularity* of the
///   configured huge-page policy (`goodSize(for:)`): the base page size for `.none`, the transparent huge page
///   size for `.transparent`, 2 MiB or 1 GiB for the explicit policies. The whole block may be used, and
///   `deallocate` unmaps exactly `block.size` bytes. The same rounding applies even when the policy fell back to
///   smaller pages, so sizes never depend on what the system happened to have.
/// - **Alignment.** Any power of two up to `maximumAlignment` (1 TiB). The start is aligned to the larger of the
///   requested alignment and the granularity. Alignments above a page are served by reserving a larger
///   `PROT_NONE` region, trimming it to the aligned range and only then making that range writable, so no more
///   memory than the block is ever committed (explicit huge pages use a reservation and `MAP_FIXED_NOREPLACE`).
/// - **Commit.** `.commit` maps normally: the kernel charges the block against its commit limit when it is
///   mapped (pages still appear on first touch). `.reserveOnly` adds `MAP_NORESERVE`: nothing is charged, so
///   address space far beyond RAM can be reserved, but touching pages when memory is exhausted kills the process
///   instead of failing the allocation. Choose it only when you mean lazy reservation.
/// - **Huge pages, fallback order explicit → transparent → base.** `.explicit1GiB` tries 1 GiB hugetlb pages,
///   then 2 MiB hugetlb pages; explicit policies then try transparent huge pages, then base pages. Each step is
///   taken only when `fallback` is true; otherwise the first failure is thrown. `OSMapping.kind` (from `map(_:)`)
///   says what was obtained.
/// - **Explicit huge pages are never `MAP_NORESERVE`**, whatever `commit` says: a hugetlb mapping without a
///   reservation dies with SIGBUS on first touch when the pool is empty. Instead the pages are reserved from the
///   pool (`vm.nr_hugepages`) at `mmap`, and a request the pool cannot cover fails there, cleanly.
/// - **Transparent huge pages** are requested with `madvise(MADV_HUGEPAGE)` on a range aligned to the huge page
///   size. The kernel backs it with huge pages when it can on first touch (or at once with `prefault`); `kind`
///   `.transparent` means the range is eligible, not that every page is huge.
/// - **Resizing.** `resize` grows or shrinks with `mremap` without `MREMAP_MAYMOVE`, so the block never moves; it
///   returns nil when the address space after the block is taken (and always when growing explicit huge pages,
///   which Linux cannot extend). `reallocate` first tries `resize`; then, when the new layout needs no more than
///   page alignment and the policy is `.none`, it lets `mremap` move the mapping (no copy: the kernel moves page
///   tables; with `prefault` a grown block is copied instead, so that a failure to populate it can still leave
///   the caller's block where it was). **Over-aligned reallocation copies**: `mremap` cannot be
///   asked for an aligned address, so a block needing more than page alignment (including every block of a
///   huge-page policy) that cannot be resized in place is mapped anew, copied and unmapped.
/// - **Prefault** populates the block with `madvise(MADV_POPULATE_WRITE)` (Linux 5.14; older kernels get each page
///   touched), so the first accesses do not fault; a request that cannot be populated fails with `.outOfMemory`
///   instead of dying later. It also prefaults the pages added by `resize` and `reallocate`.
///
/// Thread-safe: the allocator has no state of its own, and the kernel serializes changes to the address space.
///
/// Nothing here is `@inlinable`: every operation is a system call, which dwarfs a function call, and keeping the
/// implementation out of client code lets it change.
@frozen
public struct OSAllocator: Allocator, InPlaceResizingAllocator, SizeRoundingAllocator, Sendable {
    /// Which pages to back blocks with.
    public enum HugePagePolicy: Hashable, Sendable {
        /// Base pages only (4 KiB on x86_64). Blocks are rounded to the base page size.
        case none
        /// Transparent huge pages: `madvise(MADV_HUGEPAGE)` on a range aligned and rounded to the THP size.
        case transparent
        /// Explicit hugetlb pages of 2 MiB (`MAP_HUGETLB | MAP_HUGE_2MB`), from the pool in `vm.nr_hugepages`.
        case explicit2MiB
        /// Explicit hugetlb pages of 1 GiB (`MAP_HUGETLB | MAP_HUGE_1GB`), from the 1 GiB pool.
        case explicit1GiB
    }

    /// Whether mapping a block charges it against the kernel's commit limit.
    public enum CommitMode: Hashable, Sendable {
        /// Ordinary private mapping: the kernel accounts the whole block when it is mapped, so an impossible
        /// request fails at `allocate` (subject to `vm.overcommit_memory`).
        case commit
        /// `MAP_NORESERVE`: reserve address space only; memory is found when a page is first touched. Lets a
        /// process reserve far more than RAM; touching pages when memory is exhausted kills it (OOM), it does
        /// not fail an allocation. Ignored for explicit huge pages, which are always reserved.
        case reserveOnly
    }

    /// The kind of pages a mapping actually got.
    public enum PageKind: Hashable, Sendable, CustomStringConvertible {
        /// Base pages.
        case base
        /// Base pages advised for transparent huge pages (`MADV_HUGEPAGE`); the kernel promotes what it can.
        case transparent
        /// Explicit 2 MiB hugetlb pages.
        case explicit2MiB
        /// Explicit 1 GiB hugetlb pages.
        case explicit1GiB

        /// The size of one page of this kind in bytes (for `.transparent`, the huge page size it aims for).
        public var pageSize: Int {
            switch self {
            case .base: OSAllocator.pageSize
            case .transparent: OSAllocator.transparentHugePageSize
            case .explicit2MiB: 2 << 20
            case .explicit1GiB: 1 << 30
            }
        }

        /// `"base"`, `"transparent"`, `"explicit2MiB"`, `"explicit1GiB"`.
        public var description: String {
            switch self {
            case .base: "base"
            case .transparent: "transparent"
            case .explicit2MiB: "explicit2MiB"
            case .explicit1GiB: "explicit1GiB"
            }
        }
    }

    /// How blocks are mapped.
    public struct Configuration: Hashable, Sendable {
        /// Which pages to ask for. Default `.none`.
        public var hugePages: HugePagePolicy
        /// Whether to fall back (explicit → transparent → base) when the requested pages are not available.
        /// When false the first failure is thrown. Default true.
        public var fallback: Bool
        /// Whether blocks are charged to the commit limit at mapping time. Default `.commit`.
        public var commit: CommitMode
        /// Whether to populate every page of a block when it is mapped (and when it grows). Default false.
        public var prefault: Bool

        /// Creates a configuration.
        ///
        /// - Parameters:
        ///   - hugePages: which pages to ask for.
        ///   - fallback: whether to settle for smaller pages when those are not available.
        ///   - commit: `.commit` (charge at mapping) or `.reserveOnly` (`MAP_NORESERVE`).
        ///   - prefault: populate pages up front (`MADV_POPULATE_WRITE`).
        public init(
            hugePages: HugePagePolicy = .none, fallback: Bool = true, commit: CommitMode = .commit,
            prefault: Bool = false
        ) {
            self.hugePages = hugePages
            self.fallback = fallback
            self.commit = commit
            self.prefault = prefault
        }
    }

    /// How this allocator maps blocks.
    public let configuration: Configuration

    /// Creates an allocator. It has no state beyond its configuration; copies behave identically.
    public init(_ configuration: Configuration = .init()) {
        self.configuration = configuration
    }

    // MARK: System facts

    /// The base page size (`sysconf(_SC_PAGESIZE)`), 4096 on x86_64.
    public static let pageSize: Int = {
        let size = systemPageSize()
        return size > 0 ? size : 4096
    }()

    /// The transparent huge page size, from `/sys/kernel/mm/transparent_hugepage/hpage_pmd_size` (2 MiB on x86_64
    /// when that file cannot be read).
    public static let transparentHugePageSize: Int = {
        if case .success(let bytes) = systemReadSmallFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"),
            let value = Int(String(decoding: bytes, as: UTF8.self).trimmingWhitespace()), isPowerOfTwo(value),
            value >= pageSize
        {
            return value
        }
        return 2 << 20
    }()

    /// Whether the kernel gives transparent huge pages to ranges advised with `MADV_HUGEPAGE`: true when
    /// `/sys/kernel/mm/transparent_hugepage/enabled` selects `[always]` or `[madvise]`. Read once per process.
    public static let transparentHugePagesEnabled: Bool = {
        guard case .success(let bytes) = systemReadSmallFile("/sys/kernel/mm/transparent_hugepage/enabled") else {
            return false
        }
        let text = String(decoding: bytes, as: UTF8.self)
        return text.contains("[always]") || text.contains("[madvise]")
    }()

    /// The largest alignment `allocate` accepts: 1 TiB. Larger ones throw `.unsupportedLayout`.
    public static let maximumAlignment = 1 << 40

    /// The granularity of this allocator's blocks: sizes are rounded up to it and starts aligned to it.
    ///
    /// The base page size for `.none`, `transparentHugePageSize` for `.transparent`, 2 MiB and 1 GiB for the
    /// explicit policies (whatever the fallback actually obtains).
    public var granularity: Int {
        switch configuration.hugePages {
        case .none: OSAllocator.pageSize
        case .transparent: OSAllocator.transparentHugePageSize
        case .explicit2MiB: 2 << 20
        case .explicit1GiB: 1 << 30
        }
    }

    /// The number of bytes of `block` that are resident in memory now, from `mincore(2)`.
    ///
    /// Tests use it to show that reserved memory is not committed until touched, and that `prefault` populates.
    /// Explicit huge pages count in full once faulted.
    ///
    /// - Precondition: `block` is mapped (a live block from an `OSAllocator`).
    /// - Complexity: O(`block.size` / `pageSize`) in the kernel, in chunks of 64 Ki pages.
    public static func residency(of block: UnsafeBlock) -> Int {
        let page = pageSize
        let chunkPages = 1 << 16
        let vector = UnsafeMutablePointer<UInt8>.allocate(capacity: chunkPages)
        defer { vector.deallocate() }
        var resident = 0
        var offset = 0
        while offset < block.size {
            // Safe: offset < block.size, so the chunk lies inside the block.
            let length = Swift.min(block.size - offset, chunkPages * page)
            switch systemMincore(block.start + offset, length: length, into: vector) {
            case .success:
                let pages = (length + page - 1) / page
                for i in 0..<pages where vector[i] & 1 != 0 { resident += page }
            case .failure(let error):
                preconditionFailure("OSAllocator.residency(of: \(block)): mincore failed: \(error)")
            }
            offset += length
        }
        return Swift.min(resident, block.size)
    }

    // MARK: Allocation

    /// The length (rounded to the granularity) and the alignment of the mapping that serves `layout`.
    ///
    /// - Throws: `.invalidLayout` for a zero size; `.unsupportedLayout` for an alignment above
    ///   `maximumAlignment` or a size that overflows when rounded.
    internal func mappingGeometry(for layout: Layout) throws(AllocationError) -> (length: Int, alignment: Int) {
        guard layout.size > 0 else {
            throw AllocationError(
                .invalidLayout, "OSAllocator cannot map zero bytes", size: 0, alignment: layout.alignment)
        }
        guard layout.alignment <= OSAllocator.maximumAlignment else {
            throw AllocationError(
                .unsupportedLayout, "alignment above OSAllocator.maximumAlignment", size: layout.size,
                alignment: layout.alignment, limit: OSAllocator.maximumAlignment)
        }
        let granularity = self.granularity
        guard let length = alignUpChecked(layout.size, to: granularity) else {
            throw AllocationError(
                .unsupportedLayout, "size overflows when rounded to the page size", size: layout.size,
                alignment: layout.alignment)
        }
        return (length, Swift.max(layout.alignment, granularity))
    }

    /// Maps a block for `layout` and reports which kind of pages it got.
    ///
    /// `allocate(_:)` is this without the kind. The block's size is `goodSize(for: layout)`; its start is aligned
    /// to `max(layout.alignment, granularity)`. Fresh mappings read as zero.
    ///
    /// - Throws: `AllocationError`:
    ///   - `.invalidLayout` for a zero size (a mapping cannot be empty);
    ///   - `.unsupportedLayout` for an alignment above `maximumAlignment` or a size that overflows when rounded,
    ///     and, without fallback, for `.transparent` when the kernel has transparent huge pages disabled;
    ///   - `.outOfMemory` when the kernel refuses for lack of memory, address space or huge pages (`systemError`
    ///     is ENOMEM), including an explicit policy without fallback when no huge pages are reserved;
    ///   - `.systemCallFailed` for any other `mmap`/`madvise` failure, with errno in `systemError`.
    ///   Nothing stays mapped after a throw.
    /// - Complexity: a few system calls; with `prefault`, proportional to the size.
    public func map(_ layout: Layout) throws(AllocationError) -> OSMapping {
        let (length, alignment) = try mappingGeometry(for: layout)
        let granularity = self.granularity
        var kind = firstKind
        var start: UnsafeMutableRawPointer
        while true {
            do throws(AllocationError) {
                start = try mapPages(kind, length: length, alignment: alignment, layout: layout)
                break
            } catch {
                guard configuration.fallback, let next = kind.fallback else { throw error }
                kind = next
            }
        }
        let block = UnsafeBlock(start: start, size: length)
        if configuration.prefault, case .failure(let error) = populate(start, length: length) {
            unmapOrTrap(block)
            throw mappingError(error, "prefaulting the new block failed", layout)
        }
        return OSMapping(block: block, kind: kind)
    }

    /// Maps a block for `layout`: `map(layout).block`. See `map(_:)` and the type's discussion.
    ///
    /// - Throws: as `map(_:)`.
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        try map(layout).block
    }

    /// Unmaps the block (`munmap(block.start, block.size)`).
    ///
    /// - Precondition: `block` came from an `OSAllocator` with the same huge-page policy and is still mapped.
    ///   Traps if `munmap` rejects it.
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        unmapOrTrap(block)
    }

    /// `layout.size` rounded up to `granularity`: exactly the `size` of the block `allocate(layout)` returns.
    ///
    /// Returns 0 for a zero size (which `allocate` rejects) and `layout.size` itself when rounding overflows
    /// (which `allocate` rejects too).
    public func goodSize(for layout: Layout) -> Int {
        alignUpChecked(layout.size, to: granularity) ?? layout.size
    }

    /// Grows or shrinks the mapping in place with `mremap(…, 0)` (no `MREMAP_MAYMOVE`): the block never moves.
    ///
    /// The new size is `newSize` rounded up to `granularity`. Returns nil, with the block unchanged, when
    /// `newSize` is 0, when the pages after the block are taken, when the kernel cannot grow the mapping (explicit
    /// huge pages never grow in place; a `.commit` block may exceed the commit limit), or when `prefault` is set
    /// and the new pages cannot be populated.
    ///
    /// - Precondition: `block` is a live block from an `OSAllocator` with the same policy; traps on `EFAULT`.
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        guard newSize > 0, let newLength = alignUpChecked(newSize, to: granularity) else { return nil }
        if newLength == block.size { return block }
        switch systemMremap(block.start, oldLength: block.size, newLength: newLength, flags: 0) {
        case .success(let address):
            precondition(address == block.start, "mremap without MREMAP_MAYMOVE moved \(block)")
            let resized = UnsafeBlock(start: block.start, size: newLength)
            if newLength > block.size, configuration.prefault,
                case .failure = populate(block.start + block.size, length: newLength - block.size)
            {
                // Give the new pages back; shrinking a mapping we just grew cannot fail short of a kernel bug.
                _ = systemMremap(block.start, oldLength: newLength, newLength: block.size, flags: 0)
                return nil
            }
            return resized
        case .failure(let error):
            precondition(error != .badAddress, "OSAllocator.resize(\(block)): the block is not a live mapping")
            return nil
        }
    }

    /// Moves the block to `new`, preserving its first `min(old.size, new.size)` bytes.
    ///
    /// In order: resize in place (when the start already satisfies the new alignment); then, for the `.none`
    /// policy with at most page alignment, `mremap(MREMAP_MAYMOVE)`, which moves page tables and copies nothing;
    /// otherwise (over-aligned: any alignment above a page, or a huge-page policy) a new block is mapped, the
    /// bytes copied and the old block unmapped. On failure the old block is untouched and still the caller's.
    ///
    /// - Throws: as `map(_:)` for the new layout (`.invalidLayout` for a zero size).
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        let (newLength, alignment) = try mappingGeometry(for: new)
        let granularity = self.granularity
        if block.address & UInt(alignment - 1) == 0, let resized = resize(block, from: old, toSize: new.size) {
            return resized
        }
        // With prefault, a moved-and-grown block whose new pages cannot be populated could be neither returned
        // nor given back (the old address is gone), so that case copies into a freshly prefaulted block instead.
        let growsPrefaulted = configuration.prefault && newLength > block.size
        if alignment <= OSAllocator.pageSize && !growsPrefaulted {
            switch systemMremap(block.start, oldLength: block.size, newLength: newLength, flags: MapFlags.mayMove) {
            case .success(let address):
                return UnsafeBlock(start: address, size: newLength)
            case .failure(let error):
                // ENOMEM (commit limit) or EINVAL (a length beyond the address space): the block is untouched.
                // Fall through to allocate-and-copy, which reports the failure from mmap with the usual codes.
                precondition(error != .badAddress, "OSAllocator.reallocate(\(block)): the block is not a live mapping")
            }
        }
        let moved = try allocate(new)
        moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
        unmapOrTrap(block)
        return moved
    }
}

/// A block from `OSAllocator.map(_:)` and the kind of pages backing it.
///
/// Free it with `deallocate(mapping.block, layout:)` on an `OSAllocator` with the same policy.
@frozen
public struct OSMapping: Hashable, Sendable {
    /// The mapped block; `block.size` is the true mapping length.
    public let block: UnsafeBlock
    /// What the mapping actually got, after any fallback.
    public let kind: OSAllocator.PageKind

    /// Creates a mapping record.
    @inlinable
    public init(block: UnsafeBlock, kind: OSAllocator.PageKind) {
        self.block = block
        self.kind = kind
    }
}

// MARK: - Implementation

extension OSAllocator.PageKind {
    /// The next kind to try when this one is not available: explicit 1 GiB → explicit 2 MiB → transparent → base.
    internal var fallback: OSAllocator.PageKind? {
        switch self {
        case .explicit1GiB: .explicit2MiB
        case .explicit2MiB: .transparent
        case .transparent: .base
        case .base: nil
        }
    }
}

extension OSAllocator {
    /// The kind the policy asks for first.
    internal var firstKind: PageKind {
        switch configuration.hugePages {
        case .none: .base
        case .transparent: .transparent
        case .explicit2MiB: .explicit2MiB
        case .explicit1GiB: .explicit1GiB
        }
    }

    /// Maps `length` bytes aligned to `alignment` with pages of `kind`, or throws with nothing mapped.
    internal func mapPages(_ kind: PageKind, length: Int, alignment: Int, layout: Layout) throws(AllocationError)
        -> UnsafeMutableRawPointer
    {
        switch kind {
        case .base:
            switch mapAnonymous(length: length, alignment: alignment) {
            case .success(let start): return start
            case .failure(let error): throw mappingError(error, "mmap failed", layout)
            }
        case .transparent:
            guard OSAllocator.transparentHugePagesEnabled else {
                throw AllocationError(
                    .unsupportedLayout,
                    "transparent huge pages are disabled (transparent_hugepage/enabled is [never]); allow fallback",
                    size: layout.size, alignment: layout.alignment)
            }
            let start: UnsafeMutableRawPointer
            switch mapAnonymous(length: length, alignment: alignment) {
            case .success(let mapped): start = mapped
            case .failure(let error): throw mappingError(error, "mmap failed", layout)
            }
            if case .failure(let error) = systemMadvise(start, length: length, advice: MapFlags.adviseHugePage) {
                unmapOrTrap(UnsafeBlock(start: start, size: length))
                throw AllocationError(
                    .systemCallFailed, "madvise(MADV_HUGEPAGE) failed", size: layout.size,
                    alignment: layout.alignment, systemError: error.rawValue)
            }
            return start
        case .explicit2MiB, .explicit1GiB:
            switch mapHugeTLB(kind, length: length, alignment: alignment) {
            case .success(let start): return start
            case .failure(let error) where error == .noMemory && kind == .explicit1GiB:
                throw AllocationError(
                    .outOfMemory,
                    "not enough free 1 GiB huge pages; reserve some (hugepages-1048576kB/nr_hugepages) or fall back",
                    size: layout.size, alignment: layout.alignment, systemError: error.rawValue)
            case .failure(let error) where error == .noMemory:
                throw AllocationError(
                    .outOfMemory, "not enough free 2 MiB huge pages; reserve some (vm.nr_hugepages) or allow fallback",
                    size: layout.size, alignment: layout.alignment, systemError: error.rawValue)
            case .failure(let error):
                throw AllocationError(
                    .systemCallFailed, "mmap(MAP_HUGETLB) failed; this huge page size may be unsupported",
                    size: layout.size, alignment: layout.alignment, systemError: error.rawValue)
            }
        }
    }

    /// The flags for a base-page mapping under this configuration.
    internal var anonymousFlags: Int32 {
        MapFlags.privateAnonymous | (configuration.commit == .reserveOnly ? MapFlags.noReserve : 0)
    }

    /// A read-write private anonymous mapping of `length` bytes aligned to `alignment`, base pages.
    ///
    /// Over-aligned requests reserve `length + alignment - pageSize` bytes `PROT_NONE` (which the kernel does not
    /// charge), unmap the unaligned head and the tail, and `mprotect` the rest read-write, which charges exactly
    /// `length` bytes in `.commit` mode. Every step touches only our own mapping, so other threads' mappings are
    /// never at risk.
    internal func mapAnonymous(length: Int, alignment: Int) -> Result<UnsafeMutableRawPointer, Errno> {
        let page = OSAllocator.pageSize
        if alignment <= page {
            return systemMmapAnonymous(at: nil, length: length, protection: MapFlags.readWrite, flags: anonymousFlags)
        }
        let (reservedLength, overflow) = length.addingReportingOverflow(alignment - page)
        guard !overflow else { return .failure(.noMemory) }
        let reservation: UnsafeMutableRawPointer
        switch systemMmapAnonymous(at: nil, length: reservedLength, protection: MapFlags.none, flags: anonymousFlags) {
        case .success(let start): reservation = start
        case .failure(let error): return .failure(error)
        }
        // Invariant: the reservation is page aligned, so the aligned start lies within its first
        // `alignment - page` bytes and `[aligned, aligned + length)` lies inside it.
        let base = UInt(bitPattern: reservation)
        let alignedAddress = (base &+ UInt(alignment) &- 1) & ~(UInt(alignment) &- 1)
        let head = Int(alignedAddress &- base)
        let tail = reservedLength - head - length
        let aligned = reservation + head
        if head > 0 { unmapOrTrap(UnsafeBlock(start: reservation, size: head)) }
        if tail > 0 { unmapOrTrap(UnsafeBlock(start: aligned + length, size: tail)) }
        if case .failure(let error) = systemMprotect(aligned, length: length, protection: MapFlags.readWrite) {
            unmapOrTrap(UnsafeBlock(start: aligned, size: length))
            return .failure(error)
        }
        return .success(aligned)
    }

    /// A hugetlb mapping of `length` bytes (a multiple of the huge page size) aligned to `alignment`.
    ///
    /// Never `MAP_NORESERVE` (see the type's discussion). Alignments up to the huge page size come from the kernel
    /// (it aligns hugetlb mappings); larger ones find an aligned hole with a throw-away `PROT_NONE` reservation and
    /// map into it with `MAP_FIXED_NOREPLACE`, which never replaces a mapping another thread placed there in the
    /// meantime (we retry with a new hole then).
    internal func mapHugeTLB(_ kind: PageKind, length: Int, alignment: Int) -> Result<UnsafeMutableRawPointer, Errno> {
        let sizeFlag = kind == .explicit1GiB ? MapFlags.huge1GiB : MapFlags.huge2MiB
        let flags = MapFlags.privateAnonymous | MapFlags.hugeTLB | sizeFlag
        if alignment <= kind.pageSize {
            return systemMmapAnonymous(at: nil, length: length, protection: MapFlags.readWrite, flags: flags)
        }
        let page = OSAllocator.pageSize
        let (reservedLength, overflow) = length.addingReportingOverflow(alignment - page)
        guard !overflow else { return .failure(.noMemory) }
        var lastError = Errno.fileExists
        for _ in 0..<8 {
            let reservation: UnsafeMutableRawPointer
            switch systemMmapAnonymous(
                at: nil, length: reservedLength, protection: MapFlags.none,
                flags: MapFlags.privateAnonymous | MapFlags.noReserve)
            {
            case .success(let start): reservation = start
            case .failure(let error): return .failure(error)
            }
            let base = UInt(bitPattern: reservation)
            // Invariant: as in mapAnonymous, the aligned range lies inside the reservation.
            let alignedAddress = (base &+ UInt(alignment) &- 1) & ~(UInt(alignment) &- 1)
            let aligned = reservation + Int(alignedAddress &- base)
            unmapOrTrap(UnsafeBlock(start: reservation, size: reservedLength))
            switch systemMmapAnonymous(
                at: aligned, length: length, protection: MapFlags.readWrite, flags: flags | MapFlags.fixedNoReplace)
            {
            case .success(let start) where start == aligned:
                return .success(start)
            case .success(let start):
                // A kernel before 4.17 ignores MAP_FIXED_NOREPLACE and treats the address as a hint.
                unmapOrTrap(UnsafeBlock(start: start, size: length))
                lastError = .fileExists
            case .failure(let error) where error == .fileExists:
                lastError = error  // Another thread mapped into the hole; find another.
            case .failure(let error):
                return .failure(error)
            }
        }
        return .failure(lastError)
    }

    /// Populates `[start, start + length)` writable: `MADV_POPULATE_WRITE`, or touching each page on kernels
    /// before 5.14 (EINVAL). Only called on freshly mapped pages, which read as zero, so writing a zero is harmless.
    internal func populate(_ start: UnsafeMutableRawPointer, length: Int) -> Result<Void, Errno> {
        switch systemMadvise(start, length: length, advice: MapFlags.advisePopulateWrite) {
        case .success: return .success(())
        case .failure(let error) where error == .invalidArgument:
            var offset = 0
            while offset < length {
                start.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
                offset += OSAllocator.pageSize
            }
            return .success(())
        case .failure(let error):
            return .failure(error)
        }
    }

    /// `munmap`, trapping if the kernel rejects it: that only happens for a range that is not ours.
    internal func unmapOrTrap(_ block: UnsafeBlock) {
        if case .failure(let error) = systemMunmap(block.start, length: block.size) {
            preconditionFailure("OSAllocator: munmap(\(block)) failed: \(error)")
        }
    }

    /// ENOMEM → `.outOfMemory`, anything else → `.systemCallFailed`.
    internal func mappingError(_ error: Errno, _ reason: StaticString, _ layout: Layout) -> AllocationError {
        AllocationError(
            error == .noMemory ? .outOfMemory : .systemCallFailed, reason, size: layout.size,
            alignment: layout.alignment, systemError: error.rawValue)
    }
}

extension String {
    /// The string without leading and trailing ASCII whitespace (sysfs values end in a newline).
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        var start = scalars.startIndex
        var end = scalars.endIndex
        while start < end, scalars[start].properties.isWhitespace { start = scalars.index(after: start) }
        while end > start, scalars[scalars.index(before: end)].properties.isWhitespace {
            end = scalars.index(before: end)
        }
        return String(scalars[start..<end])
    }
}

// MARK: - Shared file mappings

extension OSAllocator {
    /// How a shared mapping may be accessed.
    public enum SharedAccess: Hashable, Sendable {
        /// `PROT_READ | PROT_WRITE` (the descriptor must be open for writing).
        case readWrite
        /// `PROT_READ`: a write through the mapping kills the process with SIGSEGV.
        case readOnly
    }

    /// Maps `length` bytes of the file behind `fileDescriptor` (a POSIX shared-memory object, a memfd, a file on
    /// hugetlbfs) from `offset`, `MAP_SHARED`: the mapping layer of shared regions (DivvyShm's `SharedMapping`).
    ///
    /// Which pages back a file is the file's property, not the mapping's, so `pages` says what the caller knows of
    /// the file and asks for what a mapping can add:
    /// - `.base`: nothing more.
    /// - `.transparent`: `madvise(MADV_HUGEPAGE)` on the mapping (advice for shmem under `shmem_enabled =
    ///   advise`); when the kernel refuses it the result's `kind` is `.base` and nothing fails.
    /// - `.explicit2MiB` / `.explicit1GiB`: the file is on hugetlbfs; `offset` and `length` must be multiples of
    ///   that page size.
    ///
    /// Unmap with `OSAllocator.unmapShared(_:)`.
    ///
    /// - Throws: `.invalidLayout` (length not positive, offset negative or not a multiple of the page size of
    ///   `pages`); `.outOfMemory` (ENOMEM: address space, map count, or huge page pool exhausted);
    ///   `.systemCallFailed` otherwise (EACCES for a descriptor that does not allow `access`, EBADF, ENODEV, …),
    ///   with errno in `systemError`. Nothing is mapped then. (`fileDescriptor` is the caller's: a closed one is
    ///   reported, not trapped on, unlike the descriptors Divvy owns.)
    /// - Complexity: one or two system calls.
    public static func mapShared(
        fileDescriptor: Int32, offset: Int, length: Int, access: SharedAccess, pages: PageKind = .base
    ) throws(AllocationError) -> OSMapping {
        let granule = pages == .explicit2MiB || pages == .explicit1GiB ? pages.pageSize : OSAllocator.pageSize
        guard length > 0, offset >= 0, offset % granule == 0 else {
            throw AllocationError(
                .invalidLayout,
                "a shared mapping needs a positive length and an offset that is a non-negative multiple of the page size",
                size: length, alignment: granule)
        }
        if granule > OSAllocator.pageSize, length % granule != 0 {
            throw AllocationError(
                .invalidLayout, "a hugetlbfs mapping's length must be a multiple of its huge page size",
                size: length, alignment: granule)
        }
        let protection = access == .readWrite ? MapFlags.readWrite : MapFlags.readOnly
        let start: UnsafeMutableRawPointer
        switch systemMmapFile(
            at: nil, length: length, protection: protection, flags: MapFlags.shared, fd: fileDescriptor, offset: offset,
            trapOnProgrammerError: false)
        {
        case .success(let mapped): start = mapped
        case .failure(let error):
            throw AllocationError(
                error == .noMemory ? .outOfMemory : .systemCallFailed, "mmap(MAP_SHARED) of a file failed",
                size: length, alignment: granule, systemError: error.rawValue)
        }
        var kind = pages
        if pages == .transparent,
            case .failure = systemMadvise(start, length: length, advice: MapFlags.adviseHugePage)
        {
            kind = .base  // Advice only: the file keeps base pages.
        }
        return OSMapping(block: UnsafeBlock(start: start, size: length), kind: kind)
    }

    /// Unmaps a mapping from `mapShared`. Other mappings of the file, and the file, are unaffected.
    ///
    /// Traps if the kernel rejects the range (it is not a mapping from `mapShared`).
    public static func unmapShared(_ mapping: OSMapping) {
        if case .failure(let error) = systemMunmap(mapping.block.start, length: mapping.block.size) {
            preconditionFailure("OSAllocator: munmap of a shared mapping (\(mapping.block)) failed: \(error)")
        }
    }
}
