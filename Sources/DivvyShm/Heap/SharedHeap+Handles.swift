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
        // A lazy heap has not committed the descriptors of pages that never left the pool: don't read them.
        guard !lazyCommit || descriptorIsCommitted(page) else { throw staleEpochError(handle, page: page, pageWord: 0) }
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
