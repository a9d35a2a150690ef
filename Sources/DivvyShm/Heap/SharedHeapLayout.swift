import Atomics
import Divvy

/// The shared-memory heap's metadata layout, and its configuration.
///
/// Everything lives in the region's metadata area, at offsets relative to the start of that area; nothing is a
/// pointer. The data area holds only user bytes (so a mediated client can map it alone).
///
/// The data area is cut into two tiers at format time: the *small-page tier* (`smallPageCount` pages of
/// `pageSize`, first) and the *span tier* (`spanPageCount` pages of `spanPageSize`, after it), each with its own
/// page pool. Small classes (≤ `pageSize / 8`) live in small pages, large classes in span pages; a page of either
/// tier is driven by exactly the same machinery (state word, owner, local list, remote stack, block words,
/// recovery, verify) — only its base, size and slot count differ. Pages are numbered across both tiers (small
/// pages first), so page descriptors and page state words need no tier field; each tier has its own pool words
/// and bitmap.
///
/// | part | at | size | contents |
/// |---|---|---|---|
/// | heap header | 0 | 256 | magic (stored last), version, page sizes, counts, the offsets below, checksum; 156: lazy heaps' held-list mask |
/// | class table | 256 | 4 × classes | block size of each size class (multiples of 16; small classes first) |
/// | participants | `participantsOffset` | 128 × participants | state word, pending operation (two words), name, … |
/// | page pool words | `poolOffset` | 2 × 128 | per tier (small, then span), each word on a cache line of its own: 0 the *bump* index (tier pages at or above it never left the pool), 64 the *cursor* (bits 0–31: no bitmap word below it has a set bit; bits 32–63: a tag bumped by every release) |
/// | free-page bitmaps | `bitmapsOffset` | 8 × ⌈small pages / 64⌉, then 8 × ⌈span pages / 64⌉ (64-byte aligned) | per tier, bit `i`: tier page `i` went back to the pool after use |
/// | page descriptors | `pagesOffset` | 64 × pages | state word, remote-free head, local list, counters |
/// | block words | `blockWordsOffset` | 8 × slots | per block slot: generation, holder count, state |
/// | links | `linksOffset` | 4 × slots | per block slot: next slot in the local list or remote stack |
/// | held lists | `heldOffset` | 16 × participants × heldCapacity | per participant: the blocks it holds (generation word 0 = empty) |
///
/// The pool holds no list of pages: a page that never left it is above its tier's bump index, a page that came
/// back has its bit set in the tier's bitmap, and the page's state word (`PageWord`) is the only authority. A page
/// leaves the pool by one compare-and-exchange of its state word, pooled → owned *by the claimer*; see
/// `SharedHeap.claimPooledPage`. Everything about a tier's pages at or above its bump index other than the bump
/// page itself is known without reading it (pooled, epoch 0, zero): their descriptors and bitmap words are not
/// committed in a lazy heap and are never read.
///
/// The page descriptor's and participant record's fields (offsets, writers, memory ordering) are tabled on
/// `PageDescriptorField` and `ParticipantRecordField` (SharedHeap+Words.swift).
///
/// Slots: a small page has `maxSlots = pageSize / smallest class` block words and links, a span page
/// `spanMaxSlots = spanPageSize / smallest large class`; the word of slot `s` of page `p` is at index
/// `slotBase(p) + s` (small pages first, then span pages), whatever the page's class.
///
/// Handles keep `data offset / 16` in 48 bits and pages are counted in 24: a data area of at most 4 PiB and 16M
/// pages (1 TiB of 64 KiB pages). Nothing in the pool or the lazy commit grows with the data size.
public struct SharedHeapConfiguration: Hashable, Sendable {
    /// The size of a small-tier heap page in the data area: a power of two, 4 KiB…16 MiB. Default 64 KiB.
    public var pageSize: Int
    /// Small block sizes, ascending, multiples of 16, at most `pageSize / 8`, served from small pages. Default:
    /// `SharedHeapConfiguration.defaultSizeClasses(pageSize:)`.
    public var sizeClasses: [Int]
    /// Participant slots (1…`maximumParticipants`). Default 30. Each costs a 128-byte record and a held list
    /// (`heldCapacity` × 16 bytes; in a lazy heap committed only once the slot is first joined).
    public var participantCapacity: Int
    /// Handles one participant may hold at once (its held list). Default 4096.
    public var heldCapacity: Int
    /// The held-list capacity of participant slot 0 — the slot the first `join` takes, e.g. a daemon's own
    /// participant that holds every mediated client's blocks —; nil means `heldCapacity`. Lets one slot hold much
    /// more than the others without every slot paying for it.
    public var firstSlotHeldCapacity: Int?
    /// The size of a span-tier page: a power of two, at least `pageSize`, at most 1 GiB. Default `8 × pageSize`.
    public var spanPageSize: Int
    /// The share of the data area given to the span tier (0…1), rounded down to whole span pages. Default 0.25.
    /// When it comes to no span page (a small data area) the heap has no large classes.
    public var spanFraction: Double
    /// Large block sizes, ascending, multiples of 16, above every small class, at most `spanPageSize`, served from
    /// span pages; empty for no span tier. At most 255 classes in all. Default:
    /// `SharedHeapConfiguration.defaultLargeSizeClasses(pageSize:spanPageSize:)`.
    public var largeSizeClasses: [Int]
    /// The share of the data area given to the *extent area* (0…1), rounded down to whole `pageSize` units and
    /// taken from the end of the data area, after the span tier. Blocks larger than the largest class are extents
    /// of whole units from that area (up to its size). Default 0.25; 0 for none (then `largestBlockSize` is the
    /// largest class). The span tier's and the extent area's shares together must stay below 1.
    public var extentFraction: Double = 0.25

    /// Creates a configuration; `sizeClasses` / `largeSizeClasses` nil mean the defaults for the page sizes,
    /// `spanPageSize` nil means `8 × pageSize`.
    public init(pageSize: Int = 64 << 10, sizeClasses: [Int]? = nil, participantCapacity: Int = 30,
                heldCapacity: Int = 4096, spanPageSize: Int? = nil, spanFraction: Double = 0.25,
                largeSizeClasses: [Int]? = nil) {
        self.pageSize = pageSize
        self.sizeClasses = sizeClasses ?? Self.defaultSizeClasses(pageSize: pageSize)
        self.participantCapacity = participantCapacity
        self.heldCapacity = heldCapacity
        let span = spanPageSize ?? 8 * pageSize
        self.spanPageSize = span
        self.spanFraction = spanFraction
        self.largeSizeClasses = largeSizeClasses ?? Self.defaultLargeSizeClasses(pageSize: pageSize, spanPageSize: span)
    }

    /// 16…128 in steps of 16, then four classes per doubling (160, 192, 224, 256, 320, …), up to `pageSize / 8`.
    public static func defaultSizeClasses(pageSize: Int) -> [Int] {
        var classes: [Int] = []
        let largest = max(16, pageSize / 8)
        var size = 16
        while size <= min(128, largest) {
            classes.append(size)
            size += 16
        }
        var base = 128
        while base < largest {
            for step in 1...4 {
                let next = base + base / 4 * step
                if next <= largest { classes.append(next) }
            }
            base *= 2
        }
        return classes
    }

    /// Four classes per doubling above `pageSize / 8` (for 64 KiB pages: 10 KiB, 12 KiB, 14 KiB, 16 KiB, 20 KiB,
    /// …) up to `spanPageSize` (one block per span page).
    public static func defaultLargeSizeClasses(pageSize: Int, spanPageSize: Int) -> [Int] {
        var classes: [Int] = []
        var base = max(16, pageSize / 8)
        while base < spanPageSize, base >= 16 {
            for step in 1...4 {
                let next = (base + base / 4 * step) / 16 * 16
                if next <= spanPageSize, next > (classes.last ?? base) { classes.append(next) }
            }
            base *= 2
        }
        return classes
    }

    /// The most participant slots a heap may have: the block word's holder count has 14 bits (16,383), the page
    /// word's owner field 16; 4,096 keeps the held lists (16 bytes × `heldCapacity` each) and the recount scan of
    /// recovery (`SharedHeap.recover(participant:)`) bounded.
    public static let maximumParticipants = 4096

    /// How a data area of `dataSize` bytes is split: small pages, span pages, and the classes the heap serves
    /// (the large classes only when there is a span page).
    internal func tiers(
        dataSize: Int
    ) -> (smallPages: Int, spanPages: Int, classes: [Int], smallClasses: Int, extentUnits: Int) {
        var spanPages = 0
        if !largeSizeClasses.isEmpty, spanPageSize > 0, spanFraction > 0, spanFraction <= 1 {
            spanPages = Int(Double(dataSize) * spanFraction) / spanPageSize
        }
        var extentUnits = 0
        if extentFraction > 0, extentFraction < 1, pageSize > 0 {
            extentUnits = min(Int(Double(dataSize) * extentFraction) / pageSize, SharedHeapLayout.maximumExtentUnits)
        }
        let smallPages = (dataSize - spanPages * spanPageSize - extentUnits * pageSize) / max(1, pageSize)
        return (smallPages, spanPages, spanPages > 0 ? sizeClasses + largeSizeClasses : sizeClasses,
                sizeClasses.count, extentUnits)
    }
}

/// Offsets and counts derived from a configuration and a region (all offsets relative to the metadata area).
@usableFromInline
internal struct SharedHeapLayout: Hashable, Sendable {
    @usableFromInline var pageSize: Int
    /// Pages of both tiers (small pages are `0..<smallPageCount`).
    @usableFromInline var pageCount: Int
    @usableFromInline var smallPageCount: Int
    @usableFromInline var spanPageSize: Int
    @usableFromInline var spanPageCount: Int
    /// All classes, small first.
    @usableFromInline var classSizes: [Int]
    /// Classes `0..<smallClassCount` are small (small pages), the rest large (span pages).
    @usableFromInline var smallClassCount: Int
    /// The largest small class's block size.
    @usableFromInline var largestSmallClass: Int
    @usableFromInline var participantCapacity: Int
    /// Held-list entries of every slot but slot 0.
    @usableFromInline var heldCapacity: Int
    /// Held-list entries of slot 0.
    @usableFromInline var firstHeldCapacity: Int
    @usableFromInline var maxSlots: Int
    @usableFromInline var spanMaxSlots: Int
    /// Data-area offset of the first span page (= bytes in small pages).
    @usableFromInline var spanDataOffset: Int
    /// Bytes of the data area used by pages of both tiers and the extent area.
    @usableFromInline var dataBytes: Int
    /// Units (`pageSize` bytes each) of the extent area, 0 for none.
    @usableFromInline var extentUnits: Int
    /// Data-area offset of the extent area's unit 0 (= bytes in pages of both tiers).
    @usableFromInline var extentDataOffset: Int
    /// Slot index of extent unit 0's block word (units follow every page's slots in the block-word array).
    @usableFromInline var extentSlotBase: Int
    /// The extent length words: 8 bytes per unit.
    @usableFromInline var extentLengthsOffset: Int
    /// Slot index of the first span page's slot 0.
    @usableFromInline var spanSlotBase: Int
    @usableFromInline var pageShift: Int
    @usableFromInline var spanPageShift: Int
    @usableFromInline var classTableOffset: Int
    @usableFromInline var participantsOffset: Int
    /// The pool words of both tiers (`SharedHeapLayout.poolTierStride` bytes per tier).
    @usableFromInline var poolOffset: Int
    /// The small tier's free-page bitmap; the span tier's follows at `spanBitmapOffset`.
    @usableFromInline var bitmapsOffset: Int
    @usableFromInline var spanBitmapOffset: Int
    @usableFromInline var pagesOffset: Int
    @usableFromInline var blockWordsOffset: Int
    @usableFromInline var linksOffset: Int
    @usableFromInline var heldOffset: Int
    @usableFromInline var totalBytes: Int
    /// Region offset of the data area (page 0).
    @usableFromInline var dataOffset: Int

    static let headerSize = 256
    /// The largest data area (both tiers) a heap may have: handles keep `data offset / 16` in 48 bits.
    static let maximumDataSize = 1 << 52
    /// The most pages (both tiers) a heap may have.
    static let maximumPageCount = 1 << 24
    /// The most extent units a heap may have (a length word keeps units in 32 bits; 2^28 units of 64 KiB = 16 TiB).
    static let maximumExtentUnits = 1 << 28
    @usableFromInline static let participantStride = 128
    /// Bytes per held-list entry: the handle's generation word and its offset word.
    @usableFromInline static let heldEntryStride = 16
    @usableFromInline static let pageStride = 64
    /// Bytes of pool words per tier: the bump index and the cursor, each on a 64-byte line of its own.
    @usableFromInline static let poolTierStride = 128

    static func roundUp(_ value: Int, _ alignment: Int) -> Int { (value + alignment - 1) / alignment * alignment }

    /// Lays the heap out. Sizes are validated by the caller (page sizes powers of two, classes in range).
    init(pageSize: Int, smallPageCount: Int, spanPageSize: Int, spanPageCount: Int, classSizes: [Int],
         smallClassCount: Int, participantCapacity: Int, heldCapacity: Int, firstHeldCapacity: Int? = nil,
         extentUnits: Int = 0, dataOffset: Int) {
        self.pageSize = pageSize
        self.smallPageCount = smallPageCount
        self.spanPageSize = spanPageCount > 0 ? spanPageSize : 0
        self.spanPageCount = spanPageCount
        pageCount = smallPageCount + spanPageCount
        self.classSizes = classSizes
        self.smallClassCount = smallClassCount
        largestSmallClass = classSizes[smallClassCount - 1]
        self.participantCapacity = participantCapacity
        self.heldCapacity = heldCapacity
        self.firstHeldCapacity = firstHeldCapacity ?? heldCapacity
        self.dataOffset = dataOffset
        maxSlots = pageSize / classSizes[0]
        spanMaxSlots = spanPageCount > 0 && classSizes.count > smallClassCount
            ? spanPageSize / classSizes[smallClassCount] : 0
        spanDataOffset = smallPageCount * pageSize
        extentDataOffset = spanDataOffset + spanPageCount * self.spanPageSize
        self.extentUnits = extentUnits
        dataBytes = extentDataOffset + extentUnits * pageSize
        spanSlotBase = smallPageCount * maxSlots
        pageShift = pageSize.trailingZeroBitCount
        spanPageShift = spanPageCount > 0 ? spanPageSize.trailingZeroBitCount : 0
        let totalSlots = spanSlotBase + spanPageCount * spanMaxSlots
        extentSlotBase = totalSlots
        classTableOffset = Self.headerSize
        participantsOffset = Self.roundUp(classTableOffset + 4 * classSizes.count, 64)
        poolOffset = Self.roundUp(participantsOffset + Self.participantStride * participantCapacity, 64)
        bitmapsOffset = poolOffset + 2 * Self.poolTierStride
        spanBitmapOffset = Self.roundUp(bitmapsOffset + 8 * ((smallPageCount + 63) / 64), 64)
        pagesOffset = Self.roundUp(spanBitmapOffset + 8 * ((spanPageCount + 63) / 64), 64)
        blockWordsOffset = Self.roundUp(pagesOffset + Self.pageStride * pageCount, 64)
        linksOffset = Self.roundUp(blockWordsOffset + 8 * (totalSlots + extentUnits), 64)
        extentLengthsOffset = Self.roundUp(linksOffset + 4 * totalSlots, 64)
        heldOffset = Self.roundUp(extentLengthsOffset + 8 * extentUnits, 64)
        totalBytes = Self.roundUp(
            heldOffset + Self.heldEntryStride * (self.firstHeldCapacity + (participantCapacity - 1) * heldCapacity), 64)
    }

    /// Metadata bytes a lazy heap commits at creation, at most: the header, class table, participant records and
    /// pool words (one prefix), plus, per tier, the OS page holding its first bitmap word and the one holding its
    /// first page descriptor, and the OS pages of extent unit 0's block word and length word. Independent of the
    /// data size (but for the class count). Everything else is committed
    /// as it is used: a tier's next descriptor and bitmap word when its bump index reaches them, a page's data,
    /// block words and links when the page first leaves the pool, a participant slot's held list when it is
    /// first joined.
    var initialBytes: Int {
        let os = OSAllocator.pageSize
        // (The extent area: unit 0's block word and length word, one OS page each.)
        return min(Self.roundUp(bitmapsOffset, os) + ((spanPageCount > 0 ? 4 : 2) + (extentUnits > 0 ? 2 : 0)) * os,
                   Self.roundUp(totalBytes, os))
    }

    /// The tier of `page`: 0 small, 1 span.
    @inlinable @inline(__always) func tier(ofPage page: Int) -> Int { page < smallPageCount ? 0 : 1 }
    /// The first page of `tier` and its page count.
    @inlinable @inline(__always) func pages(ofTier tier: Int) -> (first: Int, count: Int) {
        tier == 0 ? (0, smallPageCount) : (smallPageCount, spanPageCount)
    }
    /// The metadata offset of `tier`'s free-page bitmap.
    @inlinable @inline(__always) func bitmapOffset(ofTier tier: Int) -> Int {
        tier == 0 ? bitmapsOffset : spanBitmapOffset
    }

    /// Participant slot `p`'s held-list capacity.
    @inlinable @inline(__always) func heldCapacity(of p: Int) -> Int { p == 0 ? firstHeldCapacity : heldCapacity }
    /// Participant slot `p`'s held list: its offset in the metadata area.
    @inlinable @inline(__always) func heldListOffset(_ p: Int) -> Int {
        p == 0 ? heldOffset : heldOffset &+ Self.heldEntryStride &* (firstHeldCapacity &+ (p &- 1) &* heldCapacity)
    }

    /// Is `page` a span page?
    @inlinable @inline(__always) func isSpan(_ page: Int) -> Bool { page >= smallPageCount }
    /// Is `sizeClass` a large class (span pages)?
    @inlinable @inline(__always) func isLarge(_ sizeClass: Int) -> Bool { sizeClass >= smallClassCount }
    /// The page's size in bytes.
    @inlinable @inline(__always) func pageBytes(_ page: Int) -> Int { page < smallPageCount ? pageSize : spanPageSize }
    /// The page's start, from the start of the data area.
    @inlinable @inline(__always) func pageBase(_ page: Int) -> Int {
        page < smallPageCount ? page &<< pageShift : spanDataOffset &+ ((page &- smallPageCount) &<< spanPageShift)
    }
    /// The index of the page's slot 0 among block words and links. An extent unit `u` counts as "page"
    /// `pageCount + u` with one slot (its block word; it has no link).
    @inlinable @inline(__always) func slotBase(_ page: Int) -> Int {
        if page < smallPageCount { return page &* maxSlots }
        if page < pageCount { return spanSlotBase &+ (page &- smallPageCount) &* spanMaxSlots }
        return extentSlotBase &+ (page &- pageCount)
    }
    /// Is `page` an extent unit's pseudo-page (`pageCount + unit`, see `slotBase`)?
    @inlinable @inline(__always) func isExtent(_ page: Int) -> Bool { page >= pageCount }
    /// The page holding data offset `offset` and the offset within it; nil beyond the data area. An offset in the
    /// extent area gives the pseudo-page `pageCount + unit` and the offset within the unit.
    @inlinable @inline(__always) func page(atDataOffset offset: Int) -> (page: Int, within: Int)? {
        if offset < spanDataOffset { return (offset &>> pageShift, offset & (pageSize &- 1)) }
        guard offset < dataBytes else { return nil }
        if offset >= extentDataOffset {
            let inArea = offset &- extentDataOffset
            return (pageCount &+ (inArea &>> pageShift), inArea & (pageSize &- 1))
        }
        let span = offset &- spanDataOffset
        return (smallPageCount &+ (span &>> spanPageShift), span & (spanPageSize &- 1))
    }
    /// How many `pageSize` units the page counts for in allowances and owned-page counts.
    @inlinable func pageUnits(_ page: Int) -> Int { page < smallPageCount ? 1 : spanPageSize / pageSize }
}

// MARK: Word formats

/// Block word (one `UInt64` per block slot): generation (bits 0–47) | count (bits 48–61) | state (bits 62–63).
///
/// States: 0 free; 1 allocated (count = how many participants hold the block); 2 freeing (the last holder let
/// go and the block is on its way to its page's remote-free stack; the count field then names the participant
/// that released it, so recovery can tell a dead participant's release from a survivor's); 3 frozen (a recoverer
/// is recounting the holders of the block from the held lists, see `SharedHeap.recover(participant:)`; the count
/// field keeps the count it had; adopters and freers wait until it is allocated again).
///
/// The generation is the page's allocation serial at the time of the allocation (`PageDescriptorField.
/// generation`): unique among all allocations ever made in the page, so a handle to a freed block never matches
/// the word again, whatever happened to the page since.
@usableFromInline
internal enum BlockWord {
    @usableFromInline static let free: UInt64 = 0
    @usableFromInline static let allocated: UInt64 = 1
    @usableFromInline static let freeing: UInt64 = 2
    @usableFromInline static let frozen: UInt64 = 3
    /// The largest generation (48 bits): a page whose serial reaches it is retired, never reused.
    @usableFromInline static let maximumGeneration: UInt64 = (1 << 48) - 1
    /// The largest holder count.
    @usableFromInline static let maximumCount: Int = (1 << 14) - 1

    @inlinable static func generation(_ word: UInt64) -> UInt64 { word & maximumGeneration }
    /// Holders (allocated, frozen) or the releaser (freeing).
    @inlinable static func count(_ word: UInt64) -> Int { Int(truncatingIfNeeded: (word >> 48) & 0x3FFF) }
    @inlinable static func state(_ word: UInt64) -> UInt64 { word >> 62 }
    @inlinable static func make(generation: UInt64, count: Int, state: UInt64) -> UInt64 {
        (generation & maximumGeneration) | (UInt64(truncatingIfNeeded: count) & 0x3FFF) << 48 | state << 62
    }
    /// The same word with another state (generation and count kept).
    @inlinable static func with(state: UInt64, _ word: UInt64) -> UInt64 { word & ~(3 << 62) | state << 62 }
}

/// Page state word: kind (bits 0–7: 0 in the pool, 1 owned, 2 orphan) | class (bits 8–15) | owner participant
/// (bits 16–31; the claimer, named by the very compare-and-exchange that takes the page from the pool) | epoch
/// (bits 32–47, bumped each time the page leaves the pool, never back to 0: epoch 0 is a page that never left the
/// pool; the high half of its blocks' generations).
@usableFromInline
internal enum PageWord {
    @usableFromInline static let pooled: UInt64 = 0
    @usableFromInline static let owned: UInt64 = 1
    @usableFromInline static let orphan: UInt64 = 2

    @inlinable static func kind(_ word: UInt64) -> UInt64 { word & 0xFF }
    @inlinable static func sizeClass(_ word: UInt64) -> Int { Int((word >> 8) & 0xFF) }
    @inlinable static func owner(_ word: UInt64) -> Int { Int((word >> 16) & 0xFFFF) }
    @inlinable static func epoch(_ word: UInt64) -> UInt32 { UInt32((word >> 32) & 0xFFFF) }
    @inlinable static func make(kind: UInt64, sizeClass: Int, owner: Int, epoch: UInt32) -> UInt64 {
        kind | (UInt64(sizeClass) << 8) | (UInt64(owner & 0xFFFF) << 16) | (UInt64(epoch & 0xFFFF) << 32)
    }
}

/// Participant state word: state (bits 62–63: 0 free slot, 1 alive, 2 dead — set by
/// `SharedHeap.recover(participant:)` while it works —, 3 leaving: left with `leave(releasingSlot: false)`, holds
/// nothing, waits for `SharedHeap.releaseSlot(participant:pid:)`) | pid (bits 0–21: Linux pids stay below
/// `PID_MAX_LIMIT` = 2^22) | process start time (bits 22–61: field 22 of /proc/PID/stat in clock ticks since boot,
/// low 40 bits — 348 years at 100 Hz; 0 = not known). Pid and start time together name one process even after
/// the pid is reused, and they are committed with the state in one store, so a reader never pairs one
/// occupant's pid with another's start time.
@usableFromInline
internal enum ParticipantWord {
    @usableFromInline static let free: UInt64 = 0
    @usableFromInline static let alive: UInt64 = 1
    @usableFromInline static let dead: UInt64 = 2
    @usableFromInline static let leaving: UInt64 = 3
    /// The start-time field's width.
    static let startTimeMask: UInt64 = (1 << 40) - 1
    @inlinable static func state(_ word: UInt64) -> UInt64 { word >> 62 }
    @inlinable static func pid(_ word: UInt64) -> Int32 { Int32(truncatingIfNeeded: word & 0x3F_FFFF) }
    static func startTime(_ word: UInt64) -> UInt64 { (word >> 22) & startTimeMask }
    static func make(state: UInt64, pid: Int32, startTime: UInt64) -> UInt64 {
        (state << 62) | ((startTime & startTimeMask) << 22) | (UInt64(UInt32(bitPattern: pid)) & 0x3F_FFFF)
    }
    /// The same occupant (pid and start time) in another state.
    static func with(state: UInt64, _ word: UInt64) -> UInt64 { (state << 62) | (word & ~(3 << 62)) }
}

/// The page-allowance word's value for "no limit".
@usableFromInline let unlimitedPages: UInt32 = 0xFFFF_FFFF

/// "No slot" in links, local lists and remote stacks.
@usableFromInline let endOfSlots: UInt32 = 0xFFFF_FFFF
