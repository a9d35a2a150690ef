import Atomics
import Divvy
import SystemPackage

// Resolving handles to pages, slots and pointers (and back), and the errors for bad ones.
extension SharedHeap {
    // MARK: Handles

    /// A resolved handle: page, slot and the generation it carries.
    @usableFromInline
    internal struct Location {
        @usableFromInline var page: Int
        @usableFromInline var slot: Int
        @usableFromInline var generation: UInt64
        @usableFromInline var blockSize: Int
        @inlinable init(page: Int, slot: Int, generation: UInt64, blockSize: Int) {
            self.page = page
            self.slot = slot
            self.generation = generation
            self.blockSize = blockSize
        }
    }

    /// Checks a handle's heap id and offset (range, a page that has been used, alignment to its page's class)
    /// without looking at the block word.
    @inlinable @inline(__always)
    internal func locate(_ handle: SharedHeapHandle) throws(SharedHeapError) -> Location {
        // The zero handle first (it is no heap's), then the heap id, before anything is read.
        guard !handle.isZero else { throw outOfRangeError(handle) }
        guard handle.heapID == heapID else { throw foreignHeapError(handle) }
        let offset = handle.dataOffset
        guard let (page, within) = layout.page(atDataOffset: offset) else { throw outOfRangeError(handle) }
        if page >= layout.pageCount { return try locateExtent(handle, unit: page &- layout.pageCount, within: within) }
        // A lazy heap has not committed the descriptors of pages that never left the pool: don't read them.
        guard !lazyCommit || descriptorIsCommitted(page) else { throw staleEpochError(handle, page: page, pageWord: 0) }
        let pageWord = pageState(page).load(ordering: .acquiring)
        // Epoch 0 is a page that never left the pool: no handle names it, and in a lazy heap its block words are a
        // hole that must not be read. (A handle from an earlier use of a page needs no check here: generations are
        // unique within a page, so its block word — under whatever class the page serves now — never matches it.)
        guard PageWord.epoch(pageWord) != 0, handle.generation != 0 else {
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
            // Not a block start under the page's class now. A generation the page made before it was claimed for
            // this class is a handle from an earlier use of the page: stale, like any handle whose block was freed.
            // Ordering: relaxed; this read only chooses the error.
            if handle.generation <= epochStart(page).load(ordering: .relaxed) {
                throw staleEpochError(handle, page: page, pageWord: pageWord)
            }
            throw misalignedError(handle, page: page, blockSize: blockSize)
        }
        return Location(page: page, slot: slot, generation: handle.generation, blockSize: blockSize)
    }

    @usableFromInline @inline(never)
    internal func foreignHeapError(_ handle: SharedHeapHandle) -> SharedHeapError {
        SharedHeapError(
            .foreignHeap, "handle \(handle) belongs to heap \(String(handle.heapID, radix: 16)), not to this heap "
                + "(\(String(heapID, radix: 16))): it was made by another heap, e.g. before the daemon restarted and "
                + "formatted a new one")
    }

    // The errors of `locate`, out of line: bad input is not a hot path, and string building would keep `locate`
    // from being inlined.
    @usableFromInline @inline(never)
    internal func outOfRangeError(_ handle: SharedHeapHandle) -> SharedHeapError {
        SharedHeapError(
            .outOfRange, "handle \(handle) points at data offset \(handle.dataOffset), outside the heap's "
                + "\(layout.dataBytes) bytes of pages and extents")
    }

    @usableFromInline @inline(never)
    internal func staleEpochError(_ handle: SharedHeapHandle, page: Int, pageWord: UInt64) -> SharedHeapError {
        SharedHeapError(
            .staleHandle, "handle \(handle) is stale: it names no block of page \(page) as the page is used now "
                + "(the page was emptied and carved again since, or never used)")
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
        // A frozen block (a recoverer recounting its holders) is allocated for readers.
        guard BlockWord.generation(word) == location.generation, BlockWord.state(word) & 1 == 1 else {
            throw staleError(handle, word)
        }
        return data + handle.dataOffset
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
        // (A page never handed out, whose block words may not even be backed, fails `locate`'s epoch check.)
        // (The largest generation: above any page's epoch start, so a pointer inside a block is misaligned, not stale.)
        let probe = SharedHeapHandle(heapID: heapID, dataOffset: offset, generation: BlockWord.maximumGeneration)
        let location: Location
        do { location = try locate(probe) } catch {
            if error.code == .staleHandle {
                throw SharedHeapError(.staleHandle, "no allocated block at data offset \(offset)")
            }
            throw error
        }
        let word = blockWord(location.page, location.slot).load(ordering: .acquiring)
        guard BlockWord.state(word) & 1 == 1 else {
            throw SharedHeapError(.staleHandle, "no allocated block at data offset \(offset)")
        }
        return SharedHeapHandle(heapID: heapID, dataOffset: offset, generation: BlockWord.generation(word))
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
}

/// A 128-bit reference to a block of a `SharedHeap`, valid in every process that maps the heap's region.
///
/// | word | bits | field |
/// |---|---|---|
/// | `low` | 0–47 | the block's offset from the start of the data area, in 16-byte units (up to 4 PiB) |
/// | `low` | 48–63 | generation, bits 0–15 |
/// | `high` | 0–31 | generation, bits 16–47 |
/// | `high` | 32–63 | heap id (`SharedHeap.heapID`: random per heap, never 0) |
///
/// The generation tells one allocation of a block from every other one at the same place, so a handle to a block
/// that has been freed is refused however often the block was reused since. The heap id tells this heap from any
/// other (one formatted before a daemon restart, another daemon's): a handle from another heap is refused as
/// `.foreignHeap` rather than read against this heap's blocks. The zero handle is never valid.
public struct SharedHeapHandle: Hashable, Sendable, CustomStringConvertible {
    /// Offset (bits 0–47) and the generation's low 16 bits (48–63): pass both words to other processes as they are.
    public let low: UInt64
    /// The generation's high 32 bits (0–31) and the heap id (32–63).
    public let high: UInt64

    /// Wraps the two words received from elsewhere (they are checked when used).
    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The handle of the block at `dataOffset` (a multiple of 16 below 4 PiB) with `generation` (below 2^48) in the
    /// heap `heapID`.
    public init(heapID: UInt32, dataOffset: Int, generation: UInt64) {
        // Invariant: callers pass an offset inside a heap's data area (< 2^52 bytes) and a 48-bit generation; the
        // masks only keep a bad value from spilling into the neighbouring field.
        low = (UInt64(truncatingIfNeeded: dataOffset) >> 4) & Self.offsetMask | (generation & 0xFFFF) << 48
        high = (generation >> 16) & 0xFFFF_FFFF | UInt64(heapID) << 32
    }

    /// Bits 0–47 of `low`.
    @usableFromInline static let offsetMask: UInt64 = (1 << 48) - 1

    /// The id of the heap that made the handle.
    @inlinable public var heapID: UInt32 { UInt32(truncatingIfNeeded: high >> 32) }
    /// The block's offset from the start of the data area.
    @inlinable public var dataOffset: Int { Int(truncatingIfNeeded: (low & Self.offsetMask) << 4) }
    /// The block's generation when the handle was made (48 bits).
    @inlinable public var generation: UInt64 { low >> 48 | (high & 0xFFFF_FFFF) << 16 }
    /// The offset in 16-byte units.
    @inlinable internal var offsetUnits: UInt64 { low & Self.offsetMask }
    /// Is this the zero handle (never valid)?
    @inlinable public var isZero: Bool { low == 0 && high == 0 }

    /// `"0x<high><low>"` plus offset, generation and heap id.
    public var description: String {
        let hex = String(high, radix: 16) + String(repeating: "0", count: 16 - String(low, radix: 16).count)
            + String(low, radix: 16)
        return "0x\(hex)(offset \(dataOffset), gen \(generation), heap \(String(heapID, radix: 16)))"
    }

    // MARK: A 64-bit form for tests

    /// Generation (high 32 bits) | offset / 16 (low 32 bits): how the heap's tests pass small heaps' handles through
    /// 64-bit channels. Not for production use: it drops the heap id and cannot name a block beyond 64 GiB or a
    /// generation beyond 2^32.
    internal var compact64: UInt64 { (generation & 0xFFFF_FFFF) << 32 | (low & 0xFFFF_FFFF) }

    /// The handle of heap `heapID` that `compact64` names.
    internal init(compact64: UInt64, heapID: UInt32) {
        self.init(heapID: heapID, dataOffset: Int(compact64 & 0xFFFF_FFFF) << 4, generation: compact64 >> 32)
    }
}
