@testable import DivvyShm
import XCTest

/// The heap header codec (`SharedHeapHeaderField`) reads and writes exactly the bytes of the literal-offset code
/// it replaced (plus the heap id of layout version 6, and the bitmaps' offset at 144 where the span pool's was
/// until version 8): layout versions 8 and 9, with and without a span tier.
extension SharedHeapTests {
    /// The header writer as it was before the field table (literal offsets, native byte order, a little-endian
    /// machine), kept here as the reference for the layout.
    private static func writeHeaderWithLiteralOffsets(
        _ layout: SharedHeapLayout, version: UInt32, heapID: UInt32, at meta: UnsafeMutableRawPointer
    ) {
        meta.storeBytes(of: version, toByteOffset: 8, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.pageSize), toByteOffset: 12, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.smallPageCount), toByteOffset: 16, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.classSizes.count), toByteOffset: 20, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.participantCapacity), toByteOffset: 24, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.heldCapacity), toByteOffset: 28, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.maxSlots), toByteOffset: 32, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.firstHeldCapacity), toByteOffset: 36, as: UInt32.self)
        let offsets = [layout.classTableOffset, layout.participantsOffset, layout.poolOffset, layout.pagesOffset,
                       layout.blockWordsOffset, layout.linksOffset, layout.heldOffset, layout.totalBytes,
                       layout.dataOffset]
        for (index, offset) in offsets.enumerated() {
            meta.storeBytes(of: UInt64(offset), toByteOffset: 40 + 8 * index, as: UInt64.self)
        }
        meta.storeBytes(of: UInt32(layout.spanPageSize), toByteOffset: 128, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.spanPageCount), toByteOffset: 132, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.smallClassCount), toByteOffset: 136, as: UInt32.self)
        meta.storeBytes(of: UInt32(layout.spanMaxSlots), toByteOffset: 140, as: UInt32.self)
        meta.storeBytes(of: UInt64(layout.bitmapsOffset), toByteOffset: 144, as: UInt64.self)
        meta.storeBytes(of: heapID, toByteOffset: 152, as: UInt32.self)
        // The checksum: FNV-1a over bytes 8..<120, 128..<156 and the class table.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for index in Array(8..<120) + Array(128..<156)
            + Array(layout.classTableOffset..<(layout.classTableOffset + 4 * layout.classSizes.count))
        {
            hash = (hash ^ UInt64(meta.load(fromByteOffset: index, as: UInt8.self))) &* 0x100_0000_01b3
        }
        meta.storeBytes(of: hash, toByteOffset: 120, as: UInt64.self)
    }

    private static let codecLayouts = [
        // Small pages only.
        SharedHeapLayout(
            pageSize: 4096, smallPageCount: 37, spanPageSize: 0, spanPageCount: 0, classSizes: [16, 64, 256],
            smallClassCount: 3, participantCapacity: 4, heldCapacity: 64, dataOffset: 1 << 20),
        // Both tiers, the default-like shape.
        SharedHeapLayout(
            pageSize: 64 << 10, smallPageCount: 300, spanPageSize: 512 << 10, spanPageCount: 12,
            classSizes: [16, 32, 48, 64, 128, 1024, 8192, 12288, 65536, 524288], smallClassCount: 7,
            participantCapacity: 30, heldCapacity: 1 << 12, dataOffset: 3 << 20),
    ]

    func testHeaderCodecMatchesTheLiteralOffsetLayoutForVersions8And9() throws {
        for layout in Self.codecLayouts {
            for version in [SharedHeap.layoutVersion, SharedHeap.lazyLayoutVersion] {
                let size = layout.classTableOffset + 4 * layout.classSizes.count
                let old = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
                let new = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
                defer { old.deallocate(); new.deallocate() }
                for meta in [old, new] {
                    meta.initializeMemory(as: UInt8.self, repeating: 0, count: size)
                    for (index, blockSize) in layout.classSizes.enumerated() {
                        meta.storeBytes(
                            of: UInt32(blockSize), toByteOffset: layout.classTableOffset + 4 * index, as: UInt32.self)
                    }
                }
                Self.writeHeaderWithLiteralOffsets(layout, version: version, heapID: 0xC0FF_EE01, at: old)
                SharedHeap.writeHeader(layout, version: version, heapID: 0xC0FF_EE01, at: new)
                // Encoding: byte for byte what the old code wrote.
                XCTAssertEqual(Array(UnsafeRawBufferPointer(start: old, count: size)),
                               Array(UnsafeRawBufferPointer(start: new, count: size)), "layout \(layout), v\(version)")
                // Decoding: an old header reads back as its layout, with a matching checksum and version.
                XCTAssertEqual(SharedHeap.readHeader(at: old, limit: size), layout)
                XCTAssertEqual(SharedHeap.checksum(at: old, layout: layout),
                               SharedHeapHeaderField.load(UInt64.self, at: SharedHeapHeaderField.checksum, in: old))
                XCTAssertEqual(
                    SharedHeapHeaderField.load(UInt32.self, at: SharedHeapHeaderField.layoutVersion, in: old), version)
                // A changed field (the page count) no longer decodes to the same checksum.
                old.storeBytes(of: UInt32(layout.smallPageCount + 1), toByteOffset: 16, as: UInt32.self)
                XCTAssertNotEqual(SharedHeap.checksum(at: old, layout: layout),
                                  SharedHeapHeaderField.load(UInt64.self, at: SharedHeapHeaderField.checksum, in: old))
            }
        }
    }
}

extension SharedHeapTests {
    /// The record tables name the offsets their documentation gives (layout versions 8 and 9; 24 in a participant
    /// record, the page-in-hand word of versions 6 and 7, is unused since version 8).
    func testRecordFieldOffsetsAreTheLayoutVersion8Offsets() {
        typealias D = PageDescriptorField
        XCTAssertEqual([D.state, D.remoteHead, D.localHead, D.localCount, D.carved, D.live, D.epochStart, D.suspect,
                        D.collecting, D.slotCount, D.generation], [0, 8, 16, 20, 24, 28, 32, 40, 48, 52, 56])
        typealias P = ParticipantRecordField
        XCTAssertEqual([P.state, P.pendingOffset, P.pendingGeneration, P.pageAllowance, P.ownedPageCount,
                        P.heldCommitted, P.name, P.nameBytes], [0, 8, 16, 32, 36, 40, 48, 32])
        XCTAssertEqual(SharedHeapLayout.pageStride, 64)
        XCTAssertEqual(SharedHeapLayout.participantStride, 128)
        XCTAssertEqual(SharedHeapLayout.heldEntryStride, 16)
        typealias H = SharedHeapHeaderField
        XCTAssertEqual(H.checksummedRanges, [8..<120, 128..<156])
        XCTAssertEqual([H.magic, H.layoutVersion, H.poolOffset, H.extentUnits, H.bitmapsOffset, H.heapID,
                        H.recoveryLock, H.extentLock, H.extentSerial, H.extentFrontier, H.classTable],
                       [0, 8, 56, 112, 144, 152, 160, 168, 176, 184, 256])
        XCTAssertEqual([SharedHeap.layoutVersion, SharedHeap.lazyLayoutVersion], [10, 11])
    }
}
