import Atomics

/// A lock-free multi-producer, multi-consumer free list of 32-bit indices `0..<capacity`, living entirely in a
/// memory area its caller provides.
///
/// This is a Treiber stack over indices rather than pointers, after iceoryx's `LoFFLi` (lock-free free list):
/// the head is one 64-bit word holding the top index (low 32 bits) and an ABA tag (high 32 bits) that grows by one
/// on every successful pop and push, and each index's successor lives in a `UInt32` array next to it. Because
/// nothing in the area is a pointer, the same area can be mapped at different addresses — in another process,
/// through POSIX shared memory — and used from all mappings at once: build it with `initialize(at:capacity:)` in
/// one mapping and `attach(at:)` to it from the others.
///
/// ```swift
/// let bytes = UnsafeLockFreeIndexStack.requiredBytes(capacity: 1024)
/// let memory = UnsafeMutableRawPointer.allocate(
///     byteCount: bytes, alignment: UnsafeLockFreeIndexStack.requiredAlignment)
/// let stack = UnsafeLockFreeIndexStack.initialize(at: memory, capacity: 1024)   // all 1024 indices free
/// if let index = stack.pop() {           // from any thread
///     try stack.push(index)              // from any thread; a second push throws .doubleFree
/// }
/// memory.deallocate()                    // once no thread uses the stack any more
/// ```
///
/// ## Memory layout
///
/// | offset | size | contents |
/// |---|---|---|
/// | 0 | 8 | head: top index (bits 0–31, `0xFFFF_FFFF` = empty) and ABA tag (bits 32–63), atomic |
/// | 8 | 4 | magic `"DVLF"`, stored last by `initialize` (release) and checked by `attach` (acquire) |
/// | 12 | 4 | capacity |
/// | 64 | 64 | reserved (zero) |
/// | 128 | 4 × capacity | links: per index, its successor while free (`0xFFFF_FFFF`: none), or `0xFFFF_FFFE` in use |
///
/// ## Double frees
///
/// `pop()` marks the slot of the index it returns as in use. `push(_:detection:)` checks that mark; if the slot is
/// not marked in use, the index is already free and `push` throws `.doubleFree` without touching anything. How
/// the mark is taken back is the caller's choice (`DoubleFreeDetection`):
///
/// - `.exact` (the default) takes the slot back with one compare-and-exchange from "in use" to "free". Two threads
///   pushing the same index at the same time race on it: exactly one succeeds, the other gets `.doubleFree`.
/// - `.sequential` reads the mark and then overwrites it with plain stores: one atomic read-modify-write fewer
///   (pop + push is then two locked instructions, which is what lets `LockFreeSlab` match malloc+free). Every
///   double free that does not *race* with the first free is still caught; two frees of one index at the same
///   instant may both pass the check and corrupt the list. Use it where a double free is a programmer error
///   anyway (`LockFreeSlab.deallocate`), never on input from an untrusted peer.
///
/// Racing-free exactness holds only while every push of the stack uses `.exact`.
///
/// A late second free *after the index has been popped again* by someone else cannot be told apart from that
/// owner's legitimate free (the slot is "in use" again); catching that needs a generation per handle, which
/// belongs to the layer above.
///
/// ## A process that dies mid-operation
///
/// Every change other threads can observe is one atomic write of at most 64 bits, so the list is never torn. A
/// pop commits with its exchange of the head and then marks the slot; a push claims the slot and then commits
/// with its exchange of the head. A thread (or process) that dies between its two steps leaves an index that is
/// neither on the list nor marked in use: `_checkInvariants()` reports exactly those, and recovery in the layer
/// above decides from its own records whether that index was being allocated or freed.
///
/// ## Lifetime
///
/// The type is `Unsafe` because it does not own its memory: the area must stay mapped, and must not be
/// reinitialized, while any thread may still call the stack. Copies of the value all refer to the same area.
///
/// The ABA tag is 32 bits wide: a pop can only be fooled if, between its load of the head and its
/// compare-and-exchange, exactly a multiple of 2³² other pops and pushes complete and leave the same index on top.
@frozen
public struct UnsafeLockFreeIndexStack: @unchecked Sendable {
    // @unchecked Sendable: the value is a pointer to memory that is only ever accessed atomically (head, count,
    // links) or read-only after initialization (magic, capacity). Sharing it between threads is the point.

    /// Start of the caller's memory area (the header).
    @usableFromInline internal let base: UnsafeMutableRawPointer
    /// The capacity, read once from the header; it never changes after initialization.
    @usableFromInline internal let _capacity: UInt32

    /// The largest supported capacity: indices must stay below the two marker values `0xFFFF_FFFE` and
    /// `0xFFFF_FFFF`.
    public static let maximumCapacity = Int(UInt32.max) - 2

    /// The alignment the memory area needs (a cache line, so the head does not share one with unrelated data).
    /// Eight bytes is the hard minimum (64-bit atomics): below that `initialize` traps and `attach` throws.
    public static let requiredAlignment = 64

    /// Link value of the last free index: "no successor". Also the head's index when the stack is empty.
    @usableFromInline internal static let endOfList: UInt32 = 0xFFFF_FFFF
    /// Link value of an index that has been popped and not pushed back.
    @usableFromInline internal static let inUseMarker: UInt32 = 0xFFFF_FFFE
    /// `"DVLF"`, little endian.
    @usableFromInline internal static let magic: UInt32 = 0x464C_5644

    @usableFromInline internal static let headOffset = 0
    @usableFromInline internal static let magicOffset = 8
    @usableFromInline internal static let capacityOffset = 12
    @usableFromInline internal static let reservedOffset = 64
    @usableFromInline internal static let linksOffset = 128

    @inlinable
    internal init(base: UnsafeMutableRawPointer, capacity: UInt32) {
        self.base = base
        self._capacity = capacity
    }

    /// The number of bytes a stack of `capacity` indices needs: a 128-byte header plus four bytes per index.
    ///
    /// - Precondition: `1 <= capacity <= maximumCapacity`.
    @inlinable
    public static func requiredBytes(capacity: Int) -> Int {
        precondition(
            capacity >= 1 && capacity <= maximumCapacity,
            "UnsafeLockFreeIndexStack.requiredBytes: capacity \(capacity) is outside 1...\(maximumCapacity)")
        // Safe: capacity <= 2^32, so 4 * capacity + 128 fits easily in a 64-bit Int.
        return linksOffset &+ capacity &* MemoryLayout<UInt32>.stride
    }

    /// Builds a stack in `memory` with every index `0..<capacity` free, and returns it.
    ///
    /// Indices come out of a fresh stack in ascending order (0, 1, 2, …). Not atomic: no other thread or
    /// process may use the area, or attach to it, until this returns. Others then reach the stack through
    /// `attach(at:)` (the magic number is stored last, with release ordering, so an attach that finds it sees the
    /// whole initialization) or by receiving the returned value through something that synchronizes.
    ///
    /// - Parameters:
    ///   - memory: at least `requiredBytes(capacity:)` bytes, aligned to at least 8 (ideally
    ///     `requiredAlignment`). Its previous contents are overwritten.
    ///   - capacity: the number of indices, `1...maximumCapacity`.
    /// - Precondition: the capacity is in range and `memory` is 8-byte aligned.
    /// - Complexity: O(capacity).
    public static func initialize(at memory: UnsafeMutableRawPointer, capacity: Int) -> UnsafeLockFreeIndexStack {
        _ = requiredBytes(capacity: capacity)  // validates the capacity
        precondition(
            UInt(bitPattern: memory) % 8 == 0,
            "UnsafeLockFreeIndexStack.initialize: memory \(memory) is not 8-byte aligned")
        let count = UInt32(capacity)
        (memory + headOffset).initializeMemory(
            as: UnsafeAtomic<UInt64>.Storage.self, repeating: UnsafeAtomic<UInt64>.Storage(pack(index: 0, tag: 0)),
            count: 1)
        (memory + magicOffset).initializeMemory(
            as: UnsafeAtomic<UInt32>.Storage.self, repeating: UnsafeAtomic<UInt32>.Storage(0), count: 1)
        (memory + capacityOffset).initializeMemory(as: UInt32.self, repeating: count, count: 1)
        (memory + reservedOffset).initializeMemory(as: UInt8.self, repeating: 0, count: linksOffset - reservedOffset)
        let links = (memory + linksOffset).bindMemory(to: UnsafeAtomic<UInt32>.Storage.self, capacity: capacity)
        for index in 0..<capacity &- 1 {
            // Safe: index + 1 < capacity <= maximumCapacity, so it fits in UInt32.
            (links + index).initialize(to: UnsafeAtomic<UInt32>.Storage(UInt32(truncatingIfNeeded: index &+ 1)))
        }
        (links + (capacity &- 1)).initialize(to: UnsafeAtomic<UInt32>.Storage(endOfList))
        // Ordering: releasing, so that a thread (or process) whose `attach` reads the magic with an acquiring load
        // also sees every plain initialization above.
        UnsafeAtomic<UInt32>(at: (memory + magicOffset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
            .store(magic, ordering: .releasing)
        return UnsafeLockFreeIndexStack(base: memory, capacity: count)
    }

    /// Attaches to a stack that `initialize(at:capacity:)` built in this memory, possibly through another mapping
    /// of the same shared memory, in this or another process.
    ///
    /// - Parameter memory: the start of the area (8-byte aligned), mapped for at least
    ///   `requiredBytes(capacity:)` bytes for the capacity it was initialized with.
    /// - Throws: `.invalidConfiguration` if the area does not hold an initialized stack (wrong magic, or a
    ///   capacity out of range): nothing is written then.
    /// - Complexity: O(1).
    public static func attach(at memory: UnsafeMutableRawPointer) throws(AllocationError) -> UnsafeLockFreeIndexStack {
        guard UInt(bitPattern: memory) % 8 == 0 else {
            throw AllocationError(
                .invalidConfiguration, "index stack memory is not 8-byte aligned; pass the start of the area")
        }
        // Ordering: acquiring, pairs with the releasing store at the end of `initialize`, so the capacity and
        // links read from now on are the initialized ones.
        let found = UnsafeAtomic<UInt32>(
            at: (memory + magicOffset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self)
        ).load(ordering: .acquiring)
        guard found == magic else {
            throw AllocationError(
                .invalidConfiguration,
                "no initialized index stack at this address (magic number missing); initialize(at:capacity:) first",
                size: Int(found))
        }
        let capacity = memory.load(fromByteOffset: capacityOffset, as: UInt32.self)
        guard capacity >= 1, Int(capacity) <= maximumCapacity else {
            throw AllocationError(
                .invalidConfiguration, "index stack header holds an impossible capacity (corrupted memory?)",
                size: Int(capacity))
        }
        return UnsafeLockFreeIndexStack(base: memory, capacity: capacity)
    }

    /// The number of indices, `0..<capacity`, the stack manages.
    @inlinable
    public var capacity: Int { Int(_capacity) }

    /// The start of the memory area (what `initialize` and `attach` were given).
    @inlinable
    public var baseAddress: UnsafeMutableRawPointer { base }

    /// The number of free indices: exact when no pop or push is in progress, a best-effort lower bound otherwise.
    ///
    /// Counted by walking the list (at most `capacity` steps, stopping at anything that is not a valid link), so
    /// the hot paths pay for no counter: a shared counter would cost two more atomic read-modify-writes per
    /// pop + push, doubling their cost. Meant for statistics and tests, not for decisions under concurrency.
    ///
    /// - Complexity: O(number of free indices).
    public var approximateCount: Int {
        // Ordering: acquiring, like a pop's load of the head, so the links read next are the ones pushed.
        var current = Self.index(of: head.load(ordering: .acquiring))
        var length = 0
        while current < _capacity, length < capacity {
            length &+= 1
            // Ordering: relaxed; see `_popPrepare`. A concurrently popped index reads as the in-use marker (or a
            // newer link) and at worst ends or shortens the walk.
            current = link(current).load(ordering: .relaxed)
        }
        return length
    }

    // MARK: Atomic views of the area

    @inlinable
    internal var head: UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + Self.headOffset).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    /// The link slot of `index`. - Precondition: `index < capacity` (callers check).
    @inlinable
    internal func link(_ index: UInt32) -> UnsafeAtomic<UInt32> {
        // Safe: index < capacity, so the slot lies inside the area's link array.
        UnsafeAtomic(
            at: (base + Self.linksOffset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self)
                + Int(truncatingIfNeeded: index))
    }

    @inlinable
    @inline(__always)
    internal static func pack(index: UInt32, tag: UInt32) -> UInt64 {
        UInt64(tag) << 32 | UInt64(index)
    }

    @inlinable
    @inline(__always)
    internal static func index(of word: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: word) }

    @inlinable
    @inline(__always)
    internal static func tag(of word: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: word >> 32) }

    // MARK: Pop

    /// Takes a free index off the stack, or returns nil if every index is in use.
    ///
    /// The returned index is marked in use until it is pushed back.
    ///
    /// - Complexity: O(1) without contention; lock-free (a retry means another thread made progress).
    @inlinable
    public func pop() -> UInt32? {
        // Ordering: acquiring, pairs with the releasing compare-and-exchange of the push that put the top index
        // there, so the link read next is the one that push wrote.
        var observed = head.load(ordering: .acquiring)
        while true {
            guard let attempt = _popPrepare(observed) else { return nil }
            switch _popCommit(attempt) {
            case .none: return attempt.index
            case .some(let current): observed = current
            }
        }
    }

    /// One pop attempt: the head word it saw, the index on top and that index's successor at the time.
    @usableFromInline
    internal struct _PopAttempt {
        @usableFromInline let observedHead: UInt64
        @usableFromInline let index: UInt32
        @usableFromInline let next: UInt32

        @inlinable
        init(observedHead: UInt64, index: UInt32, next: UInt32) {
            self.observedHead = observedHead
            self.index = index
            self.next = next
        }
    }

    /// Pop, step 1: reads the successor of the top index in `observed`; nil if `observed` is the empty stack.
    ///
    /// The successor may be stale (another thread may have popped the top index meanwhile); step 2 then fails.
    @inlinable
    internal func _popPrepare(_ observed: UInt64) -> _PopAttempt? {
        let index = Self.index(of: observed)
        if index == Self.endOfList { return nil }
        // A head index out of range can only come from memory corrupted behind our back (e.g. by another
        // process writing into the area): trap rather than read outside it.
        precondition(
            index < _capacity, "UnsafeLockFreeIndexStack: head index out of range; the free list is corrupted")
        // Ordering: relaxed is enough; this load comes after the acquiring load (or acquiring failed exchange)
        // that produced `observed`, which already synchronizes with the push that wrote this link.
        let next = link(index).load(ordering: .relaxed)
        return _PopAttempt(observedHead: observed, index: index, next: next)
    }

    /// Pop, step 2: swings the head from the attempt's index to its successor, bumping the tag, and marks the
    /// index in use. Returns nil on success, or the head's current value if another thread changed it first.
    @inlinable
    internal func _popCommit(_ attempt: _PopAttempt) -> UInt64? {
        let desired = Self.pack(index: attempt.next, tag: Self.tag(of: attempt.observedHead) &+ 1)
        // Ordering on success: acquiring-and-releasing. Acquiring, so the block behind this index (written by
        // whoever pushed it, before their releasing exchange) is visible to us. Releasing, so our earlier read of
        // the link happens before any later write to it by a thread that acquires the head after us (coherence
        // then forbids that read from having seen the later value).
        // Ordering on failure: acquiring, like the initial load: the next attempt reads the new top's link.
        // The tag makes success imply that nobody popped or pushed since `observedHead` was read, so the
        // successor we read is still the true one (the ABA problem of a plain Treiber stack).
        let (exchanged, current) = head.compareExchange(
            expected: attempt.observedHead, desired: desired, successOrdering: .acquiringAndReleasing,
            failureOrdering: .acquiring)
        guard exchanged else { return current }
        // The index is ours. Ordering: relaxed; the only later reader that must see the marker is whoever pushes
        // this index back, and they got the index from us through something that synchronizes (or are us).
        link(attempt.index).store(Self.inUseMarker, ordering: .relaxed)
        return nil
    }

    // MARK: Push

    /// How `push(_:detection:)` takes back an index's in-use mark; see "Double frees" in the type's discussion.
    @frozen
    public enum DoubleFreeDetection: Hashable, Sendable {
        /// One compare-and-exchange on the slot: of two racing pushes of one index, exactly one succeeds.
        case exact
        /// A plain read of the mark: catches every double free that does not race with the first free, and
        /// saves one atomic read-modify-write.
        case sequential
    }

    /// Returns an index to the stack.
    ///
    /// - Parameters:
    ///   - index: an index `pop()` returned and that has not been pushed since.
    ///   - detection: `.exact` (default) or `.sequential`; see `DoubleFreeDetection`.
    /// - Throws: `AllocationError` with code `.doubleFree` if the index is already free, or `.foreignBlock` if it
    ///   is not below `capacity`. The stack is unchanged then. With `.exact`, of two threads pushing the same
    ///   index at once, exactly one succeeds.
    /// - Complexity: O(1) without contention; lock-free.
    @inlinable
    public func push(_ index: UInt32, detection: DoubleFreeDetection = .exact) throws(AllocationError) {
        var observed: UInt64
        switch detection {
        case .exact: observed = try _pushClaim(index)
        case .sequential: observed = try _pushCheck(index)
        }
        while let current = _pushCommit(index, observed) {
            observed = current
        }
    }

    /// Throws `.foreignBlock` unless `index` is below the capacity.
    @inlinable
    internal func _checkRange(_ index: UInt32) throws(AllocationError) {
        guard index < _capacity else {
            throw AllocationError(
                .foreignBlock, "index is not below the index stack's capacity", size: Int(index),
                limit: Int(_capacity))
        }
    }

    /// Push, step 1 for `.sequential`: checks the index and its in-use mark with plain reads, then links the slot
    /// to the current top with a plain store. Returns the head word the link was taken from.
    ///
    /// - Throws: `.foreignBlock` for an index out of range, `.doubleFree` if the slot is not marked in use.
    @inlinable
    internal func _pushCheck(_ index: UInt32) throws(AllocationError) -> UInt64 {
        try _checkRange(index)
        // Ordering: relaxed, as in `_pushClaim`: the mark was stored by the pop that handed out the index, which
        // happens before this push. Unlike `_pushClaim` this is not a read-modify-write, so a second push racing
        // with this one may also see the mark (the documented limit of `.sequential`).
        guard link(index).load(ordering: .relaxed) == Self.inUseMarker else {
            throw AllocationError(
                .doubleFree, "index is already free (double free)", size: Int(index), limit: Int(_capacity))
        }
        // Ordering: relaxed; a first guess for the link, validated by step 2's compare-and-exchange.
        let observed = head.load(ordering: .relaxed)
        // Ordering: relaxed; the slot is ours and step 2's releasing exchange publishes it.
        link(index).store(Self.index(of: observed), ordering: .relaxed)
        return observed
    }

    /// Push, step 1: checks the index and takes its slot from "in use" to "free, followed by the current top".
    /// Returns the head word the link was taken from.
    ///
    /// - Throws: `.foreignBlock` for an index out of range, `.doubleFree` if the slot is not marked in use.
    @inlinable
    internal func _pushClaim(_ index: UInt32) throws(AllocationError) -> UInt64 {
        try _checkRange(index)
        // Ordering: relaxed; we only need some recent head value as a first guess for the link. The
        // compare-and-exchange in step 2 validates it.
        let observed = head.load(ordering: .relaxed)
        // The one step that decides double frees: of all concurrent pushes of this index, only one can move its
        // slot away from the in-use marker. A free slot holds a link (an index or end-of-list), never the marker,
        // so it fails here and nothing is written.
        // Ordering: relaxed. The marker we expect was stored by the pop that handed out the index, and that pop
        // happens before this push (same thread, or the index came to us through something that synchronizes).
        // What the link publishes is published by step 2's releasing exchange.
        let (claimed, _) = link(index).compareExchange(
            expected: Self.inUseMarker, desired: Self.index(of: observed), ordering: .relaxed)
        guard claimed else {
            throw AllocationError(
                .doubleFree, "index is already free (double free)", size: Int(index), limit: Int(_capacity))
        }
        return observed
    }

    /// Push, step 2: swings the head from `observed` to `index`, bumping the tag. Returns nil on success; on
    /// failure relinks `index` to the new top and returns the head's current value for the next attempt.
    @inlinable
    internal func _pushCommit(_ index: UInt32, _ observed: UInt64) -> UInt64? {
        let desired = Self.pack(index: index, tag: Self.tag(of: observed) &+ 1)
        // Ordering on success: releasing, so a pop that acquires this head sees our link and everything the
        // caller wrote into the block before freeing it. On failure: relaxed, we only need the new value.
        let (exchanged, current) = head.compareExchange(
            expected: observed, desired: desired, successOrdering: .releasing, failureOrdering: .relaxed)
        if exchanged { return nil }
        // Ordering: relaxed; the slot is ours (claimed in step 1) and is published by the next releasing exchange.
        link(index).store(Self.index(of: current), ordering: .relaxed)
        return current
    }

    // MARK: Walking (read-only, for audits and recovery)

    /// What `walkFreeList()` found.
    public struct FreeListWalk: Hashable, Sendable {
        /// The listed (free) indices, top first, as far as the walk got.
        public var indices: [UInt32]
        /// Nil when the walk reached the end of the list; otherwise the index where it stopped: out of range
        /// (`isOutOfRange`), or listed a second time (a cycle).
        public var brokenAt: UInt32?
        /// Whether `brokenAt` is out of range (else it closes a cycle).
        public var isOutOfRange: Bool
        /// True when the head word (top index and ABA tag) read after the walk equals the one read before it and
        /// the walk was not broken: no pop or push completed in between (each bumps the tag, and a pop marks its
        /// slot only after its exchange of the head), so `indices` is exactly the free list at one instant.
        public var isExact: Bool

        /// Creates a walk record.
        public init(indices: [UInt32], brokenAt: UInt32?, isOutOfRange: Bool, isExact: Bool) {
            self.indices = indices
            self.brokenAt = brokenAt
            self.isOutOfRange = isOutOfRange
            self.isExact = isExact
        }
    }

    /// Walks the free list from the head without changing anything, for audits and for recovery code that must
    /// know exactly which indices are listed (see `FreeListWalk.isExact`). Safe to call while other threads and
    /// processes pop and push; a walk that overlapped them says so (`isExact` false), a list broken by memory
    /// corruption stops the walk at the bad link.
    ///
    /// - Complexity: O(listed indices), at most `capacity` steps; allocates the result.
    public func walkFreeList() -> FreeListWalk {
        // Ordering: sequentially consistent for the head and the links, so that a recoverer's snapshot, its
        // waits and its later pushes are ordered with every other thread's pops and pushes.
        let before = head.load(ordering: .sequentiallyConsistent)
        var indices: [UInt32] = []
        var seen = [Bool](repeating: false, count: capacity)
        var current = Self.index(of: before)
        while current != Self.endOfList {
            guard current < _capacity else {
                return FreeListWalk(indices: indices, brokenAt: current, isOutOfRange: true, isExact: false)
            }
            guard !seen[Int(current)] else {
                return FreeListWalk(indices: indices, brokenAt: current, isOutOfRange: false, isExact: false)
            }
            seen[Int(current)] = true
            indices.append(current)
            current = link(current).load(ordering: .sequentiallyConsistent)
        }
        let after = head.load(ordering: .sequentiallyConsistent)
        return FreeListWalk(indices: indices, brokenAt: nil, isOutOfRange: false, isExact: after == before)
    }

    /// Marks `index` in use without touching the list: for a recoverer that has established (with an exact walk
    /// and its own records) that the index is neither listed nor held, because a thread died between the two
    /// steps of a pop or a push; the next `push` of the index then succeeds. Never call it on a listed index.
    ///
    /// - Precondition: `index < capacity`.
    public func markInUseForRecovery(_ index: UInt32) {
        precondition(index < _capacity, "UnsafeLockFreeIndexStack.markInUseForRecovery: index \(index) out of range")
        // Ordering: sequentially consistent, like the recoverer's walks and pushes around it.
        link(index).store(Self.inUseMarker, ordering: .sequentiallyConsistent)
    }

    // MARK: Inspection

    /// The top index and ABA tag of the head, as one atomic snapshot (for tests and diagnostics).
    internal var _head: (index: UInt32, tag: UInt32) {
        let word = head.load(ordering: .acquiring)
        return (Self.index(of: word), Self.tag(of: word))
    }

    /// Whether `index` is marked in use (popped and not pushed back), for diagnostics. Racy under concurrency.
    ///
    /// - Precondition: `index < capacity`.
    public func isInUse(_ index: UInt32) -> Bool {
        precondition(index < _capacity, "UnsafeLockFreeIndexStack.isInUse: index \(index) out of range")
        return link(index).load(ordering: .acquiring) == Self.inUseMarker
    }

    /// Checks the free list while no thread is popping or pushing, and traps with a message if it is broken.
    ///
    /// Walks the list from the head: every index is in range and appears once, no listed index is marked in use,
    /// and every unlisted index is marked in use. Compiled to nothing
    /// unless `DIVVY_INTERNAL_CHECKS` is set (debug builds and tests).
    ///
    /// - Complexity: O(capacity), and it allocates.
    public func _checkInvariants() {
        #if DIVVY_INTERNAL_CHECKS
        var listed = [Bool](repeating: false, count: capacity)
        var current = Self.index(of: head.load(ordering: .acquiring))
        while current != Self.endOfList {
            precondition(
                current < _capacity, "UnsafeLockFreeIndexStack invariant: listed index \(current) out of range")
            precondition(
                !listed[Int(current)], "UnsafeLockFreeIndexStack invariant: index \(current) listed twice (cycle)")
            listed[Int(current)] = true
            let next = link(current).load(ordering: .acquiring)
            precondition(
                next != Self.inUseMarker,
                "UnsafeLockFreeIndexStack invariant: listed index \(current) is marked in use")
            current = next
        }
        for index in 0..<capacity where !listed[index] {
            precondition(
                link(UInt32(index)).load(ordering: .acquiring) == Self.inUseMarker,
                "UnsafeLockFreeIndexStack invariant: index \(index) is neither listed nor marked in use (leaked)")
        }
        #endif
    }
}
