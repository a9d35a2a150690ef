/// Owns one value of type `Value` in memory from an allocator: a box whose storage is a Divvy block.
///
/// The value is initialized on creation and deinitialized and freed exactly once: when the box is destroyed, or
/// by `take()`, which moves the value out and frees the storage.
///
/// ```swift
/// struct Point { var x, y: Double }
/// let pool = try Pool(OSAllocator())
/// do {
///     var point = try OwnedValue(Point(x: 1, y: 2), in: pool)
///     point.value.x += 1
/// }                                   // `point` is destroyed here: its block goes back to the pool
/// ```
@frozen
public struct OwnedValue<Value: ~Copyable, A: Allocator>: ~Copyable {
    /// The allocator the storage came from.
    public let allocator: A
    @usableFromInline internal let block: UnsafeBlock
    /// Set by `take()`, which has already moved the value out and freed the storage.
    @usableFromInline internal var taken = false

    /// Allocates storage from `allocator` and moves `value` into it.
    ///
    /// - Throws: the allocator's `AllocationError`; `value` is destroyed then.
    @inlinable
    public init(_ value: consuming Value, in allocator: A) throws(AllocationError) {
        let block = try allocator.allocate(Layout.of(Value.self))
        // Safe: the block is at least MemoryLayout<Value>.size bytes, aligned for Value, and uninitialized.
        block.start.initializeMemory(as: Value.self, to: value)
        self.block = block
        self.allocator = allocator
    }

    /// Deinitializes the value and frees its storage.
    deinit {
        guard !taken else { return }
        block.start.assumingMemoryBound(to: Value.self).deinitialize(count: 1)
        allocator.deallocate(block, layout: Layout.of(Value.self))
    }

    /// The boxed value, readable and writable in place.
    @inlinable
    public var value: Value {
        unsafeAddress { UnsafePointer(block.start.assumingMemoryBound(to: Value.self)) }
        unsafeMutableAddress { block.start.assumingMemoryBound(to: Value.self) }
    }

    /// Moves the value out and frees the storage.
    @inlinable
    public consuming func take() -> Value {
        let value = block.start.assumingMemoryBound(to: Value.self).move()
        allocator.deallocate(block, layout: Layout.of(Value.self))
        taken = true
        return value
    }
}

extension OwnedValue: Sendable where Value: Sendable & ~Copyable, A: Sendable {}
