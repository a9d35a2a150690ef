/// A growable array whose storage is one block from any allocator.
///
/// The seed crate's example, a vector with half a gigabyte of capacity straight from the OS, is one line:
///
/// ```swift
/// var bytes = try BlockArray<UInt8, OSAllocator>(capacity: 1 << 29, allocator: OSAllocator())
/// try bytes.append(7)
/// ```
///
/// Growth doubles the capacity through the allocator's `reallocate` (for `OSAllocator` that is `mremap`, so
/// growing a large array does not copy it). Elements are moved bitwise when the storage moves, which Swift
/// allows for every copyable type on Linux. Indexing is bounds-checked.
@frozen
public struct BlockArray<Element, A: Allocator>: ~Copyable {
    /// The allocator the storage comes from.
    public let allocator: A
    @usableFromInline internal var block: UnsafeBlock?
    @usableFromInline internal var storageLayout: Layout
    @usableFromInline internal var _count: Int

    /// The number of elements.
    @inlinable
    public var count: Int { _count }

    /// An empty array that allocates on first append.
    @inlinable
    public init(allocator: A) {
        self.allocator = allocator
        self.block = nil
        self.storageLayout = Layout(uncheckedSize: 0, alignment: MemoryLayout<Element>.alignment)
        self._count = 0
    }

    /// An empty array with room for `capacity` elements, allocated now.
    ///
    /// - Throws: `.invalidLayout` if the byte count overflows; otherwise the allocator's `AllocationError`.
    @inlinable
    public init(capacity: Int, allocator: A) throws(AllocationError) {
        self.init(allocator: allocator)
        try reserveCapacity(capacity)
    }

    /// Deinitializes the elements and frees the storage.
    deinit {
        if let block {
            block.start.assumingMemoryBound(to: Element.self).deinitialize(count: count)
            allocator.deallocate(block, layout: storageLayout)
        }
    }

    /// How many elements fit without growing.
    @inlinable
    public var capacity: Int {
        guard let block, MemoryLayout<Element>.stride > 0 else { return block == nil ? 0 : Int.max }
        return block.size / MemoryLayout<Element>.stride
    }

    /// Whether the array has no elements.
    @inlinable
    public var isEmpty: Bool { count == 0 }

    /// Grows the storage, if needed, to hold at least `minimumCapacity` elements.
    ///
    /// - Throws: `.invalidLayout` if the byte count overflows; otherwise the allocator's `AllocationError`, with
    ///   the array unchanged.
    @inlinable
    public mutating func reserveCapacity(_ minimumCapacity: Int) throws(AllocationError) {
        guard minimumCapacity > capacity else { return }
        let newLayout = try Layout.array(of: Element.self, count: minimumCapacity)
        if let block {
            self.block = try allocator.reallocate(block, from: storageLayout, to: newLayout)
        } else {
            self.block = try allocator.allocate(newLayout)
        }
        storageLayout = newLayout
    }

    /// Appends an element, doubling the capacity when full.
    ///
    /// - Throws: the allocator's `AllocationError` when growth fails; the array is unchanged then.
    @inlinable
    public mutating func append(_ element: Element) throws(AllocationError) {
        if count == capacity {
            try reserveCapacity(Swift.max(count * 2, 16))
        }
        // Safe: count < capacity, so the slot is inside the block and uninitialized.
        (block!.start.assumingMemoryBound(to: Element.self) + count).initialize(to: element)
        _count += 1
    }

    /// Removes and returns the last element.
    ///
    /// - Precondition: the array is not empty.
    @inlinable
    @discardableResult
    public mutating func removeLast() -> Element {
        precondition(count > 0, "BlockArray.removeLast() on an empty array")
        _count -= 1
        return (block!.start.assumingMemoryBound(to: Element.self) + count).move()
    }

    /// Removes every element, keeping the storage.
    @inlinable
    public mutating func removeAll() {
        if let block { block.start.assumingMemoryBound(to: Element.self).deinitialize(count: count) }
        _count = 0
    }

    /// The element at `index`.
    ///
    /// - Precondition: `0 <= index < count` (checked).
    @inlinable
    public subscript(index: Int) -> Element {
        get {
            precondition(index >= 0 && index < count, "BlockArray index \(index) out of range 0..<\(count)")
            return block!.start.assumingMemoryBound(to: Element.self)[index]
        }
        set {
            precondition(index >= 0 && index < count, "BlockArray index \(index) out of range 0..<\(count)")
            block!.start.assumingMemoryBound(to: Element.self)[index] = newValue
        }
    }

    /// The elements, as a span.
    public var span: Span<Element> {
        @_lifetime(borrow self)
        borrowing get {
            // Safe: the first `count` slots are initialized and stay valid while `self` is borrowed.
            let start = block?.start.assumingMemoryBound(to: Element.self)
            let span = unsafe Span(_unsafeStart: UnsafePointer(start ?? UnsafeMutablePointer(bitPattern: MemoryLayout<Element>.alignment)!), count: count)
            return unsafe _overrideLifetime(span, borrowing: self)
        }
    }
}

extension BlockArray: Sendable where Element: Sendable, A: Sendable {}
