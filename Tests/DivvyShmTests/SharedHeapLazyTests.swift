@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A heap in a lazily committed region commits its memory as it uses it: at creation only the header, tables and
/// page descriptors; a page's data, block words and links when the page first leaves the pool; a participant
/// slot's held list when it is first joined. A commit that fails is `heapFull`, never a SIGBUS. Real memory
/// throughout: committed bytes are the objects' `st_blocks`.
final class SharedHeapLazyTests: ShmTestCase {
    let small = SharedHeapConfiguration(
        pageSize: 4096, sizeClasses: [16, 64, 256], participantCapacity: 4, heldCapacity: 64)

    /// A named lazy region of `dataSize` with a heap, the region committing only the heap's initial metadata.
    func makeLazyHeap(
        _ name: String = "lazy", dataSize: Int, configuration: SharedHeapConfiguration = .init(),
        separateData: Bool = false
    ) throws -> (SharedRegion, SharedHeap) {
        let region = try SharedRegion.create(
            name: name,
            self.configuration(
                dataSize: dataSize,
                metadataSize: SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
            ) {
                $0.commitment = .lazy
                $0.separateDataObject = separateData
                $0.lazyCommittedMetadataSize = SharedHeap.initialMetadataSize(
                    dataSize: dataSize, configuration: configuration)
            })
        return (region, try SharedHeap.create(in: region, configuration: configuration))
    }

    /// Right after creation an 8 GiB lazy heap has committed its page descriptors and tables (a few MiB), not its
    /// gigabytes of block words; each page claimed for the first time adds its data, block words and links; a
    /// page claimed again adds nothing; freeing keeps what was committed.
    func testCommittedBytesGrowWithPagesClaimed() throws {
        let dataSize = 8 << 30
        let (region, heap) = try makeLazyHeap(dataSize: dataSize)
        XCTAssertTrue(heap.lazyCommit)
        let required = SharedHeap.requiredMetadataSize(dataSize: dataSize)
        let initial = SharedHeap.initialMetadataSize(dataSize: dataSize)
        XCTAssertLessThan(initial * 100, required, "initial \(initial) of \(required) metadata bytes")
        let atStart = try region.allocatedBytes()
        XCTAssertLessThanOrEqual(atStart, 4096 + initial, "committed right after creation")

        let me = try heap.join(name: "lazy")
        let afterJoin = try region.allocatedBytes()
        let heldList = heap.heldCapacity * SharedHeapLayout.heldEntryStride
        // (The held list is 64-byte aligned: its commit may cover one more OS page.)
        XCTAssertTrue((heldList...heldList + 4096).contains(afterJoin - atStart), "join commits the slot's held list, "
            + "and only it: \(afterJoin - atStart) bytes")

        // 8 KiB blocks: 8 per 64 KiB page. Each fresh page: 64 KiB data + 4096 slots × (8 + 4) metadata bytes.
        let perPage = heap.pageSize + (heap.pageSize / 16) * 12
        var handles: [SharedHeapHandle] = []
        for round in 1...2 {
            let before = try region.allocatedBytes()
            for _ in 0..<(10 * 8) {
                let handle = try me.allocate(8192)
                try fillBlock(heap, handle, with: UInt8(round))
                handles.append(handle)
            }
            let grown = try region.allocatedBytes() - before
            XCTAssertEqual(heap.usage().ownedPages, 10 * round)
            // The metadata of neighbouring pages shares OS pages, so a page may bring a little less or more.
            XCTAssertGreaterThanOrEqual(grown, 10 * heap.pageSize, "round \(round)")
            // (And the pages' descriptors: 64 bytes each, an OS page per 64 pages.)
            XCTAssertLessThanOrEqual(grown, 10 * perPage + 3 * 4096, "round \(round)")
        }
        let used = try region.allocatedBytes()
        for handle in handles { try me.free(handle) }
        XCTAssertEqual(try region.allocatedBytes(), used, "freeing uncommits nothing")
        // The same pages again (they were committed when first claimed): leaving gives them back to the pool, on
        // top, and the next participant claims them again. Nothing more to commit.
        me.leave()
        let again = try heap.join(name: "again")
        for _ in 0..<(20 * 8) { _ = try again.allocate(8192) }
        XCTAssertEqual(try region.allocatedBytes(), used, "pages claimed again are already backed")
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        XCTAssertLessThan(used, 4096 + initial + heldList + 20 * perPage + 16 * 4096)
    }

    /// A 1 TiB lazy heap (default configuration: 13M pages, 800 MiB of page descriptors and 577 GiB of block words
    /// reserved) commits at creation what a 1 GiB one does — a few OS pages —, reading it whole (audit, usage)
    /// commits nothing more, and using it commits what is used: a page of each tier with its metadata.
    func testOneTebibyteLazyHeapCommitsOnlyAFewPagesAtCreate() throws {
        let dataSize = 1 << 40
        let initial = SharedHeap.initialMetadataSize(dataSize: dataSize)
        XCTAssertEqual(initial, SharedHeap.initialMetadataSize(dataSize: 1 << 30), "independent of the data size")
        XCTAssertLessThanOrEqual(initial, 8 * 4096)
        let (region, heap) = try makeLazyHeap("tebibyte", dataSize: dataSize, separateData: true)
        XCTAssertGreaterThan(heap.pageCount, 8_000_000)
        XCTAssertEqual(heap.extentUnitCount, 1 << 22, "a quarter of the data area in 64 KiB units")
        XCTAssertGreaterThan(region.geometry.metadataSize, 350 << 30, "the reserved metadata")
        let atStart = try region.allocatedBytes()
        XCTAssertLessThanOrEqual(atStart, region.geometry.metadataOffset + initial, "committed right after creation")
        XCTAssertLessThanOrEqual(atStart, 64 << 10)
        XCTAssertEqual(try region.dataObjectAllocatedBytes(), 0)
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.pooledPages, heap.pageCount)
        XCTAssertEqual(heap.usage().freePages, heap.pageCount)
        XCTAssertEqual(try region.allocatedBytes(), atStart, "reading committed nothing")
        let me = try heap.join(name: "big")
        let afterJoin = try region.allocatedBytes()
        let small = try me.allocate(64)
        let large = try me.allocate(heap.largestClassBlockSize)
        let extent = try me.allocate(1 << 20)
        try fillBlock(heap, small, with: 1)
        try fillBlock(heap, large, with: 2)
        try fillBlock(heap, extent, with: 3)
        // Two data pages (64 KiB and 512 KiB) and their block words, links and descriptors, a 1 MiB extent and its
        // units' words: under 2 MiB more.
        let used = try region.allocatedBytes() - afterJoin
        XCTAssertGreaterThanOrEqual(used, heap.pageSize + heap.spanPageSize + (1 << 20))
        XCTAssertLessThan(used, 2 << 20)
        XCTAssertTrue(heap.verify().isClean)
        try me.free(small)
        try me.free(large)
        try me.free(extent)
    }

    /// Page descriptors are committed as the bump index reaches them: the claim that needs a descriptor on an OS
    /// page not yet committed commits it first, and when that commit fails (injected) the allocation is
    /// `heapFull` with nothing changed — the page still never used, the bump index where it was, no byte
    /// committed, the audit identical — and the next allocation commits it and goes on.
    func testFailedDescriptorCommitIsHeapFullAndChangesNothing() throws {
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 512], participantCapacity: 4, heldCapacity: 512)
        let (region, heap) = try makeLazyHeap(dataSize: 256 * 4096, configuration: configuration)
        // The first page whose descriptor starts an OS page: claiming the page before it needs that one committed.
        let os = 4096
        let k = (1...64).first { (region.geometry.metadataOffset + heap.pageDescriptor($0)) % os == 0 }!
        XCTAssertLessThan(k, heap.smallPageCount)
        let me = try heap.join(name: "lazy")
        var handles: [SharedHeapHandle] = []
        for _ in 0..<(8 * (k - 1)) { handles.append(try me.allocate(512)) }  // Pages 0 ..< k - 1, full.
        XCTAssertEqual(heap.poolBump(0).load(ordering: .relaxed), UInt64(k - 1))
        let committed = try region.allocatedBytes()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        // Two: an allocation tries the pool twice (before and after reclaiming empty pages).
        heap._failingCommits.store(2, ordering: .relaxed)
        XCTAssertThrowsError(try me.allocate(512)) { error in
            XCTAssertEqual((error as? SharedHeapError)?.code, .heapFull, "\(error)")
        }
        XCTAssertEqual(heap._failingCommits.load(ordering: .relaxed), 0, "both failures were descriptor commits")
        XCTAssertEqual(heap.poolBump(0).load(ordering: .relaxed), UInt64(k - 1))
        XCTAssertEqual(heap.pageState(k - 1).load(ordering: .relaxed), 0, "page \(k - 1) still never used")
        XCTAssertEqual(try region.allocatedBytes(), committed, "nothing was committed")
        XCTAssertEqual(heap.verify(), audit)
        // With room again: the descriptor's OS page, then the page.
        handles.append(try me.allocate(512))
        XCTAssertEqual(heap.poolBump(0).load(ordering: .relaxed), UInt64(k))
        XCTAssertGreaterThanOrEqual(try region.allocatedBytes() - committed, 4096 + heap.pageSize)
        for handle in handles { try me.free(handle) }
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    /// Pages that come back to the pool are found again through the bitmap before any fresh page is used, so
    /// committed memory stays at the peak of pages in use: allocations spread over many pages, freed, and
    /// allocated again (by another participant) commit nothing more, and the bump index does not move.
    func testReturnedPagesAreReusedBeforeFreshOnes() throws {
        let configuration = SharedHeapConfiguration(
            pageSize: 4096, sizeClasses: [16, 64, 512], participantCapacity: 4, heldCapacity: 4096)
        let (region, heap) = try makeLazyHeap(dataSize: 1024 * 4096, configuration: configuration)
        let me = try heap.join(name: "first")
        var handles: [SharedHeapHandle] = []
        for _ in 0..<(8 * 300) { handles.append(try me.allocate(512)) }  // 300 pages, spread over 5 bitmap words.
        let bump = heap.poolBump(0).load(ordering: .relaxed)
        XCTAssertEqual(bump, 300)
        let committed = try region.allocatedBytes()
        for handle in handles.shuffled() { try me.free(handle) }
        me.leave()
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        let other = try heap.join(name: "second")
        handles = []
        for _ in 0..<(8 * 300) { handles.append(try other.allocate(512)) }
        XCTAssertEqual(heap.poolBump(0).load(ordering: .relaxed), bump, "no fresh page was needed")
        XCTAssertEqual(other.index, 0)
        XCTAssertEqual(try region.allocatedBytes(), committed, "slot 0's held list was committed already")
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
        for handle in handles { try other.free(handle) }
    }

    /// The cursor's tag: a page released while a scan is between reading the bitmap and raising the cursor past
    /// the words it saw empty (the release's bit lands in one of them) stays findable — the release bumped the tag,
    /// so the scan's raise fails — and the next claim takes it rather than a fresh page.
    func testAReleaseDuringAPoolScanIsNotHiddenByTheCursor() throws {
        let (_, heap) = try makeLazyHeap(dataSize: 64 * 4096, configuration: small)
        let me = try heap.join(name: "lazy")
        // The cursor at word 0 with word 0 empty: page 0 released and claimed again (a claim that finds its page
        // in word 0 leaves the cursor there).
        let first = heap.claimPooledPage(sizeClass: 0, for: me.index)!
        let released = heap.claimPooledPage(sizeClass: 0, for: me.index)!
        heap.releasePage(first, for: me.index)
        XCTAssertEqual(heap.claimPooledPage(sizeClass: 0, for: me.index), first)
        XCTAssertEqual(heap.poolCursor(0).load(ordering: .relaxed) & 0xFFFF_FFFF, 0)
        heap._poolScanHook = {
            heap._poolScanHook = nil
            heap.releasePage(released, for: me.index)  // Its bit is in word 0, which the scan saw empty.
        }
        let fresh = heap.claimPooledPage(sizeClass: 0, for: me.index)!  // Scans, finds nothing, takes a fresh page.
        XCTAssertNotEqual(fresh, released)
        XCTAssertNil(heap._poolScanHook, "the scan ran")
        XCTAssertEqual(heap.poolCursor(0).load(ordering: .relaxed) & 0xFFFF_FFFF, 0, "the cursor still covers word 0")
        XCTAssertEqual(heap.claimPooledPage(sizeClass: 0, for: me.index), released, "the released page is found")
        for page in [first, released, fresh] { heap.releasePage(page, for: me.index) }
        XCTAssertTrue(heap.verify().isClean, "\(heap.verify())")
    }

    /// A lazy heap is layout version 9, which `attach` reads as lazy (so every process commits before it uses);
    /// a fully committed heap is version 8.
    func testLazyHeapsAreLayoutVersion9AndAttachersKnow() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 1 << 26)
        let meta = try region.mapping.unsafePointer(forOffset: region.geometry.metadataOffset, length: 16)
        XCTAssertEqual(meta.load(fromByteOffset: 8, as: UInt32.self), SharedHeap.lazyLayoutVersion)
        let peer = try SharedHeap.attach(to: SharedRegion.open(name: "lazy", namePrefix: prefix))
        XCTAssertTrue(peer.lazyCommit)
        let other = try peer.join(name: "peer")
        XCTAssertTrue(heap.heldListIsCommitted(other.index), "the mask is shared")
        let handle = try other.allocate(64)
        XCTAssertEqual(heap.verify().holdings, 1)
        try other.free(handle)

        let full = try SharedRegion.create(
            name: "full",
            configuration(dataSize: 1 << 20, metadataSize: SharedHeap.requiredMetadataSize(dataSize: 1 << 20)))
        let fullHeap = try SharedHeap.create(in: full)
        XCTAssertFalse(fullHeap.lazyCommit)
        let fullMeta = try full.mapping.unsafePointer(forOffset: full.geometry.metadataOffset, length: 16)
        XCTAssertEqual(fullMeta.load(fromByteOffset: 8, as: UInt32.self), SharedHeap.layoutVersion)
    }

    /// The daemon's shape: the data in a separate (anonymous) object. A claim commits the data page in that
    /// object and the page's metadata in the region's own.
    func testSeparateDataObjectIsCommittedOnClaim() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 1 << 30, separateData: true)
        var info = stat()
        XCTAssertEqual(fstat(region.dataFileDescriptor!.rawValue, &info), 0)
        XCTAssertEqual(info.st_blocks, 0, "nothing of the data object is committed at creation")
        let me = try heap.join(name: "lazy")
        let handle = try me.allocate(100)
        XCTAssertEqual(fstat(region.dataFileDescriptor!.rawValue, &info), 0)
        XCTAssertEqual(Int(info.st_blocks) * 512, heap.pageSize, "one data page committed")
        try fillBlock(heap, handle, with: 7)
        try me.free(handle)
    }

    /// A commit that fails (injected: as if /dev/shm were full) is `heapFull` naming the cause; the page stays in
    /// the pool (never claimed), the audit stays clean, nothing is committed, and the next allocation, once the
    /// store has room, claims it.
    func testFailedCommitIsHeapFullAndChangesNothing() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 64 * 4096, configuration: small)
        let me = try heap.join(name: "lazy")
        let committed = try region.allocatedBytes()
        // Two: an allocation tries the pool twice (before and after reclaiming empty pages).
        heap._failingCommits.store(2, ordering: .relaxed)
        XCTAssertThrowsError(try me.allocate(64)) { error in
            let error = error as? SharedHeapError
            XCTAssertEqual(error?.code, .heapFull)
            XCTAssertTrue(
                error?.message.contains("could not commit memory for page") == true, "\(String(describing: error))")
        }
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.pooledPages, heap.pageCount, "the page went back to the pool")
        XCTAssertEqual(heap.poolBump(0).load(ordering: .relaxed), 0, "the bump index did not move")
        XCTAssertEqual(try region.allocatedBytes(), committed, "nothing was committed")
        let handle = try me.allocate(64)
        try fillBlock(heap, handle, with: 3)
        XCTAssertEqual(heap.usage().ownedPages, 1)
        try me.free(handle)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// `join` in a lazy heap commits the slot's held list first; when no free slot's list can be committed it is
    /// `heapFull` and no slot is taken.
    func testJoinThatCannotCommitItsHeldListIsHeapFull() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 64 * 4096, configuration: small)
        let committed = try region.allocatedBytes()
        heap._failingCommits.store(heap.participantCapacity, ordering: .relaxed)
        XCTAssertThrowsError(try heap.join(name: "nope")) { error in
            XCTAssertEqual((error as? SharedHeapError)?.code, .heapFull, "\(error)")
        }
        XCTAssertEqual(heap.freeParticipantSlots, heap.participantCapacity)
        XCTAssertEqual(try region.allocatedBytes(), committed)
        XCTAssertTrue(heap.verify().isClean)
        // One failure: the first slot is passed over, the next one taken.
        heap._failingCommits.store(1, ordering: .relaxed)
        let me = try heap.join(name: "second try")
        XCTAssertEqual(me.index, 1)
        XCTAssertFalse(heap.heldListIsCommitted(0))
        XCTAssertTrue(heap.heldListIsCommitted(1))
        let handle = try me.allocate(16)
        try me.free(handle)
        XCTAssertTrue(heap.verify().isClean)
    }

    /// Readers never touch what a lazy heap has not committed (reading a hole of a shared mapping backs it): the
    /// audit, the usage, the participant status, and a forged handle into a page never handed out (refused as
    /// stale, with nothing changed).
    func testReadersAndBadHandlesCommitNothing() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 1 << 30)
        let me = try heap.join(name: "lazy")
        let handle = try me.allocate(64)
        let committed = try region.allocatedBytes()
        let audit = heap.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        _ = heap.usage()
        for p in 0..<heap.participantCapacity { _ = heap.participantStatus(p) }
        // Page 100 never left the pool: epoch 0. A handle with epoch 0 (generation < 2^16) names no block.
        let forged = SharedHeapHandle(heap, compact64: UInt64(100 * heap.pageSize / 16) | (5 << 32))
        XCTAssertThrowsError(try heap.pointer(for: forged)) { error in
            XCTAssertEqual((error as? SharedHeapError)?.code, .staleHandle, "\(error)")
        }
        XCTAssertThrowsError(try me.free(forged))
        XCTAssertThrowsError(try me.adopt(forged))
        XCTAssertThrowsError(try heap.handle(for: heap.pointer(for: handle) + 100 * heap.pageSize))
        XCTAssertEqual(try region.allocatedBytes(), committed, "reading committed nothing")
        XCTAssertEqual(heap.verify(), audit)
        try me.free(handle)
    }

    /// Formatting a heap again in a region that held one clears the old metadata (a hole, not zeros written) and
    /// gives it back: the new heap is empty, clean, and has committed only its initial metadata again.
    func testReformattingClearsOldMetadata() throws {
        let (region, heap) = try makeLazyHeap(dataSize: 1 << 28)
        let me = try heap.join(name: "old")
        for _ in 0..<1000 { _ = try me.allocate(64) }
        me._simulateDeath()  // Its object must not touch the new heap when it goes.
        XCTAssertGreaterThan(heap.verify().allocatedBlocks, 0)
        let dataBefore = try region.allocatedBytes()
        let again = try SharedHeap.create(in: region)
        let audit = again.verify()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.allocatedBlocks, 0)
        XCTAssertEqual(audit.liveParticipants, 0, "the old participant's slot word was cleared too")
        XCTAssertEqual(audit.pooledPages, again.pageCount)
        XCTAssertLessThan(try region.allocatedBytes(), dataBefore, "the old block words were given back")
        let fresh = try again.join(name: "new")
        XCTAssertEqual(fresh.index, 0)
        let handle = try fresh.allocate(64)
        try fillBlock(again, handle, with: 9)
        try fresh.free(handle)
        XCTAssertTrue(again.verify().isClean)
    }

    /// No SIGBUS: a helper in a private mount namespace with a 6 MiB tmpfs on /dev/shm creates a 1 GiB lazy heap
    /// there (170 times the tmpfs; small enough that 64-byte blocks fill it before the 65,536-entry held list), allocates and writes every byte of blocks until `heapFull`, frees them, checks
    /// the audit and allocates again; it must exit 0, never be killed by a signal. Small classes first, then span
    /// pages first. Needs root (mount namespaces and mounts).
    func testNoSIGBUSWhenTheBackingStoreIsFull() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root to mount a small tmpfs in a private mount namespace") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else { throw XCTSkip("no unshare(1)") }
        for sizes in ["64,4096,100000", "100000,64"] {
            // unshare -m makes every mount private first, so the tmpfs never appears outside the namespace.
            let script = "mount -t tmpfs -o size=6m divvy-test /dev/shm || exit 77; exec \"$0\" \"$@\""
            let child = try ChildProcess(
                "/usr/bin/unshare",
                ["-m", "--propagation", "private", "sh", "-c", script, HelperProcess.executablePath, "lazy-fill",
                 "lazy", prefix, String(1 << 30), sizes])
            let output = child.remainingOutput()
            let exit = child.wait()
            if exit.status == 77 { throw XCTSkip("cannot mount a tmpfs in a private mount namespace here") }
            let errors = (try? String(contentsOfFile: child.stderrPath, encoding: .utf8)) ?? ""
            XCTAssertEqual(exit, .init(status: 0, signal: nil), "sizes \(sizes): \(output) \(errors)")
            XCTAssertTrue(output.contains { $0.hasPrefix("heapFull size=\(sizes.prefix { $0 != "," }) ") },
                          "sizes \(sizes): \(output)")
            XCTAssertTrue(output.contains { $0.contains("could not commit memory") }, "\(output)")
            XCTAssertEqual(output.last, "done", "\(output)")
            if let line = output.first(where: { $0.hasPrefix("committed=") }), let bytes = Int(line.dropFirst(10)) {
                XCTAssertLessThanOrEqual(bytes, 6 << 20, "the heap used at most the tmpfs")
            } else {
                XCTFail("no committed= line: \(output)")
            }
        }
    }
}
