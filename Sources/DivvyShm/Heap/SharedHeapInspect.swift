import Atomics

extension SharedHeap {
    /// The participants that hold the handle's block (its holder mask, as participant indices), after checking
    /// that the handle names an allocated block. Read-only; a snapshot (holders may change right after).
    ///
    /// - Throws: as `pointer(for:)`: `.outOfRange`, `.misaligned`, `.staleHandle`.
    public func holders(of handle: SharedHeapHandle) throws(SharedHeapError) -> [Int] {
        let location = try locate(handle)
        // Ordering: acquiring, like `pointer(for:)`: the mask belongs to the generation we check.
        let word = blockWord(location.page, location.slot).load(ordering: .acquiring)
        guard BlockWord.generation(word) == location.generation, BlockWord.state(word) == BlockWord.allocated else {
            throw staleError(handle, word)
        }
        let mask = BlockWord.holders(word)
        return (0..<layout.participantCapacity).filter { mask & (1 << UInt32($0)) != 0 }
    }
}
