import Atomics
import Divvy

/// The shared-memory heap's metadata layout, and its configuration.
///
/// Everything lives in the region's metadata area, at offsets relative to the start of that area; nothing is a
/// pointer. The data area holds only user bytes (so a mediated client can map it alone).
///
/// | part | at | size | contents |
/// |---|---|---|---|
/// | heap header | 0 | 256 | magic (stored last), version, page size, counts, the offsets below, checksum |
/// | class table | 256 | 4 × classes | block size of each size class (multiples of 16) |
/// | participants | `participantsOffset` | 64 × participants | state word, pending-operation word, name |
/// | page pool | `poolOffset` | `UnsafeLockFreeIndexStack.requiredBytes(pages)` | free page indices (tagged Treiber stack) |
/// | page descriptors | `pagesOffset` | 64 × pages | state word, remote-free head, local list, counters |
/// | block words | `blockWordsOffset` | 8 × pages × maxSlots | per block slot: generation, holders, state |
/// | links | `linksOffset` | 4 × pages × maxSlots | per block slot: next slot in the local list or remote stack |
/// | held lists | `heldOffset` | 8 × participants × heldCapacity | per participant: the handles it holds (0 = empty) |
///
/// Page descriptor (64 bytes): 0 state word (`PageWord`), 8 remote-free head (top slot, `endOfSlots` = empty),
/// 16 local head, 20 local free count, 24 carved slots, 28 live blocks (the last four owner-only), 32 slot
/// count, 40 recovery's *suspect* handle (see `SharedHeap.recover(participant:)`), 48 the chain `collect` is moving
/// (slot + 1, 0 = none; owner only), 52–63 reserved.
///
/// Participant entry (64 bytes): 0 state word (`ParticipantWord`: free / alive(pid) / dead), 8 pending handle (the
/// operation in flight, 0 = none), 16–47 name (UTF-8, zero padded), 48 page in hand (`PageInHand`), 56 page
/// allowance (`UInt32`, `unlimitedPages` = no limit; written by whoever manages quotas, e.g. a daemon), 60 owned
/// pages (`UInt32`, written only by the participant, or by its recoverer; read by anyone).
///
/// `maxSlots = pageSize / smallest class`: the block word and link of slot `s` of page `p` are at index
/// `p * maxSlots + s`, whatever the page's class.
public struct SharedHeapConfiguration: Hashable, Sendable {
    /// The size of a heap page in the data area: a power of two, 4 KiB…16 MiB. Default 64 KiB.
    public var pageSize: Int
    /// Block sizes, ascending, multiples of 16, at most `pageSize / 8`, at most 255 classes. Default:
    /// `SharedHeapConfiguration.defaultSizeClasses(pageSize:)`.
    public var sizeClasses: [Int]
    /// Participant slots (1…30: a participant is one bit of a block's 30-bit holder mask). Default 30.
    public var participantCapacity: Int
    /// Handles one participant may hold at once (its held list). Default 4096.
    public var heldCapacity: Int

    /// Creates a configuration; `sizeClasses: nil` means the default classes for `pageSize`.
    public init(pageSize: Int = 64 << 10, sizeClasses: [Int]? = nil, participantCapacity: Int = 30,
                heldCapacity: Int = 4096) {
        self.pageSize = pageSize
        self.sizeClasses = sizeClasses ?? Self.defaultSizeClasses(pageSize: pageSize)
        self.participantCapacity = participantCapacity
        self.heldCapacity = heldCapacity
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

    /// The participant limit imposed by the 30-bit holder mask in a block word.
    public static let maximumParticipants = 30
}

/// Offsets and counts derived from a configuration and a region (all offsets relative to the metadata area).
@usableFromInline
internal struct SharedHeapLayout: Hashable, Sendable {
    @usableFromInline var pageSize: Int
    @usableFromInline var pageCount: Int
    @usableFromInline var classSizes: [Int]
    @usableFromInline var participantCapacity: Int
    @usableFromInline var heldCapacity: Int
    @usableFromInline var maxSlots: Int
    @usableFromInline var classTableOffset: Int
    @usableFromInline var participantsOffset: Int
    @usableFromInline var poolOffset: Int
    @usableFromInline var pagesOffset: Int
    @usableFromInline var blockWordsOffset: Int
    @usableFromInline var linksOffset: Int
    @usableFromInline var heldOffset: Int
    @usableFromInline var totalBytes: Int
    /// Region offset of the data area (page 0).
    @usableFromInline var dataOffset: Int

    static let headerSize = 256
    @usableFromInline static let participantStride = 64
    @usableFromInline static let pageStride = 64

    static func roundUp(_ value: Int, _ alignment: Int) -> Int { (value + alignment - 1) / alignment * alignment }

    /// Lays the heap out; `pageCount` pages of `pageSize`. Sizes are validated by the caller.
    init(pageSize: Int, pageCount: Int, classSizes: [Int], participantCapacity: Int, heldCapacity: Int,
         dataOffset: Int) {
        self.pageSize = pageSize
        self.pageCount = pageCount
        self.classSizes = classSizes
        self.participantCapacity = participantCapacity
        self.heldCapacity = heldCapacity
        self.dataOffset = dataOffset
        maxSlots = pageSize / classSizes[0]
        classTableOffset = Self.headerSize
        participantsOffset = Self.roundUp(classTableOffset + 4 * classSizes.count, 64)
        poolOffset = Self.roundUp(participantsOffset + Self.participantStride * participantCapacity, 64)
        pagesOffset = Self.roundUp(poolOffset + UnsafeLockFreeIndexStack.requiredBytes(capacity: max(1, pageCount)), 64)
        blockWordsOffset = Self.roundUp(pagesOffset + Self.pageStride * pageCount, 64)
        linksOffset = Self.roundUp(blockWordsOffset + 8 * pageCount * maxSlots, 64)
        heldOffset = Self.roundUp(linksOffset + 4 * pageCount * maxSlots, 64)
        totalBytes = Self.roundUp(heldOffset + 8 * participantCapacity * heldCapacity, 64)
    }
}

// MARK: Word formats

/// Block word (one `UInt64` per block slot): generation (bits 0–31) | holder mask (bits 32–61, bit `32 + p` for
/// participant `p`) | state (bits 62–63: 0 free, 1 allocated, 2 freeing = last holder let go, on its way to
/// the page's remote-free stack; a *freeing* word's mask holds the bit of the participant that released it, so
/// recovery can tell a dead participant's release from a survivor's).
@usableFromInline
internal enum BlockWord {
    @usableFromInline static let free: UInt64 = 0
    @usableFromInline static let allocated: UInt64 = 1
    @usableFromInline static let freeing: UInt64 = 2

    @inlinable static func generation(_ word: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: word) }
    @inlinable static func holders(_ word: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: word >> 32) & 0x3FFF_FFFF }
    @inlinable static func state(_ word: UInt64) -> UInt64 { word >> 62 }
    @inlinable static func make(generation: UInt32, holders: UInt32, state: UInt64) -> UInt64 {
        UInt64(generation) | (UInt64(holders & 0x3FFF_FFFF) << 32) | (state << 62)
    }
}

/// Page state word: kind (bits 0–7: 0 in the pool, 1 owned, 2 orphan) | class (bits 8–15) | owner participant
/// (bits 16–23) | epoch (bits 32–47, bumped each time the page leaves the pool; the high half of its blocks'
/// generations).
@usableFromInline
internal enum PageWord {
    @usableFromInline static let pooled: UInt64 = 0
    @usableFromInline static let owned: UInt64 = 1
    @usableFromInline static let orphan: UInt64 = 2

    @inlinable static func kind(_ word: UInt64) -> UInt64 { word & 0xFF }
    @inlinable static func sizeClass(_ word: UInt64) -> Int { Int((word >> 8) & 0xFF) }
    @inlinable static func owner(_ word: UInt64) -> Int { Int((word >> 16) & 0xFF) }
    @inlinable static func epoch(_ word: UInt64) -> UInt32 { UInt32((word >> 32) & 0xFFFF) }
    @inlinable static func make(kind: UInt64, sizeClass: Int, owner: Int, epoch: UInt32) -> UInt64 {
        kind | (UInt64(sizeClass) << 8) | (UInt64(owner) << 16) | (UInt64(epoch & 0xFFFF) << 32)
    }
}

/// Participant state word: state (bits 62–63: 0 free slot, 1 alive, 2 dead — set by `SharedHeap.recover(participant:)` while it works) | pid
/// (bits 0–31).
@usableFromInline
internal enum ParticipantWord {
    @usableFromInline static let free: UInt64 = 0
    @usableFromInline static let alive: UInt64 = 1
    @usableFromInline static let dead: UInt64 = 2
    @inlinable static func state(_ word: UInt64) -> UInt64 { word >> 62 }
    @inlinable static func pid(_ word: UInt64) -> Int32 { Int32(truncatingIfNeeded: word) }
    @inlinable static func make(state: UInt64, pid: Int32) -> UInt64 { (state << 62) | UInt64(UInt32(bitPattern: pid)) }
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
