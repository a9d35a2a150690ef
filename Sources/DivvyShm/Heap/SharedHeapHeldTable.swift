/// A participant's process-local index of its held list: handle → entry of the shared held list, plus the stack
/// of empty entries. Replaces a `Dictionary` and an `Array` on the allocate/free hot path (hashing with SipHash
/// and copy-on-write checks cost more than the rest of a pair).
///
/// Open addressing with linear probing over a power-of-two table at most half full, keys (raw handles) hashed by
/// one multiplication of their offset half (Fibonacci hashing); deletion shifts the following run back, so there are no tombstones and a
/// lookup stops at the first empty bucket. Key 0 marks an empty bucket (0 is never a valid handle).
///
/// Process-local and single-threaded, like the participant that owns it.
@usableFromInline
internal struct SharedHeapHeldTable {
    /// Buckets: key (raw handle, 0 = empty), value (held-list entry).
    @usableFromInline let keys: UnsafeMutablePointer<UInt64>
    @usableFromInline let values: UnsafeMutablePointer<Int32>
    @usableFromInline let mask: Int
    @usableFromInline let shift: UInt64
    /// Empty held-list entries (a stack), and how many there are.
    @usableFromInline let free: UnsafeMutablePointer<Int32>
    @usableFromInline var freeCount: Int
    /// Entries in use.
    @usableFromInline var count = 0

    /// A table for a held list of `capacity` entries, all empty (entry 0 is handed out first).
    init(capacity: Int) {
        var buckets = 16
        while buckets < 2 * capacity { buckets <<= 1 }
        keys = .allocate(capacity: buckets)
        keys.initialize(repeating: 0, count: buckets)
        values = .allocate(capacity: buckets)
        values.initialize(repeating: -1, count: buckets)
        mask = buckets - 1
        shift = UInt64(64 - buckets.trailingZeroBitCount)
        free = .allocate(capacity: capacity)
        for i in 0..<capacity { free[i] = Int32(capacity - 1 - i) }
        freeCount = capacity
    }

    /// Frees the memory (the owner calls it once, from its deinit).
    func deallocate() {
        keys.deallocate()
        values.deallocate()
        free.deallocate()
    }

    /// The home bucket of a handle: a hash of its *offset* half only. A participant holds at most one handle per
    /// block (one generation is live at a time), so this loses nothing, and a block freed and allocated again
    /// lands in the same, cache-warm bucket (hashing the generation too sent every allocate+free pair to a
    /// random bucket: a cache miss per operation in a 64 KiB table).
    @inlinable @inline(__always) func bucket(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The held-list entry of `key`, or nil.
    @inlinable @inline(__always) func find(_ key: UInt64) -> Int? {
        var i = bucket(key)
        while true {
            let k = keys[i]
            if k == key { return Int(values[i]) }
            if k == 0 { return nil }
            i = (i &+ 1) & mask
        }
    }

    /// Records `key` at `entry` (the key must be absent).
    @inlinable @inline(__always) mutating func insert(_ key: UInt64, _ entry: Int) {
        var i = bucket(key)
        while keys[i] != 0 { i = (i &+ 1) & mask }
        keys[i] = key
        values[i] = Int32(truncatingIfNeeded: entry)
        count &+= 1
    }

    /// Removes `key` (which must be present) and returns its entry.
    @inlinable @inline(__always) @discardableResult mutating func remove(_ key: UInt64) -> Int {
        var i = bucket(key)
        while keys[i] != key { i = (i &+ 1) & mask }
        let entry = Int(values[i])
        // Backward-shift deletion: move later members of the probe run into the hole when their home bucket
        // does not lie (cyclically) after the hole.
        var hole = i
        var j = (i &+ 1) & mask
        while keys[j] != 0 {
            let home = bucket(keys[j])
            // j's home is cyclically in (hole, j]: it must stay; otherwise it moves into the hole.
            let stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j)
            if !stays {
                keys[hole] = keys[j]
                values[hole] = values[j]
                hole = j
            }
            j = (j &+ 1) & mask
        }
        keys[hole] = 0
        values[hole] = -1
        count &-= 1
        return entry
    }

    /// Takes an empty held-list entry; nil when the list is full.
    @inlinable @inline(__always) mutating func takeEntry() -> Int? {
        guard freeCount > 0 else { return nil }
        freeCount &-= 1
        return Int(free[freeCount])
    }

    /// Gives an entry back.
    @inlinable @inline(__always) mutating func returnEntry(_ entry: Int) {
        free[freeCount] = Int32(truncatingIfNeeded: entry)
        freeCount &+= 1
    }

    /// Every key (unordered).
    var allKeys: [UInt64] { (0...mask).compactMap { keys[$0] == 0 ? nil : keys[$0] } }
    /// Every held-list entry in use (unordered).
    var allEntries: [Int] { (0...mask).compactMap { keys[$0] == 0 ? nil : Int(values[$0]) } }
}
