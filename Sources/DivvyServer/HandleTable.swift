/// A map from block handles to values, for the daemon's per-client holdings: open addressing with linear probing
/// and backward-shift deletion, a multiplicative hash (handles are already well spread: offset and generation).
/// About twice as fast as `Dictionary<UInt64, V>`, whose SipHash dominates a mediated batch.
///
/// Key 0 is never a valid handle, so it marks empty buckets.
struct HandleTable<Value> {
    private var keys: [UInt64]
    private var values: [Value?]
    private var mask: Int
    /// Entries in the table.
    private(set) var count = 0

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = Array(repeating: 0, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
    }

    @inline(__always)
    private func bucket(_ key: UInt64) -> Int {
        // Fibonacci hashing: the high bits of key × 2^64/φ.
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    /// The value for `key`, or nil.
    subscript(key: UInt64) -> Value? {
        get {
            var index = bucket(key)
            while true {
                let candidate = keys[index]
                if candidate == key { return values[index] }
                if candidate == 0 { return nil }
                index = (index + 1) & mask
            }
        }
        set {
            precondition(key != 0, "handle 0 is not a valid key")
            if let newValue { insert(key, newValue) } else { remove(key) }
        }
    }

    /// Inserts a key known to be absent (a freshly allocated handle): no lookup first.
    mutating func insertNew(_ key: UInt64, _ value: Value) {
        #if DIVVY_INTERNAL_CHECKS
        precondition(self[key] == nil, "insertNew of a key already present")
        #endif
        insert(key, value)
    }

    private mutating func insert(_ key: UInt64, _ value: Value) {
        if (count + 1) * 4 > keys.count * 3 { grow() }
        var index = bucket(key)
        while true {
            let candidate = keys[index]
            if candidate == key {
                values[index] = value
                return
            }
            if candidate == 0 {
                keys[index] = key
                values[index] = value
                count += 1
                return
            }
            index = (index + 1) & mask
        }
    }

    private mutating func remove(_ key: UInt64) {
        var index = bucket(key)
        while true {
            let candidate = keys[index]
            if candidate == 0 { return }
            if candidate == key { break }
            index = (index + 1) & mask
        }
        // Backward-shift deletion: move later entries of the probe run into the hole, so lookups never need
        // tombstones.
        var hole = index
        var next = (hole + 1) & mask
        while keys[next] != 0 {
            let home = bucket(keys[next])
            // The entry at `next` may move to `hole` if its home is not in the cyclic range (hole, next].
            let distanceToHole = (next - home) & mask
            let distanceFromHole = (next - hole) & mask
            if distanceToHole >= distanceFromHole {
                keys[hole] = keys[next]
                values[hole] = values[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        keys[hole] = 0
        values[hole] = nil
        count -= 1
    }

    private mutating func grow() {
        let oldKeys = keys
        let oldValues = values
        keys = Array(repeating: 0, count: oldKeys.count * 2)
        values = Array(repeating: nil, count: oldKeys.count * 2)
        mask = keys.count - 1
        count = 0
        for index in oldKeys.indices where oldKeys[index] != 0 {
            insert(oldKeys[index], oldValues[index]!)
        }
    }

    /// Every entry (unordered).
    var entries: [(key: UInt64, value: Value)] {
        keys.indices.compactMap { keys[$0] == 0 ? nil : (keys[$0], values[$0]!) }
    }

    /// Whether the table is empty.
    var isEmpty: Bool { count == 0 }
}
