import Atomics
import Divvy
import SystemPackage

// Atomic views of the heap's metadata words: page descriptors, block words and links, participant records.
extension SharedHeap {
    // MARK: Metadata accessors

    @inlinable @inline(__always)
    internal func word64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic<UInt64>(at: (meta + offset).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    @inlinable @inline(__always)
    internal func word32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic<UInt32>(at: (meta + offset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    @inlinable @inline(__always) internal func pageDescriptor(_ page: Int) -> Int { layout.pagesOffset + page * SharedHeapLayout.pageStride }
    /// Page state word (see `PageWord`).
    @inlinable @inline(__always) internal func pageState(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page)) }
    /// Remote-free stack head: the top slot (low 32 bits), `endOfSlots` when empty.
    @inlinable @inline(__always) internal func remoteHead(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page) + 8) }
    /// Local free-list head (owner only).
    @inlinable @inline(__always) internal func localHead(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 16) }
    /// Local free-list length (owner only).
    @inlinable @inline(__always) internal func localCount(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 20) }
    /// Slots carved so far in this epoch (owner only): slots at or above it were never handed out.
    @inlinable @inline(__always) internal func carved(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 24) }
    /// Blocks handed out and not yet back on the local list (owner only): allocated + freeing + remote stack.
    @inlinable @inline(__always) internal func live(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 28) }
    /// Slots in the page for its class (written when the page leaves the pool).
    @inlinable @inline(__always) internal func slotCount(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 32) }
    /// Recovery's *suspect* handle for the page (0 = none): a block whose freer died between committing *freeing*
    /// and pushing it; the page's consumer resolves it at its next `collect`.
    @inlinable internal func suspect(_ page: Int) -> UnsafeAtomic<UInt64> { word64(pageDescriptor(page) + 40) }
    /// The chain `collect` is moving (first slot + 1, 0 = none): owner only, read by recovery after a death.
    @inlinable internal func collecting(_ page: Int) -> UnsafeAtomic<UInt32> { word32(pageDescriptor(page) + 48) }

    @inlinable @inline(__always) internal func blockWord(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.blockWordsOffset &+ (layout.slotBase(page) &+ slot) &* 8)
    }
    @inlinable @inline(__always) internal func link(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt32> {
        word32(layout.linksOffset &+ (layout.slotBase(page) &+ slot) &* 4)
    }

    @inlinable @inline(__always) internal func participantOffset(_ p: Int) -> Int {
        layout.participantsOffset + p * SharedHeapLayout.participantStride
    }
    /// Participant state word (see `ParticipantWord`).
    @inlinable internal func participantState(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p)) }
    /// The handle of the operation the participant is in the middle of, 0 when none.
    @inlinable @inline(__always) internal func pending(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p) + 8) }
    /// The page the participant is moving between the pool and its ownership (see `PageInHand`), 0 when none.
    @inlinable internal func pageInHand(_ p: Int) -> UnsafeAtomic<UInt64> { word64(participantOffset(p) + 48) }
    /// The most pages the participant may own at once (`unlimitedPages` = no limit).
    @inlinable internal func pageAllowance(_ p: Int) -> UnsafeAtomic<UInt32> { word32(participantOffset(p) + 56) }
    /// How many pages the participant owns (written by it, or by its recoverer).
    @inlinable internal func ownedPageCount(_ p: Int) -> UnsafeAtomic<UInt32> { word32(participantOffset(p) + 60) }
    @inlinable @inline(__always) internal func held(_ p: Int, _ index: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.heldOffset + (p * layout.heldCapacity + index) * 8)
    }
}
