import Atomics

extension SharedHeap {
    /// The participants that hold the handle's block, as their held lists record it, after checking that the handle
    /// names an allocated block. Read-only; a snapshot (holders may change right after).
    ///
    /// - Throws: as `pointer(for:)`: `.outOfRange`, `.misaligned`, `.staleHandle`.
    /// - Complexity: O(participant capacity × held capacity): a diagnostic; `holderCount(of:)` is O(1).
    public func holders(of handle: SharedHeapHandle) throws(SharedHeapError) -> [Int] {
        _ = try holderCount(of: handle)
        return listedHolders(offsetUnits: handle.offsetUnits, generation: handle.generation)
    }

    /// How many participants hold the handle's block (its block word's holder count), after checking that the
    /// handle names an allocated block.
    ///
    /// - Throws: as `pointer(for:)`: `.outOfRange`, `.misaligned`, `.staleHandle`.
    public func holderCount(of handle: SharedHeapHandle) throws(SharedHeapError) -> Int {
        let location = try locate(handle)
        // Ordering: acquiring, like `pointer(for:)`: the count belongs to the generation we check.
        let word = blockWord(location.page, location.slot).load(ordering: .acquiring)
        guard BlockWord.generation(word) == location.generation, BlockWord.state(word) & 1 == 1 else {
            throw staleError(handle, word)
        }
        return BlockWord.count(word)
    }

    /// Whether participant slot `p` holds the handle's block, as its held list records it (exact while `p` is not
    /// in the middle of adopting or freeing it).
    ///
    /// - Complexity: O(held capacity).
    public func holds(participant p: Int, _ handle: SharedHeapHandle) -> Bool {
        guard p >= 0, p < layout.participantCapacity, handle.heapID == heapID,
            heldListIsCommitted(p)
        else { return false }
        for index in 0..<layout.heldCapacity(of: p) {
            let word = heldGeneration(p, index).load(ordering: .relaxed)
            guard word != 0, word & BlockWord.maximumGeneration == handle.generation else { continue }
            if let entry = readHeld(p, index), entry.generation == handle.generation,
                entry.offsetUnits == handle.offsetUnits
            {
                return true
            }
        }
        return false
    }
}
