import Atomics
import Divvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A heap that lives entirely in a `SharedRegion`: size-classed blocks in fixed pages of the data area, all its
/// bookkeeping in the metadata area, used by several processes (and threads) at once without locks.
///
/// ```swift
/// let metadata = SharedHeap.requiredMetadataSize(dataSize: 64 << 20)   // ≈ 0.75 × data with 16-byte classes
/// let region = try SharedRegion.create(name: "cache", .init(dataSize: 64 << 20, metadataSize: metadata))
/// let heap = try SharedHeap.create(in: region)             // formats the metadata area
/// let me = try heap.join(name: "writer")                   // a participant: one per thread
/// let handle = try me.allocate(200)                        // a 64-bit handle, valid in every process
/// try heap.pointer(for: handle).storeBytes(of: 42, as: UInt64.self)
/// // another process: try SharedHeap.attach(to: SharedRegion.open(name: "cache")).join(name: "reader")
/// //   .adopt(handle) … .free(handle)
/// try me.free(handle)                                      // the last holder's free releases the block
/// print(heap.verify())                                     // read-only audit
/// ```
///
/// ## Design
///
/// - **Offsets only.** Handles are `generation << 32 | (data offset / 16)` (so the data area, both tiers, is at
///   most 64 GiB); the metadata uses offsets and slot indices. Any process maps the region anywhere.
/// - **Pages.** The data area is cut into `pageSize` pages. A free page sits in a lock-free page pool
///   (`UnsafeLockFreeIndexStack`, a tagged Treiber stack of page indices). A participant that needs room pops a
///   page, dedicates it to one size class and becomes its *owner*.
/// - **Two tiers: small pages and span pages.** Blocks larger than `pageSize / 8` ("multi-page spans") live in a
///   second tier of larger pages (`spanPageSize`, default 8 × `pageSize`; a configurable share of the data area,
///   default 1/4, cut off at format time) with their own pool and their own large classes (four per doubling, up
///   to one block per span page). A span page is driven by *exactly* the same machinery as a small page — owner,
///   local list, remote stack, block words, page-in-hand records, recovery, verify — only its base, size and slot
///   count differ, so every crash-recovery argument below holds for it unchanged. Chosen over runs of consecutive
///   small pages (a span allocator with coalescing) because a run would need a multi-word claim (several page
///   words) that a death could leave half done, breaking the single-word-commit discipline; the price is the
///   fixed split between tiers, and internal fragmentation of at most 25 % like any size class.
/// - **Local/shared split.** Only the owner pops blocks, from the page's local free list (plain reads and
///   relaxed stores, no read-modify-write). Anyone frees into the page's remote-free stack with a CAS push; the
///   owner takes the whole stack with one exchange — ABA-free because there is one consumer taking whole lists.
/// - **Block words.** Each block slot has a `UInt64` in metadata: generation (32 bits) | holder mask (30 bits,
///   one per participant) | state (free / allocated / freeing). Allocating, adopting and dropping a holding are
///   each one store or one compare-and-exchange of that word, which also checks the generation (stale handles)
///   and the state (double frees) in the same atomic step.
///
/// ## Why a holder *mask* and not a reference count
///
/// The brief asked for a reference count. A count cannot be recovered after a crash: a participant that dies
/// between its `count += 1` and the store that records the holding in its held list leaves recovery unable to
/// tell whether the increment happened (other participants change the count concurrently, so its value proves
/// nothing). A bit per participant is idempotent and attributable: recovery clears the dead participant's bit
/// if it is set, whatever step it died at. The price is at most 30 participants per heap (a daemon shards
/// clients over several heaps, or a later version moves to a two-word scheme). The reference count is the
/// popcount of the mask.
///
/// ## Crashes and recovery
///
/// Any participant may die at any instruction. `deadParticipants()` finds participants whose process is gone;
/// `recover(participant:)` drops a dead participant's holdings (a block a survivor holds is never released under
/// it), finishes or undoes its in-flight step (including the one ambiguous case: a release committed but maybe
/// not pushed onto the page's remote stack, resolved by the page's consumer through the page's *suspect* word),
/// repairs its pages and gives them up, and restores a page it was moving between the pool and its ownership.
/// The argument that every interleaving of a death with each operation is covered is in `recover`'s
/// documentation; the records it relies on are: the per-participant `pending` word and held list, the releaser's
/// bit in a *freeing* block word, the page's *collecting* word, and the participant's *page-in-hand* word.
/// `verify()` checks everything recovery must restore (nothing held by a dead participant, no leaked slot or
/// page, counts consistent), so "kill at a random instruction, recover, verify" is the crash-torture test.
///
/// ## Thread safety
///
/// `SharedHeap` is `Sendable`: its own state is immutable, and the shared memory is accessed only atomically.
/// A `Participant` is not: one thread uses it at a time (one participant per thread).
public final class SharedHeap: @unchecked Sendable {
    /// The region the heap lives in (kept alive by the heap).
    public let region: SharedRegion
    @usableFromInline internal let layout: SharedHeapLayout
    /// The start of the metadata area in this mapping.
    @usableFromInline internal let meta: UnsafeMutableRawPointer
    /// The start of the data area in this mapping.
    @usableFromInline internal let data: UnsafeMutableRawPointer
    /// The small-page tier's pool (indices are page numbers).
    @usableFromInline internal let pool: UnsafeLockFreeIndexStack
    /// The span tier's pool (indices are page number − `smallPageCount`); nil without a span tier.
    @usableFromInline internal let spanPool: UnsafeLockFreeIndexStack?
    /// Process-local: the class of each request size up to the largest small class, by `(size + 15) / 16`.
    @usableFromInline internal let classLookup: UnsafeMutablePointer<UInt8>
    /// Process-local, one per class: block size, slots per page of its tier, and a division-free way to turn an
    /// offset within a page into a slot (`locate` is on every free's path; a 64-bit division costs 30+ cycles).
    @usableFromInline internal let classInfo: UnsafeMutablePointer<ClassInfo>
    /// Whether the heap commits its memory as it uses it (formatted in a lazily committed region): a page's data,
    /// block words and links when it first leaves the pool, a participant slot's held list when it is first
    /// joined. Recorded in the heap header (layout version `lazyLayoutVersion`), so every process that attaches
    /// knows.
    @usableFromInline internal let lazyCommit: Bool
    /// Test hook: how many of the next lazy commits fail (as if /dev/shm were full), then decremented.
    internal let _failingCommits = ManagedAtomic<Int>(0)

    @usableFromInline
    internal struct ClassInfo {
        @usableFromInline var size: Int
        @usableFromInline var slots: Int
        /// `slot = (within × magic) >> shift` equals `within / size` for every `within < 2^30` (Granlund and
        /// Montgomery, "Division by invariant integers using multiplication", theorem 4.2, with N = 30,
        /// ℓ = ⌈log2 size⌉, magic = ⌈2^(N+ℓ) / size⌉ < 2^31.1; the product stays below 2^62).
        @usableFromInline var magic: UInt64
        @usableFromInline var shift: UInt64
        init(size: Int, pageBytes: Int) {
            self.size = size
            slots = pageBytes / size
            let l = UInt64(Int.bitWidth - (size - 1).leadingZeroBitCount)
            shift = 30 + l
            magic = ((1 << shift) + UInt64(size) - 1) / UInt64(size)
        }
    }

    /// `"DVHEAP01"`, little endian.
    internal static let magic: UInt64 = 0x3130_5041_4548_5644
    /// Heap header offset of the committed-held-lists mask (`UInt32`, bit `p` for participant slot `p`): in a lazy
    /// heap, a slot's held list is backed once its bit is set (set by `join` after committing it, never cleared).
    /// Readers skip the held lists of other slots, which are holes reading as zeros: reading a hole of a shared
    /// mapping would allocate it (and could raise SIGBUS when the backing store is full).
    internal static let heldCommittedOffset = 156
    /// The layout version this code reads and writes. Version 4: participant state words carry the process's
    /// start time beside its pid, and a *leaving* state.
    public static let layoutVersion: UInt32 = 4
    /// The layout version of a lazy heap (one formatted in a lazily committed region): version 4's layout, whose
    /// metadata is committed as it is used, plus the committed-held-lists mask at header offset 156 that readers
    /// must honour. A library that knows only version 4 refuses such a heap instead of reading (and so
    /// allocating) metadata that is not committed, or joining without committing its held list.
    public static let lazyLayoutVersion: UInt32 = 5

    private init(region: SharedRegion, layout: SharedHeapLayout, meta: UnsafeMutableRawPointer,
                 data: UnsafeMutableRawPointer, pool: UnsafeLockFreeIndexStack, spanPool: UnsafeLockFreeIndexStack?,
                 lazyCommit: Bool) {
        self.region = region
        self.lazyCommit = lazyCommit
        self.layout = layout
        self.meta = meta
        self.data = data
        self.pool = pool
        self.spanPool = spanPool
        classInfo = .allocate(capacity: layout.classSizes.count)
        for (index, size) in layout.classSizes.enumerated() {
            (classInfo + index).initialize(to: ClassInfo(
                size: size, pageBytes: layout.isLarge(index) ? max(layout.spanPageSize, size) : layout.pageSize))
        }
        let limit = layout.classSizes[layout.smallClassCount - 1] / 16
        classLookup = .allocate(capacity: limit + 1)
        var sizeClass = 0
        for sixteenths in 0...limit {
            while layout.classSizes[sizeClass] < sixteenths * 16 { sizeClass += 1 }
            classLookup[sixteenths] = UInt8(sizeClass)
        }
    }

    deinit {
        classLookup.deallocate()
        classInfo.deallocate()
    }

    // MARK: Create and attach

    /// The bytes of metadata a heap needs for `configuration` on a data area of `dataSize` bytes.
    public static func requiredMetadataSize(dataSize: Int, configuration: SharedHeapConfiguration = .init()) -> Int {
        let c = configuration
        guard let smallest = c.sizeClasses.first, smallest > 0, c.pageSize > 0, c.pageSize & (c.pageSize - 1) == 0,
            c.spanPageSize >= c.pageSize, c.spanPageSize & (c.spanPageSize - 1) == 0,
            c.largeSizeClasses.allSatisfy({ $0 > 0 })
        else { return 0 }
        let tiers = c.tiers(dataSize: dataSize)
        return SharedHeapLayout(
            pageSize: c.pageSize, smallPageCount: max(1, tiers.smallPages), spanPageSize: c.spanPageSize,
            spanPageCount: tiers.spanPages, classSizes: tiers.classes, smallClassCount: tiers.smallClasses,
            participantCapacity: c.participantCapacity, heldCapacity: c.heldCapacity, dataOffset: 0
        ).totalBytes
    }

    /// The bytes at the start of the metadata area that a heap in a lazily committed region commits at creation
    /// (header, class table, participant table, pools, page descriptors: 64 bytes and a pool entry per page, in
    /// whole OS pages); the rest of `requiredMetadataSize` is committed as pages and participant slots are first
    /// used. Pass it as the region's `lazyCommittedMetadataSize`, so that the region's admission check counts
    /// only that.
    public static func initialMetadataSize(dataSize: Int, configuration: SharedHeapConfiguration = .init()) -> Int {
        let c = configuration
        guard requiredMetadataSize(dataSize: dataSize, configuration: c) > 0 else { return 0 }
        let tiers = c.tiers(dataSize: dataSize)
        return SharedHeapLayout(
            pageSize: c.pageSize, smallPageCount: max(1, tiers.smallPages), spanPageSize: c.spanPageSize,
            spanPageCount: tiers.spanPages, classSizes: tiers.classes, smallClassCount: tiers.smallClasses,
            participantCapacity: c.participantCapacity, heldCapacity: c.heldCapacity, dataOffset: 0
        ).initialBytes
    }

    /// Formats a heap in `region`'s metadata area: every page in the pool, every participant slot free, every
    /// block word zero.
    ///
    /// In a lazily committed region (`SharedRegion.Commitment.lazy`, not hugetlb) the heap is *lazy*: it commits
    /// only `initialMetadataSize` now, and the rest as it is used — a page's data, block words and links when the
    /// page first leaves the pool, a participant slot's held list when it is first joined — so creation takes
    /// time and memory in proportion to the page count, not the data size, and memory in use grows with the
    /// pages in use. A commit that fails (/dev/shm or memory exhausted) is a clean `heapFull` for the allocation
    /// (or `join`) that needed it, never a SIGBUS later. The metadata area is cleared by punching a hole over it
    /// (`MADV_REMOVE`), not by writing zeros, which would commit it all; this also clears a reused region.
    ///
    /// No other process may use the metadata area until this returns; the magic number is stored last (release),
    /// so `attach` either sees a complete heap or refuses.
    ///
    /// - Throws: `.invalidConfiguration` for an impossible configuration or a region too small for it (the message
    ///   gives the sizes needed and available); `.heapFull` when a lazy heap cannot commit its initial metadata.
    /// - Complexity: O(pages) (plus zeroing the metadata area; a lazy heap punches a hole instead).
    public static func create(
        in region: SharedRegion, configuration: SharedHeapConfiguration = .init()
    ) throws(SharedHeapError) -> SharedHeap {
        let c = configuration
        func invalid(_ text: String) -> SharedHeapError { SharedHeapError(.invalidConfiguration, text) }
        guard c.pageSize >= 4096, c.pageSize <= 16 << 20, c.pageSize & (c.pageSize - 1) == 0 else {
            throw invalid("page size \(c.pageSize) must be a power of two between 4 KiB and 16 MiB")
        }
        guard !c.sizeClasses.isEmpty, c.sizeClasses.count <= 255,
            c.sizeClasses.allSatisfy({ $0 >= 16 && $0 % 16 == 0 && $0 <= c.pageSize / 8 }),
            zip(c.sizeClasses, c.sizeClasses.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw invalid("size classes \(c.sizeClasses) must be 1…255 ascending multiples of 16, at most "
                + "pageSize / 8 = \(c.pageSize / 8)")
        }
        let largest = c.sizeClasses[c.sizeClasses.count - 1]
        guard c.spanPageSize >= c.pageSize, c.spanPageSize <= 1 << 30, c.spanPageSize & (c.spanPageSize - 1) == 0,
            c.spanFraction >= 0, c.spanFraction < 1, c.sizeClasses.count + c.largeSizeClasses.count <= 255,
            c.largeSizeClasses.allSatisfy({ $0 > largest && $0 % 16 == 0 && $0 <= c.spanPageSize }),
            zip(c.largeSizeClasses, c.largeSizeClasses.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw invalid("span page size \(c.spanPageSize) must be a power of two from the page size "
                + "\(c.pageSize) to 1 GiB, the span fraction \(c.spanFraction) in 0..<1, and the large classes "
                + "\(c.largeSizeClasses) ascending multiples of 16 above \(largest), at most the span page size, "
                + "at most 255 classes in all")
        }
        guard (1...SharedHeapConfiguration.maximumParticipants).contains(c.participantCapacity),
            c.heldCapacity >= 1, c.heldCapacity <= 1 << 24
        else {
            throw invalid("participant capacity \(c.participantCapacity) must be 1…30 and held capacity "
                + "\(c.heldCapacity) 1…16M")
        }
        let geometry = region.geometry
        let tiers = c.tiers(dataSize: geometry.dataSize)
        guard tiers.smallPages >= 1, tiers.smallPages + tiers.spanPages <= 1 << 24, geometry.dataSize <= 1 << 36 else {
            throw invalid("the region's data area (\(geometry.dataSize) bytes) must hold 1…16M pages of "
                + "\(c.pageSize) bytes and at most 64 GiB (handles keep offset / 16 in 32 bits)")
        }
        let layout = SharedHeapLayout(
            pageSize: c.pageSize, smallPageCount: tiers.smallPages, spanPageSize: c.spanPageSize,
            spanPageCount: tiers.spanPages, classSizes: tiers.classes, smallClassCount: tiers.smallClasses,
            participantCapacity: c.participantCapacity, heldCapacity: c.heldCapacity,
            dataOffset: geometry.dataOffset)
        let pageCount = layout.pageCount
        guard layout.totalBytes <= geometry.metadataSize else {
            throw invalid("the heap needs \(layout.totalBytes) bytes of metadata for \(tiers.smallPages) pages of "
                + "\(c.pageSize) bytes and \(tiers.spanPages) of \(c.spanPageSize), but the region's metadata area has \(geometry.metadataSize); create the "
                + "region with metadataSize >= \(layout.totalBytes) (SharedHeap.requiredMetadataSize)")
        }
        guard region.access == .readWrite else { throw invalid("the region is mapped read-only") }
        let meta: UnsafeMutableRawPointer
        let data: UnsafeMutableRawPointer
        do {
            meta = try region.mapping.unsafePointer(forOffset: geometry.metadataOffset, length: geometry.metadataSize)
            data = try region.mapping.unsafePointer(forOffset: geometry.dataOffset, length: layout.dataBytes)
        } catch {
            throw invalid("the region's mapping does not cover its metadata and data areas: \(error)")
        }
        // Not yet visible to anyone: the magic is still zero (or whatever it was: clear it first).
        UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .store(0, ordering: .relaxed)
        let lazy = region.header.isLazy && region.pageKind != .explicit2MiB && region.pageKind != .explicit1GiB
        if lazy {
            // Zeros without writing them: a hole over the whole metadata area (a fresh object is all hole already;
            // a reused one loses its old contents and backing), then commit only the part used from the start.
            let area = SharedHeapLayout.roundUp(layout.totalBytes, OSAllocator.pageSize)
            if let error = region.removePages(offset: geometry.metadataOffset, length: area) {
                throw invalid("could not clear the metadata area of \(region.describing) (MADV_REMOVE of "
                    + "\(area) bytes failed: \(error))")
            }
            if let error = region.commitInPlace(offset: geometry.metadataOffset, length: layout.initialBytes) {
                throw SharedHeapError(
                    .heapFull, "could not commit the heap's first \(layout.initialBytes) bytes of metadata (page "
                        + "descriptors and tables) in \(region.describing): \(error); free memory or /dev/shm "
                        + "space, or create a smaller heap")
            }
        } else {
            (meta + 8).initializeMemory(as: UInt8.self, repeating: 0, count: layout.totalBytes - 8)
        }
        for (index, size) in layout.classSizes.enumerated() {
            (meta + layout.classTableOffset + 4 * index).storeBytes(of: UInt32(size), as: UInt32.self)
        }
        let pool = UnsafeLockFreeIndexStack.initialize(at: meta + layout.poolOffset, capacity: layout.smallPageCount)
        let spanPool = layout.spanPageCount == 0 ? nil
            : UnsafeLockFreeIndexStack.initialize(at: meta + layout.spanPoolOffset, capacity: layout.spanPageCount)
        for page in 0..<pageCount {
            let descriptor = meta + layout.pagesOffset + page * SharedHeapLayout.pageStride
            descriptor.storeBytes(of: UInt64(endOfSlots), toByteOffset: 8, as: UInt64.self)  // remote head: empty
            descriptor.storeBytes(of: endOfSlots, toByteOffset: 16, as: UInt32.self)  // local head: empty
        }
        for p in 0..<c.participantCapacity {  // No limit until someone sets one.
            (meta + layout.participantsOffset + p * SharedHeapLayout.participantStride)
                .storeBytes(of: unlimitedPages, toByteOffset: 56, as: UInt32.self)
        }
        writeHeader(layout, version: lazy ? lazyLayoutVersion : layoutVersion, at: meta)
        // Ordering: releasing; pairs with the acquiring load in `attach`: whoever sees the magic sees everything.
        UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .store(magic, ordering: .releasing)
        return SharedHeap(
            region: region, layout: layout, meta: meta, data: data, pool: pool, spanPool: spanPool, lazyCommit: lazy)
    }

    /// Attaches to the heap `create(in:configuration:)` formatted in `region` (possibly in another process).
    ///
    /// - Throws: `.corruptHeader` when the metadata area holds no heap, another layout version, a header whose
    ///   checksum does not match, or a geometry that does not fit the region. Attaching never writes.
    /// - Complexity: O(size classes).
    public static func attach(to region: SharedRegion) throws(SharedHeapError) -> SharedHeap {
        let geometry = region.geometry
        func corrupt(_ text: String) -> SharedHeapError { SharedHeapError(.corruptHeader, text) }
        guard geometry.metadataSize >= SharedHeapLayout.headerSize,
            let meta = try? region.mapping.unsafePointer(
                forOffset: geometry.metadataOffset, length: geometry.metadataSize)
        else { throw corrupt("the region's metadata area is too small to hold a heap header") }
        // Ordering: acquiring, pairs with the releasing store of the magic at the end of `create`.
        let found = UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .load(ordering: .acquiring)
        guard found == magic else {
            throw corrupt("no heap in this region (magic 0x\(String(found, radix: 16)), expected "
                + "0x\(String(magic, radix: 16))); create one with SharedHeap.create(in:)")
        }
        let version = meta.load(fromByteOffset: 8, as: UInt32.self)
        guard version == layoutVersion || version == lazyLayoutVersion else {
            throw corrupt("heap layout version \(version); this library reads versions \(layoutVersion) and "
                + "\(lazyLayoutVersion) (lazy)")
        }
        guard let layout = readHeader(at: meta, limit: geometry.metadataSize) else {
            throw corrupt("the heap header's fields are impossible")
        }
        guard checksum(at: meta, layout: layout) == meta.load(fromByteOffset: 120, as: UInt64.self) else {
            throw corrupt("the heap header's checksum does not match its contents: it was overwritten")
        }
        guard layout.dataOffset == geometry.dataOffset, layout.dataBytes <= geometry.dataSize,
            layout.totalBytes <= geometry.metadataSize,
            let data = try? region.mapping.unsafePointer(forOffset: geometry.dataOffset, length: layout.dataBytes)
        else {
            throw corrupt("the heap's geometry (\(layout.smallPageCount) pages of \(layout.pageSize) bytes and "
                + "\(layout.spanPageCount) of \(layout.spanPageSize) at offset "
                + "\(layout.dataOffset), \(layout.totalBytes) bytes of metadata) does not fit the region "
                + "(\(geometry))")
        }
        let pool: UnsafeLockFreeIndexStack
        do { pool = try UnsafeLockFreeIndexStack.attach(at: meta + layout.poolOffset) } catch {
            throw corrupt("the page pool is not initialized: \(error)")
        }
        guard pool.capacity == layout.smallPageCount else { throw corrupt("the page pool's capacity is wrong") }
        var spanPool: UnsafeLockFreeIndexStack?
        if layout.spanPageCount > 0 {
            do { spanPool = try UnsafeLockFreeIndexStack.attach(at: meta + layout.spanPoolOffset) } catch {
                throw corrupt("the span page pool is not initialized: \(error)")
            }
            guard spanPool?.capacity == layout.spanPageCount else {
                throw corrupt("the span page pool's capacity is wrong")
            }
        }
        let lazy = version == lazyLayoutVersion
        return SharedHeap(
            region: region, layout: layout, meta: meta, data: data, pool: pool, spanPool: spanPool, lazyCommit: lazy)
    }

    private static func writeHeader(_ layout: SharedHeapLayout, version: UInt32, at meta: UnsafeMutableRawPointer) {
        meta.storeBytes(of: version, toByteOffset: 8, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.pageSize), toByteOffset: 12, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.smallPageCount), toByteOffset: 16, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.classSizes.count), toByteOffset: 20, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.participantCapacity), toByteOffset: 24, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.heldCapacity), toByteOffset: 28, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.maxSlots), toByteOffset: 32, as: UInt32.self)
        let offsets = [layout.classTableOffset, layout.participantsOffset, layout.poolOffset, layout.pagesOffset,
                       layout.blockWordsOffset, layout.linksOffset, layout.heldOffset, layout.totalBytes,
                       layout.dataOffset]
        for (index, offset) in offsets.enumerated() {
            meta.storeBytes(of: UInt64(offset), toByteOffset: 40 + 8 * index, as: UInt64.self)
        }
        meta.storeBytes(of: UInt32(layout.spanPageSize), toByteOffset: 128, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.spanPageCount), toByteOffset: 132, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.smallClassCount), toByteOffset: 136, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.spanMaxSlots), toByteOffset: 140, as: UInt32.self)
        meta.storeBytes(of: UInt64(layout.spanPoolOffset), toByteOffset: 144, as: UInt64.self)
        meta.storeBytes(of: checksum(at: meta, layout: layout), toByteOffset: 120, as: UInt64.self)
    }

    /// Reads the header fields and re-derives the layout from them; nil when they are impossible or the derived
    /// offsets differ from the stored ones.
    private static func readHeader(at meta: UnsafeMutableRawPointer, limit: Int) -> SharedHeapLayout? {
        let pageSize = Int(meta.load(fromByteOffset: 12, as: UInt32.self))
        let pageCount = Int(meta.load(fromByteOffset: 16, as: UInt32.self))
        let classCount = Int(meta.load(fromByteOffset: 20, as: UInt32.self))
        let participants = Int(meta.load(fromByteOffset: 24, as: UInt32.self))
        let held = Int(meta.load(fromByteOffset: 28, as: UInt32.self))
        guard pageSize >= 4096, pageSize & (pageSize - 1) == 0, pageCount >= 1, (1...255).contains(classCount),
            (1...SharedHeapConfiguration.maximumParticipants).contains(participants), held >= 1,
            SharedHeapLayout.headerSize + 4 * classCount <= limit
        else { return nil }
        let classes = (0..<classCount).map { Int(meta.load(fromByteOffset: 256 + 4 * $0, as: UInt32.self)) }
        let spanPageSize = Int(meta.load(fromByteOffset: 128, as: UInt32.self))
        let spanPageCount = Int(meta.load(fromByteOffset: 132, as: UInt32.self))
        let smallClasses = Int(meta.load(fromByteOffset: 136, as: UInt32.self))
        guard (1...classCount).contains(smallClasses), pageCount + spanPageCount <= 1 << 24,
            classes.prefix(smallClasses).allSatisfy({ $0 >= 16 && $0 % 16 == 0 && $0 <= pageSize / 8 }),
            zip(classes, classes.dropFirst()).allSatisfy({ $0 < $1 }),
            spanPageCount == 0
                ? smallClasses == classCount && spanPageSize == 0
                : smallClasses < classCount && spanPageSize >= pageSize && spanPageSize <= 1 << 30
                    && spanPageSize & (spanPageSize - 1) == 0
                    && classes.dropFirst(smallClasses).allSatisfy({ $0 % 16 == 0 && $0 <= spanPageSize })
        else { return nil }
        let dataOffset = Int(meta.load(fromByteOffset: 40 + 8 * 8, as: UInt64.self))
        let layout = SharedHeapLayout(
            pageSize: pageSize, smallPageCount: pageCount, spanPageSize: spanPageSize, spanPageCount: spanPageCount,
            classSizes: classes, smallClassCount: smallClasses, participantCapacity: participants,
            heldCapacity: held, dataOffset: dataOffset)
        let stored = (0..<8).map { Int(meta.load(fromByteOffset: 40 + 8 * $0, as: UInt64.self)) }
        let derived = [layout.classTableOffset, layout.participantsOffset, layout.poolOffset, layout.pagesOffset,
                       layout.blockWordsOffset, layout.linksOffset, layout.heldOffset, layout.totalBytes]
        guard stored == derived, Int(meta.load(fromByteOffset: 32, as: UInt32.self)) == layout.maxSlots,
            Int(meta.load(fromByteOffset: 140, as: UInt32.self)) == layout.spanMaxSlots,
            Int(meta.load(fromByteOffset: 144, as: UInt64.self)) == layout.spanPoolOffset,
            layout.dataBytes <= 1 << 36
        else {
            return nil
        }
        return layout
    }

    /// FNV-1a over header bytes 8..<120 and 128..<152, and the class table.
    private static func checksum(at meta: UnsafeMutableRawPointer, layout: SharedHeapLayout) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ range: Range<Int>) {
            for index in range {
                hash = (hash ^ UInt64(meta.load(fromByteOffset: index, as: UInt8.self))) &* 0x100_0000_01b3
            }
        }
        mix(8..<120)
        mix(128..<152)
        mix(layout.classTableOffset..<(layout.classTableOffset + 4 * layout.classSizes.count))
        return hash
    }

    // MARK: Geometry

    /// The heap page size (small-page tier).
    public var pageSize: Int { layout.pageSize }
    /// The number of heap pages of both tiers (`smallPageCount + spanPageCount`).
    public var pageCount: Int { layout.pageCount }
    /// The number of small pages (`pageSize` bytes each; pages `0..<smallPageCount`).
    public var smallPageCount: Int { layout.smallPageCount }
    /// The span page size (0 without a span tier).
    public var spanPageSize: Int { layout.spanPageSize }
    /// The number of span pages (`spanPageSize` bytes each; pages `smallPageCount..<pageCount`).
    public var spanPageCount: Int { layout.spanPageCount }
    /// The block sizes of the size classes, ascending: small classes (small pages), then large ones (span pages).
    public var sizeClasses: [Int] { layout.classSizes }
    /// The large classes (span pages), ascending; empty without a span tier.
    public var largeSizeClasses: [Int] { Array(layout.classSizes[layout.smallClassCount...]) }
    /// The largest small class (requests up to it are served from small pages).
    public var largestSmallBlockSize: Int { layout.largestSmallClass }
    /// The largest request `allocate` serves (the largest large class, or the largest small one without a span
    /// tier).
    public var largestBlockSize: Int { layout.classSizes[layout.classSizes.count - 1] }
    /// How many participants may be joined at once.
    public var participantCapacity: Int { layout.participantCapacity }
    /// How many handles one participant may hold at once.
    public var heldCapacity: Int { layout.heldCapacity }

    /// The index of the smallest class that fits `size`, or nil.
    @inlinable
    internal func sizeClass(for size: Int) -> Int? {
        // Small sizes (1 … largest small class, a multiple of 16): one table load.
        if UInt(bitPattern: size &- 1) < UInt(bitPattern: largestSmallBlockSize) {
            return Int(classLookup[(size &+ 15) &>> 4])
        }
        // Binary search: the class table is short, but a linear scan of 50 entries is still 50 compares.
        var low = 0
        var high = layout.classSizes.count
        while low < high {
            let mid = (low + high) / 2
            if layout.classSizes[mid] < size { low = mid + 1 } else { high = mid }
        }
        return low < layout.classSizes.count ? low : nil
    }

    // MARK: Metadata accessors

    @inlinable @inline(__always)
    internal func word64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic<UInt64>(at: (meta + offset).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    @inlinable @inline(__always)
    internal func word32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic<UInt32>(at: (meta + offset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    @inlinable @inline(__always) internal func pageDescriptor(_ page: Int) -> Int { layout.pagesOffset + page * SharedHeapLayout.pageStride }
    /// Page state word (see `PageWord`).
    @inlinable @inline(__always) internal func pageState(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page)) }
    /// Remote-free stack head: the top slot (low 32 bits), `endOfSlots` when empty.
    @inlinable @inline(__always) internal func remoteHead(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page) + 8) }
    /// Local free-list head (owner only).
    @inlinable @inline(__always) internal func localHead(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 16) }
    /// Local free-list length (owner only).
    @inlinable @inline(__always) internal func localCount(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 20) }
    /// Slots carved so far in this epoch (owner only): slots at or above it were never handed out.
    @inlinable @inline(__always) internal func carved(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 24) }
    /// Blocks handed out and not yet back on the local list (owner only): allocated + freeing + remote stack.
    @inlinable @inline(__always) internal func live(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 28) }
    /// Slots in the page for its class (written when the page leaves the pool).
    @inlinable @inline(__always) internal func slotCount(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 32) }
    /// Recovery's *suspect* handle for the page (0 = none): a block whose freer died between committing *freeing*
    /// and pushing it; the page's consumer resolves it at its next `collect`.
    @inlinable internal func suspect(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page) + 40) }
    /// The chain `collect` is moving (first slot + 1, 0 = none): owner only, read by recovery after a death.
    @inlinable internal func collecting(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 48) }

    @inlinable @inline(__always) internal func blockWord(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.blockWordsOffset &+ (layout.slotBase(page) &+ slot) &* 8)
    }
    @inlinable @inline(__always) internal func link(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt32> {
        word32(layout.linksOffset &+ (layout.slotBase(page) &+ slot) &* 4)
    }

    @inlinable @inline(__always) internal func participantOffset(_ p: Int) -> Int {
        layout.participantsOffset + p * SharedHeapLayout.participantStride
    }
    /// Participant state word (see `ParticipantWord`).
    @inlinable internal func participantState(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p)) }
    /// The handle of the operation the participant is in the middle of, 0 when none.
    @inlinable @inline(__always) internal func pending(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p) + 8) }
    /// The page the participant is moving between the pool and its ownership (see `PageInHand`), 0 when none.
    @inlinable internal func pageInHand(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p) + 48) }
    /// The most pages the participant may own at once (`unlimitedPages` = no limit).
    @inlinable internal func pageAllowance(_ p: Int) -> UnsafeAtomic<UInt32> { word32(participantOffset(p) + 56) }
    /// How many pages the participant owns (written by it, or by its recoverer).
    @inlinable internal func ownedPageCount(_ p: Int) -> UnsafeAtomic<UInt32> { word32(participantOffset(p) + 60) }
    @inlinable @inline(__always) internal func held(_ p: Int, _ index: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.heldOffset + (p * layout.heldCapacity + index) * 8)
    }

    // MARK: Handles

    /// A resolved handle: page, slot and the generation it carries.
    @usableFromInline
    internal struct Location {
        @usableFromInline var page: Int
        @usableFromInline var slot: Int
        @usableFromInline var generation: UInt32
        @usableFromInline var blockSize: Int
        @inlinable init(page: Int, slot: Int, generation: UInt32, blockSize: Int) {
            self.page = page
            self.slot = slot
            self.generation = generation
            self.blockSize = blockSize
        }
    }

    /// Checks a handle's offset (range, alignment to its page's class) without looking at the block word.
    @inlinable @inline(__always)
    internal func locate(_ handle: SharedHeapHandle, checkEpoch: Bool = true) throws(SharedHeapError) -> Location {
        let offset = Int(handle.rawValue & 0xFFFF_FFFF) &* 16
        guard handle.rawValue != 0, let (page, within) = layout.page(atDataOffset: offset) else {
            throw outOfRangeError(handle)
        }
        let pageWord = pageState(page).load(ordering: .acquiring)
        // A handle from an earlier use of the page (another epoch, maybe another class) is stale, whatever its
        // offset means under the page's current class.
        // Epoch 0 is a page that never left the pool (no handle has it; in a lazy heap its metadata is a hole that
        // must not be read): stale too.
        guard !checkEpoch || (PageWord.epoch(pageWord) == handle.generation >> 16 && handle.generation > 0xFFFF) else {
            throw staleEpochError(handle, page: page, pageWord: pageWord)
        }
        let sizeClass = min(PageWord.sizeClass(pageWord), layout.classSizes.count - 1)
        let info = classInfo[sizeClass]
        let blockSize = info.size
        // Safe: within < 2^30 (a page is at most 1 GiB), so the product fits (see `ClassInfo`).
        let slot = Int(truncatingIfNeeded: (UInt64(truncatingIfNeeded: within) &* info.magic) &>> info.shift)
        // A class of the other tier (a page never handed out, or metadata overwritten) gets a slot bound of 0.
        let slots = layout.isLarge(sizeClass) == layout.isSpan(page) ? info.slots : 0
        guard slot &* blockSize == within, slot < slots else {
            throw misalignedError(handle, page: page, blockSize: blockSize)
        }
        return Location(page: page, slot: slot, generation: handle.generation, blockSize: blockSize)
    }

    // The errors of `locate`, out of line: bad input is not a hot path, and string building would keep `locate`
    // from being inlined.
    @usableFromInline @inline(never)
    internal func outOfRangeError(_ handle: SharedHeapHandle) -> SharedHeapError {
        SharedHeapError(
            .outOfRange, "handle \(handle) points at data offset \(handle.dataOffset), outside the heap's "
                + "\(layout.dataBytes) bytes of pages")
    }

    @usableFromInline @inline(never)
    internal func staleEpochError(_ handle: SharedHeapHandle, page: Int, pageWord: UInt64) -> SharedHeapError {
        SharedHeapError(
            .staleHandle, "handle \(handle) is stale: page \(page) has been reused since (epoch "
                + "\(PageWord.epoch(pageWord)), the handle's is \(handle.generation >> 16))")
    }

    @usableFromInline @inline(never)
    internal func misalignedError(_ handle: SharedHeapHandle, page: Int, blockSize: Int) -> SharedHeapError {
        SharedHeapError(
            .misaligned, "handle \(handle) points at data offset \(handle.dataOffset), which is not the start of "
                + "a \(blockSize)-byte block of page \(page)")
    }

    /// The handle's block start in this mapping, after checking that the handle names an allocated block.
    ///
    /// - Throws: `.outOfRange`, `.misaligned`, `.staleHandle` (freed, or freed and reused).
    public func pointer(for handle: SharedHeapHandle) throws(SharedHeapError) -> UnsafeMutableRawPointer {
        let location = try locate(handle)
        // Ordering: acquiring, so that the bytes the allocator (or a holder) wrote before handing the handle on
        // are visible once the caller dereferences the pointer (when the handle came through shared memory).
        let word = blockWord(location.page, location.slot).load(ordering: .acquiring)
        guard BlockWord.generation(word) == location.generation, BlockWord.state(word) == BlockWord.allocated else {
            throw staleError(handle, word)
        }
        return data + (Int(handle.rawValue & 0xFFFF_FFFF) &* 16)
    }

    /// The size of the handle's block (its size class).
    ///
    /// - Throws: as `pointer(for:)`.
    public func blockSize(of handle: SharedHeapHandle) throws(SharedHeapError) -> Int {
        _ = try pointer(for: handle)
        return try locate(handle).blockSize
    }

    /// The handle of the allocated block starting at `pointer` in this mapping.
    ///
    /// - Throws: `.outOfRange` (not in this heap's data pages), `.misaligned` (not a block start),
    ///   `.staleHandle` (no allocated block there).
    public func handle(for pointer: UnsafeRawPointer) throws(SharedHeapError) -> SharedHeapHandle {
        let address = UInt(bitPattern: pointer)
        let start = UInt(bitPattern: data)
        guard address >= start, address - start < UInt(layout.dataBytes) else {
            throw SharedHeapError(.outOfRange, "address 0x\(String(address, radix: 16)) is not in this heap's data pages")
        }
        let offset = Int(address - start)
        guard offset % 16 == 0 else {
            throw SharedHeapError(.misaligned, "data offset \(offset) is not 16-byte aligned: not a block start")
        }
        let probe = SharedHeapHandle(rawValue: UInt64(offset / 16) | (1 << 32))
        let location = try locate(probe, checkEpoch: false)
        guard PageWord.epoch(pageState(location.page).load(ordering: .relaxed)) != 0 else {
            // A page never handed out (in a lazy heap its block words are not even backed).
            throw SharedHeapError(.staleHandle, "no allocated block at data offset \(offset)")
        }
        let word = blockWord(location.page, location.slot).load(ordering: .acquiring)
        guard BlockWord.state(word) == BlockWord.allocated else {
            throw SharedHeapError(.staleHandle, "no allocated block at data offset \(offset)")
        }
        return SharedHeapHandle(rawValue: UInt64(offset / 16) | (UInt64(BlockWord.generation(word)) << 32))
    }

    @usableFromInline @inline(never)
    internal func staleError(_ handle: SharedHeapHandle, _ word: UInt64) -> SharedHeapError {
        if BlockWord.generation(word) != handle.generation {
            return SharedHeapError(
                .staleHandle, "handle \(handle) is stale: its block now has generation "
                    + "\(BlockWord.generation(word)) (freed and reused, or never allocated)")
        }
        return SharedHeapError(.staleHandle, "handle \(handle) names a block that has been freed")
    }

    // MARK: Participants

    /// Registers a participant (one per thread) and returns it.
    ///
    /// - Parameter name: a label for diagnostics (the first 32 UTF-8 bytes are stored).
    /// Only a *free* slot is taken: never one whose participant awaits recovery (alive with its process gone, or
    /// dead) nor one that is *leaving* (see `Participant.leave(releasingSlot:)`).
    ///
    /// - Throws: `.participantTableFull` when every slot is taken; `.invalidConfiguration` for a read-only region;
    ///   `.heapFull` when a lazy heap cannot commit the held list of any free slot (the backing store is full).
    public func join(name: String) throws(SharedHeapError) -> Participant {
        guard region.access == .readWrite else {
            throw SharedHeapError(
                .invalidConfiguration, "the region is mapped read-only: a read-only process may verify() and read "
                    + "blocks, not join; open the region read-write")
        }
        // Pid and start time in one word: liveness checks survive pid reuse (see `ProcessIdentity`).
        let pid = getpid()
        let me = ParticipantWord.make(
            state: ParticipantWord.alive, pid: pid, startTime: ProcessIdentity.startTime(of: pid) ?? 0)
        var commitFailure: SharedHeapError?
        for p in 0..<layout.participantCapacity {
            // A lazy heap backs a slot's held list before the slot is first taken (idempotent, so a commit for a
            // slot someone else takes first is no harm); a slot whose list cannot be backed is passed over.
            if lazyCommit, ParticipantWord.state(participantState(p).load(ordering: .relaxed)) == ParticipantWord.free,
                !heldListIsCommitted(p)
            {
                do throws(SharedHeapError) { try commitHeldList(p) } catch {
                    commitFailure = error
                    continue
                }
            }
            // Ordering: acquiring on success, so that everything the previous occupant of the slot wrote (its
            // emptied held list, cleared pending word) before freeing the slot with a releasing store is visible.
            let (claimed, _) = participantState(p).compareExchange(
                expected: ParticipantWord.free, desired: me, successOrdering: .acquiringAndReleasing,
                failureOrdering: .relaxed)
            if claimed {
                // Ordering: relaxed; the slot is ours, and a quota manager sets the allowance only after learning
                // the participant's index from us (a happens-before through its own channel).
                pageAllowance(p).store(unlimitedPages, ordering: .relaxed)
                ownedPageCount(p).store(0, ordering: .relaxed)
                let bytes = Array(name.utf8.prefix(32))
                let nameArea = meta + participantOffset(p) + 16
                nameArea.initializeMemory(as: UInt8.self, repeating: 0, count: 32)
                nameArea.copyMemory(from: bytes, byteCount: bytes.count)
                return Participant(heap: self, index: p)
            }
        }
        if let commitFailure { throw commitFailure }
        throw SharedHeapError(
            .participantTableFull, "all \(layout.participantCapacity) participant slots are taken; leave() unused "
                + "participants")
    }

    /// Whether participant slot `p`'s held list is backed: always in a fully committed heap; in a lazy heap once
    /// the slot was first joined. Readers skip a held list that is not (it is a hole: all zeros).
    internal func heldListIsCommitted(_ p: Int) -> Bool {
        // Ordering: acquiring, pairs with the releasing bit set in `commitHeldList`.
        !lazyCommit || word32(Self.heldCommittedOffset).load(ordering: .acquiring) & (UInt32(1) << UInt32(p)) != 0
    }

    /// Lazy heaps: commits participant slot `p`'s held list, then records it in the header's mask.
    internal func commitHeldList(_ p: Int) throws(SharedHeapError) {
        let bytes = layout.heldCapacity * 8
        let offset = region.geometry.metadataOffset + layout.heldOffset + p * bytes
        if let error = lazyCommitFailure() ?? region.commitInPlace(offset: offset, length: bytes) {
            throw SharedHeapError(
                .heapFull, "could not commit the \(bytes)-byte held list of participant slot \(p) in "
                    + "\(region.describing) (\(error)): the backing store (/dev/shm, or memory) is full; free "
                    + "blocks or memory, then join again")
        }
        // Ordering: releasing, pairs with the acquiring load in `heldListIsCommitted`.
        word32(Self.heldCommittedOffset).loadThenBitwiseOr(with: UInt32(1) << UInt32(p), ordering: .releasing)
    }

    /// The test hook's injected failure (ENOSPC), when one is due.
    internal func lazyCommitFailure() -> Errno? {
        guard _failingCommits.load(ordering: .relaxed) > 0 else { return nil }
        return _failingCommits.loadThenWrappingDecrement(ordering: .relaxed) > 0 ? .noSpace : nil
    }

    /// Lazy heaps: commits a page's data, block words and links (idempotent); nil when done, else the error.
    internal func commitPage(_ page: Int) -> Errno? {
        if let injected = lazyCommitFailure() { return injected }
        let g = region.geometry
        let slots = layout.isSpan(page) ? layout.spanMaxSlots : layout.maxSlots
        let first = layout.slotBase(page)
        let words = g.metadataOffset + layout.blockWordsOffset + first * 8
        let links = g.metadataOffset + layout.linksOffset + first * 4
        return region.commitInPlace(offset: words, length: slots * 8)
            ?? region.commitInPlace(offset: links, length: slots * 4)
            ?? region.commitInPlace(offset: g.dataOffset + layout.pageBase(page), length: layout.pageBytes(page))
    }

    /// How many participant slots are free now (a `join` would find one), out of `participantCapacity`.
    ///
    /// - Complexity: O(participant capacity).
    public var freeParticipantSlots: Int {
        // Ordering: relaxed; a count for admission decisions, stale as soon as it is read.
        (0..<layout.participantCapacity).count {
            ParticipantWord.state(participantState($0).load(ordering: .relaxed)) == ParticipantWord.free
        }
    }

    /// Frees a slot whose participant left with `leave(releasingSlot: false)`, so that `join` may offer it again.
    /// Whoever manages the slots (a daemon) calls it once it has finished with the participant's session.
    ///
    /// - Parameters:
    ///   - p: the slot.
    ///   - pid: the process that left it; a slot left by another process (or not leaving) is not touched.
    /// - Returns: true when the slot was leaving (left by `pid`) and is now free.
    /// - Complexity: O(1).
    @discardableResult
    public func releaseSlot(participant p: Int, pid: Int32) -> Bool {
        guard p >= 0, p < layout.participantCapacity, region.access == .readWrite else { return false }
        // Ordering: acquiring, pairs with leave's releasing store of the leaving word.
        let word = participantState(p).load(ordering: .acquiring)
        guard ParticipantWord.state(word) == ParticipantWord.leaving, ParticipantWord.pid(word) == pid else {
            return false
        }
        // Ordering: releasing on success, pairs with the acquiring claim in `join`: the next occupant sees the
        // emptied held list and cleared words that leave wrote before its leaving store.
        return participantState(p).compareExchange(
            expected: word, desired: ParticipantWord.free, successOrdering: .acquiringAndReleasing,
            failureOrdering: .relaxed).exchanged
    }

    /// Traps with the audit's report unless `verify()` is clean. Compiled to nothing unless
    /// `DIVVY_INTERNAL_CHECKS` is set (debug builds and tests). Call it only while the heap is quiescent.
    ///
    /// - Complexity: that of `verify()`.
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        let report = verify()
        precondition(report.isClean, "SharedHeap invariant violated: \(report)")
        #endif
    }

    // MARK: Pages

    /// Pops a page from the pool and dedicates it to `sizeClass` for participant `p`; nil when the pool is empty.
    ///
    /// Crash discipline: the pool is a set of *hints*; the page's state word is the authority. `p` records
    /// "claiming" in its page-in-hand word before popping and the page right after, claims the page with one
    /// compare-and-exchange of its state word (pooled → owned), initializes the owner-only fields and only then
    /// clears the record. Recovery finds a page popped or half-initialized by a dead `p` in that word and puts it
    /// back. A popped page whose state is no longer pooled is a stale hint (see `releasePage`) and is dropped.
    ///
    /// In a lazy heap, a page that never left the pool before (epoch 0) is committed — data, block words, links —
    /// after it is popped and before it is claimed: the claim (which makes the epoch non-zero) then proves the page
    /// backed, so later claims skip the commit. A commit that fails (/dev/shm or memory full) pushes the page back
    /// while it is still pooled — the state popped-not-claimed that the page-in-hand record already covers:
    /// recovery of a death before the push finds the page pooled and unlisted and pushes it, after the push finds
    /// it listed — and returns nil with the reason in `commitFailure`; the allocation then ends in `heapFull`.
    internal func claimPooledPage(sizeClass: Int, for p: Int) -> Int? {
        var ignored: SharedHeapError?
        return claimPooledPage(sizeClass: sizeClass, for: p, commitFailure: &ignored)
    }

    /// `claimPooledPage(sizeClass:for:)`, reporting a failed lazy commit in `commitFailure`.
    internal func claimPooledPage(sizeClass: Int, for p: Int, commitFailure: inout SharedHeapError?) -> Int? {
        // Ordering: relaxed, for the page-in-hand word throughout: it is read only by a recoverer after `p`
        // died (its death orders everything before it).
        pageInHand(p).store(PageInHand.claimingNoPage, ordering: .relaxed)
        defer { pageInHand(p).store(0, ordering: .relaxed) }
        while true {
            let large = layout.isLarge(sizeClass)
            guard let stack = large ? spanPool : pool, let index = stack.pop() else { return nil }
            let page = Int(index) + (large ? layout.smallPageCount : 0)
            pageInHand(p).store(PageInHand.claiming | UInt64(page), ordering: .relaxed)
            var old = pageState(page).load(ordering: .acquiring)
            guard PageWord.kind(old) == PageWord.pooled else { continue }  // A stale hint: someone owns it.
            if lazyCommit, PageWord.epoch(old) == 0, let error = commitPage(page) {
                try? pushPooled(page)  // Still pooled; .doubleFree cannot happen: we popped it.
                commitFailure = SharedHeapError(
                    .heapFull, "the heap could not commit memory for page \(page) (\(layout.pageBytes(page)) bytes "
                        + "and its metadata) in \(region.describing): \(error); the backing store (/dev/shm, or "
                        + "memory) is full: free blocks or memory")
                return nil
            }
            var epoch = (PageWord.epoch(old) &+ 1) & 0xFFFF
            if epoch == 0 { epoch = 1 }
            // Ordering: acquiring and releasing: we see the last owner's fields; readers that acquire the state
            // word see our claim. Handles of the new epoch exist only after our first allocation, which follows
            // the field initialization below (and publishes it with the block word's releasing store).
            let (claimed, current) = pageState(page).compareExchange(
                expected: old,
                desired: PageWord.make(kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: epoch),
                successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            // Only the popper claims a page, so a failure means the page was not pooled (a stale hint): drop it.
            guard claimed else { old = current; continue }
            // Owner-only fields: nobody else writes them while the page is ours.
            localHead(page).store(endOfSlots, ordering: .relaxed)
            localCount(page).store(0, ordering: .relaxed)
            carved(page).store(0, ordering: .relaxed)
            live(page).store(0, ordering: .relaxed)
            slotCount(page).store(UInt32(layout.pageBytes(page) / layout.classSizes[sizeClass]), ordering: .relaxed)
            remoteHead(page).store(UInt64(endOfSlots), ordering: .relaxed)
            collecting(page).store(0, ordering: .relaxed)
            return page
        }
    }

    /// Takes over an orphan page of `sizeClass`; nil when there is none.
    internal func adoptOrphanPage(sizeClass: Int, for p: Int) -> Int? {
        for page in 0..<layout.pageCount {
            let word = pageState(page).load(ordering: .relaxed)
            guard PageWord.kind(word) == PageWord.orphan, PageWord.sizeClass(word) == sizeClass else { continue }
            let desired = PageWord.make(
                kind: PageWord.owned, sizeClass: sizeClass, owner: p, epoch: PageWord.epoch(word))
            // Ordering: acquiring on success: the previous owner's owner-only fields (stored before its releasing
            // store of the orphan state) are now ours to read and write.
            let (won, _) = pageState(page).compareExchange(
                expected: word, desired: desired, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if won { return page }
        }
        return nil
    }

    /// Takes over every orphan page of another class than `sizeClass`, collects its remote frees, and gives it
    /// back to the pool when nothing in it is live (else makes it an orphan again). Returns how many pages went
    /// back to the pool.
    internal func reclaimOrphanPages(except sizeClass: Int, for p: Int) -> Int {
        var reclaimed = 0
        for page in 0..<layout.pageCount {
            let word = pageState(page).load(ordering: .relaxed)
            guard PageWord.kind(word) == PageWord.orphan, PageWord.sizeClass(word) != sizeClass else { continue }
            let mine = PageWord.make(
                kind: PageWord.owned, sizeClass: PageWord.sizeClass(word), owner: p, epoch: PageWord.epoch(word))
            // Ordering: acquiring on success, as in `adoptOrphanPage`.
            let (won, _) = pageState(page).compareExchange(
                expected: word, desired: mine, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            guard won else { continue }
            collect(page)
            if live(page).load(ordering: .relaxed) == 0 {
                releasePage(page, for: p)
                reclaimed += 1
            } else {
                // Ordering: releasing, so the next adopter sees our updates of the owner-only fields.
                pageState(page).store(word, ordering: .releasing)
            }
        }
        return reclaimed
    }

    /// Gives an owned page with no live block back to the pool; `p` is the participant doing it (the owner, or
    /// the participant a recoverer acts for), whose page-in-hand word records the move until it is complete.
    ///
    /// The state word goes pooled first, then the page is pushed. A push that finds the page already in the pool
    /// (a stale hint left by a recovery race, now valid again) is fine: the pool is a set of hints.
    internal func releasePage(_ page: Int, for p: Int) {
        // Ordering: relaxed, as in `claimPooledPage`.
        pageInHand(p).store(PageInHand.releasing | UInt64(page), ordering: .relaxed)
        let word = pageState(page).load(ordering: .relaxed)
        // Ordering: releasing; the next claimer's pop of the pool (acquiring) sees the page as pooled.
        pageState(page).store(
            PageWord.make(kind: PageWord.pooled, sizeClass: PageWord.sizeClass(word), owner: 0,
                          epoch: PageWord.epoch(word)), ordering: .releasing)
        try? pushPooled(page)  // .doubleFree: already in the pool as a hint.
        pageInHand(p).store(0, ordering: .relaxed)
    }

    /// Pushes a page onto its tier's pool (exact double-push detection).
    internal func pushPooled(_ page: Int) throws(AllocationError) {
        if layout.isSpan(page), let spanPool {
            try spanPool.push(UInt32(page - layout.smallPageCount))
        } else {
            try pool.push(UInt32(page))
        }
    }

    /// Moves the page's whole remote-free stack onto its local list (owner only). Returns how many blocks came
    /// back.
    ///
    /// Crash discipline (see `SharedHeap.recover(participant:)`): the chain being moved is always recorded in the
    /// page's *collecting* word (slot + 1, 0 = none), stored before the stack is taken and advanced past each
    /// block before the block is linked into the local list, so a recoverer can finish a collect its owner died
    /// in. Before taking the stack the owner reads the page's *suspect* word (a handle recovery could not prove
    /// was pushed): if that block is still *freeing* and was not in the chain taken, it never reached the stack,
    /// and the owner frees it here.
    ///
    /// - Parameter _stopAt: test hook: stop (as if the owner died) after stage `_stopAt` — 0: the collecting word
    ///   is stored, the stack not taken; 1: the stack is taken; `1 + n`: `n` blocks moved.
    @discardableResult
    internal func collect(_ page: Int, _stopAt: Int = Int.max) -> Int {
        // Ordering: acquiring, pairs with the recoverer's releasing store of the suspect. Read *before* taking
        // the stack: the dead freer's push (if it happened) happened before the recoverer's store, so the
        // exchange below, coming after this load, sees it: "not in the chain" then proves "never pushed".
        let suspectRaw = suspect(page).load(ordering: .acquiring)
        let head = remoteHead(page)
        // Ordering: relaxed; a first guess, validated by the compare-and-exchange.
        var observed = head.load(ordering: .relaxed)
        var slot = UInt32(truncatingIfNeeded: observed)
        while slot != endOfSlots {
            // Ordering: relaxed; read only by a recoverer after this process died (death orders everything).
            collecting(page).store(slot &+ 1, ordering: .relaxed)
            if _stopAt == 0 { return 0 }
            // Ordering: acquiring, pairs with the releasing push of every block on the stack: we see their
            // words and links, and everything their holders wrote into the blocks.
            let (taken, current) = head.compareExchange(
                expected: observed, desired: UInt64(endOfSlots), successOrdering: .acquiring,
                failureOrdering: .relaxed)
            if taken { break }
            observed = current
            slot = UInt32(truncatingIfNeeded: observed)
        }
        if _stopAt == 1 { return 0 }
        var suspectLocation: Location?
        if suspectRaw != 0, let location = try? locate(SharedHeapHandle(rawValue: suspectRaw)),
            location.page == page
        {
            suspectLocation = location
        }
        var sawSuspect = false
        var count = 0
        while slot != endOfSlots {
            let s = Int(slot)
            let next = link(page, s).load(ordering: .relaxed)
            let word = blockWord(page, s).load(ordering: .relaxed)
            if s == suspectLocation?.slot { sawSuspect = true }
            // Ordering: relaxed; the slot is on no list now and only the owner touches freed slots.
            blockWord(page, s).store(
                BlockWord.make(generation: BlockWord.generation(word), holders: 0, state: BlockWord.free),
                ordering: .relaxed)
            // Advance the record before linking the slot into the local list (which overwrites its link).
            collecting(page).store(next &+ 1, ordering: .relaxed)
            pushLocal(page, s)
            count += 1
            slot = next
            if count + 1 == _stopAt { return count }
        }
        collecting(page).store(0, ordering: .relaxed)
        if count > 0 {
            live(page).store(live(page).load(ordering: .relaxed) - UInt32(count), ordering: .relaxed)
        }
        if suspectRaw != 0 {
            if let location = suspectLocation, !sawSuspect {
                let word = blockWord(page, location.slot).load(ordering: .relaxed)
                if BlockWord.state(word) == BlockWord.freeing, BlockWord.generation(word) == location.generation {
                    // Never pushed: its freer died between the commit and the push. Ours now.
                    blockWord(page, location.slot).store(
                        BlockWord.make(generation: location.generation, holders: 0, state: BlockWord.free),
                        ordering: .relaxed)
                    pushLocal(page, location.slot)
                    live(page).store(live(page).load(ordering: .relaxed) - 1, ordering: .relaxed)
                    count += 1
                }
            }
            // Ordering: releasing, pairs with the recoverer's acquiring compare-and-exchange of the suspect word.
            suspect(page).store(0, ordering: .releasing)
        }
        return count
    }

    /// Owner only: puts a free slot on the local list.
    @inlinable @inline(__always)
    internal func pushLocal(_ page: Int, _ slot: Int) {
        // Ordering: relaxed everywhere; these fields are the owner's, read by others only for diagnostics.
        link(page, slot).store(localHead(page).load(ordering: .relaxed), ordering: .relaxed)
        localHead(page).store(UInt32(slot), ordering: .relaxed)
        localCount(page).store(localCount(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
    }

    /// Owner only: takes a slot from the local list, or carves a new one; nil when the page is full.
    /// Returns the slot and whether it was carved fresh in this epoch.
    @inlinable @inline(__always)
    internal func popLocal(_ page: Int) -> (slot: Int, fresh: Bool)? {
        let head = localHead(page).load(ordering: .relaxed)
        if head != endOfSlots {
            localHead(page).store(link(page, Int(head)).load(ordering: .relaxed), ordering: .relaxed)
            localCount(page).store(localCount(page).load(ordering: .relaxed) - 1, ordering: .relaxed)
            live(page).store(live(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
            return (Int(head), false)
        }
        let next = carved(page).load(ordering: .relaxed)
        guard next < slotCount(page).load(ordering: .relaxed) else { return nil }
        carved(page).store(next + 1, ordering: .relaxed)
        live(page).store(live(page).load(ordering: .relaxed) + 1, ordering: .relaxed)
        return (Int(next), true)
    }

    /// Pushes a freed slot onto its page's remote-free stack (anyone).
    @inlinable
    internal func pushRemote(_ page: Int, _ slot: Int) {
        let head = remoteHead(page)
        // Ordering: relaxed; a first guess, validated by the compare-and-exchange.
        var observed = head.load(ordering: .relaxed)
        while true {
            // Ordering: relaxed; the slot is ours until the exchange below publishes it.
            link(page, slot).store(UInt32(truncatingIfNeeded: observed), ordering: .relaxed)
            // Ordering: releasing on success: the owner's acquiring exchange in `collect` sees the link, the
            // block word and the freed block's contents.
            let (done, current) = head.compareExchange(
                expected: observed, desired: UInt64(slot), successOrdering: .releasing, failureOrdering: .relaxed)
            if done { return }
            observed = current
        }
    }
}

/// A 64-bit reference to a block of a `SharedHeap`, valid in every process that maps the heap's region:
/// generation (high 32 bits) | data-area offset in 16-byte units (low 32 bits). Zero is never a valid handle.
public struct SharedHeapHandle: Hashable, Sendable, CustomStringConvertible {
    /// The packed value: pass it to other processes as is.
    public let rawValue: UInt64
    /// Wraps a raw value received from elsewhere (it is checked when used).
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The block's generation when the handle was made.
    public var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
    /// The block's offset from the start of the data area.
    public var dataOffset: Int { Int(rawValue & 0xFFFF_FFFF) * 16 }
    /// `"0x…"` plus offset and generation.
    public var description: String { "0x\(String(rawValue, radix: 16))(offset \(dataOffset), gen \(generation))" }
}
