import Atomics
import Divvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// Joining (and, in a lazy heap, committing a slot's held list), free-slot counts, releasing a left slot.
extension SharedHeap {
    // MARK: Participants

    /// Registers a participant (one per thread) and returns it.
    ///
    /// - Parameter name: a label for diagnostics (the first 32 UTF-8 bytes are stored).
    /// Only a *free* slot is taken: never one whose participant awaits recovery (alive with its process gone, or
    /// dead) nor one that is *leaving* (see `Participant.leave(releasingSlot:)`).
    ///
    /// - Throws: `.participantTableFull` when every slot is taken; `.invalidConfiguration` for a read-only region;
    ///   `.heapFull` when a lazy heap cannot commit the held list of any free slot (the backing store is full).
    public func join(name: String) throws(SharedHeapError) -> Participant {
        guard region.access == .readWrite else {
            throw SharedHeapError(
                .invalidConfiguration, "the region is mapped read-only: a read-only process may verify() and read "
                    + "blocks, not join; open the region read-write")
        }
        // Pid and start time in one word: liveness checks survive pid reuse (see `ProcessIdentity`).
        let pid = getpid()
        let me = ParticipantWord.make(
            state: ParticipantWord.alive, pid: pid, startTime: ProcessIdentity.startTime(of: pid) ?? 0)
        var commitFailure: SharedHeapError?
        for p in 0..<layout.participantCapacity {
            // A slot's held list is backed before the slot is first taken (idempotent, so a commit for a slot
            // someone else takes first is no harm); a slot whose list cannot be backed is passed over.
            if ParticipantWord.state(participantState(p).load(ordering: .relaxed)) == ParticipantWord.free,
                !heldListIsCommitted(p)
            {
                do throws(SharedHeapError) { try commitHeldList(p) } catch {
                    commitFailure = error
                    continue
                }
            }
            // Ordering: acquiring on success, so that everything the previous occupant of the slot wrote (its
            // emptied held list, cleared pending word) before freeing the slot with a releasing store is visible.
            let (claimed, _) = participantState(p).compareExchange(
                expected: ParticipantWord.free, desired: me, successOrdering: .acquiringAndReleasing,
                failureOrdering: .relaxed)
            if claimed {
                // Ordering: relaxed; the slot is ours, and a quota manager sets the allowance only after learning
                // the participant's index from us (a happens-before through its own channel).
                pageAllowance(p).store(unlimitedPages, ordering: .relaxed)
                ownedPageCount(p).store(0, ordering: .relaxed)
                storeParticipantName(p, name)
                clearParticipantTag(p)
                return Participant(heap: self, index: p)
            }
        }
        if let commitFailure { throw commitFailure }
        throw SharedHeapError(
            .participantTableFull, "all \(layout.participantCapacity) participant slots are taken; leave() unused "
                + "participants")
    }

    /// Stores slot `p`'s diagnostic label (the first 32 UTF-8 bytes of `name`, zero-padded). The slot's occupant
    /// writes it, once, after claiming the slot.
    internal func storeParticipantName(_ p: Int, _ name: String) {
        let bytes = Array(name.utf8.prefix(ParticipantRecordField.nameBytes))
        let nameArea = meta + participantOffset(p) + ParticipantRecordField.name
        nameArea.initializeMemory(as: UInt8.self, repeating: 0, count: ParticipantRecordField.nameBytes)
        nameArea.copyMemory(from: bytes, byteCount: bytes.count)
    }

    /// Bytes a participant's *tag* holds (`Participant.setTag(_:)`).
    public static let participantTagSize = ParticipantRecordField.tagBytes

    /// Participant slot `p`'s tag: what its occupant stored with `Participant.setTag(_:)` (all zeros when nothing),
    /// or nil for no such slot or a free one.
    ///
    /// A daemon reads the tags of the slots it took over (`takeOver(participant:name:)`) to learn which session each
    /// one served. Read a live participant's tag only when it cannot be changing (the bytes are not atomic).
    ///
    /// - Complexity: O(1).
    public func tag(ofParticipant p: Int) -> [UInt8]? {
        guard p >= 0, p < layout.participantCapacity,
            ParticipantWord.state(participantState(p).load(ordering: .acquiring)) != ParticipantWord.free
        else { return nil }
        return Array(UnsafeRawBufferPointer(
            start: meta + participantOffset(p) + ParticipantRecordField.tag, count: ParticipantRecordField.tagBytes))
    }

    /// Zeroes slot `p`'s tag (its occupant, or whoever frees the slot).
    internal func clearParticipantTag(_ p: Int) {
        (meta + participantOffset(p) + ParticipantRecordField.tag)
            .initializeMemory(as: UInt8.self, repeating: 0, count: ParticipantRecordField.tagBytes)
    }

    /// Slot `p`'s diagnostic label (see `storeParticipantName`).
    internal func participantName(_ p: Int) -> String {
        let nameArea = UnsafeRawBufferPointer(
            start: meta + participantOffset(p) + ParticipantRecordField.name, count: ParticipantRecordField.nameBytes)
        return String(decoding: nameArea.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Whether participant slot `p`'s held list is backed: once the slot was first joined (in every heap since
    /// layout version 6). Readers skip a held list that is not (it is a hole: all zeros, and reading would back it).
    internal func heldListIsCommitted(_ p: Int) -> Bool {
        // Ordering: acquiring, pairs with the releasing store in `commitHeldList`.
        heldCommitted(p).load(ordering: .acquiring) != 0
    }

    /// Commits participant slot `p`'s held list, then records it in the slot's record.
    internal func commitHeldList(_ p: Int) throws(SharedHeapError) {
        let bytes = layout.heldCapacity(of: p) * SharedHeapLayout.heldEntryStride
        let offset = region.geometry.metadataOffset + layout.heldListOffset(p)
        if let error = lazyCommitFailure() ?? region.commitInPlace(offset: offset, length: bytes) {
            throw SharedHeapError(
                .heapFull, "could not commit the \(bytes)-byte held list of participant slot \(p) in "
                    + "\(region.describing) (\(error)): the backing store (/dev/shm, or memory) is full; free "
                    + "blocks or memory, then join again")
        }
        // Ordering: releasing, pairs with the acquiring load in `heldListIsCommitted`.
        heldCommitted(p).store(1, ordering: .releasing)
    }

    /// How many participant slots are free now (a `join` would find one), out of `participantCapacity`.
    ///
    /// - Complexity: O(participant capacity).
    public var freeParticipantSlots: Int {
        // Ordering: relaxed; a count for admission decisions, stale as soon as it is read.
        (0..<layout.participantCapacity).count {
            ParticipantWord.state(participantState($0).load(ordering: .relaxed)) == ParticipantWord.free
        }
    }

    /// Frees a slot whose participant left with `leave(releasingSlot: false)`, so that `join` may offer it again.
    /// Whoever manages the slots (a daemon) calls it once it has finished with the participant's session.
    ///
    /// - Parameters:
    ///   - p: the slot.
    ///   - pid: the process that left it; a slot left by another process (or not leaving) is not touched.
    /// - Returns: true when the slot was leaving (left by `pid`) and is now free.
    /// - Complexity: O(1).
    @discardableResult
    public func releaseSlot(participant p: Int, pid: Int32) -> Bool {
        guard p >= 0, p < layout.participantCapacity, region.access == .readWrite else { return false }
        // Ordering: acquiring, pairs with leave's releasing store of the leaving word.
        let word = participantState(p).load(ordering: .acquiring)
        guard ParticipantWord.state(word) == ParticipantWord.leaving, ParticipantWord.pid(word) == pid else {
            return false
        }
        // Ordering: releasing on success, pairs with the acquiring claim in `join`: the next occupant sees the
        // emptied held list and cleared words that leave wrote before its leaving store.
        return participantState(p).compareExchange(
            expected: word, desired: ParticipantWord.free, successOrdering: .acquiringAndReleasing,
            failureOrdering: .relaxed).exchanged
    }
}
