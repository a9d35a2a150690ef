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
/// - **Pages.** The data area is cut into `pageSize` pages. The page pool of each tier is a *bump index* (pages
///   at or above it never left the pool) and a bitmap of pages that came back. A participant that needs room
///   takes a page with one compare-and-exchange of the page's state word (pooled → owned by it), dedicates it to
///   one size class and becomes its *owner*; formatting does no work per page (see `claimPooledPage`).
/// - **Two tiers: small pages and span pages.** Blocks larger than `pageSize / 8` ("multi-page spans") live in a
///   second tier of larger pages (`spanPageSize`, default 8 × `pageSize`; a configurable share of the data area,
///   default 1/4, cut off at format time) with their own pool and their own large classes (four per doubling, up
///   to one block per span page). A span page is driven by *exactly* the same machinery as a small page — owner,
///   local list, remote stack, block words, page claims and releases, recovery, verify — only its base, size and slot
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
/// repairs its pages and gives them up (a page it was taking from or giving back to the pool among them).
/// The argument that every interleaving of a death with each operation is covered is in `recover`'s
/// documentation; the records it relies on are: the per-participant `pending` word and held list, the releaser's
/// bit in a *freeing* block word, the page's *collecting* word, and the page state word, which names the owner
/// of every page out of the pool from the single compare-and-exchange that took it.
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
    /// This heap's identity: random, chosen when the heap was formatted, carried by every handle it makes
    /// (`SharedHeapHandle.heapID`). A handle with another heap id is refused with `.foreignHeap`.
    public let heapID: UInt32
    /// Test hook: how many of the next lazy commits fail (as if /dev/shm were full), then decremented.
    internal let _failingCommits = ManagedAtomic<Int>(0)
    /// Test hook: run by a pool scan after it has read the bitmap and before it raises the cursor (a release that
    /// lands there must not be hidden). Set only while no other thread claims pages.
    internal nonisolated(unsafe) var _poolScanHook: (() -> Void)?

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
    /// The layout version this code reads and writes. Version 4: participant state words carry the process's
    /// start time beside its pid, and a *leaving* state. Version 6: the header carries a random heap id that
    /// every handle repeats; block words keep a 48-bit generation (the page's allocation serial) and a holder count
    /// instead of a 30-bit holder mask; held-list entries and pending operations are two words; participant
    /// records are 128 bytes, up to 4,096 of them. Version 8: the page pool is a bump index and a bitmap per tier
    /// (no Treiber stack, no page-in-hand record), page descriptors are committed as the bump index reaches them.
    /// Version 10: an extent area at the end of the data area serves blocks above the largest class (any size up
    /// to the area): a block word and a length word per `pageSize` unit, and the extent lock, serial and frontier
    /// in the header.
    public static let layoutVersion: UInt32 = 10
    /// The layout version of a lazy heap (one formatted in a lazily committed region): version 10's layout, whose
    /// metadata is committed as it is used, plus the participant records' `heldCommitted` flags that readers must
    /// honour. A library that knows only version 10
    /// refuses such a heap instead of reading (and so allocating) metadata that is not committed, or joining
    /// without committing its held list. (Versions 5 and 7 were versions 4's and 6's lazy forms.)
    public static let lazyLayoutVersion: UInt32 = 11

    // Internal, not private: `create` and `attach` (SharedHeap+Format.swift) call it; nothing else should.
    internal init(region: SharedRegion, layout: SharedHeapLayout, meta: UnsafeMutableRawPointer,
                 data: UnsafeMutableRawPointer, lazyCommit: Bool, heapID: UInt32) {
        self.region = region
        self.heapID = heapID
        self.lazyCommit = lazyCommit
        self.layout = layout
        self.meta = meta
        self.data = data
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
    /// The largest request `allocate` serves: the extent area's size, or without one the largest class.
    public var largestBlockSize: Int {
        max(layout.classSizes[layout.classSizes.count - 1], layout.extentUnits * layout.pageSize)
    }
    /// The largest size class's block size: requests above it are extents of the extent area.
    public var largestClassBlockSize: Int { layout.classSizes[layout.classSizes.count - 1] }
    /// The extent area's unit (`pageSize`; an extent's size is a whole number of units) and its size in units
    /// (0: no extent area).
    public var extentUnitSize: Int { layout.pageSize }
    /// The number of units of the extent area.
    public var extentUnitCount: Int { layout.extentUnits }
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
}
