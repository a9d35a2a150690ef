/// A block of memory handed out by an allocator: its start address and usable size.
///
/// The block is a plain value, like a pointer: it does not own the memory. The allocator that returned it
/// must get it back exactly once, through `deallocate(_:layout:)`, with the layout it was allocated with.
/// `size` may be larger than the requested size (slabs and pools round up); all of it may be used.
///
/// Most code never sees an `UnsafeBlock`: `OwnedBlock` and `OwnedValue` own one and free it for you.
@frozen
public struct UnsafeBlock: Hashable, @unchecked Sendable, CustomStringConvertible {
    // @unchecked Sendable: a block is an address and a length, like `UInt`. Passing it to another thread does
    // not touch the memory; whoever dereferences it must synchronize, as with any pointer.

    /// The first byte of the block, aligned as requested.
    public let start: UnsafeMutableRawPointer
    /// The number of usable bytes, at least the requested size.
    public let size: Int

    /// Creates a block from an address and a usable size.
    @inlinable
    public init(start: UnsafeMutableRawPointer, size: Int) {
        self.start = start
        self.size = size
    }

    /// The block as a raw buffer.
    @inlinable
    public var buffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: start, count: size)
    }

    /// The start address as an integer.
    @inlinable
    public var address: UInt { UInt(bitPattern: start) }

    /// Whether `pointer` lies within the block.
    @inlinable
    public func contains(_ pointer: UnsafeRawPointer) -> Bool {
        let p = UInt(bitPattern: pointer)
        return p >= address && p - address < UInt(size)
    }

    /// `"0x7f…00+64"`.
    public var description: String { "0x\(String(address, radix: 16))+\(size)" }
}
