import DivvyShm

/// A map from block handles to values, for the daemon's per-client holdings: open addressing with linear probing
/// and backward-shift deletion, a multiplicative hash (handles are already well spread: offset and generation).
/// About twice as fast as `Dictionary<SharedHeapHandle, V>`, whose SipHash dominates a mediated batch.
///
/// Keys are whole 128-bit handles: two handles that differ in any bit (heap id, generation, offset) are different
/// keys. The zero handle is never a valid handle, so it marks empty buckets.
struct HandleTable<Value> {
    private static var empty: SharedHeapHandle { SharedHeapHandle(low: 0, high: 0) }
    private var keys: [SharedHeapHandle]
    private var values: [Value?]
    private var mask: Int
    /// Entries in the table.
    private(set) var count = 0

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = Array(repeating: Self.empty, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
    }

    @inline(__always)
    private func bucket(_ key: SharedHeapHandle) -> Int {
        // Fibonacci hashing of both words folded into one: the high bits of that × 2^64/φ. Within one heap `high`
        // is mostly the heap id, so `low` (offset and generation) does most of the spreading.
        let folded = key.low ^ (key.high &* 0xC2B2_AE3D_27D4_EB4F)
        return Int(truncatingIfNeeded: (folded &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    /// The value for `key`, or nil.
    subscript(key: SharedHeapHandle) -> Value? {
        get {
            var index = bucket(key)
            while true {
                let candidate = keys[index]
                if candidate == key { return values[index] }
                if candidate.isZero { return nil }
                index = (index + 1) & mask
            }
        }
        set {
            precondition(!key.isZero, "the zero handle is not a valid key")
            if let newValue { insert(key, newValue) } else { remove(key) }
        }
    }

    /// Inserts a key known to be absent (a freshly allocated handle): no lookup first.
    mutating func insertNew(_ key: SharedHeapHandle, _ value: Value) {
        #if DIVVY_INTERNAL_CHECKS
        precondition(self[key] == nil, "insertNew of a key already present")
        #endif
        insert(key, value)
    }

    private mutating func insert(_ key: SharedHeapHandle, _ value: Value) {
        if (count + 1) * 4 > keys.count * 3 { grow() }
        var index = bucket(key)
        while true {
            let candidate = keys[index]
            if candidate == key {
                values[index] = value
                return
            }
            if candidate.isZero {
                keys[index] = key
                values[index] = value
                count += 1
                return
            }
            index = (index + 1) & mask
        }
    }

    private mutating func remove(_ key: SharedHeapHandle) {
        var index = bucket(key)
        while true {
            let candidate = keys[index]
            if candidate.isZero { return }
            if candidate == key { break }
            index = (index + 1) & mask
        }
        // Backward-shift deletion: move later entries of the probe run into the hole, so lookups never need
        // tombstones.
        var hole = index
        var next = (hole + 1) & mask
        while !keys[next].isZero {
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
        keys[hole] = Self.empty
        values[hole] = nil
        count -= 1
    }

    private mutating func grow() {
        let oldKeys = keys
        let oldValues = values
        keys = Array(repeating: Self.empty, count: oldKeys.count * 2)
        values = Array(repeating: nil, count: oldKeys.count * 2)
        mask = keys.count - 1
        count = 0
        for index in oldKeys.indices where !oldKeys[index].isZero {
            insert(oldKeys[index], oldValues[index]!)
        }
    }

    /// Every entry (unordered).
    var entries: [(key: SharedHeapHandle, value: Value)] {
        keys.indices.compactMap { keys[$0].isZero ? nil : (keys[$0], values[$0]!) }
    }

    /// Whether the table is empty.
    var isEmpty: Bool { count == 0 }
}
