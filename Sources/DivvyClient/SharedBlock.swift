import DivvyShm

/// The owner of one block of the daemon's shared memory held by this process: read and write it through spans,
/// free it by consuming it (or by dropping it), or give it up as a handle for another process to adopt.
///
/// `~Copyable`: exactly one owner, so a block is freed once. The client must outlive its blocks (it does: each
/// block keeps its client alive).
public struct SharedBlock: ~Copyable {
    /// The block's handle: valid in every process connected to the same daemon.
    public let handle: SharedHandle
    /// The block's size in bytes (its size class: at least what was asked for).
    public let count: Int
    /// The client that holds the block.
    public let client: DivvyClient
    private let base: UnsafeMutableRawPointer
    private var released = false

    internal init(client: DivvyClient, handle: SharedHandle, size: Int, base: UnsafeMutableRawPointer) {
        self.client = client
        self.handle = handle
        self.count = size
        self.base = base
    }

    deinit {
        if !released { _ = try? client.free(handle) }
    }

    /// The block's bytes, for reading.
    public var bytes: RawSpan {
        @_lifetime(borrow self)
        borrowing get {
            // Safe: the block is mapped and held for as long as `self` exists; the span borrows `self`.
            let span = unsafe RawSpan(_unsafeStart: base, byteCount: count)
            return unsafe _overrideLifetime(span, borrowing: self)
        }
    }

    /// The block's bytes, for writing.
    public var mutableBytes: MutableRawSpan {
        @_lifetime(&self)
        mutating get {
            // Safe: as for `bytes`; exclusive access to `self` makes the span exclusive within this process
            // (other processes holding the block share it: coordinate writes through your own protocol).
            let span = unsafe MutableRawSpan(_unsafeStart: base, byteCount: count)
            return unsafe _overrideLifetime(span, mutating: &self)
        }
    }

    /// Calls `body` with the block's bytes.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Calls `body` with the block's bytes, writable.
    public mutating func withUnsafeMutableBytes<R, E: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// Frees the block (drops this process's holding); true when that released it (no holder left).
    ///
    /// - Throws: `DivvyClientError` (e.g. `.daemonGone`); the holding is gone from this process either way.
    @discardableResult
    public consuming func free() throws(DivvyClientError) -> Bool {
        released = true
        return try client.free(handle)
    }

    /// Gives up ownership without freeing: the caller now holds the handle (free it with `client.free(_:)`, or
    /// hand it to another process that adopts it, then free it here).
    public consuming func intoHandle() -> SharedHandle {
        released = true
        return handle
    }
}
