import DivvyShm
import SystemPackage
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Regions whose data area lives in a separate object (`Configuration.separateDataObject`): what the daemon hands
/// mediated clients, so that they can reach the data and nothing else.
final class SharedRegionDataObjectTests: XCTestCase {
    private func fileSize(_ fd: FileDescriptor) -> Int {
        var info = stat()
        XCTAssertEqual(fstat(fd.rawValue, &info), 0)
        return Int(info.st_size)
    }

    func testDataObjectHoldsTheDataAndOnlyTheData() throws {
        let region = try SharedRegion.createAnonymous(
            .init(dataSize: 1 << 20, metadataSize: 64 << 10, hugePages: .none, separateDataObject: true))
        XCTAssertTrue(region.header.hasSeparateData)
        let data = try XCTUnwrap(region.dataFileDescriptor)
        XCTAssertEqual(fileSize(data), region.geometry.dataSize, "the data object is exactly the data area")
        let geometry = region.geometry
        // Writes through the region's mapping land in the data object, and the other way round.
        let inRegion = try region.mapping.unsafePointer(forOffset: geometry.dataOffset + 4096, length: 8)
        inRegion.storeBytes(of: 0xDA7A, as: UInt64.self)
        let dataOnly = try SharedRegion.mapDataObject(data, geometry: geometry)
        XCTAssertEqual(dataOnly.regionOffset, geometry.dataOffset, "offsets translate as in the region")
        let throughData = try dataOnly.unsafePointer(forOffset: geometry.dataOffset + 4096, length: 8)
        XCTAssertEqual(throughData.load(as: UInt64.self), 0xDA7A)
        throughData.storeBytes(of: 0xBEEF, as: UInt64.self)
        XCTAssertEqual(inRegion.load(as: UInt64.self), 0xBEEF)
        XCTAssertThrowsError(try dataOnly.unsafePointer(forOffset: geometry.metadataOffset, length: 8))
        // The metadata is not in the data object, and its holder cannot resize it (sealed against growing and
        // shrinking), so the descriptor never reaches anything but the data.
        XCTAssertEqual(ftruncate(data.rawValue, off_t(geometry.totalSize)), -1)
        XCTAssertEqual(ftruncate(data.rawValue, 0), -1)
        XCTAssertEqual(fileSize(data), geometry.dataSize)
        // The region's own object never gets data pages: it holds the header and metadata.
        let metadataOnly = Int((try? region.allocatedBytes()) ?? 0)
        XCTAssertGreaterThanOrEqual(metadataOnly, geometry.dataSize, "committed in full: data object counted")
    }

    func testOpeningNeedsTheDataDescriptorAndSeesTheSameBytes() throws {
        let region = try SharedRegion.createAnonymous(
            .init(dataSize: 1 << 20, metadataSize: 64 << 10, hugePages: .none, separateDataObject: true))
        let geometry = region.geometry
        try region.mapping.unsafePointer(forOffset: geometry.dataOffset, length: 8).storeBytes(of: 77, as: UInt64.self)
        try region.mapping.unsafePointer(forOffset: geometry.metadataOffset, length: 8).storeBytes(
            of: 66, as: UInt64.self)
        let peer = try SharedRegion.open(
            fileDescriptor: region.fileDescriptor, dataFileDescriptor: region.dataFileDescriptor)
        XCTAssertEqual(try peer.mapping.unsafePointer(forOffset: geometry.dataOffset, length: 8).load(as: UInt64.self), 77)
        XCTAssertEqual(
            try peer.mapping.unsafePointer(forOffset: geometry.metadataOffset, length: 8).load(as: UInt64.self), 66)
        XCTAssertThrowsError(try SharedRegion.open(fileDescriptor: region.fileDescriptor)) { error in
            XCTAssertEqual((error as? SharedRegionError)?.code, .invalidConfiguration)
            XCTAssertTrue("\(error)".contains("separate object"), "\(error)")
        }
        let other = try SharedRegion.createAnonymous(.init(dataSize: 2 << 20, hugePages: .none, separateDataObject: true))
        XCTAssertThrowsError(
            try SharedRegion.open(fileDescriptor: region.fileDescriptor, dataFileDescriptor: other.dataFileDescriptor)
        ) { error in
            XCTAssertEqual((error as? SharedRegionError)?.code, .geometryMismatch)
        }
        let plain = try SharedRegion.createAnonymous(.init(dataSize: 1 << 20, hugePages: .none))
        XCTAssertNil(plain.dataFileDescriptor)
        XCTAssertThrowsError(
            try SharedRegion.open(fileDescriptor: plain.fileDescriptor, dataFileDescriptor: region.dataFileDescriptor))
    }

    func testAHeapWorksAcrossTheTwoObjectsAndLazyCommitReachesTheDataObject() throws {
        let metadata = SharedHeap.requiredMetadataSize(dataSize: 4 << 20)
        let region = try SharedRegion.createAnonymous(
            .init(dataSize: 4 << 20, metadataSize: metadata, hugePages: .none, commitment: .lazy,
                  separateDataObject: true))
        let before = try region.allocatedBytes()
        try region.commit(offset: region.geometry.dataOffset, length: 1 << 20)
        XCTAssertGreaterThanOrEqual(try region.allocatedBytes() - before, 1 << 20, "the data object got the pages")
        let heap = try SharedHeap.create(in: region)
        let me = try heap.join(name: "a")
        let handle = try me.allocate(64)
        try heap.pointer(for: handle).storeBytes(of: 5, as: UInt64.self)
        let peer = try SharedHeap.attach(
            to: SharedRegion.open(fileDescriptor: region.fileDescriptor, dataFileDescriptor: region.dataFileDescriptor))
        XCTAssertEqual(try peer.pointer(for: handle).load(as: UInt64.self), 5)
        let dataOnly = try SharedRegion.mapDataObject(try XCTUnwrap(region.dataFileDescriptor), geometry: region.geometry)
        XCTAssertEqual(
            try dataOnly.unsafePointer(forOffset: region.geometry.dataOffset + handle.dataOffset, length: 8)
                .load(as: UInt64.self), 5, "a mediated mapping finds blocks at dataOffset + handle offset")
        XCTAssertTrue(try me.free(handle))
        XCTAssertTrue(heap.verify().isClean)
    }
}
