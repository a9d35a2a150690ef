import Divvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One `MAP_SHARED` mapping of (part of) a region in this process, and the translation between region offsets and
/// this mapping's addresses.
///
/// Offsets are always *region* offsets, whatever part is mapped: a mapping of the data area alone starts at
/// `regionOffset == geometry.dataOffset`, and translating a metadata offset through it throws `.outOfBounds`.
/// So an offset means the same bytes in every process and in every kind of mapping, while the addresses differ.
///
/// The mapping is unmapped when the last reference goes away (`munmap` in `deinit`); pointers obtained from it are
/// valid only while you hold it (use `withExtendedLifetime` across code that only uses the pointers). Unmapping
/// never removes the region.
///
/// `@unchecked Sendable`: every stored property is immutable; the memory it maps is shared memory, which other
/// threads and processes access concurrently by design (synchronize through atomics in the region).
public final class SharedMapping: @unchecked Sendable {
    /// Whether a mapping may be written.
    public enum Access: Hashable, Sendable {
        /// `PROT_READ | PROT_WRITE`.
        case readWrite
        /// `PROT_READ`: a write through this mapping kills the process with SIGSEGV.
        case readOnly
    }

    /// Whether this mapping may be written.
    public let access: Access
    /// The region offset of the mapping's first byte (0 for the whole region, `dataOffset` for the data area).
    public let regionOffset: Int
    /// The mapping's length in bytes.
    public let length: Int
    /// The first mapped byte. Internal: callers translate offsets with bounds checks instead.
    @usableFromInline internal let base: UnsafeMutableRawPointer

    internal init(base: UnsafeMutableRawPointer, regionOffset: Int, length: Int, access: Access) {
        self.base = base
        self.regionOffset = regionOffset
        self.length = length
        self.access = access
    }

    /// Maps `length` bytes of `fd` from `regionOffset`, shared, through `OSAllocator.mapShared` (the OS
    /// allocator's mapping layer).
    internal static func map(
        fd: Int32, fileOffset: Int? = nil, regionOffset: Int, length: Int, access: Access, describing what: String
    ) throws(SharedRegionError) -> SharedMapping {
        do {
            let mapping = try OSAllocator.mapShared(
                fileDescriptor: fd, offset: fileOffset ?? regionOffset, length: length,
                access: access == .readWrite ? .readWrite : .readOnly)
            return SharedMapping(base: mapping.block.start, regionOffset: regionOffset, length: length, access: access)
        } catch {
            let cause = Errno(rawValue: error.systemError)
            let noMemory = error.code == .outOfMemory
            throw SharedRegionError(
                noMemory ? .insufficientSpace : .systemCallFailed,
                "could not map \(formatByteCount(length)) of \(what) at offset \(regionOffset)"
                    + (noMemory
                        ? "; the address space, the memory map count, or the huge page pool is exhausted"
                        : ""),
                cause: error.systemError == 0 ? nil : cause)
        }
    }

    deinit {
        // Traps only for a range that is not ours (munmap fails only with EINVAL): a corrupted invariant.
        OSAllocator.unmapShared(OSMapping(block: UnsafeBlock(start: base, size: length), kind: .base))
    }

    /// The region offsets this mapping covers, `regionOffset ..< regionOffset + length`.
    public var offsets: Range<Int> { regionOffset..<(regionOffset + length) }

    /// The address of region offset `offset` in this mapping, after checking that `length` bytes from there lie
    /// inside it.
    ///
    /// The pointer is valid while this mapping is alive. For a read-only mapping it must not be written through.
    ///
    /// - Parameters:
    ///   - offset: a region offset.
    ///   - length: how many bytes from `offset` the caller will touch (default 1; 0 allows the end offset).
    /// - Throws: `.outOfBounds` when `[offset, offset + length)` is not inside `offsets`.
    /// - Complexity: O(1).
    @inlinable
    public func unsafePointer(
        forOffset offset: Int, length: Int = 1
    ) throws(SharedRegionError) -> UnsafeMutableRawPointer {
        guard length >= 0, offset >= regionOffset, offset - regionOffset <= self.length - length else {
            throw outOfBounds(offset: offset, length: length)
        }
        // Safe: `offset - regionOffset` is within [0, self.length], checked above.
        return base + (offset &- regionOffset)
    }

    /// The region offset of `pointer`, after checking that `length` bytes from it lie inside this mapping.
    ///
    /// - Throws: `.outOfBounds` when the pointer is not inside this mapping (another mapping, another region).
    /// - Complexity: O(1).
    @inlinable
    public func offset(of pointer: UnsafeRawPointer, length: Int = 1) throws(SharedRegionError) -> Int {
        let start = UInt(bitPattern: base)
        let address = UInt(bitPattern: pointer)
        guard length >= 0, length <= self.length, address >= start, address - start <= UInt(self.length - length)
        else {
            throw pointerOutOfBounds(address: address, length: length)
        }
        // Safe: `address - start` is at most `self.length`, which fits in Int.
        return regionOffset &+ Int(address &- start)
    }

    /// Calls `body` with the bytes `[offset, offset + length)` of the region, after a bounds check.
    ///
    /// - Throws: `.outOfBounds` (before calling `body`).
    public func withUnsafeBytes<R>(
        atOffset offset: Int, length: Int, _ body: (UnsafeRawBufferPointer) -> R
    ) throws(SharedRegionError) -> R {
        let start = try unsafePointer(forOffset: offset, length: length)
        return body(UnsafeRawBufferPointer(start: start, count: length))
    }

    /// Calls `body` with the writable bytes `[offset, offset + length)` of the region, after a bounds check.
    ///
    /// - Throws: `.outOfBounds` (before calling `body`); `.permissionDenied` for a read-only mapping.
    @discardableResult
    public func withUnsafeMutableBytes<R>(
        atOffset offset: Int, length: Int, _ body: (UnsafeMutableRawBufferPointer) -> R
    ) throws(SharedRegionError) -> R {
        guard access == .readWrite else {
            throw SharedRegionError(
                .permissionDenied,
                "cannot write offset \(offset) through a read-only mapping; map the region read-write")
        }
        let start = try unsafePointer(forOffset: offset, length: length)
        return body(UnsafeMutableRawBufferPointer(start: start, count: length))
    }

    @usableFromInline
    internal func outOfBounds(offset: Int, length: Int) -> SharedRegionError {
        SharedRegionError(
            .outOfBounds,
            "region offset \(offset) (+\(length) bytes) is outside this mapping, which covers offsets "
                + "\(regionOffset)..<\(regionOffset + self.length); check the offset, or map the part of the "
                + "region that holds it")
    }

    @usableFromInline
    internal func pointerOutOfBounds(address: UInt, length: Int) -> SharedRegionError {
        SharedRegionError(
            .outOfBounds,
            "address 0x\(String(address, radix: 16)) (+\(length) bytes) is not inside this mapping "
                + "(0x\(String(UInt(bitPattern: base), radix: 16)), \(self.length) bytes); it belongs to another "
                + "mapping or region")
    }
}
