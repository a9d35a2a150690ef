/// The connected clients' ids in ascending order, kept as they come and go, so that an `admin clients` page
/// (PROTOCOL.md, "Admin paging") finds where it starts by binary search and walks only its own rows, instead of
/// filtering and sorting every session for every page.
///
/// Ids are handed out in increasing order (until they wrap at 2³²), so an insertion is usually an append.
struct SortedClientIDs {
    private(set) var ids: [UInt32] = []

    /// How many ids there are.
    var count: Int { ids.count }

    /// The index of the first id greater than or equal to `id` (`count` if none is).
    /// - Complexity: O(log n).
    private func firstIndex(notBelow id: UInt32) -> Int {
        var low = 0
        var high = ids.count
        while low < high {
            let middle = low + (high - low) / 2
            if ids[middle] < id { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Adds `id` (no effect if present).
    /// - Complexity: O(1) when `id` is the largest yet, else O(n).
    mutating func insert(_ id: UInt32) {
        if let last = ids.last, last >= id {
            let index = firstIndex(notBelow: id)
            if index < ids.count, ids[index] == id { return }
            ids.insert(id, at: index)
        } else {
            ids.append(id)
        }
    }

    /// Removes `id` (no effect if absent).
    /// - Complexity: O(log n) to find, plus moving the ids after it (a `memmove` of at most 4 bytes per client).
    mutating func remove(_ id: UInt32) {
        let index = firstIndex(notBelow: id)
        if index < ids.count, ids[index] == id { ids.remove(at: index) }
    }

    /// The ids greater than `cursor`, ascending.
    /// - Complexity: O(log n); iterating the result is O(1) per id.
    func after(_ cursor: UInt32) -> ArraySlice<UInt32> {
        cursor == .max ? ids[ids.count...] : ids[firstIndex(notBelow: cursor + 1)...]
    }
}
