import Atomics
import Divvy

#if canImport(Glibc)
import Glibc
#endif

extension SharedHeap {
    /// One participant of a heap: a thread in some process that allocates, adopts and frees blocks.
    ///
    /// A participant owns the pages it allocates from (only it pops their local free lists) and holds blocks:
    /// each holding is one unit of the block word's holder count and one entry in the participant's held list in
    /// metadata (the entry is the truth, the count a cache of it that recovery can recompute).
    /// Not `Sendable`: use it from one thread at a time (like `ConcurrentSlab.Local`). Frees of blocks in its
    /// pages by others land on the pages' remote-free stacks, which it collects when it runs out of room.
    ///
    /// Every operation follows the same commit discipline, so that recovery can interpret a participant that died
    /// at any instruction (see `SharedHeap.recover(participant:)`):
    /// 1. announce the operation and the handle in the pending words (release);
    /// 2. one store / compare-and-exchange of the block word — the commit;
    /// 3. write (or empty) one held-list entry;
    /// 4. end the announcement.
    /// While a recoverer has the block frozen (recounting its holders), an adopt or free re-announces itself as
    /// *waiting* — its commit has not happened — and waits for the block to thaw.
    public final class Participant {
        /// The heap (kept alive by the participant).
        public let heap: SharedHeap
        /// The slot in the participant table.
        public let index: Int
        /// The hot mutable state lives behind pointers (as in `Slab`): class stored properties mutated on every
        /// operation would cost a dynamic exclusivity check each (`swift_beginAccess`, a TLS lookup).
        private let hot: UnsafeMutablePointer<Hot>
        private struct Hot {
            var left = false
            /// The number of `pageSize` units of the pages in `ownedPages` (mirrored in the shared owned-pages word).
            var ownedPageTotal = 0
            /// Units of the extents this participant holds (allocated or adopted): they count against the page
            /// allowance with the pages it owns.
            var extentUnitsHeld = 0
        }
        /// Where each held block sits in the shared held list (a process-local index of it, keyed by the block's
        /// offset in 16-byte units + 1: a participant holds a block at most once, and a held block keeps its
        /// generation, so the offset alone names the holding).
        private let heldStorage: UnsafeMutablePointer<SharedHeapHeldTable>
        /// The page each class allocates from, or -1 (one entry per class).
        private let currentPage: UnsafeMutablePointer<Int>
        private var left: Bool {
            get { hot.pointee.left }
            set { hot.pointee.left = newValue }
        }
        private var ownedPageTotal: Int {
            get { hot.pointee.ownedPageTotal }
            set { hot.pointee.ownedPageTotal = newValue }
        }
        private var extentUnitsHeld: Int {
            get { hot.pointee.extentUnitsHeld }
            set { hot.pointee.extentUnitsHeld = newValue }
        }
        private var held: SharedHeapHeldTable {
            unsafeAddress { UnsafePointer(heldStorage) }
            unsafeMutableAddress { heldStorage }
        }
        #if DIVVY_INTERNAL_CHECKS
        /// Test hook: the operation and step after which this participant "dies" (stops, marks itself left
        /// without leaving, and throws `.participantLeft`): what a SIGKILL at that point leaves behind.
        internal var _dieAfter: (operation: String, step: Int)?
        #endif
        /// Pages this participant owns, per size class (touched only when a class's current page is full).
        private var ownedPages: [[Int]]

        internal init(heap: SharedHeap, index: Int) {
            self.heap = heap
            self.index = index
            hot = .allocate(capacity: 1)
            hot.initialize(to: Hot())
            heldStorage = .allocate(capacity: 1)
            heldStorage.initialize(to: SharedHeapHeldTable(capacity: heap.layout.heldCapacity(of: index)))
            ownedPages = Array(repeating: [], count: heap.layout.classSizes.count)
            currentPage = .allocate(capacity: heap.layout.classSizes.count)
            currentPage.initialize(repeating: -1, count: heap.layout.classSizes.count)
        }

        /// Rebuilds the process-local state (the held-list index, the owned pages) from the shared records of
        /// this participant's slot: for a participant that takes over a slot (`SharedHeap.takeOver`). The slot
        /// must be quiescent (its previous process gone, the takeover settled).
        internal func rebuildFromRecords() {
            let capacity = heap.heldListIsCommitted(index) ? heap.layout.heldCapacity(of: index) : 0
            var used = [Bool](repeating: false, count: capacity)
            for entry in 0..<capacity {
                guard let record = heap.readHeld(index, entry) else { continue }
                held.insert(record.offsetUnits &+ 1, entry)
                used[entry] = true
                // An extent's units count against the allowance (see `checkExtentAllowance`).
                let handle = SharedHeapHandle(
                    heapID: heap.heapID, dataOffset: Int(truncatingIfNeeded: record.offsetUnits << 4),
                    generation: record.generation)
                if let location = try? heap.locate(handle), heap.layout.isExtent(location.page) {
                    extentUnitsHeld += location.blockSize / heap.layout.pageSize
                }
            }
            // The empty entries, in the order a fresh table hands them out (lowest first).
            held.freeCount = 0
            for entry in stride(from: capacity - 1, through: 0, by: -1) where !used[entry] {
                held.returnEntry(entry)
            }
            for page in heap.readablePages().joined() {
                let state = heap.pageState(page).load(ordering: .acquiring)
                guard PageWord.kind(state) == PageWord.owned, PageWord.owner(state) == index else { continue }
                notePageTaken(page, PageWord.sizeClass(state))
            }
        }

        deinit {
            if !left { leave() }
            heldStorage.pointee.deallocate()
            heldStorage.deallocate()
            hot.deallocate()
            currentPage.deallocate()
        }

        /// Stores `bytes` (at most `SharedHeap.participantTagSize`; the rest is zeroed) in this participant's slot,
        /// for a successor that takes the slot over (`SharedHeap.takeOver(participant:name:)`,
        /// `SharedHeap.tag(ofParticipant:)`): divvyd records there which session the slot serves. The heap gives
        /// the bytes no meaning; `join` starts with zeros, and leaving or recovery clears them.
        ///
        /// - Throws: `.invalidConfiguration` for more than `participantTagSize` bytes; `.participantLeft`.
        public func setTag(_ bytes: [UInt8]) throws(SharedHeapError) {
            try checkJoined()
            guard bytes.count <= SharedHeap.participantTagSize else {
                throw SharedHeapError(
                    .invalidConfiguration, "a participant tag holds \(SharedHeap.participantTagSize) bytes, not "
                        + "\(bytes.count)")
            }
            heap.clearParticipantTag(index)
            (heap.meta + heap.participantOffset(index) + ParticipantRecordField.tag)
                .copyMemory(from: bytes, byteCount: bytes.count)
        }

        /// How many blocks this participant holds.
        public var heldCount: Int { held.count }

        /// Whether this participant holds the handle's block.
        ///
        /// - Complexity: O(1).
        public func holds(_ handle: SharedHeapHandle) -> Bool {
            guard handle.heapID == heap.heapID, let entry = held.find(handle.offsetUnits &+ 1)
            else { return false }
            return heap.readHeld(index, entry)?.generation == handle.generation
        }

        /// The handles this participant holds (unordered).
        public var heldHandles: [SharedHeapHandle] {
            held.allEntries.compactMap { entry in
                heap.readHeld(index, entry).map {
                    SharedHeapHandle(heapID: heap.heapID, dataOffset: Int($0.offsetUnits) << 4, generation: $0.generation)
                }
            }
        }

        /// Test hook (see `_dieAfter`); compiled to nothing without `DIVVY_INTERNAL_CHECKS`.
        @inline(__always)
        private func crashPoint(_ operation: String, _ step: Int) throws(SharedHeapError) {
            #if DIVVY_INTERNAL_CHECKS
            if let point = _dieAfter, point.step == step, point.operation == operation {
                _simulateDeath()
                throw SharedHeapError(.participantLeft, "simulated death after \(operation) step \(step)")
            }
            #endif
        }

        /// Test hook: from now on this participant does nothing, as if its process had been killed: its slot,
        /// holdings, pages and pending word stay as they are, for `SharedHeap.recover(participant:)`.
        internal func _simulateDeath() {
            left = true
        }

        /// Collects the remote frees of every page this participant owns (also resolving a *suspect* block
        /// recovery left on one of them). Allocation does this on its own when it runs out of room; call it to
        /// make the heap's accounting exact at once (before `verify()`, or when idle).
        ///
        /// - Returns: how many blocks came back to the local lists.
        /// - Complexity: O(pages owned + blocks collected).
        @discardableResult
        public func collectRemoteFrees() -> Int {
            guard !left else { return 0 }
            var count = 0
            for pages in ownedPages {
                for page in pages { count += heap.collect(page) }
            }
            return count
        }

        @inline(__always)
        private func checkJoined() throws(SharedHeapError) {
            if left { throw leftError() }
        }

        @inline(never)
        private func leftError() -> SharedHeapError {
            SharedHeapError(.participantLeft, "participant \(index) has left the heap")
        }

        private func takeHeldSlot() throws(SharedHeapError) -> Int {
            guard let slot = held.takeEntry() else {
                throw SharedHeapError(
                    .heldListFull, "participant \(index) already holds \(heap.layout.heldCapacity(of: index)) blocks (its "
                        + "held list is full); free some, or create the heap with a larger heldCapacity")
            }
            return slot
        }

        // MARK: Allocate

        /// Allocates a block of at least `size` bytes (its class's size), held by this participant.
        ///
        /// - Throws: `.unsupportedSize` (zero, or above `largestBlockSize`), `.heldListFull`, `.heapFull`
        ///   (no free block of the class, no free or orphan page), `.pageAllowanceExhausted` (a new page is
        ///   needed and this participant already owns as many as `SharedHeap.setPageAllowance` allows),
        ///   `.participantLeft`. No block changes then (before failing for want of a page, the participant may
        ///   give back its own pages that hold no live block).
        /// - Complexity: O(1) amortized; O(pages) when the pool is empty and orphan pages are searched.
        public func allocate(_ size: Int) throws(SharedHeapError) -> SharedHeapHandle {
            try allocateBlock(size).handle
        }

        /// Allocates like `allocate(_:)` and also returns what a caller needs next: the block's size (its class's)
        /// and its address in this process's mapping. Nothing is looked up again: the handle was just made from
        /// the page and slot the allocation took, so checking it (`SharedHeap.pointer(for:)`) would only repeat
        /// the work.
        ///
        /// - Throws: as `allocate(_:)`.
        /// - Complexity: as `allocate(_:)`.
        @inline(__always)
        public func allocateBlock(
            _ size: Int
        ) throws(SharedHeapError) -> (handle: SharedHeapHandle, blockSize: Int, address: UnsafeMutableRawPointer) {
            try checkJoined()
            guard size > 0, let sizeClass = heap.sizeClass(for: size) else { return try allocateExtent(size) }
            if held.freeCount == 0 { _ = try takeHeldSlot() }
            // The fast path inline: a free slot in the class's current page; else the slow path (collect, new page).
            let current = currentPage[sizeClass]
            let (page, slot): (Int, Int)
            if current >= 0, let (s, _) = heap.popLocal(current) {
                (page, slot) = (current, s)
            } else {
                (page, slot, _) = try takeSlot(sizeClass)
            }
            try crashPoint("allocate", 1)
            // Safe: checked above that an entry is free, and nothing took one since.
            let heldSlot = held.takeEntry()!
            let blockSize = heap.layout.classSizes[sizeClass]
            // The generation: the page's next allocation serial (owner only; never reset, so never made twice).
            let serial = heap.pageGeneration(page)
            let generation = serial.load(ordering: .relaxed) &+ 1
            guard generation <= BlockWord.maximumGeneration else {
                // Undo the pop (the slot back on the local list, no longer live).
                heap.pushLocal(page, slot)
                heap.live(page).store(heap.live(page).load(ordering: .relaxed) &- 1, ordering: .relaxed)
                held.returnEntry(heldSlot)
                throw exhaustedPageError(page)
            }
            serial.store(generation, ordering: .relaxed)
            let offset = heap.layout.pageBase(page) &+ slot &* blockSize
            let handle = SharedHeapHandle(heapID: heap.heapID, dataOffset: offset, generation: generation)
            // Step 1 (releasing, inside `announce`): visible no later than the block word.
            heap.announce(index, .allocate, handle)
            try crashPoint("allocate", 2)
            // Step 2, the commit. Ordering: releasing, so a process that learns the handle through shared memory
            // (acquiring) sees the word. The slot is ours alone (popped from our local list): a store suffices.
            heap.blockWord(page, slot).store(
                BlockWord.make(generation: generation, count: 1, state: BlockWord.allocated), ordering: .releasing)
            try crashPoint("allocate", 3)
            // Step 3.
            heap.writeHeld(index, heldSlot, handle)
            held.insert(handle.offsetUnits &+ 1, heldSlot)
            try crashPoint("allocate", 4)
            // Step 4.
            heap.clearPending(index)
            // Safe: the offset lies in the data pages (it came from `pageBase` and a slot below the page's count).
            return (handle, blockSize, heap.data + offset)
        }

        /// Allocates an extent of the extent area: `size` rounded up to whole units (see SharedHeap+Extents.swift
        /// for the steps and why a death at any of them leaves a consistent area).
        @inline(never)
        private func allocateExtent(
            _ size: Int
        ) throws(SharedHeapError) -> (handle: SharedHeapHandle, blockSize: Int, address: UnsafeMutableRawPointer) {
            let l = heap.layout
            guard size > 0, l.extentUnits > 0, size <= l.extentUnits * l.pageSize else {
                throw unsupportedSizeError(size)
            }
            if held.freeCount == 0 { _ = try takeHeldSlot() }
            let units = (size + l.pageSize - 1) / l.pageSize
            try checkExtentAllowance(units)
            heap.lockExtents(for: index)
            // Step 1: first fit, merging free neighbours on the way.
            guard let (unit, length) = heap.findFreeExtent(units: units) else {
                heap.unlockExtents(for: index)
                throw SharedHeapError(
                    .heapFull, "no free run of \(units) units (\(units * l.pageSize) bytes) in the extent area of "
                        + "\(l.extentUnits) units of \(l.pageSize) bytes; free large blocks, or give the extent area "
                        + "more of the data area (extentFraction)")
            }
            // Lazy heaps: the memory first (a failure changes nothing but memory committed).
            if heap.lazyCommit, let error = heap.commitExtent(unit: unit, units: units) {
                heap.unlockExtents(for: index)
                throw SharedHeapError(
                    .heapFull, "could not commit \(units * l.pageSize) bytes for an extent in "
                        + "\(heap.region.describing): \(error); free memory or /dev/shm space")
            }
            // Step 2: the generation. Ordering: relaxed load (ours under the lock), releasing store (before the
            // block word that carries it, for a taker-over).
            let generation = heap.extentSerial.load(ordering: .relaxed) &+ 1
            guard generation <= BlockWord.maximumGeneration else {
                heap.unlockExtents(for: index)
                throw SharedHeapError(
                    .heapFull, "the extent area has made \(BlockWord.maximumGeneration) allocations, the most it can "
                        + "make without repeating a generation")
            }
            heap.extentSerial.store(generation, ordering: .releasing)
            try crashPoint("allocateExtent", 1)
            // Step 3: the remainder's length at its future head (an interior unit until step 4).
            if length > units {
                // Ordering: releasing, before the head's length (walkers read the head first, acquiring).
                heap.extentLength(unit + units).store(UInt64(length - units), ordering: .releasing)
            }
            try crashPoint("allocateExtent", 2)
            // Step 4: the split's commit.
            heap.extentLength(unit).store(UInt64(units), ordering: .releasing)
            try crashPoint("allocateExtent", 3)
            // Safe: checked above that an entry is free, and nothing took one since.
            let heldSlot = held.takeEntry()!
            let offset = l.extentDataOffset + unit * l.pageSize
            let handle = SharedHeapHandle(heapID: heap.heapID, dataOffset: offset, generation: generation)
            heap.announce(index, .allocate, handle)
            try crashPoint("allocateExtent", 4)
            // Step 5, the allocation's commit. Ordering: releasing, as for any block. The word is free and only
            // allocators (we hold the lock) change a free block word: a store suffices.
            heap.extentWord(unit).store(
                BlockWord.make(generation: generation, count: 1, state: BlockWord.allocated), ordering: .releasing)
            try crashPoint("allocateExtent", 5)
            heap.unlockExtents(for: index)
            heap.writeHeld(index, heldSlot, handle)
            held.insert(handle.offsetUnits &+ 1, heldSlot)
            extentUnitsHeld += units
            try crashPoint("allocateExtent", 6)
            heap.clearPending(index)
            // Safe: the extent lies in the data area (checked by the walk: unit + units <= extentUnits).
            return (handle, units * l.pageSize, heap.data + offset)
        }

        /// Throws `.pageAllowanceExhausted` when `units` more extent units would take the pages this participant
        /// owns and the extent units it holds past its page allowance (after giving back empty pages).
        private func checkExtentAllowance(_ units: Int) throws(SharedHeapError) {
            // Ordering: relaxed, as in `checkPageAllowance`.
            var allowance = heap.pageAllowance(index).load(ordering: .relaxed)
            if allowance == unlimitedPages || ownedPageTotal + extentUnitsHeld + units <= Int(allowance) { return }
            releaseEmptyPages(except: -1)
            allowance = heap.pageAllowance(index).load(ordering: .relaxed)
            if allowance == unlimitedPages || ownedPageTotal + extentUnitsHeld + units <= Int(allowance) { return }
            throw SharedHeapError(
                .pageAllowanceExhausted, "participant \(index) owns \(ownedPageTotal) pages and holds "
                    + "\(extentUnitsHeld) units of large blocks, its page allowance is \(allowance): no room for "
                    + "\(units) more units (\(units * heap.layout.pageSize) bytes); free blocks, or raise the "
                    + "allowance (SharedHeap.setPageAllowance)")
        }

        @inline(never)
        private func exhaustedPageError(_ page: Int) -> SharedHeapError {
            SharedHeapError(
                .heapFull, "page \(page) has made \(BlockWord.maximumGeneration) allocations, the most one page can "
                    + "make without repeating a generation; it serves no more (allocate from a new participant)")
        }

        /// Waits while a recoverer has `handle`'s block frozen, announced as `waiting` (our commit has not
        /// happened); then announces `op` again and returns the block word as it now is.
        @inline(never)
        private func waitWhileFrozen(
            _ word: UnsafeAtomic<UInt64>, _ handle: SharedHeapHandle, _ op: PendingOperation,
            _ waiting: PendingOperation
        ) -> UInt64 {
            heap.reannounce(index, waiting, handle)
            var spins = 0
            var observed: UInt64
            repeat {
                spins += 1
                if spins > 64 { sched_yield() }
                // Ordering: acquiring, as the compare-and-exchange that follows.
                observed = word.load(ordering: .acquiring)
            } while BlockWord.state(observed) == BlockWord.frozen && BlockWord.generation(observed) == handle.generation
            heap.reannounce(index, op, handle)
            // Ordering: sequentially consistent, after the announcement (see `reannounce`): if a recoverer froze the
            // block again in between, the compare-and-exchange fails on this value and we wait again.
            return word.load(ordering: .sequentiallyConsistent)
        }

        /// A free slot of `sizeClass` in one of our pages, taking a new page when needed.
        @inline(never)
        private func takeSlot(_ sizeClass: Int) throws(SharedHeapError) -> (page: Int, slot: Int, fresh: Bool) {
            let current = currentPage[sizeClass]
            if current >= 0 {
                if let (slot, fresh) = heap.popLocal(current) { return (current, slot, fresh) }
                if heap.collect(current) > 0, let (slot, fresh) = heap.popLocal(current) {
                    return (current, slot, fresh)
                }
            }
            // Other pages of the class we own: collect what others freed there.
            for page in ownedPages[sizeClass] where page != current {
                heap.collect(page)
                if let (slot, fresh) = heap.popLocal(page) {
                    currentPage[sizeClass] = page
                    return (page, slot, fresh)
                }
            }
            // A new page: from the pool, else an orphan of the class (which may turn out full: it stays ours, its
            // blocks come back to us as they are freed, and we look further).
            try checkPageAllowance(sizeClass)
            // A lazy heap's failed commit of a fresh page (the backing store is full): the reason for heapFull.
            var commitFailure: SharedHeapError?
            if let page = heap.claimPooledPage(sizeClass: sizeClass, for: index, commitFailure: &commitFailure) {
                return takeFirstSlot(of: page, sizeClass)
            }
            while let orphan = heap.adoptOrphanPage(sizeClass: sizeClass, for: index) {
                notePageTaken(orphan, sizeClass)
                heap.collect(orphan)
                if let (slot, fresh) = heap.popLocal(orphan) {
                    currentPage[sizeClass] = orphan
                    return (orphan, slot, fresh)
                }
                try checkPageAllowance(sizeClass)
            }
            // Reclaim our own pages of other classes that have nothing live, then retry the pool once.
            releaseEmptyPages(except: sizeClass)
            // And orphan pages of other classes whose blocks have all been freed.
            _ = heap.reclaimOrphanPages(except: sizeClass, for: index)
            try checkPageAllowance(sizeClass)
            if let page = heap.claimPooledPage(sizeClass: sizeClass, for: index, commitFailure: &commitFailure) {
                return takeFirstSlot(of: page, sizeClass)
            }
            if let commitFailure { throw commitFailure }
            throw SharedHeapError(
                .heapFull, "the heap is full: no free \(heap.layout.classSizes[sizeClass])-byte block and no "
                    + "free page among \(tierDescription(sizeClass))")
        }

        /// Records a freshly claimed page as ours and pops its first slot (a fresh page always has one).
        private func takeFirstSlot(of page: Int, _ sizeClass: Int) -> (page: Int, slot: Int, fresh: Bool) {
            notePageTaken(page, sizeClass)
            currentPage[sizeClass] = page
            // Safe: a page just claimed from the pool has slotCount >= 8 slots and none carved.
            let (slot, fresh) = heap.popLocal(page)!
            return (page, slot, fresh)
        }

        /// Throws `.pageAllowanceExhausted` when taking one more page would exceed this participant's page
        /// allowance, after giving back our own pages of other classes that have nothing live (which changes no
        /// block).
        private func checkPageAllowance(_ sizeClass: Int) throws(SharedHeapError) {
            let l = heap.layout
            // A span page counts as spanPageSize / pageSize pages.
            let needed = l.isLarge(sizeClass) ? l.spanPageSize / l.pageSize : 1
            // Ordering: relaxed; the allowance is a policy word another process may change at any time, and any
            // recent value will do.
            // The extent units we hold count too (see `checkExtentAllowance`).
            var allowance = heap.pageAllowance(index).load(ordering: .relaxed)
            if allowance == unlimitedPages || ownedPageTotal + extentUnitsHeld + needed <= Int(allowance) { return }
            releaseEmptyPages(except: sizeClass)
            allowance = heap.pageAllowance(index).load(ordering: .relaxed)
            if allowance == unlimitedPages || ownedPageTotal + extentUnitsHeld + needed <= Int(allowance) { return }
            throw SharedHeapError(
                .pageAllowanceExhausted, "participant \(index) owns \(ownedPageTotal) pages, its page allowance is "
                    + "\(allowance): no room for another \(l.classSizes[sizeClass])-byte block (its page counts "
                    + "\(needed)); free blocks, or raise the allowance (SharedHeap.setPageAllowance)")
        }

        /// Gives back our pages of classes other than `sizeClass` with nothing live (after collecting them).
        private func releaseEmptyPages(except sizeClass: Int) {
            for other in 0..<ownedPages.count where other != sizeClass {
                for candidate in ownedPages[other] {
                    heap.collect(candidate)
                    if heap.live(candidate).load(ordering: .relaxed) == 0 { releaseOwnedPage(candidate) }
                }
            }
        }

        private func tierDescription(_ sizeClass: Int) -> String {
            let l = heap.layout
            return l.isLarge(sizeClass) ? "\(l.spanPageCount) span pages of \(l.spanPageSize) bytes"
                : "\(l.smallPageCount) pages of \(l.pageSize) bytes"
        }

        /// Records a page we now own, here and in the shared owned-pages word.
        private func notePageTaken(_ page: Int, _ sizeClass: Int) {
            ownedPages[sizeClass].append(page)
            ownedPageTotal += heap.layout.pageUnits(page)
            // Ordering: relaxed; a statistic for other processes, and for verify() once quiescent.
            heap.ownedPageCount(index).store(UInt32(ownedPageTotal), ordering: .relaxed)
        }

        private func releaseOwnedPage(_ page: Int) {
            let sizeClass = PageWord.sizeClass(heap.pageState(page).load(ordering: .relaxed))
            ownedPages[sizeClass].removeAll { $0 == page }
            if currentPage[sizeClass] == page { currentPage[sizeClass] = -1 }
            heap.releasePage(page, for: index)
            ownedPageTotal -= heap.layout.pageUnits(page)
            // Ordering: relaxed, as in `notePageTaken`.
            heap.ownedPageCount(index).store(UInt32(ownedPageTotal), ordering: .relaxed)
        }

        // MARK: Adopt

        /// Adds a holding of the block for this participant (another process's block, received as a handle).
        /// The block then stays allocated until every holder has freed it.
        ///
        /// - Throws: `.outOfRange`, `.misaligned`, `.staleHandle` (freed or reused), `.alreadyHeld`,
        ///   `.heldListFull`, `.participantLeft`. The heap is unchanged then.
        public func adopt(_ handle: SharedHeapHandle) throws(SharedHeapError) {
            try checkJoined()
            let location = try heap.locate(handle)
            let word = heap.blockWord(location.page, location.slot)
            // Ordering: acquiring, as in the compare-and-exchange below.
            var observed = word.load(ordering: .acquiring)
            guard BlockWord.generation(observed) == handle.generation, BlockWord.state(observed) & 1 == 1
            else { throw heap.staleError(handle, observed) }
            // We hold a block once; a held block keeps its generation, so the offset names our holding.
            if held.find(handle.offsetUnits &+ 1) != nil {
                throw SharedHeapError(.alreadyHeld, "participant \(index) already holds \(handle)")
            }
            let heldSlot = try takeHeldSlot()
            heap.announce(index, .adopt, handle)
            try crashPoint("adopt", 1)
            while true {
                if BlockWord.state(observed) == BlockWord.frozen, BlockWord.generation(observed) == handle.generation {
                    observed = waitWhileFrozen(word, handle, .adopt, .adoptWaiting)
                    continue
                }
                guard BlockWord.generation(observed) == handle.generation,
                    BlockWord.state(observed) == BlockWord.allocated
                else {
                    heap.clearPending(index)
                    held.returnEntry(heldSlot)
                    throw heap.staleError(handle, observed)
                }
                // Safe: the count is at most the participant capacity (4,096), below its 14-bit limit: each
                // participant holds a block once.
                let desired = BlockWord.make(
                    generation: handle.generation, count: BlockWord.count(observed) &+ 1, state: BlockWord.allocated)
                // Ordering: acquiring and releasing: acquire the block's contents as its holders published them;
                // release our announcement before the commit.
                let (done, current) = word.compareExchange(
                    expected: observed, desired: desired, successOrdering: .acquiringAndReleasing,
                    failureOrdering: .acquiring)
                if done { break }
                observed = current
            }
            try crashPoint("adopt", 2)
            heap.writeHeld(index, heldSlot, handle)
            held.insert(handle.offsetUnits &+ 1, heldSlot)
            if heap.layout.isExtent(location.page) { extentUnitsHeld += location.blockSize / heap.layout.pageSize }
            try crashPoint("adopt", 3)
            heap.clearPending(index)
        }

        // MARK: Free

        /// Drops this participant's holding of the block; the last holder's free releases the block (to the local
        /// list when we own its page, else onto the page's remote-free stack).
        ///
        /// - Returns: true when this free released the block (no holder left).
        /// - Throws: `.outOfRange`, `.misaligned`, `.staleHandle` (generation mismatch), `.doubleFree` (already
        ///   free), `.notHeld` (allocated, but not held by this participant), `.participantLeft`,
        ///   `.corruptMetadata` (the block word contradicts this participant's held list). The heap is unchanged
        ///   then.
        @discardableResult
        public func free(_ handle: SharedHeapHandle) throws(SharedHeapError) -> Bool {
            try checkJoined()
            let location = try heap.locate(handle)
            let word = heap.blockWord(location.page, location.slot)
            // Ordering: acquiring (see the compare-and-exchange).
            var observed = word.load(ordering: .acquiring)
            let key = handle.offsetUnits &+ 1
            guard let heldSlot = held.find(key), BlockWord.generation(observed) == handle.generation else {
                throw notHeldError(handle, observed)
            }
            // An extent has no page: its last free stores *free*, and the extent is free from then on.
            let isExtent = heap.layout.isExtent(location.page)
            let pageWord = isExtent ? 0 : heap.pageState(location.page).load(ordering: .relaxed)
            // Only we change the state word of a page we own, so this read is stable.
            let ownPage = !isExtent && PageWord.kind(pageWord) == PageWord.owned && PageWord.owner(pageWord) == index
            heap.announce(index, .free, handle)
            try crashPoint("free", 1)
            var released = false
            while true {
                if BlockWord.state(observed) == BlockWord.frozen, BlockWord.generation(observed) == handle.generation {
                    observed = waitWhileFrozen(word, handle, .free, .freeWaiting)
                    continue
                }
                guard BlockWord.generation(observed) == handle.generation,
                    BlockWord.state(observed) == BlockWord.allocated, BlockWord.count(observed) >= 1
                else {
                    // Our held list says we hold it, the block word disagrees: someone wrote the metadata behind
                    // the heap's back. Change nothing and say so.
                    heap.clearPending(index)
                    throw corruptHoldingError(handle, observed)
                }
                let count = BlockWord.count(observed) &- 1
                released = count == 0
                let state = !released ? BlockWord.allocated : ownPage || isExtent ? BlockWord.free : BlockWord.freeing
                // A freeing word names its releaser: recovery tells a dead participant's release by it.
                let desired = BlockWord.make(
                    generation: handle.generation, count: state == BlockWord.freeing ? index : count, state: state)
                // Ordering: acquiring and releasing. Release: our writes into the block happen before whoever
                // reuses it. Acquire: the last holder sees the other holders' writes before the block is reused.
                let (done, current) = word.compareExchange(
                    expected: observed, desired: desired, successOrdering: .acquiringAndReleasing,
                    failureOrdering: .acquiring)
                if done { break }
                observed = current
            }
            try crashPoint("free", 2)
            heap.clearHeld(index, heldSlot)
            held.remove(key)
            held.returnEntry(heldSlot)
            if isExtent { extentUnitsHeld -= location.blockSize / heap.layout.pageSize }
            try crashPoint("free", 3)
            if released, !isExtent {
                if ownPage {
                    heap.pushLocal(location.page, location.slot)
                    try crashPoint("free", 4)
                    let live = heap.live(location.page).load(ordering: .relaxed) - 1
                    heap.live(location.page).store(live, ordering: .relaxed)
                    let sizeClass = PageWord.sizeClass(pageWord)
                    if live == 0, currentPage[sizeClass] != location.page { releaseOwnedPage(location.page) }
                } else {
                    heap.pushRemote(location.page, location.slot)
                    try crashPoint("free", 4)
                }
            }
            try crashPoint("free", 5)
            heap.clearPending(index)
            return released
        }

        @inline(never)
        private func unsupportedSizeError(_ size: Int) -> SharedHeapError {
            SharedHeapError(
                .unsupportedSize, "cannot allocate \(size) bytes: sizes 1…\(heap.largestBlockSize) are "
                    + "supported (give the extent area more of the data area, extentFraction, for more)")
        }

        /// Why a free of a handle this participant does not list fails (out of line: not a hot path).
        @inline(never)
        private func notHeldError(_ handle: SharedHeapHandle, _ observed: UInt64) -> SharedHeapError {
            if BlockWord.generation(observed) != handle.generation { return heap.staleError(handle, observed) }
            if BlockWord.state(observed) & 1 != 1 {
                return SharedHeapError(.doubleFree, "double free of \(handle): the block is already free")
            }
            return SharedHeapError(
                .notHeld, "participant \(index) does not hold \(handle) (\(BlockWord.count(observed)) other "
                    + "participants do); adopt it first")
        }

        @inline(never)
        private func corruptHoldingError(_ handle: SharedHeapHandle, _ observed: UInt64) -> SharedHeapError {
            SharedHeapError(
                .corruptMetadata, "participant \(index) holds \(handle) but the block's word "
                    + "(0x\(String(observed, radix: 16))) does not record it: the heap's metadata was "
                    + "overwritten; run verify()")
        }

        // MARK: Leave

        /// Frees every block this participant holds, gives its empty pages back to the pool, makes the others
        /// orphans (any participant of the same class takes them over when it needs room), and frees the
        /// participant slot. Idempotent; `deinit` calls it.
        public func leave() { leave(releasingSlot: true) }

        /// Leaves the heap (as `leave()`); with `releasingSlot` false the slot is not freed but marked *leaving*:
        /// it holds nothing and owns nothing, and no `join` takes it until `SharedHeap.releaseSlot(participant:pid:)`
        /// frees it (or recovery does, once this process has exited).
        ///
        /// A client whose slot a daemon tracks leaves this way, so that the slot is offered again only once the
        /// daemon has finished with the session: otherwise another process could take the slot and present it to
        /// the daemon before the daemon has seen the first one go.
        public func leave(releasingSlot: Bool) {
            guard !left else { return }
            for handle in heldHandles {
                _ = try? free(handle)
            }
            for pages in ownedPages {
                for page in pages {
                    heap.collect(page)
                    if heap.live(page).load(ordering: .relaxed) == 0 {
                        heap.releasePage(page, for: index)
                    } else {
                        let word = heap.pageState(page).load(ordering: .relaxed)
                        // Ordering: releasing: the adopter (acquiring CAS) sees our owner-only fields.
                        heap.pageState(page).store(
                            PageWord.make(kind: PageWord.orphan, sizeClass: PageWord.sizeClass(word), owner: 0,
                                          epoch: PageWord.epoch(word)), ordering: .releasing)
                    }
                }
            }
            ownedPages = ownedPages.map { _ in [] }
            currentPage.update(repeating: -1, count: heap.layout.classSizes.count)
            ownedPageTotal = 0
            extentUnitsHeld = 0
            left = true
            // Ordering: relaxed; published by the releasing store of the slot below.
            heap.ownedPageCount(index).store(0, ordering: .relaxed)
            heap.pageAllowance(index).store(unlimitedPages, ordering: .relaxed)
            heap.clearParticipantTag(index)
            // Ordering: releasing, pairs with the acquiring claim in `join` (or in `releaseSlot`).
            let word = heap.participantState(index).load(ordering: .relaxed)
            heap.participantState(index).store(
                releasingSlot ? ParticipantWord.free : ParticipantWord.with(state: ParticipantWord.leaving, word),
                ordering: .releasing)
        }
    }
}
