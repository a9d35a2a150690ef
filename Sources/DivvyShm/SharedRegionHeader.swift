import Atomics
import Divvy

/// Where a region's parts lie: every number is a byte offset or length within the region, never an address.
///
/// ```
/// 0            headerSize       metadataOffset + metadataSize      dataOffset                    totalSize
/// | header     | metadata area ...................| (padding)       | data area ...................|
/// ```
///
/// The metadata area starts right after the header (`metadataOffset == headerSize`). The data area starts at a
/// multiple of `pageSize` and runs to the end of the region, so it can be mapped on its own (a mediated client
/// maps the data area alone and never sees the metadata).
public struct SharedRegionGeometry: Hashable, Sendable, CustomStringConvertible {
    /// The size of the whole region (and of the shared-memory object) in bytes; a multiple of `pageSize`.
    public let totalSize: Int
    /// The region's page size: the base page size, or the huge page size the region was created for.
    public let pageSize: Int
    /// The bytes reserved for the header at offset 0 (`SharedRegionHeader.reservedSize`).
    public let headerSize: Int
    /// Where the metadata area starts (`== headerSize`).
    public let metadataOffset: Int
    /// The usable size of the metadata area, as requested at creation.
    public let metadataSize: Int
    /// Where the data area starts: a multiple of `pageSize`, at or after the end of the metadata area.
    public let dataOffset: Int
    /// The size of the data area, a multiple of `pageSize`; it ends at `totalSize`.
    public let dataSize: Int

    /// Creates a geometry from its numbers, unchecked (`validated(fileSize:)` checks one read from a header).
    public init(
        totalSize: Int, pageSize: Int, headerSize: Int, metadataOffset: Int, metadataSize: Int, dataOffset: Int,
        dataSize: Int
    ) {
        self.totalSize = totalSize
        self.pageSize = pageSize
        self.headerSize = headerSize
        self.metadataOffset = metadataOffset
        self.metadataSize = metadataSize
        self.dataOffset = dataOffset
        self.dataSize = dataSize
    }

    /// Lays out a region: header, `metadataSize` bytes of metadata, then `dataSize` bytes of data rounded up to
    /// `pageSize`. Returns nil when the sizes overflow.
    internal static func layout(metadataSize: Int, dataSize: Int, pageSize: Int) -> SharedRegionGeometry? {
        let header = SharedRegionHeader.reservedSize
        guard let metadataEnd = checkedAdd(header, metadataSize),
            let dataOffset = roundUp(metadataEnd, to: pageSize),
            let roundedData = roundUp(dataSize, to: pageSize),
            let total = checkedAdd(dataOffset, roundedData),
            total <= maximumRegionSize
        else { return nil }
        return SharedRegionGeometry(
            totalSize: total, pageSize: pageSize, headerSize: header, metadataOffset: header,
            metadataSize: metadataSize, dataOffset: dataOffset, dataSize: roundedData)
    }

    /// The largest region this library creates or opens: 2^48 bytes (the x86_64 user address space).
    public static let maximumRegionSize = 1 << 48

    /// The metadata area's offsets, `metadataOffset ..< metadataOffset + metadataSize`.
    public var metadataRange: Range<Int> { metadataOffset..<(metadataOffset + metadataSize) }
    /// The data area's offsets, `dataOffset ..< totalSize`.
    public var dataRange: Range<Int> { dataOffset..<(dataOffset + dataSize) }

    /// `"total 64 GiB, page 4 KiB, header 4 KiB, metadata 4096+1 MiB, data 1052672+63.9 GiB"`-like summary.
    public var description: String {
        "total \(formatByteCount(totalSize)), page \(formatByteCount(pageSize)), header \(headerSize), "
            + "metadata \(metadataOffset)+\(metadataSize), data \(dataOffset)+\(dataSize)"
    }

    /// Nil when consistent with itself and with an object of `fileSize` bytes; else what is wrong, in words.
    internal func inconsistency(fileSize: Int) -> String? {
        let base = OSAllocator.pageSize
        if headerSize != SharedRegionHeader.reservedSize {
            return "header size \(headerSize) is not \(SharedRegionHeader.reservedSize)"
        }
        if pageSize < base || pageSize > 1 << 30 || pageSize & (pageSize - 1) != 0 {
            return "page size \(pageSize) is not a power of two between \(base) and 1 GiB"
        }
        if metadataOffset != headerSize { return "metadata offset \(metadataOffset) is not \(headerSize)" }
        guard metadataSize >= 0, let metadataEnd = checkedAdd(metadataOffset, metadataSize), metadataEnd <= dataOffset
        else { return "metadata area \(metadataOffset)+\(metadataSize) overlaps the data area at \(dataOffset)" }
        if dataOffset % pageSize != 0 || dataSize % pageSize != 0 || dataSize < 0 {
            return "data area \(dataOffset)+\(dataSize) is not aligned to the page size \(pageSize)"
        }
        guard let end = checkedAdd(dataOffset, dataSize), end == totalSize else {
            return "data area \(dataOffset)+\(dataSize) does not end at the total size \(totalSize)"
        }
        if totalSize > Self.maximumRegionSize { return "total size \(totalSize) is larger than 2^48" }
        if totalSize != fileSize {
            return "the header says \(totalSize) bytes (\(formatByteCount(totalSize))) but the object has \(fileSize)"
        }
        return nil
    }
}

/// The versioned header at offset 0 of every region, as read by `SharedRegion.open`.
///
/// Position independent: numbers only, no pointers. Little-endian fixed-width fields at fixed offsets (the Swift
/// struct is a decoded copy; the bytes in shared memory are the format):
///
/// | offset | size | field | meaning |
/// |---|---|---|---|
/// | 0 | 8 | magic | `"DIVVYSHM"` in ASCII (`0x4D48_5359_5656_4944` little-endian) |
/// | 8 | 4 | layoutVersion | 1 |
/// | 12 | 4 | headerSize | 4096: bytes reserved at offset 0 for the header |
/// | 16 | 8 | totalSize | size of the region and of the object |
/// | 24 | 8 | pageSize | page size the region was laid out for |
/// | 32 | 8 | metadataOffset | start of the metadata area (`== headerSize`) |
/// | 40 | 8 | metadataSize | usable bytes of the metadata area |
/// | 48 | 8 | dataOffset | start of the data area (multiple of `pageSize`) |
/// | 56 | 8 | dataSize | size of the data area (ends at `totalSize`) |
/// | 64 | 4 | flags | bits 0–3 page kind (0 base, 1 transparent, 2 2 MiB, 3 1 GiB); 4 lazy; 5 anonymous; 6 data in a separate object |
/// | 68 | 4 | creatorPID | process id of the creator |
/// | 72 | 8 | creationTime | CLOCK_REALTIME at creation, nanoseconds since 1970 |
/// | 80 | 8 | nonce | random, tells apart two regions created under one name |
/// | 88 | 8 | checksum | FNV-1a 64 of bytes 0 ..< 88 |
/// | 96 | 4 | state | 0 while the creator initializes; 1 (ready) stored last, with release ordering |
/// | 100 | 3996 | reserved | zero; later layout versions may use it |
///
/// An opener checks, in order: magic (all-zero means "still being created"), version, state, checksum, geometry
/// (against the object's size). Each failure is its own `SharedRegionError.Code`.
public struct SharedRegionHeader: Hashable, Sendable {
    /// `"DIVVYSHM"` read as a little-endian 64-bit integer.
    public static let magic: UInt64 = 0x4D48_5359_5656_4944
    /// The layout version this library writes and reads.
    public static let currentLayoutVersion: UInt32 = 1
    /// Bytes reserved for the header at offset 0.
    public static let reservedSize = 4096

    /// The layout version the region was created with.
    public let layoutVersion: UInt32
    /// Where the region's parts lie.
    public let geometry: SharedRegionGeometry
    /// The pages the creator backed the region with.
    public let pageKind: OSAllocator.PageKind
    /// True when the data area was reserved lazily (not committed) at creation.
    public let isLazy: Bool
    /// True for an anonymous (memfd) region.
    public let isAnonymous: Bool
    /// Whether the data area lives in a second object (an anonymous memfd), mapped over the region's data range:
    /// the region's own object then holds only the header and metadata (see `Configuration.separateDataObject`).
    public let hasSeparateData: Bool
    /// The creator's process id.
    public let creatorPID: Int32
    /// When the region was created: CLOCK_REALTIME in nanoseconds since 1970.
    public let creationTime: UInt64
    /// A random number chosen at creation.
    public let nonce: UInt64

    /// Creates a header value (the region writes it; tests build corrupt ones).
    public init(
        layoutVersion: UInt32 = SharedRegionHeader.currentLayoutVersion, geometry: SharedRegionGeometry,
        pageKind: OSAllocator.PageKind, isLazy: Bool, isAnonymous: Bool, hasSeparateData: Bool = false,
        creatorPID: Int32, creationTime: UInt64, nonce: UInt64
    ) {
        self.layoutVersion = layoutVersion
        self.geometry = geometry
        self.pageKind = pageKind
        self.isLazy = isLazy
        self.isAnonymous = isAnonymous
        self.hasSeparateData = hasSeparateData
        self.creatorPID = creatorPID
        self.creationTime = creationTime
        self.nonce = nonce
    }
}

// MARK: - Encoding

/// Byte offsets of the header fields (see `SharedRegionHeader`).
internal enum HeaderField {
    static let magic = 0
    static let layoutVersion = 8
    static let headerSize = 12
    static let totalSize = 16
    static let pageSize = 24
    static let metadataOffset = 32
    static let metadataSize = 40
    static let dataOffset = 48
    static let dataSize = 56
    static let flags = 64
    static let creatorPID = 68
    static let creationTime = 72
    static let nonce = 80
    static let checksum = 88
    static let state = 96

    static let stateInitializing: UInt32 = 0
    static let stateReady: UInt32 = 1

    static let flagKindMask: UInt32 = 0xF
    static let flagLazy: UInt32 = 1 << 4
    static let flagAnonymous: UInt32 = 1 << 5
    static let flagSeparateData: UInt32 = 1 << 6
    static let knownFlags: UInt32 = flagKindMask | flagLazy | flagAnonymous | flagSeparateData
}

extension SharedRegionHeader {
    /// The `flags` word.
    internal var flags: UInt32 {
        var flags = Self.kindCode(pageKind)
        if isLazy { flags |= HeaderField.flagLazy }
        if isAnonymous { flags |= HeaderField.flagAnonymous }
        if hasSeparateData { flags |= HeaderField.flagSeparateData }
        return flags
    }

    internal static func kindCode(_ kind: OSAllocator.PageKind) -> UInt32 {
        switch kind {
        case .base: 0
        case .transparent: 1
        case .explicit2MiB: 2
        case .explicit1GiB: 3
        }
    }

    internal static func kind(code: UInt32) -> OSAllocator.PageKind? {
        switch code {
        case 0: .base
        case 1: .transparent
        case 2: .explicit2MiB
        case 3: .explicit1GiB
        default: nil
        }
    }

    /// Writes every field except `state` at `base` (which must hold `reservedSize` writable bytes), then the
    /// checksum. The state word is left as it is: `publishReady(at:)` sets it.
    ///
    /// Written with plain stores: no other process may rely on these bytes until it observes the ready state, which
    /// is stored with release ordering after them.
    internal func write(to base: UnsafeMutableRawPointer) {
        func store<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        store(Self.magic, HeaderField.magic)
        store(layoutVersion, HeaderField.layoutVersion)
        store(UInt32(truncatingIfNeeded: geometry.headerSize), HeaderField.headerSize)
        store(UInt64(truncatingIfNeeded: geometry.totalSize), HeaderField.totalSize)
        store(UInt64(truncatingIfNeeded: geometry.pageSize), HeaderField.pageSize)
        store(UInt64(truncatingIfNeeded: geometry.metadataOffset), HeaderField.metadataOffset)
        store(UInt64(truncatingIfNeeded: geometry.metadataSize), HeaderField.metadataSize)
        store(UInt64(truncatingIfNeeded: geometry.dataOffset), HeaderField.dataOffset)
        store(UInt64(truncatingIfNeeded: geometry.dataSize), HeaderField.dataSize)
        store(flags, HeaderField.flags)
        store(creatorPID, HeaderField.creatorPID)
        store(creationTime, HeaderField.creationTime)
        store(nonce, HeaderField.nonce)
        store(Self.checksum(of: UnsafeRawPointer(base)), HeaderField.checksum)
    }

    /// FNV-1a (64-bit) of the header bytes before the checksum field.
    internal static func checksum(of base: UnsafeRawPointer) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<HeaderField.checksum {
            hash ^= UInt64(base.load(fromByteOffset: i, as: UInt8.self))
            hash &*= 0x0000_0100_0000_01B3  // Safe: FNV multiplies modulo 2^64 by design.
        }
        return hash
    }

    /// The state word, as a shared atomic. `base` is 8-aligned (a mapping start), so offset 96 is 4-aligned.
    internal static func stateWord(at base: UnsafeMutableRawPointer) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (base + HeaderField.state).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    /// Marks the region ready.
    ///
    /// Ordering: release, so that an opener whose acquiring load sees `ready` also sees every header field and
    /// everything the creator initialized in the region before this call.
    internal static func publishReady(at base: UnsafeMutableRawPointer) {
        stateWord(at: base).store(HeaderField.stateReady, ordering: .releasing)
    }

    /// Reads and checks the header of a mapping of `fileSize` bytes, in the order documented on the type.
    ///
    /// - Parameters:
    ///   - base: the start of a mapping of at least `reservedSize` bytes of the object.
    ///   - fileSize: the object's size from fstat.
    ///   - what: the region's description for messages (`"region '/divvy-x'"`).
    /// - Throws: `.notInitialized`, `.badMagic`, `.unsupportedVersion`, `.corruptHeader`, `.geometryMismatch`.
    internal static func read(
        at base: UnsafeMutableRawPointer, fileSize: Int, describing what: String
    ) throws(SharedRegionError) -> SharedRegionHeader {
        func load<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
            T(littleEndian: base.load(fromByteOffset: offset, as: T.self))
        }
        // Ordering: acquire pairs with `publishReady`'s release: once ready is seen, all fields are complete.
        let state = stateWord(at: base).load(ordering: .acquiring)
        let magic = load(HeaderField.magic, as: UInt64.self)
        if magic == 0 && state == HeaderField.stateInitializing {
            throw SharedRegionError(
                .notInitialized,
                "\(what) has no header yet: its creator is still initializing it, or died before finishing; "
                    + "try again shortly, or remove it and create it again")
        }
        guard magic == Self.magic else {
            throw SharedRegionError(
                .badMagic,
                "\(what) is not a Divvy region (magic 0x\(String(magic, radix: 16)), expected "
                    + "0x\(String(Self.magic, radix: 16))); check the name, or remove the object if it is stale")
        }
        let version = load(HeaderField.layoutVersion, as: UInt32.self)
        guard version == currentLayoutVersion else {
            throw SharedRegionError(
                .unsupportedVersion,
                "\(what) has layout version \(version) but this library reads version \(currentLayoutVersion); "
                    + "open it with a matching Divvy, or remove it and create it again")
        }
        guard state == HeaderField.stateReady else {
            let pid = load(HeaderField.creatorPID, as: Int32.self)
            throw SharedRegionError(
                .notInitialized,
                "\(what) is still being initialized (state \(state)) by process \(pid), or that process died "
                    + "before finishing; try again shortly, or remove it and create it again")
        }
        let stored = load(HeaderField.checksum, as: UInt64.self)
        let computed = checksum(of: UnsafeRawPointer(base))
        guard stored == computed else {
            throw SharedRegionError(
                .corruptHeader,
                "\(what) has a corrupt header (checksum 0x\(String(stored, radix: 16)), contents hash to "
                    + "0x\(String(computed, radix: 16))); the region was overwritten: remove it and create it again")
        }
        let flags = load(HeaderField.flags, as: UInt32.self)
        guard flags & ~HeaderField.knownFlags == 0, let kind = kind(code: flags & HeaderField.flagKindMask) else {
            throw SharedRegionError(
                .corruptHeader,
                "\(what) has unknown header flags 0x\(String(flags, radix: 16)); it was written by another "
                    + "version of Divvy: open it with that version, or remove it and create it again")
        }
        func int(_ offset: Int) -> Int { Int(truncatingIfNeeded: load(offset, as: UInt64.self)) }
        let geometry = SharedRegionGeometry(
            totalSize: int(HeaderField.totalSize), pageSize: int(HeaderField.pageSize),
            headerSize: Int(load(HeaderField.headerSize, as: UInt32.self)),
            metadataOffset: int(HeaderField.metadataOffset), metadataSize: int(HeaderField.metadataSize),
            dataOffset: int(HeaderField.dataOffset), dataSize: int(HeaderField.dataSize))
        if let problem = geometry.inconsistency(fileSize: fileSize) {
            throw SharedRegionError(
                .geometryMismatch,
                "\(what) has a geometry that does not fit: \(problem); the object was resized or damaged: "
                    + "remove it and create it again")
        }
        if kind != .base && kind != .transparent && kind.pageSize != geometry.pageSize {
            throw SharedRegionError(
                .geometryMismatch,
                "\(what) says it uses \(kind) pages but its page size is \(geometry.pageSize); "
                    + "remove it and create it again")
        }
        return SharedRegionHeader(
            layoutVersion: version, geometry: geometry, pageKind: kind,
            isLazy: flags & HeaderField.flagLazy != 0, isAnonymous: flags & HeaderField.flagAnonymous != 0,
            hasSeparateData: flags & HeaderField.flagSeparateData != 0,
            creatorPID: load(HeaderField.creatorPID, as: Int32.self),
            creationTime: load(HeaderField.creationTime, as: UInt64.self),
            nonce: load(HeaderField.nonce, as: UInt64.self))
    }
}

// MARK: - Arithmetic

/// `a + b`, or nil on overflow.
@inline(__always)
internal func checkedAdd(_ a: Int, _ b: Int) -> Int? {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? nil : sum
}

/// `value` rounded up to a multiple of the power of two `alignment`, or nil on overflow.
@inline(__always)
internal func roundUp(_ value: Int, to alignment: Int) -> Int? {
    guard let sum = checkedAdd(value, alignment - 1) else { return nil }
    return sum & ~(alignment - 1)
}
