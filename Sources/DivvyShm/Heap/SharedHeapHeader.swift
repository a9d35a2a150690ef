/// The heap header: the first `SharedHeapLayout.headerSize` (256) bytes of the region's metadata area, followed by
/// the class table. The one table of its fields; `SharedHeap.writeHeader`, `readHeader` and `checksum` address
/// them only through these names. Every field is a little-endian fixed-width integer at a fixed offset (the same
/// bytes for layout versions 10 and 11; versions 8 and 9 had no extent fields). Versions 6 and 7 had the same
/// header but a Treiber-stack page pool at
/// `poolOffset` and `spanPoolOffset` (144) instead of the bump words and bitmaps:
///
/// | offset | size | field | meaning |
/// |---|---|---|---|
/// | 0 | 8 | magic | `"DVHEAP01"` (`SharedHeap.magic`); 0 while `create` formats; stored last (release) |
/// | 8 | 4 | layoutVersion | 10, or 11 for a lazy heap (`SharedHeap.layoutVersion`, `lazyLayoutVersion`) |
/// | 12 | 4 | pageSize | small-page size |
/// | 16 | 4 | smallPageCount | small pages |
/// | 20 | 4 | classCount | entries in the class table (small then large classes) |
/// | 24 | 4 | participantCapacity | participant slots |
/// | 28 | 4 | heldCapacity | held-list entries per participant |
/// | 32 | 4 | maxSlots | slots of a small page for the smallest class |
/// | 36 | 4 | firstHeldCapacity | held-list entries of participant slot 0 (`SharedHeapConfiguration.firstSlotHeldCapacity`) |
/// | 40 | 8 | classTableOffset | metadata offset of the class table (= 256) |
/// | 48 | 8 | participantsOffset | participant records |
/// | 56 | 8 | poolOffset | the pool words (bump index and cursor) of both tiers |
/// | 64 | 8 | pagesOffset | page descriptors |
/// | 72 | 8 | blockWordsOffset | block words |
/// | 80 | 8 | linksOffset | free-list links |
/// | 88 | 8 | heldOffset | held lists |
/// | 96 | 8 | totalBytes | metadata bytes in all |
/// | 104 | 8 | dataOffset | the region's data-area offset the heap was formatted for |
/// | 112 | 8 | extentUnits | units (`pageSize` bytes) of the extent area at the end of the data area (since layout version 10) |
/// | 120 | 8 | checksum | FNV-1a 64 of `checksummedRanges` and the class table |
/// | 128 | 4 | spanPageSize | span page size (0 without a span tier) |
/// | 132 | 4 | spanPageCount | span pages |
/// | 136 | 4 | smallClassCount | the small classes (the first entries of the class table) |
/// | 140 | 4 | spanMaxSlots | slots of a span page for the smallest large class |
/// | 144 | 8 | bitmapsOffset | the free-page bitmaps (small tier, then span tier; since layout version 8) |
/// | 152 | 4 | heapID | random, never 0, chosen at format: every handle carries it (`SharedHeapHandle.heapID`), so a handle from another heap — one formatted before a restart, or another daemon's — is refused as `.foreignHeap` (since layout version 6) |
/// | 156 | 4 | — | zero (versions 4 and 5 kept a committed-held-lists mask here; 6 and 7 keep a flag per participant record) |
/// | 160 | 8 | recoveryLock | the recovering process's pid and start time (`ParticipantWord` layout), 0 = none (atomic; not checksummed) |
/// | 168 | 8 | extentLock | the extent area's lock: the allocating participant's index + 1, 0 = free (atomic; not checksummed; see `SharedHeap.allocateExtent`) |
/// | 176 | 8 | extentSerial | the extent area's allocation serial: the generation of its latest allocation (atomic, written under the lock) |
/// | 184 | 8 | extentFrontier | units below it have committed metadata (lazy heaps; atomic, only grows, written under the lock) |
/// | 192 | 64 | — | zero |
/// | 256 | 4 × classCount | classTable | block sizes, ascending |
///
/// The offsets after 8 are re-derived from the fixed fields by `readHeader` and must match.
///
/// Two fields are atomics, not codec fields: the magic (stored last with release ordering by `create`, loaded
/// with acquire ordering by `attach`), `recoveryLock` and the extent words at 168–191. They are in native byte
/// order, which is little-endian on every platform Divvy supports (x86_64, arm64).
internal enum SharedHeapHeaderField {
    static let magic = 0
    static let layoutVersion = 8
    static let pageSize = 12
    static let smallPageCount = 16
    static let classCount = 20
    static let participantCapacity = 24
    static let heldCapacity = 28
    static let maxSlots = 32
    static let firstHeldCapacity = 36
    static let classTableOffset = 40
    static let participantsOffset = 48
    static let poolOffset = 56
    static let pagesOffset = 64
    static let blockWordsOffset = 72
    static let linksOffset = 80
    static let heldOffset = 88
    static let totalBytes = 96
    static let dataOffset = 104
    static let extentUnits = 112
    static let checksum = 120
    static let spanPageSize = 128
    static let spanPageCount = 132
    static let smallClassCount = 136
    static let spanMaxSlots = 140
    static let bitmapsOffset = 144
    static let heapID = 152
    static let recoveryLock = 160
    static let extentLock = 168
    static let extentSerial = 176
    static let extentFrontier = 184
    static let classTable = 256

    /// The header bytes the checksum covers (besides the class table): everything from the version to the
    /// checksum, the span-tier fields and the heap id. Not the magic (stored after the checksum), not the checksum, not the
    /// atomically updated recovery lock.
    static let checksummedRanges: [Range<Int>] = [layoutVersion..<checksum, spanPageSize..<(heapID + 4)]

    /// Stores `value` little-endian at `offset`.
    @inline(__always)
    static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in meta: UnsafeMutableRawPointer) {
        meta.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// Loads the little-endian `T` at `offset`.
    @inline(__always)
    static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in meta: UnsafeRawPointer) -> T {
        T(littleEndian: meta.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
