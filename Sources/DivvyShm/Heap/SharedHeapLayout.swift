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
/// pages first), so page descriptors, page-in-hand words and page state words need no tier field.
///
/// | part | at | size | contents |
/// |---|---|---|---|
/// | heap header | 0 | 256 | magic (stored last), version, page sizes, counts, the offsets below, checksum; 156: lazy heaps' held-list mask |
/// | class table | 256 | 4 × classes | block size of each size class (multiples of 16; small classes first) |
/// | participants | `participantsOffset` | 128 × participants | state word, pending operation (two words), name, … |
/// | page pool | `poolOffset` | `UnsafeLockFreeIndexStack.requiredBytes(smallPageCount)` | free small pages |
/// | span pool | `spanPoolOffset` | `UnsafeLockFreeIndexStack.requiredBytes(spanPageCount)` | free span pages (index − smallPageCount) |
/// | page descriptors | `pagesOffset` | 64 × pages | state word, remote-free head, local list, counters |
/// | block words | `blockWordsOffset` | 8 × slots | per block slot: generation, holder count, state |
/// | links | `linksOffset` | 4 × slots | per block slot: next slot in the local list or remote stack |
/// | held lists | `heldOffset` | 16 × participants × heldCapacity | per participant: the blocks it holds (generation word 0 = empty) |
///
/// Page descriptor (64 bytes): 0 state word (`PageWord`), 8 remote-free head (top slot, `endOfSlots` = empty),
/// 16 local head, 20 local free count, 24 carved slots, 28 live blocks (the last four owner-only), 32 slot
/// count, 40 recovery's *suspect* handle (see `SharedHeap.recover(participant:)`), 48 the chain `collect` is moving
/// (slot + 1, 0 = none; owner only), 52–63 reserved.
///
/// Participant entry (64 bytes): 0 state word (`ParticipantWord`: free / alive / dead / leaving, with the pid and
/// the process's start time, since layout version 4), 8 pending handle (the operation in flight, 0 = none),
/// 16–47 name (UTF-8, zero padded), 48 page in hand (`PageInHand`), 56 page
/// allowance (`UInt32`, `unlimitedPages` = no limit; written by whoever manages quotas, e.g. a daemon), 60 owned
/// pages (`UInt32`, in units of `pageSize`: a span page counts `spanPageSize / pageSize`; written only by the
/// participant, or by its recoverer; read by anyone).
///
/// Slots: a small page has `maxSlots = pageSize / smallest class` block words and links, a span page
/// `spanMaxSlots = spanPageSize / smallest large class`; the word of slot `s` of page `p` is at index
/// `slotBase(p) + s` (small pages first, then span pages), whatever the page's class.
///
/// Handles keep `data offset / 16` in 32 bits, so the whole data area (both tiers) is limited to 64 GiB.
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
    /// The size of a span-tier page: a power of two, at least `pageSize`, at most 1 GiB. Default `8 × pageSize`.
    public var spanPageSize: Int
    /// The share of the data area given to the span tier (0…1), rounded down to whole span pages. Default 0.25.
    /// When it comes to no span page (a small data area) the heap has no large classes.
    public var spanFraction: Double
    /// Large block sizes, ascending, multiples of 16, above every small class, at most `spanPageSize`, served from
    /// span pages; empty for no span tier. At most 255 classes in all. Default:
    /// `SharedHeapConfiguration.defaultLargeSizeClasses(pageSize:spanPageSize:)`.
    public var largeSizeClasses: [Int]

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
    internal func tiers(dataSize: Int) -> (smallPages: Int, spanPages: Int, classes: [Int], smallClasses: Int) {
        var spanPages = 0
        if !largeSizeClasses.isEmpty, spanPageSize > 0, spanFraction > 0, spanFraction <= 1 {
            spanPages = Int(Double(dataSize) * spanFraction) / spanPageSize
        }
        let smallPages = (dataSize - spanPages * spanPageSize) / max(1, pageSize)
        return (smallPages, spanPages, spanPages > 0 ? sizeClasses + largeSizeClasses : sizeClasses,
                sizeClasses.count)
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
    @usableFromInline var heldCapacity: Int
    @usableFromInline var maxSlots: Int
    @usableFromInline var spanMaxSlots: Int
    /// Data-area offset of the first span page (= bytes in small pages).
    @usableFromInline var spanDataOffset: Int
    /// Bytes of the data area used by pages of both tiers.
    @usableFromInline var dataBytes: Int
    /// Slot index of the first span page's slot 0.
    @usableFromInline var spanSlotBase: Int
    @usableFromInline var pageShift: Int
    @usableFromInline var spanPageShift: Int
    @usableFromInline var classTableOffset: Int
    @usableFromInline var participantsOffset: Int
    @usableFromInline var poolOffset: Int
    @usableFromInline var spanPoolOffset: Int
    @usableFromInline var pagesOffset: Int
    @usableFromInline var blockWordsOffset: Int
    @usableFromInline var linksOffset: Int
    @usableFromInline var heldOffset: Int
    @usableFromInline var totalBytes: Int
    /// Region offset of the data area (page 0).
    @usableFromInline var dataOffset: Int

    static let headerSize = 256
    @usableFromInline static let participantStride = 128
    /// Bytes per held-list entry: the handle's generation word and its offset word.
    @usableFromInline static let heldEntryStride = 16
    @usableFromInline static let pageStride = 64

    static func roundUp(_ value: Int, _ alignment: Int) -> Int { (value + alignment - 1) / alignment * alignment }

    /// Lays the heap out. Sizes are validated by the caller (page sizes powers of two, classes in range).
    init(pageSize: Int, smallPageCount: Int, spanPageSize: Int, spanPageCount: Int, classSizes: [Int],
         smallClassCount: Int, participantCapacity: Int, heldCapacity: Int, dataOffset: Int) {
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
        self.dataOffset = dataOffset
        maxSlots = pageSize / classSizes[0]
        spanMaxSlots = spanPageCount > 0 && classSizes.count > smallClassCount
            ? spanPageSize / classSizes[smallClassCount] : 0
        spanDataOffset = smallPageCount * pageSize
        dataBytes = spanDataOffset + spanPageCount * self.spanPageSize
        spanSlotBase = smallPageCount * maxSlots
        pageShift = pageSize.trailingZeroBitCount
        spanPageShift = spanPageCount > 0 ? spanPageSize.trailingZeroBitCount : 0
        let totalSlots = spanSlotBase + spanPageCount * spanMaxSlots
        classTableOffset = Self.headerSize
        participantsOffset = Self.roundUp(classTableOffset + 4 * classSizes.count, 64)
        poolOffset = Self.roundUp(participantsOffset + Self.participantStride * participantCapacity, 64)
        spanPoolOffset = Self.roundUp(
            poolOffset + UnsafeLockFreeIndexStack.requiredBytes(capacity: max(1, smallPageCount)), 64)
        pagesOffset = Self.roundUp(
            spanPoolOffset + (spanPageCount > 0 ? UnsafeLockFreeIndexStack.requiredBytes(capacity: spanPageCount) : 0),
            64)
        blockWordsOffset = Self.roundUp(pagesOffset + Self.pageStride * pageCount, 64)
        linksOffset = Self.roundUp(blockWordsOffset + 8 * totalSlots, 64)
        heldOffset = Self.roundUp(linksOffset + 4 * totalSlots, 64)
        totalBytes = Self.roundUp(heldOffset + Self.heldEntryStride * participantCapacity * heldCapacity, 64)
    }

    /// Metadata bytes a lazy heap commits at creation: everything before the block words (header, class table,
    /// participants, pools, page descriptors), in whole OS pages. The rest is committed as it is used: a page's
    /// block words and links when the page first leaves the pool, a participant slot's held list when it is first
    /// joined.
    var initialBytes: Int {
        min(Self.roundUp(blockWordsOffset, OSAllocator.pageSize), Self.roundUp(totalBytes, OSAllocator.pageSize))
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
    /// The index of the page's slot 0 among block words and links.
    @inlinable @inline(__always) func slotBase(_ page: Int) -> Int {
        page < smallPageCount ? page &* maxSlots : spanSlotBase &+ (page &- smallPageCount) &* spanMaxSlots
    }
    /// The page holding data offset `offset` and the offset within it; nil beyond the pages.
    @inlinable @inline(__always) func page(atDataOffset offset: Int) -> (page: Int, within: Int)? {
        if offset < spanDataOffset { return (offset &>> pageShift, offset & (pageSize &- 1)) }
        guard offset < dataBytes else { return nil }
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
/// (bits 16–31) | epoch (bits 32–47, bumped each time the page leaves the pool, never 0 once it has: a page whose
/// epoch is 0 never left the pool, and in a lazy heap its block words are not even backed).
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
        kind | (UInt64(sizeClass) << 8) | (UInt64(owner) << 16) | (UInt64(epoch & 0xFFFF) << 32)
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

/// A participant's page-in-hand word: what page it is moving between the pool and its ownership (bits 0–31), and
/// how (bits 62–63): 0 nothing; `claiming` (with no page yet: about to pop; with a page: popped, maybe claimed,
/// fields maybe not initialized); `releasing` (state maybe stored pooled, maybe pushed).
@usableFromInline
internal enum PageInHand {
    @usableFromInline static let claiming: UInt64 = 1 << 62
    @usableFromInline static let releasing: UInt64 = 2 << 62
    /// "Claiming, no page popped yet".
    @usableFromInline static let claimingNoPage: UInt64 = claiming | 0xFFFF_FFFF
    @inlinable static func page(_ word: UInt64) -> Int? {
        let page = word & 0xFFFF_FFFF
        return page == 0xFFFF_FFFF ? nil : Int(page)
    }
}

/// The page-allowance word's value for "no limit".
@usableFromInline let unlimitedPages: UInt32 = 0xFFFF_FFFF

/// "No slot" in links, local lists and remote stacks.
@usableFromInline let endOfSlots: UInt32 = 0xFFFF_FFFF
