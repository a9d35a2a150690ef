/// A bump allocator: blocks are carved one after another from chunks taken from a backing allocator, and freed
/// all at once.
///
/// Allocation rounds a cursor up to the alignment, checks it against the end of the current chunk and advances it:
/// a handful of instructions, no per-block bookkeeping. When the current chunk is full the arena takes a new one,
/// sized by its growth policy (by default doubling from 64 KiB up to 64 MiB); the unused tail of the old chunk is
/// abandoned. A request larger than a quarter of the next chunk gets a chunk of its own, kept in a separate list,
/// so it does not waste the current chunk.
///
/// ```swift
/// let arena = try Arena(SystemAllocator())
/// let scratch = try arena.allocate(Layout(size: 1000))
/// arena.withScope {
///     _ = try? arena.allocate(Layout(size: 4096))   // freed when the scope ends
/// }
/// arena.deallocateAll()                           // everything is gone; the first chunk is kept for reuse
/// ```
///
/// Freeing:
/// - `deallocate` is a no-op unless the block is the most recent one in the current chunk: then the cursor moves
///   back to the block's start (so strictly LIFO use reclaims memory). A dedicated large chunk is returned to the
///   backing allocator when its block is freed and it is the most recent large chunk.
/// - `mark()` / `rewind(to:)` and `withScope(_:)` free everything allocated after the mark, returning the chunks
///   taken since then to the backing allocator.
/// - `deallocateAll()` frees everything, returns every chunk but the first to the backing allocator, and reuses
///   the first.
/// - Deinitializing the arena returns every chunk.
///
/// Chunks link through a 48-byte trailer at their end, so the arena needs no Swift heap memory beyond its own
/// object and state. Not `Sendable`: one thread uses an arena at a time.
public final class Arena<Backing: Allocator> {
    /// Where chunks come from.
    public let backing: Backing
    /// How chunk sizes grow: chunk number `n` (0-based) asks for `growth.refillSize(n)` bytes.
    public let growth: SlabGrowthPolicy

    // Mutable state lives behind a pointer so the hot path pays no dynamic exclusivity check (class stored
    // properties would). Safe: the arena is not Sendable, so one thread touches this at a time, and the pointer
    // lives exactly as long as the arena.
    @usableFromInline internal let state: UnsafeMutablePointer<State>

    @usableFromInline
    internal struct State {
        /// Next free byte of the current chunk, as an integer. `1` when there is no chunk (with `end == 0`, so
        /// every request takes the slow path and no request can produce a null block).
        @usableFromInline var cursor: UInt
        /// End of the current chunk's usable bytes (its trailer's address), or 0.
        @usableFromInline var end: UInt
        /// Trailer of the current (newest) regular chunk; regular chunks link newest to oldest.
        @usableFromInline var newestChunk: UnsafeMutableRawPointer?
        /// Trailer of the newest dedicated large chunk; large chunks link newest to oldest.
        @usableFromInline var newestLargeChunk: UnsafeMutableRawPointer?
        /// Regular chunks held (also the growth index of the next one).
        @usableFromInline var regularChunks: Int
        /// Dedicated large chunks held.
        @usableFromInline var largeChunks: Int
        /// Bytes requested from the backing allocator for the chunks held.
        @usableFromInline var footprint: Int
        /// Serial number of the next chunk taken. Marks remember it: chunks with a larger serial are newer.
        @usableFromInline var nextSerial: Int
        /// Bumped by `deallocateAll`, so a mark from before a reset is detected instead of corrupting the arena.
        @usableFromInline var epoch: Int
    }

    /// A position in the arena, from `mark()`, to rewind to with `rewind(to:)`.
    ///
    /// Marks nest like a stack: rewinding to a mark frees everything allocated after it, including later marks'
    /// allocations; rewinding to a mark that an earlier rewind or `deallocateAll()` already went past is a
    /// programmer error and traps.
    public struct Mark: Hashable, Sendable {
        @usableFromInline internal let cursor: UInt
        @usableFromInline internal let chunk: UInt
        @usableFromInline internal let serial: Int
        @usableFromInline internal let epoch: Int

        @inlinable
        internal init(cursor: UInt, chunk: UInt, serial: Int, epoch: Int) {
            self.cursor = cursor
            self.chunk = chunk
            self.serial = serial
            self.epoch = epoch
        }
    }

    /// Bytes of bookkeeping at the end of every chunk: previous trailer, chunk start, size the backing gave,
    /// size requested, alignment requested, serial.
    @usableFromInline internal static var trailerSize: Int { 48 }

    /// Creates an arena over `backing`. No memory is taken until the first allocation.
    ///
    /// - Parameters:
    ///   - backing: where chunks come from.
    ///   - growth: chunk sizes; the default doubles from 64 KiB up to 64 MiB.
    /// - Throws: `.invalidConfiguration` if the growth policy cannot work or its first chunk is below 256 bytes.
    public init(_ backing: Backing, growth: SlabGrowthPolicy = .default) throws(AllocationError) {
        if let problem = growth.configurationProblem {
            throw AllocationError(.invalidConfiguration, problem, size: growth.initial)
        }
        guard growth.initial >= 256 else {
            throw AllocationError(
                .invalidConfiguration, "arena chunks must be at least 256 bytes", size: growth.initial)
        }
        self.backing = backing
        self.growth = growth
        self.state = .allocate(capacity: 1)
        state.initialize(
            to: State(
                cursor: 1, end: 0, newestChunk: nil, newestLargeChunk: nil, regularChunks: 0, largeChunks: 0,
                footprint: 0, nextSerial: 0, epoch: 0))
    }

    deinit {
        releaseLargeChunks(newerThan: -1)
        releaseRegularChunks(newerThan: -1)
        state.deinitialize(count: 1)
        state.deallocate()
    }

    // MARK: Hot path

    /// Allocates a block by bumping the cursor of the current chunk.
    ///
    /// The block's size is `layout.size` (1 for a zero-byte request, so blocks have distinct addresses).
    ///
    /// - Throws: the backing allocator's error when a new chunk is needed and cannot be had; the arena is unchanged
    ///   then.
    /// - Complexity: O(1); a new chunk calls the backing allocator once.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let mask = UInt(bitPattern: layout.alignment &- 1)
        // Safe: the cursor is a user-space address (< 2^57) and size + alignment < 2^63 (Layout's invariant), so
        // neither sum wraps.
        let start = (state.pointee.cursor &+ mask) & ~mask
        let size = Swift.max(layout.size, 1)
        let end = start &+ UInt(bitPattern: size)
        if _fastPath(end <= state.pointee.end) {
            state.pointee.cursor = end
            // Safe: start >= cursor >= 1, so it is not null.
            return UnsafeBlock(start: UnsafeMutableRawPointer(bitPattern: start).unsafelyUnwrapped, size: size)
        }
        return try allocateSlow(layout)
    }

    /// Frees `block` if it is the most recent block of the current chunk (the cursor moves back to its start);
    /// otherwise does nothing until `rewind(to:)`, `deallocateAll()` or deinit. A dedicated large chunk is
    /// returned to the backing allocator if its block is freed while it is the most recent large chunk.
    ///
    /// - Complexity: O(1).
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        // Invariant: only the newest block of the current chunk ends exactly at the cursor. Blocks of other chunks
        // end at least 48 bytes (a trailer) away from any other chunk's usable bytes.
        if block.address &+ UInt(bitPattern: block.size) == state.pointee.cursor {
            state.pointee.cursor = block.address
        } else if state.pointee.newestLargeChunk != nil {
            releaseLargeChunkIfNewest(block)
        }
    }

    // MARK: Slow path

    /// Takes a chunk (a regular one, or a dedicated one for a large request) and allocates from it.
    @usableFromInline
    internal func allocateSlow(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let size = Swift.max(layout.size, 1)
        // Capped at 2^48 bytes so that a `.linear` policy saturating at Int.max still makes a valid Layout (and an
        // error from the backing allocator rather than a trap).
        let chunkSize = Swift.min(growth.refillSize(state.pointee.regularChunks), 1 << 48)
        // The worst case needs `alignment - 16` bytes of padding after a 16-byte aligned chunk start.
        // Safe: Layout guarantees size + alignment does not overflow.
        let needed = size &+ (Swift.max(layout.alignment, 16) &- 16)
        // A request above a quarter of the next chunk gets its own chunk: starting a regular chunk for it would
        // abandon the rest of the current one for little gain.
        if needed > (chunkSize - Arena.trailerSize) / 4 {
            return try allocateLarge(layout)
        }
        let chunk = try takeChunk(
            size: chunkSize, alignment: Layout.defaultAlignment, link: &state.pointee.newestChunk)
        state.pointee.regularChunks += 1
        state.pointee.cursor = UInt(bitPattern: chunk.start)
        state.pointee.end = UInt(bitPattern: chunk.trailer)
        // Cannot fail: the new chunk has room for `needed` bytes.
        let mask = UInt(bitPattern: layout.alignment &- 1)
        let start = (state.pointee.cursor &+ mask) & ~mask
        let end = start &+ UInt(bitPattern: size)
        precondition(end <= state.pointee.end, "Arena: new chunk too small for the request that caused it")
        state.pointee.cursor = end
        _checkInvariants()
        return UnsafeBlock(start: UnsafeMutableRawPointer(bitPattern: start).unsafelyUnwrapped, size: size)
    }

    /// Gives a request its own chunk, aligned as the request needs; the block starts the chunk.
    internal func allocateLarge(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let size = Swift.max(layout.size, 1)
        let alignment = Swift.max(layout.alignment, 16)
        // The chunk's layout must itself be valid: its size plus its alignment may not overflow.
        guard let body = alignUpChecked(size, to: 16), body <= Int.max - Arena.trailerSize - alignment else {
            throw AllocationError(
                .unsupportedLayout, "arena request too large", size: layout.size, alignment: layout.alignment)
        }
        let chunk = try takeChunk(
            size: body + Arena.trailerSize, alignment: alignment, link: &state.pointee.newestLargeChunk)
        state.pointee.largeChunks += 1
        _checkInvariants()
        return UnsafeBlock(start: chunk.start, size: size)
    }

    /// Takes `size` bytes from the backing allocator, writes the trailer and links it as the newest of a list.
    internal func takeChunk(size: Int, alignment: Int, link: inout UnsafeMutableRawPointer?) throws(AllocationError)
        -> (start: UnsafeMutableRawPointer, trailer: UnsafeMutableRawPointer)
    {
        let block = try backing.allocate(Layout(uncheckedSize: size, alignment: alignment))
        // The trailer sits at the end of what the backing really gave, 16-byte aligned.
        let trailer = block.start + ((block.size - Arena.trailerSize) & ~15)
        trailer.storeBytes(of: link, toByteOffset: 0, as: UnsafeMutableRawPointer?.self)
        trailer.storeBytes(of: block.start, toByteOffset: 8, as: UnsafeMutableRawPointer.self)
        trailer.storeBytes(of: block.size, toByteOffset: 16, as: Int.self)
        trailer.storeBytes(of: size, toByteOffset: 24, as: Int.self)
        trailer.storeBytes(of: alignment, toByteOffset: 32, as: Int.self)
        trailer.storeBytes(of: state.pointee.nextSerial, toByteOffset: 40, as: Int.self)
        link = trailer
        state.pointee.nextSerial += 1
        state.pointee.footprint += size
        return (block.start, trailer)
    }

    /// Returns the chunk whose trailer is `trailer` to the backing allocator and answers the previous trailer.
    internal func releaseChunk(_ trailer: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
        // Read the trailer before the memory holding it goes back to the backing allocator.
        let previous = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
        let start = trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self)
        let given = trailer.load(fromByteOffset: 16, as: Int.self)
        let requested = trailer.load(fromByteOffset: 24, as: Int.self)
        let alignment = trailer.load(fromByteOffset: 32, as: Int.self)
        backing.deallocate(
            UnsafeBlock(start: start, size: given), layout: Layout(uncheckedSize: requested, alignment: alignment))
        state.pointee.footprint -= requested
        return previous
    }

    /// Frees the newest large chunk if `block` is its block.
    @usableFromInline
    internal func releaseLargeChunkIfNewest(_ block: UnsafeBlock) {
        guard let trailer = state.pointee.newestLargeChunk,
            trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self) == block.start
        else { return }
        state.pointee.newestLargeChunk = releaseChunk(trailer)
        state.pointee.largeChunks -= 1
    }

    /// Returns every large chunk with a serial above `serial` (all of them for -1).
    internal func releaseLargeChunks(newerThan serial: Int) {
        while let trailer = state.pointee.newestLargeChunk, trailer.load(fromByteOffset: 40, as: Int.self) > serial {
            state.pointee.newestLargeChunk = releaseChunk(trailer)
            state.pointee.largeChunks -= 1
        }
    }

    /// Returns every regular chunk with a serial above `serial` (all of them for -1), and makes the newest one
    /// left current with its cursor at its start (or no chunk at all).
    internal func releaseRegularChunks(newerThan serial: Int) {
        while let trailer = state.pointee.newestChunk, trailer.load(fromByteOffset: 40, as: Int.self) > serial {
            state.pointee.newestChunk = releaseChunk(trailer)
            state.pointee.regularChunks -= 1
        }
        if let trailer = state.pointee.newestChunk {
            state.pointee.cursor = UInt(bitPattern: trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self))
            state.pointee.end = UInt(bitPattern: trailer)
        } else {
            state.pointee.cursor = 1
            state.pointee.end = 0
        }
    }

    // MARK: Marks

    /// The current position, to free everything allocated after it with `rewind(to:)`.
    ///
    /// - Complexity: O(1).
    @inlinable
    public func mark() -> Mark {
        Mark(
            cursor: state.pointee.cursor, chunk: UInt(bitPattern: state.pointee.newestChunk),
            serial: state.pointee.nextSerial, epoch: state.pointee.epoch)
    }

    /// Frees everything allocated after `mark`: chunks taken since are returned to the backing allocator and the
    /// cursor goes back to where it was.
    ///
    /// - Precondition: `mark` came from this arena, and no `rewind` or `deallocateAll()` has gone past it
    ///   (traps otherwise).
    /// - Complexity: O(chunks taken since the mark).
    public func rewind(to mark: Mark) {
        precondition(mark.epoch == state.pointee.epoch, "Arena.rewind: the mark is from before deallocateAll()")
        // Regular chunks are never freed except by rewinds and resets, so the chunk current at the mark is still
        // here unless an earlier rewind went past the mark.
        var found = mark.chunk == 0
        var current = state.pointee.newestChunk
        while let trailer = current, !found {
            if UInt(bitPattern: trailer) == mark.chunk { found = true }
            current = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
        }
        precondition(found, "Arena.rewind: the mark's chunk is gone (rewound past it already, or another arena's)")
        releaseLargeChunks(newerThan: mark.serial - 1)
        releaseRegularChunks(newerThan: mark.serial - 1)
        // Catches a stale mark whose chunk address was reused by a chunk taken after it (that chunk is gone now).
        precondition(
            UInt(bitPattern: state.pointee.newestChunk) == mark.chunk,
            "Arena.rewind: the mark's chunk is gone (rewound past it already)")
        if mark.chunk != 0 { state.pointee.cursor = mark.cursor }
        _checkInvariants()
    }

    /// Runs `body` and then frees everything allocated during it (`mark()` before, `rewind(to:)` after), also when
    /// it throws.
    ///
    /// - Returns: what `body` returns. It must not refer to memory allocated from the arena inside `body`.
    @inlinable
    public func withScope<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let position = mark()
        defer { rewind(to: position) }
        return try body()
    }

    // MARK: Introspection

    /// Bytes requested from the backing allocator for the chunks the arena holds.
    public var footprint: Int { state.pointee.footprint }
    /// Regular chunks held (bump regions).
    public var chunkCount: Int { state.pointee.regularChunks }
    /// Dedicated chunks held for requests too large for a regular chunk.
    public var largeChunkCount: Int { state.pointee.largeChunks }
    /// Bytes left in the current chunk after the cursor.
    public var remainingInCurrentChunk: Int {
        state.pointee.end > state.pointee.cursor ? Int(state.pointee.end - state.pointee.cursor) : 0
    }

    /// Checks the arena's internal invariants and traps with a message if one is broken.
    ///
    /// The cursor lies within the current chunk, chunk serials decrease along both lists, the counts and the
    /// footprint match the lists. Compiled to nothing unless `DIVVY_INTERNAL_CHECKS` is set (debug builds and
    /// tests).
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        func walk(_ head: UnsafeMutableRawPointer?) -> (count: Int, bytes: Int) {
            var count = 0
            var bytes = 0
            var serial = Int.max
            var current = head
            while let trailer = current {
                let start = trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self)
                let given = trailer.load(fromByteOffset: 16, as: Int.self)
                let chunkSerial = trailer.load(fromByteOffset: 40, as: Int.self)
                precondition(chunkSerial < serial, "Arena invariant: chunk serials out of order")
                precondition(
                    trailer >= start && trailer + Arena.trailerSize <= start + given, "Arena invariant: trailer")
                serial = chunkSerial
                count += 1
                bytes += trailer.load(fromByteOffset: 24, as: Int.self)
                current = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
            }
            return (count, bytes)
        }
        let regular = walk(state.pointee.newestChunk)
        let large = walk(state.pointee.newestLargeChunk)
        precondition(regular.count == state.pointee.regularChunks, "Arena invariant: regular chunk count")
        precondition(large.count == state.pointee.largeChunks, "Arena invariant: large chunk count")
        precondition(regular.bytes + large.bytes == state.pointee.footprint, "Arena invariant: footprint")
        if let trailer = state.pointee.newestChunk {
            let start = UInt(bitPattern: trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self))
            precondition(state.pointee.end == UInt(bitPattern: trailer), "Arena invariant: end is not the trailer")
            precondition(
                state.pointee.cursor >= start && state.pointee.cursor <= state.pointee.end,
                "Arena invariant: cursor outside the current chunk")
        } else {
            precondition(state.pointee.cursor == 1 && state.pointee.end == 0, "Arena invariant: empty arena state")
        }
        #endif
    }
}

extension Arena: ResettableAllocator {
    /// Frees every block: returns every chunk except the first regular one to the backing allocator and starts
    /// allocating from the first again. Marks taken before are invalidated.
    ///
    /// - Complexity: O(chunks).
    public func deallocateAll() {
        releaseLargeChunks(newerThan: -1)
        // Keep the oldest regular chunk: release everything newer than its serial.
        var oldest = state.pointee.newestChunk
        while let trailer = oldest, let previous = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
        {
            oldest = previous
        }
        releaseRegularChunks(newerThan: oldest.map { $0.load(fromByteOffset: 40, as: Int.self) } ?? -1)
        state.pointee.epoch &+= 1
        _checkInvariants()
    }
}

extension Arena: OwnershipAwareAllocator {
    /// Whether `block` starts in the usable bytes of one of the arena's chunks.
    ///
    /// - Complexity: O(chunks): O(log footprint) regular chunks with `.pow2` growth, plus the large ones.
    public func owns(_ block: UnsafeBlock) -> Bool {
        func search(_ head: UnsafeMutableRawPointer?) -> Bool {
            var current = head
            while let trailer = current {
                let start = trailer.load(fromByteOffset: 8, as: UnsafeMutableRawPointer.self)
                if block.start >= start && block.start < trailer { return true }
                current = trailer.load(fromByteOffset: 0, as: UnsafeMutableRawPointer?.self)
            }
            return false
        }
        return search(state.pointee.newestChunk) || search(state.pointee.newestLargeChunk)
    }
}

extension Arena: SizeRoundingAllocator {
    /// The requested size (1 for a zero-byte request): an arena never rounds sizes up.
    @inlinable
    public func goodSize(for layout: Layout) -> Int { Swift.max(layout.size, 1) }
}

extension Arena: InPlaceResizingAllocator {
    /// Resizes in place: the most recent block of the current chunk grows or shrinks by moving the cursor, as far
    /// as the chunk allows; any other block can only shrink (its tail is not reclaimed).
    ///
    /// - Returns: the block with its new size (1 for a new size of 0), or nil if it would have to move.
    /// - Complexity: O(1).
    @inlinable
    public func resize(_ block: UnsafeBlock, from layout: Layout, toSize newSize: Int) -> UnsafeBlock? {
        let size = Swift.max(newSize, 1)
        if block.address &+ UInt(bitPattern: block.size) == state.pointee.cursor {
            guard size <= Int(state.pointee.end &- block.address) else { return nil }
            state.pointee.cursor = block.address &+ UInt(bitPattern: size)
            return UnsafeBlock(start: block.start, size: size)
        }
        return size <= block.size ? UnsafeBlock(start: block.start, size: size) : nil
    }
}
