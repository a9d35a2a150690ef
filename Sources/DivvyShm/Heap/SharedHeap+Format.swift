import Atomics
import Divvy
import SystemPackage

// Formatting a heap in a region, attaching to one, and the heap header's codec and checksum.
extension SharedHeap {
    // MARK: Create and attach

    /// The bytes of metadata a heap needs for `configuration` on a data area of `dataSize` bytes.
    public static func requiredMetadataSize(dataSize: Int, configuration: SharedHeapConfiguration = .init()) -> Int {
        let c = configuration
        guard let smallest = c.sizeClasses.first, smallest > 0, c.pageSize > 0, c.pageSize & (c.pageSize - 1) == 0,
            c.spanPageSize >= c.pageSize, c.spanPageSize & (c.spanPageSize - 1) == 0,
            c.largeSizeClasses.allSatisfy({ $0 > 0 })
        else { return 0 }
        return estimatedLayout(dataSize: dataSize, configuration: c).totalBytes
    }

    /// The bytes of metadata that a heap in a lazily committed region commits at creation, at most: header, class
    /// table, participant records and pool words, and per tier the OS pages of its first page descriptor and first
    /// bitmap word — a few OS pages, whatever the data size. The rest of `requiredMetadataSize` is committed as it
    /// is used: page descriptors and bitmap words as the pool's bump index reaches them, a page's block words and
    /// links when the page first leaves the pool, a participant slot's held list when it is first joined.
    /// Pass it as the region's `lazyCommittedMetadataSize`, so that the region's admission check counts
    /// only that.
    public static func initialMetadataSize(dataSize: Int, configuration: SharedHeapConfiguration = .init()) -> Int {
        let c = configuration
        guard requiredMetadataSize(dataSize: dataSize, configuration: c) > 0 else { return 0 }
        return estimatedLayout(dataSize: dataSize, configuration: c).initialBytes
    }

    /// Formats a heap in `region`'s metadata area: every page in the pool (each tier's bump index at its first
    /// page, no page returned), every participant slot free, every block word zero. Nothing is done per page.
    ///
    /// In a lazily committed region (`SharedRegion.Commitment.lazy`, not hugetlb) the heap is *lazy*: it commits
    /// only `initialMetadataSize` now, and the rest as it is used — page descriptors as the pool's bump index
    /// reaches them, a page's data, block words and links when the page first leaves the pool, a participant
    /// slot's held list when it is first joined — so creation takes the same time and memory whatever the data
    /// size, and memory in use (data and metadata) grows with the pages in use. A commit that fails (/dev/shm or
    /// memory exhausted) is a clean `heapFull` for the allocation (or `join`) that needed it, never a SIGBUS later.
    /// The metadata area is cleared by punching a hole over it (`MADV_REMOVE`), not by writing zeros, which would
    /// commit it all; this also clears a reused region.
    ///
    /// No other process may use the metadata area until this returns; the magic number is stored last (release),
    /// so `attach` either sees a complete heap or refuses.
    ///
    /// - Throws: `.invalidConfiguration` for an impossible configuration or a region too small for it (the message
    ///   gives the sizes needed and available); `.heapFull` when a lazy heap cannot commit its initial metadata.
    /// - Complexity: O(participants + classes), plus zeroing the metadata area (a lazy heap punches a hole instead).
    public static func create(
        in region: SharedRegion, configuration: SharedHeapConfiguration = .init()
    ) throws(SharedHeapError) -> SharedHeap {
        let c = configuration
        func invalid(_ text: String) -> SharedHeapError { SharedHeapError(.invalidConfiguration, text) }
        guard c.pageSize >= 4096, c.pageSize <= 16 << 20, c.pageSize & (c.pageSize - 1) == 0 else {
            throw invalid("page size \(c.pageSize) must be a power of two between 4 KiB and 16 MiB")
        }
        guard !c.sizeClasses.isEmpty, c.sizeClasses.count <= 255,
            c.sizeClasses.allSatisfy({ $0 >= 16 && $0 % 16 == 0 && $0 <= c.pageSize / 8 }),
            zip(c.sizeClasses, c.sizeClasses.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw invalid("size classes \(c.sizeClasses) must be 1…255 ascending multiples of 16, at most "
                + "pageSize / 8 = \(c.pageSize / 8)")
        }
        let largest = c.sizeClasses[c.sizeClasses.count - 1]
        guard c.spanPageSize >= c.pageSize, c.spanPageSize <= 1 << 30, c.spanPageSize & (c.spanPageSize - 1) == 0,
            c.spanFraction >= 0, c.spanFraction < 1, c.extentFraction >= 0, c.spanFraction + c.extentFraction < 1,
            c.sizeClasses.count + c.largeSizeClasses.count <= 255,
            c.largeSizeClasses.allSatisfy({ $0 > largest && $0 % 16 == 0 && $0 <= c.spanPageSize }),
            zip(c.largeSizeClasses, c.largeSizeClasses.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw invalid("span page size \(c.spanPageSize) must be a power of two from the page size "
                + "\(c.pageSize) to 1 GiB, the span fraction \(c.spanFraction) and the extent fraction "
                + "\(c.extentFraction) in 0..<1 and together below 1, and the large classes "
                + "\(c.largeSizeClasses) ascending multiples of 16 above \(largest), at most the span page size, "
                + "at most 255 classes in all")
        }
        guard (1...SharedHeapConfiguration.maximumParticipants).contains(c.participantCapacity),
            c.heldCapacity >= 1, c.heldCapacity <= 1 << 24, (c.firstSlotHeldCapacity ?? 1) >= 1,
            (c.firstSlotHeldCapacity ?? 1) <= 1 << 24
        else {
            throw invalid("participant capacity \(c.participantCapacity) must be "
                + "1…\(SharedHeapConfiguration.maximumParticipants) and held capacities \(c.heldCapacity) and "
                + "\(c.firstSlotHeldCapacity.map(String.init) ?? "-") 1…16M")
        }
        let geometry = region.geometry
        let tiers = c.tiers(dataSize: geometry.dataSize)
        guard tiers.smallPages >= 1, tiers.smallPages + tiers.spanPages <= SharedHeapLayout.maximumPageCount,
            geometry.dataSize <= SharedHeapLayout.maximumDataSize
        else {
            throw invalid("the region's data area (\(geometry.dataSize) bytes) must hold 1…16M pages of "
                + "\(c.pageSize) bytes (use larger pages for a larger data area), at most 4 PiB")
        }
        let layout = SharedHeapLayout(
            pageSize: c.pageSize, smallPageCount: tiers.smallPages, spanPageSize: c.spanPageSize,
            spanPageCount: tiers.spanPages, classSizes: tiers.classes, smallClassCount: tiers.smallClasses,
            participantCapacity: c.participantCapacity, heldCapacity: c.heldCapacity,
            firstHeldCapacity: c.firstSlotHeldCapacity, extentUnits: tiers.extentUnits, dataOffset: geometry.dataOffset)
        // A page's suspect word keeps slot + 1 in 16 bits.
        guard layout.maxSlots <= 65_535, layout.spanMaxSlots <= 65_535 else {
            throw invalid("a page of \(c.pageSize) bytes holds \(layout.maxSlots) blocks of the smallest class "
                + "\(tiers.classes[0]) (span pages \(layout.spanMaxSlots)); at most 65,535 are possible: use smaller "
                + "pages or a larger smallest class")
        }
        guard layout.totalBytes <= geometry.metadataSize else {
            throw invalid("the heap needs \(layout.totalBytes) bytes of metadata for \(tiers.smallPages) pages of "
                + "\(c.pageSize) bytes and \(tiers.spanPages) of \(c.spanPageSize), but the region's metadata area has \(geometry.metadataSize); create the "
                + "region with metadataSize >= \(layout.totalBytes) (SharedHeap.requiredMetadataSize)")
        }
        guard region.access == .readWrite else { throw invalid("the region is mapped read-only") }
        let meta: UnsafeMutableRawPointer
        let data: UnsafeMutableRawPointer
        do {
            meta = try region.mapping.unsafePointer(forOffset: geometry.metadataOffset, length: geometry.metadataSize)
            data = try region.mapping.unsafePointer(forOffset: geometry.dataOffset, length: layout.dataBytes)
        } catch {
            throw invalid("the region's mapping does not cover its metadata and data areas: \(error)")
        }
        // Not yet visible to anyone: the magic is still zero (or whatever it was: clear it first).
        UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .store(0, ordering: .relaxed)
        let lazy = region.header.isLazy && region.pageKind != .explicit2MiB && region.pageKind != .explicit1GiB
        if lazy {
            // Zeros without writing them: a hole over the whole metadata area (a fresh object is all hole already;
            // a reused one loses its old contents and backing), then commit only the part used from the start.
            let area = SharedHeapLayout.roundUp(layout.totalBytes, OSAllocator.pageSize)
            if let error = region.removePages(offset: geometry.metadataOffset, length: area) {
                throw invalid("could not clear the metadata area of \(region.describing) (MADV_REMOVE of "
                    + "\(area) bytes failed: \(error))")
            }
            // The header, tables, participant records and pool words, then each tier's first descriptor and
            // bitmap word (a tier's bump index starts at its page 0: descriptors up to it are committed).
            let prefix = SharedHeapLayout.roundUp(layout.bitmapsOffset, OSAllocator.pageSize)
            var failure = region.commitInPlace(offset: geometry.metadataOffset, length: min(prefix, area))
            for tier in 0..<2 where failure == nil && layout.pages(ofTier: tier).count > 0 {
                failure = SharedHeap.commitFirstPoolEntry(region: region, layout: layout, tier: tier)
            }
            if failure == nil, layout.extentUnits > 0 {
                // Extent unit 0's block word and length word (the one free extent's head).
                let base = geometry.metadataOffset
                failure = region.commitInPlace(offset: base + layout.blockWordsOffset + 8 * layout.extentSlotBase,
                                               length: 8)
                    ?? region.commitInPlace(offset: base + layout.extentLengthsOffset, length: 8)
            }
            if let error = failure {
                throw SharedHeapError(
                    .heapFull, "could not commit the heap's first \(layout.initialBytes) bytes of metadata (header, "
                        + "tables, first page descriptors) in \(region.describing): \(error); free memory or "
                        + "/dev/shm space")
            }
        } else {
            // Everything before the held lists: zeros, committed now. The held lists are committed when their slot
            // is first joined, as in a lazy heap (a thousand slots of 64 KiB each would otherwise be committed for
            // participants that may never come): a hole from the next OS page on, zeros up to it.
            let holes = SharedHeapLayout.roundUp(layout.heldOffset, OSAllocator.pageSize)
            let end = SharedHeapLayout.roundUp(layout.totalBytes, OSAllocator.pageSize)
            (meta + 8).initializeMemory(as: UInt8.self, repeating: 0, count: min(holes, layout.totalBytes) - 8)
            if end > holes, region.removePages(offset: geometry.metadataOffset + holes, length: end - holes) != nil {
                // No hole punching here (e.g. huge pages): commit them now instead.
                (meta + holes).initializeMemory(as: UInt8.self, repeating: 0, count: layout.totalBytes - holes)
            }
        }
        for (index, size) in layout.classSizes.enumerated() {
            SharedHeapHeaderField.store(UInt32(size), at: SharedHeapHeaderField.classTable + 4 * index, in: meta)
        }
        // The pools need nothing: bump index 0, cursor 0, bitmaps clear, descriptors zero (pooled, epoch 0).
        // The extent area is one free extent of every unit: unit 0's length word says so (its block word is zero:
        // free), and unit 0's metadata is committed (the frontier).
        if layout.extentUnits > 0 {
            (meta + layout.extentLengthsOffset).storeBytes(of: UInt64(layout.extentUnits), as: UInt64.self)
            SharedHeapHeaderField.store(UInt64(1), at: SharedHeapHeaderField.extentFrontier, in: meta)
        }
        for p in 0..<c.participantCapacity {  // No limit until someone sets one.
            (meta + layout.participantsOffset + p * SharedHeapLayout.participantStride)
                .storeBytes(of: unlimitedPages, toByteOffset: ParticipantRecordField.pageAllowance, as: UInt32.self)
        }
        // A heap id is random so that a handle from another heap (an earlier format of this region, another
        // daemon's) is refused as foreign rather than read against this heap's blocks; 0 is reserved (never valid).
        var random = SystemRandomNumberGenerator()
        var heapID: UInt32 = 0
        while heapID == 0 { heapID = random.next() }
        writeHeader(layout, version: lazy ? lazyLayoutVersion : layoutVersion, heapID: heapID, at: meta)
        // Ordering: releasing; pairs with the acquiring load in `attach`: whoever sees the magic sees everything.
        UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .store(magic, ordering: .releasing)
        return SharedHeap(
            region: region, layout: layout, meta: meta, data: data, lazyCommit: lazy, heapID: heapID)
    }

    /// Commits the OS pages of `tier`'s first page descriptor and first bitmap word (`create`, lazy heaps).
    private static func commitFirstPoolEntry(region: SharedRegion, layout: SharedHeapLayout, tier: Int) -> Errno? {
        let base = region.geometry.metadataOffset
        let descriptor = base + layout.pagesOffset + layout.pages(ofTier: tier).first * SharedHeapLayout.pageStride
        return region.commitInPlace(offset: descriptor, length: SharedHeapLayout.pageStride)
            ?? region.commitInPlace(offset: base + layout.bitmapOffset(ofTier: tier), length: 8)
    }

    /// The layout `configuration` gives a data area of `dataSize` bytes, for `requiredMetadataSize` and
    /// `initialMetadataSize` (at least one small page; metadata offsets from 0).
    private static func estimatedLayout(dataSize: Int, configuration c: SharedHeapConfiguration) -> SharedHeapLayout {
        let tiers = c.tiers(dataSize: dataSize)
        return SharedHeapLayout(
            pageSize: c.pageSize, smallPageCount: max(1, tiers.smallPages), spanPageSize: c.spanPageSize,
            spanPageCount: tiers.spanPages, classSizes: tiers.classes, smallClassCount: tiers.smallClasses,
            participantCapacity: c.participantCapacity, heldCapacity: c.heldCapacity,
            firstHeldCapacity: c.firstSlotHeldCapacity, extentUnits: tiers.extentUnits, dataOffset: 0)
    }

    /// Attaches to the heap `create(in:configuration:)` formatted in `region` (possibly in another process).
    ///
    /// - Throws: `.corruptHeader` when the metadata area holds no heap, another layout version, a header whose
    ///   checksum does not match, or a geometry that does not fit the region. Attaching never writes.
    /// - Complexity: O(size classes).
    public static func attach(to region: SharedRegion) throws(SharedHeapError) -> SharedHeap {
        let geometry = region.geometry
        func corrupt(_ text: String) -> SharedHeapError { SharedHeapError(.corruptHeader, text) }
        guard geometry.metadataSize >= SharedHeapLayout.headerSize,
            let meta = try? region.mapping.unsafePointer(
                forOffset: geometry.metadataOffset, length: geometry.metadataSize)
        else { throw corrupt("the region's metadata area is too small to hold a heap header") }
        // Ordering: acquiring, pairs with the releasing store of the magic at the end of `create`.
        let found = UnsafeAtomic<UInt64>(at: meta.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            .load(ordering: .acquiring)
        guard found == magic else {
            throw corrupt("no heap in this region (magic 0x\(String(found, radix: 16)), expected "
                + "0x\(String(magic, radix: 16))); create one with SharedHeap.create(in:)")
        }
        let version = SharedHeapHeaderField.load(UInt32.self, at: SharedHeapHeaderField.layoutVersion, in: meta)
        guard version == layoutVersion || version == lazyLayoutVersion else {
            throw corrupt("heap layout version \(version); this library reads versions \(layoutVersion) and "
                + "\(lazyLayoutVersion) (lazy)")
        }
        guard let layout = readHeader(at: meta, limit: geometry.metadataSize) else {
            throw corrupt("the heap header's fields are impossible")
        }
        guard checksum(at: meta, layout: layout)
            == SharedHeapHeaderField.load(UInt64.self, at: SharedHeapHeaderField.checksum, in: meta)
        else {
            throw corrupt("the heap header's checksum does not match its contents: it was overwritten")
        }
        guard layout.dataOffset == geometry.dataOffset, layout.dataBytes <= geometry.dataSize,
            layout.totalBytes <= geometry.metadataSize,
            let data = try? region.mapping.unsafePointer(forOffset: geometry.dataOffset, length: layout.dataBytes)
        else {
            throw corrupt("the heap's geometry (\(layout.smallPageCount) pages of \(layout.pageSize) bytes and "
                + "\(layout.spanPageCount) of \(layout.spanPageSize) at offset "
                + "\(layout.dataOffset), \(layout.totalBytes) bytes of metadata) does not fit the region "
                + "(\(geometry))")
        }
        let lazy = version == lazyLayoutVersion
        let heapID = SharedHeapHeaderField.load(UInt32.self, at: SharedHeapHeaderField.heapID, in: meta)
        guard heapID != 0 else { throw corrupt("the heap header's heap id is 0") }
        return SharedHeap(
            region: region, layout: layout, meta: meta, data: data, lazyCommit: lazy, heapID: heapID)
    }

    /// Writes the header fields (table: `SharedHeapHeaderField`) and their checksum; not the magic.
    internal static func writeHeader(
        _ layout: SharedHeapLayout, version: UInt32, heapID: UInt32, at meta: UnsafeMutableRawPointer
    ) {
        typealias F = SharedHeapHeaderField
        func u32(_ value: Int, _ offset: Int) { F.store(UInt32(value), at: offset, in: meta) }
        func u64(_ value: Int, _ offset: Int) { F.store(UInt64(value), at: offset, in: meta) }
        F.store(version, at: F.layoutVersion, in: meta)
        u32(layout.pageSize, F.pageSize)
        u32(layout.smallPageCount, F.smallPageCount)
        u32(layout.classSizes.count, F.classCount)
        u32(layout.participantCapacity, F.participantCapacity)
        u32(layout.heldCapacity, F.heldCapacity)
        u32(layout.maxSlots, F.maxSlots)
        u32(layout.firstHeldCapacity, F.firstHeldCapacity)
        u64(layout.classTableOffset, F.classTableOffset)
        u64(layout.participantsOffset, F.participantsOffset)
        u64(layout.poolOffset, F.poolOffset)
        u64(layout.pagesOffset, F.pagesOffset)
        u64(layout.blockWordsOffset, F.blockWordsOffset)
        u64(layout.linksOffset, F.linksOffset)
        u64(layout.heldOffset, F.heldOffset)
        u64(layout.totalBytes, F.totalBytes)
        u64(layout.dataOffset, F.dataOffset)
        u64(layout.extentUnits, F.extentUnits)
        u32(layout.spanPageSize, F.spanPageSize)
        u32(layout.spanPageCount, F.spanPageCount)
        u32(layout.smallClassCount, F.smallClassCount)
        u32(layout.spanMaxSlots, F.spanMaxSlots)
        u64(layout.bitmapsOffset, F.bitmapsOffset)
        F.store(heapID, at: F.heapID, in: meta)
        F.store(checksum(at: meta, layout: layout), at: F.checksum, in: meta)
    }

    /// Reads the header fields (table: `SharedHeapHeaderField`) and re-derives the layout from them; nil when they
    /// are impossible or the derived offsets differ from the stored ones.
    internal static func readHeader(at meta: UnsafeMutableRawPointer, limit: Int) -> SharedHeapLayout? {
        typealias F = SharedHeapHeaderField
        func u32(_ offset: Int) -> Int { Int(F.load(UInt32.self, at: offset, in: meta)) }
        func u64(_ offset: Int) -> Int { Int(F.load(UInt64.self, at: offset, in: meta)) }
        let pageSize = u32(F.pageSize)
        let pageCount = u32(F.smallPageCount)
        let classCount = u32(F.classCount)
        let participants = u32(F.participantCapacity)
        let held = u32(F.heldCapacity)
        guard pageSize >= 4096, pageSize & (pageSize - 1) == 0, pageCount >= 1, (1...255).contains(classCount),
            (1...SharedHeapConfiguration.maximumParticipants).contains(participants), held >= 1, u32(F.firstHeldCapacity) >= 1,
            SharedHeapLayout.headerSize + 4 * classCount <= limit
        else { return nil }
        let classes = (0..<classCount).map { u32(F.classTable + 4 * $0) }
        let spanPageSize = u32(F.spanPageSize)
        let spanPageCount = u32(F.spanPageCount)
        let smallClasses = u32(F.smallClassCount)
        guard (1...classCount).contains(smallClasses), pageCount + spanPageCount <= SharedHeapLayout.maximumPageCount,
            classes.prefix(smallClasses).allSatisfy({ $0 >= 16 && $0 % 16 == 0 && $0 <= pageSize / 8 }),
            zip(classes, classes.dropFirst()).allSatisfy({ $0 < $1 }),
            spanPageCount == 0
                ? smallClasses == classCount && spanPageSize == 0
                : smallClasses < classCount && spanPageSize >= pageSize && spanPageSize <= 1 << 30
                    && spanPageSize & (spanPageSize - 1) == 0
                    && classes.dropFirst(smallClasses).allSatisfy({ $0 % 16 == 0 && $0 <= spanPageSize })
        else { return nil }
        let dataOffset = u64(F.dataOffset)
        let extentUnits = u64(F.extentUnits)
        guard extentUnits >= 0, extentUnits <= SharedHeapLayout.maximumExtentUnits else { return nil }
        let layout = SharedHeapLayout(
            pageSize: pageSize, smallPageCount: pageCount, spanPageSize: spanPageSize, spanPageCount: spanPageCount,
            classSizes: classes, smallClassCount: smallClasses, participantCapacity: participants,
            heldCapacity: held, firstHeldCapacity: u32(F.firstHeldCapacity), extentUnits: extentUnits,
            dataOffset: dataOffset)
        let stored = [F.classTableOffset, F.participantsOffset, F.poolOffset, F.pagesOffset, F.blockWordsOffset,
                      F.linksOffset, F.heldOffset, F.totalBytes].map(u64)
        let derived = [layout.classTableOffset, layout.participantsOffset, layout.poolOffset, layout.pagesOffset,
                       layout.blockWordsOffset, layout.linksOffset, layout.heldOffset, layout.totalBytes]
        guard stored == derived, u32(F.maxSlots) == layout.maxSlots,
            u32(F.spanMaxSlots) == layout.spanMaxSlots,
            u64(F.bitmapsOffset) == layout.bitmapsOffset,
            layout.dataBytes <= SharedHeapLayout.maximumDataSize, layout.maxSlots <= 65_535,
            layout.spanMaxSlots <= 65_535
        else {
            return nil
        }
        return layout
    }

    /// FNV-1a 64 over the header's `SharedHeapHeaderField.checksummedRanges` (bytes 8..<120 and 128..<156) and
    /// the class table.
    internal static func checksum(at meta: UnsafeMutableRawPointer, layout: SharedHeapLayout) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ range: Range<Int>) {
            for index in range {
                hash = (hash ^ UInt64(meta.load(fromByteOffset: index, as: UInt8.self))) &* 0x100_0000_01b3
            }
        }
        for range in SharedHeapHeaderField.checksummedRanges { mix(range) }
        mix(layout.classTableOffset..<(layout.classTableOffset + 4 * layout.classSizes.count))
        return hash
    }
}
