import Atomics
import Divvy
import SystemPackage

// Atomic views of the heap's metadata words: page descriptors, block words and links, participant records. Each
// record's fields, their offsets and the memory-ordering rule for each are in one table per record below; the
// accessors use only these names. The comment at each use says why that use's ordering suffices.

/// A page descriptor: `SharedHeapLayout.pageStride` (64) bytes per page at `pagesOffset + page × 64`.
///
/// | offset | size | field | who writes | ordering |
/// |---|---|---|---|---|
/// | 0 | 8 | `state` (`PageWord`) | claimer, owner, recoverer | acquiring-and-releasing CAS to take a page (claim, adopt); releasing stores to give it up (pooled, orphan); acquiring loads before using the page (`locate`); relaxed loads validated by a CAS or for reports |
/// | 8 | 8 | `remoteHead` | anyone (push), owner (take) | releasing CAS push (`pushRemote`); acquiring exchange that takes the whole stack (`collect`); relaxed first guesses |
/// | 16 | 4 | `localHead` | owner only | relaxed |
/// | 20 | 4 | `localCount` | owner only | relaxed |
/// | 24 | 4 | `carved` | owner only | relaxed |
/// | 28 | 4 | `live` | owner only | relaxed |
/// | 32 | 4 | `slotCount` | claimer, before its first allocation | relaxed (published by the block word's releasing store) |
/// | 36 | 4 | — | | |
/// | 40 | 8 | `suspect` | recoverer (set), owner (clear in `collect`) | releasing store / acquiring load, both ways |
/// | 48 | 4 | `collecting` | owner only | relaxed (read only by a recoverer after the owner died) |
/// | 52 | 12 | — | | |
///
/// Owner-only fields change hands with the page: their visibility to the next owner comes from the state word's
/// releasing give-up and acquiring claim, never from their own ordering.
@usableFromInline
internal enum PageDescriptorField {
    @usableFromInline static let state = 0
    @usableFromInline static let remoteHead = 8
    @usableFromInline static let localHead = 16
    @usableFromInline static let localCount = 20
    @usableFromInline static let carved = 24
    @usableFromInline static let live = 28
    @usableFromInline static let slotCount = 32
    @usableFromInline static let suspect = 40
    @usableFromInline static let collecting = 48
}

/// A participant record: `SharedHeapLayout.participantStride` (64) bytes per slot at `participantsOffset + p × 64`.
///
/// | offset | size | field | who writes | ordering |
/// |---|---|---|---|---|
/// | 0 | 8 | `state` (`ParticipantWord`) | joiner, leaver, recoverer, `releaseSlot` | acquiring-and-releasing CAS to claim or free; releasing stores to leave or free; acquiring loads before acting on it; relaxed for counts |
/// | 8 | 8 | `pending` | the participant, its recoverer | releasing stores (visible no later than the block word they announce); acquiring loads by recovery and verify; relaxed clear by recovery |
/// | 16 | 32 | `name` | the joiner | plain bytes, diagnostics only |
/// | 48 | 8 | — (zero; layout versions 4 to 7 kept a page-in-hand record here) | | |
/// | 56 | 4 | `pageAllowance` | quota manager | relaxed (a limit, read as a hint) |
/// | 60 | 4 | `ownedPageCount` | the participant, its recoverer | relaxed |
///
/// Per slot, outside the record: the held list (`heldCapacity` `UInt64` handles at `heldOffset + (p × heldCapacity +
/// index) × 8`; the participant's releasing stores (set after the block word, and clear), relaxed clears by recovery).
/// Per block slot: the block word (`BlockWord`, `UInt64` at `blockWordsOffset + slot × 8`; releasing stores and CAS
/// that commit an allocation, adoption or release, acquiring loads before the block's bytes are used, relaxed on slots
/// that are on no list or the owner's) and its free-list link (`UInt32` at `linksOffset + slot × 4`; relaxed, published
/// by the remote head's releasing push or owned by the page's owner).
@usableFromInline
internal enum ParticipantRecordField {
    @usableFromInline static let state = 0
    @usableFromInline static let pending = 8
    @usableFromInline static let name = 16
    /// The name area's size in bytes.
    @usableFromInline static let nameBytes = 32
    @usableFromInline static let pageAllowance = 56
    @usableFromInline static let ownedPageCount = 60
}

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

    // Page descriptor fields (table: `PageDescriptorField`).

    @inlinable @inline(__always) internal func pageDescriptor(_ page: Int) -> Int {
        layout.pagesOffset + page * SharedHeapLayout.pageStride
    }
    /// Page state word (see `PageWord`).
    @inlinable @inline(__always) internal func pageState(_ page: Int) -> UnsafeAtomic<UInt64> {
        word64(pageDescriptor(page) + PageDescriptorField.state)
    }
    /// Remote-free stack head: the top slot (low 32 bits), `endOfSlots` when empty.
    @inlinable @inline(__always) internal func remoteHead(_ page: Int) -> UnsafeAtomic<UInt64> {
        word64(pageDescriptor(page) + PageDescriptorField.remoteHead)
    }
    /// Local free-list head (owner only).
    @inlinable @inline(__always) internal func localHead(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.localHead)
    }
    /// Local free-list length (owner only).
    @inlinable @inline(__always) internal func localCount(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.localCount)
    }
    /// Slots carved so far in this epoch (owner only): slots at or above it were never handed out.
    @inlinable @inline(__always) internal func carved(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.carved)
    }
    /// Blocks handed out and not yet back on the local list (owner only): allocated + freeing + remote stack.
    @inlinable @inline(__always) internal func live(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.live)
    }
    /// Slots in the page for its class (written when the page leaves the pool).
    @inlinable @inline(__always) internal func slotCount(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.slotCount)
    }
    /// Recovery's *suspect* handle for the page (0 = none): a block whose freer died between committing *freeing*
    /// and pushing it; the page's consumer resolves it at its next `collect`.
    @inlinable internal func suspect(_ page: Int) -> UnsafeAtomic<UInt64> {
        word64(pageDescriptor(page) + PageDescriptorField.suspect)
    }
    /// The chain `collect` is moving (first slot + 1, 0 = none): owner only, read by recovery after a death.
    @inlinable internal func collecting(_ page: Int) -> UnsafeAtomic<UInt32> {
        word32(pageDescriptor(page) + PageDescriptorField.collecting)
    }

    // The page pool of each tier (0 small, 1 span): see `SharedHeapLayout` and `SharedHeap.claimPooledPage`.
    //
    // | word | who writes | ordering |
    // |---|---|---|
    // | bump index (`poolOffset + 128 × tier`) | claimers (compare-and-exchange `n → n + 1`) | releasing advance, acquiring loads (the page below is claimed, the descriptors up to it committed) |
    // | cursor (`+ 64`) | releasers (lower, tag + 1), scanners (raise, same tag) | acquiring-and-releasing lowering, releasing raise, acquiring load before a scan |
    // | bitmap word (`bitmapOffset(ofTier:) + 8 × w`) | releasers (fetch-or), claimers (fetch-and of their own bit) | releasing fetch-or, acquiring loads by scanners, relaxed clear (the state word is the authority) |

    /// The tier's bump index: tier pages at or above it never left the pool.
    @inlinable @inline(__always) internal func poolBump(_ tier: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.poolOffset &+ tier &* SharedHeapLayout.poolTierStride)
    }
    /// The tier's cursor: bitmap word index (low 32 bits; no bit is set below it) | tag (high 32 bits).
    internal func poolCursor(_ tier: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.poolOffset + tier * SharedHeapLayout.poolTierStride + 64)
    }
    /// Word `w` of the tier's free-page bitmap (bit `i`: tier page `64 w + i` came back to the pool).
    internal func poolBitmap(_ tier: Int, _ w: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.bitmapOffset(ofTier: tier) + w * 8)
    }

    // Per block slot (see the note under `ParticipantRecordField`).

    @inlinable @inline(__always) internal func blockWord(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.blockWordsOffset &+ (layout.slotBase(page) &+ slot) &* 8)
    }
    @inlinable @inline(__always) internal func link(_ page: Int, _ slot: Int) -> UnsafeAtomic<UInt32> {
        word32(layout.linksOffset &+ (layout.slotBase(page) &+ slot) &* 4)
    }

    // Participant record fields (table: `ParticipantRecordField`).

    @inlinable @inline(__always) internal func participantOffset(_ p: Int) -> Int {
        layout.participantsOffset + p * SharedHeapLayout.participantStride
    }
    /// Participant state word (see `ParticipantWord`).
    @inlinable internal func participantState(_ p: Int) -> UnsafeAtomic<UInt64> {
        word64(participantOffset(p) + ParticipantRecordField.state)
    }
    /// The handle of the operation the participant is in the middle of, 0 when none.
    @inlinable @inline(__always) internal func pending(_ p: Int) -> UnsafeAtomic<UInt64> {
        word64(participantOffset(p) + ParticipantRecordField.pending)
    }
    /// The most pages the participant may own at once (`unlimitedPages` = no limit).
    @inlinable internal func pageAllowance(_ p: Int) -> UnsafeAtomic<UInt32> {
        word32(participantOffset(p) + ParticipantRecordField.pageAllowance)
    }
    /// How many pages the participant owns (written by it, or by its recoverer).
    @inlinable internal func ownedPageCount(_ p: Int) -> UnsafeAtomic<UInt32> {
        word32(participantOffset(p) + ParticipantRecordField.ownedPageCount)
    }
    @inlinable @inline(__always) internal func held(_ p: Int, _ index: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.heldOffset + (p * layout.heldCapacity + index) * 8)
    }
}
