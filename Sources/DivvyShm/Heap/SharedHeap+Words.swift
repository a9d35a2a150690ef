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
/// | 32 | 8 | `epochStart` | claimer, before its first allocation | relaxed: the page's allocation serial when it was claimed for its current class; a handle with a generation at most this is from an earlier use of the page (read only to tell a stale handle from a misaligned one) |
/// | 40 | 8 | `suspect` (`SuspectWord`: slot + 1 and generation) | recoverer (set), owner (clear in `collect`) | releasing store / acquiring load, both ways |
/// | 48 | 4 | `collecting` | owner only | relaxed (read only by a recoverer after the owner died) |
/// | 52 | 4 | `slotCount` | claimer, before its first allocation | relaxed (published by the block word's releasing store) |
/// | 56 | 8 | `generation` | owner only | relaxed: the page's allocation serial, the generation of its latest allocation (0: none yet); never reset, so a generation is never made twice in a page |
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
    @usableFromInline static let epochStart = 32
    @usableFromInline static let slotCount = 52
    @usableFromInline static let suspect = 40
    @usableFromInline static let collecting = 48
    @usableFromInline static let generation = 56
}

/// A page's suspect word (see `SharedHeap.recover(participant:)`): slot + 1 (bits 48–63) | generation (bits
/// 0–47); 0 = none. One word, so that setting and clearing it are single commits (a page has at most 65,535
/// slots, checked at format).
@usableFromInline
internal enum SuspectWord {
    @inlinable static func make(slot: Int, generation: UInt64) -> UInt64 {
        UInt64(truncatingIfNeeded: slot &+ 1) << 48 | generation & BlockWord.maximumGeneration
    }
    /// The slot, or nil for none.
    @inlinable static func slot(_ word: UInt64) -> Int? { word == 0 ? nil : Int(truncatingIfNeeded: word >> 48) &- 1 }
    @inlinable static func generation(_ word: UInt64) -> UInt64 { word & BlockWord.maximumGeneration }
}

/// A participant record: `SharedHeapLayout.participantStride` (128) bytes per slot at `participantsOffset + p × 128`.
///
/// | offset | size | field | who writes | ordering |
/// |---|---|---|---|---|
/// | 0 | 8 | `state` (`ParticipantWord`) | joiner, leaver, recoverer, `releaseSlot` | acquiring-and-releasing CAS to claim or free; releasing stores to leave or free; acquiring loads before acting on it; relaxed for counts |
/// | 8 | 8 | `pendingOffset` | the participant, its recoverer | the operation in flight (`PendingOperation`): the block's offset in 16-byte units + 1, 0 = none. The commit of the announcement: releasing store after `pendingGeneration` (visible no later than the block word it announces); cleared (0) by a releasing store; acquiring loads |
/// | 16 | 8 | `pendingGeneration` | the participant, its recoverer | the block's generation (bits 0–47) and the operation (`PendingOperation`, bits 56–63); relaxed store before `pendingOffset`, or a releasing store alone to change only the operation |
/// | 24 | 8 | — (zero; layout versions 4 to 7 kept a page-in-hand record here) | | |
/// | 32 | 4 | `pageAllowance` | quota manager | relaxed (a limit, read as a hint) |
/// | 36 | 4 | `ownedPageCount` | the participant, its recoverer | relaxed |
/// | 40 | 4 | `heldCommitted` | the joiner (lazy heaps) | releasing store of 1 once the slot's held list is backed; never cleared; acquiring loads |
/// | 48 | 32 | `name` | the joiner | plain bytes, diagnostics only |
/// | 80 | 48 | `tag` | the occupant (`Participant.setTag`) | plain bytes for the embedding program (divvyd: the session a slot serves); zeroed by `join` before the slot is returned and by the slot's release (`leave`, `recover`), kept by `takeOver`; read by a successor only after `takeOver` (ordered by the recovery lock) |
///
/// Per slot, outside the record: the held list (`heldCapacity(of: p)` entries of 16 bytes at `heldListOffset(p) +
/// index × 16`: a generation word — the generation, bit 63 set, 0 = empty — and an offset word — offset / 16;
/// the participant writes the offset word, then the generation word (releasing), after the block word's commit, and
/// clears the generation word (releasing); readers load the generation word (acquiring), the offset word, and the
/// generation word again, which must not have changed).
/// Per block slot: the block word (`BlockWord`, `UInt64` at `blockWordsOffset + slot × 8`; releasing stores and CAS
/// that commit an allocation, adoption or release, acquiring loads before the block's bytes are used, relaxed on slots
/// that are on no list or the owner's) and its free-list link (`UInt32` at `linksOffset + slot × 4`; relaxed, published
/// by the remote head's releasing push or owned by the page's owner).
@usableFromInline
internal enum ParticipantRecordField {
    @usableFromInline static let state = 0
    @usableFromInline static let pendingOffset = 8
    @usableFromInline static let pendingGeneration = 16
    @usableFromInline static let pageAllowance = 32
    @usableFromInline static let ownedPageCount = 36
    @usableFromInline static let heldCommitted = 40
    @usableFromInline static let name = 48
    /// The name area's size in bytes.
    @usableFromInline static let nameBytes = 32
    @usableFromInline static let tag = 80
    /// The tag area's size in bytes (`SharedHeap.participantTagSize`).
    @usableFromInline static let tagBytes = 48
}

/// The operation a participant announces in its pending words before it commits it to a block word.
///
/// `adopt` and `free` are the two whose commit (a compare-and-exchange of the holder count) recovery cannot read
/// back from the block word alone; the participant turns them into `adoptWaiting` / `freeWaiting` — "my
/// compare-and-exchange has not happened" — while a recoverer has the block frozen, so that every live
/// participant's holding of a frozen block is known (see `SharedHeap.recover(participant:)`).
@usableFromInline
internal enum PendingOperation: UInt8 {
    case allocate = 1
    case adopt = 2
    case free = 3
    case adoptWaiting = 4
    case freeWaiting = 5
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
    /// The page's allocation serial when it was claimed for its current class (see `PageDescriptorField`).
    @inlinable internal func epochStart(_ page: Int) -> UnsafeAtomic<UInt64> {
        word64(pageDescriptor(page) + PageDescriptorField.epochStart)
    }
    /// The page's allocation serial (owner only): the generation of the latest allocation in the page, never reset.
    @inlinable @inline(__always) internal func pageGeneration(_ page: Int) -> UnsafeAtomic<UInt64> {
        word64(pageDescriptor(page) + PageDescriptorField.generation)
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
    /// The offset (16-byte units + 1) of the block the participant's operation in flight is on; 0 when none.
    @inlinable @inline(__always) internal func pendingOffset(_ p: Int) -> UnsafeAtomic<UInt64> {
        word64(participantOffset(p) + ParticipantRecordField.pendingOffset)
    }
    /// The generation (bits 0–47) and `PendingOperation` (bits 56–63) of the operation in flight.
    @inlinable @inline(__always) internal func pendingGeneration(_ p: Int) -> UnsafeAtomic<UInt64> {
        word64(participantOffset(p) + ParticipantRecordField.pendingGeneration)
    }
    /// Lazy heaps: 1 once the slot's held list is backed.
    @inlinable internal func heldCommitted(_ p: Int) -> UnsafeAtomic<UInt32> {
        word32(participantOffset(p) + ParticipantRecordField.heldCommitted)
    }
    /// The most pages the participant may own at once (`unlimitedPages` = no limit).
    @inlinable internal func pageAllowance(_ p: Int) -> UnsafeAtomic<UInt32> {
        word32(participantOffset(p) + ParticipantRecordField.pageAllowance)
    }
    /// How many pages the participant owns (written by it, or by its recoverer).
    @inlinable internal func ownedPageCount(_ p: Int) -> UnsafeAtomic<UInt32> {
        word32(participantOffset(p) + ParticipantRecordField.ownedPageCount)
    }
    /// Held-list entry `index` of participant `p`: its generation word (generation | bit 63; 0 = empty).
    @inlinable @inline(__always) internal func heldGeneration(_ p: Int, _ index: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.heldListOffset(p) &+ index &* SharedHeapLayout.heldEntryStride)
    }
    /// Held-list entry `index` of participant `p`: its offset word (offset / 16).
    @inlinable @inline(__always) internal func heldOffset(_ p: Int, _ index: Int) -> UnsafeAtomic<UInt64> {
        word64(layout.heldListOffset(p) &+ index &* SharedHeapLayout.heldEntryStride &+ 8)
    }
}
