/// The size and alignment of a memory request.
///
/// A layout is always valid once constructed: its size is non-negative, its alignment is a
/// power of two, and rounding the size up to the alignment does not overflow. Allocators rely
/// on this and do not check again on their hot paths.
///
/// ```swift
/// struct Node { var value: Int; var next: UnsafeMutableRawPointer? }
/// let node = Layout.of(Node.self)
/// let page = try Layout(size: 4096, alignment: 4096)
/// ```
@frozen
public struct Layout: Hashable, Sendable, CustomStringConvertible {
    /// The number of bytes requested. May be zero.
    public let size: Int
    /// The required alignment of the block's start address, a power of two.
    public let alignment: Int

    /// The alignment used when none is given: 16, the alignment `malloc` guarantees on x86_64 and arm64.
    public static let defaultAlignment = 16

    /// Creates a layout, validating its parts.
    ///
    /// - Parameters:
    ///   - size: bytes requested, `>= 0`.
    ///   - alignment: a power of two, `>= 1`.
    /// - Throws: `AllocationError` with code `.invalidLayout` if the size is negative, the alignment is not a
    ///   power of two, or the size rounded up to the alignment overflows.
    @inlinable
    public init(size: Int, alignment: Int = Layout.defaultAlignment) throws(AllocationError) {
        guard size >= 0 else {
            throw AllocationError(.invalidLayout, "size is negative", size: size, alignment: alignment)
        }
        guard alignment > 0, alignment & (alignment &- 1) == 0 else {
            throw AllocationError(
                .invalidLayout, "alignment must be a power of two", size: size, alignment: alignment)
        }
        guard size <= Int.max &- alignment else {
            throw AllocationError(.invalidLayout, "size overflows when aligned", size: size, alignment: alignment)
        }
        self.size = size
        self.alignment = alignment
    }

    /// Creates a layout without validation, for callers that have already checked its parts.
    ///
    /// - Precondition: `size >= 0`, `alignment` is a power of two, `size <= Int.max - alignment`.
    ///   Checked in debug builds only.
    @inlinable
    public init(uncheckedSize size: Int, alignment: Int) {
        assert(size >= 0 && alignment > 0 && alignment & (alignment - 1) == 0 && size <= Int.max - alignment)
        self.size = size
        self.alignment = alignment
    }

    /// The layout of one value of `type` (its size, not its stride, and its alignment).
    @inlinable
    public static func of<T: ~Copyable>(_ type: T.Type) -> Layout {
        Layout(uncheckedSize: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
    }

    /// The layout of `count` contiguous values of `type`.
    ///
    /// - Throws: `AllocationError` with code `.invalidLayout` if `count` is negative or the total overflows.
    @inlinable
    public static func array<T: ~Copyable>(of type: T.Type, count: Int) throws(AllocationError) -> Layout {
        let (bytes, overflow) = MemoryLayout<T>.stride.multipliedReportingOverflow(by: count)
        guard count >= 0, !overflow else {
            throw AllocationError(
                .invalidLayout, "array byte count overflows", size: count, alignment: MemoryLayout<T>.alignment)
        }
        return try Layout(size: bytes, alignment: MemoryLayout<T>.alignment)
    }

    /// The size rounded up to a multiple of the alignment (the distance between two such blocks in an array).
    @inlinable
    public var stride: Int {
        // Safe: the initializers guarantee size + alignment - 1 does not overflow.
        (size &+ alignment &- 1) & ~(alignment &- 1)
    }

    /// `"64 bytes, aligned to 16"`.
    public var description: String { "\(size) bytes, aligned to \(alignment)" }
}

/// Rounds `value` up to a multiple of `alignment`, a power of two.
///
/// - Precondition: `value + alignment - 1` does not overflow.
@inlinable
@inline(__always)
internal func alignUp(_ value: Int, to alignment: Int) -> Int {
    (value &+ alignment &- 1) & ~(alignment &- 1)
}

/// Rounds `value` up to a multiple of `alignment` (a power of two), or returns nil on overflow.
@inlinable
internal func alignUpChecked(_ value: Int, to alignment: Int) -> Int? {
    let (sum, overflow) = value.addingReportingOverflow(alignment &- 1)
    return overflow ? nil : sum & ~(alignment &- 1)
}

/// Whether `value` is a positive power of two.
@inlinable
internal func isPowerOfTwo(_ value: Int) -> Bool {
    value > 0 && value & (value &- 1) == 0
}
