import Divvy
@testable import DivvyShm
import DivvyTestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `OSAllocator.mapShared` / `unmapShared`, the mapping layer `SharedMapping` uses (tested here, where regions
/// supply real shared-memory descriptors).
final class OSAllocatorSharedMappingTests: ShmTestCase {
    func testSharedMappingSeesTheSameBytesAndUnmaps() throws {
        let region = try SharedRegion.createAnonymous(self.configuration(dataSize: 1 << 20, metadataSize: 4096))
        let fd = region.fileDescriptor.rawValue
        let offset = region.geometry.dataOffset
        let mapping = try OSAllocator.mapShared(fileDescriptor: fd, offset: offset, length: 8192, access: .readWrite)
        XCTAssertEqual(mapping.kind, .base)
        XCTAssertEqual(mapping.block.size, 8192)
        XCTAssertNotEqual(mapping.block.start, try region.mapping.unsafePointer(forOffset: offset))
        mapping.block.start.storeBytes(of: 0xDEAD_BEEF, toByteOffset: 4096, as: UInt64.self)
        XCTAssertEqual(try region.mapping.unsafePointer(forOffset: offset + 4096).load(as: UInt64.self), 0xDEAD_BEEF)
        let reader = try OSAllocator.mapShared(fileDescriptor: fd, offset: offset, length: 8192, access: .readOnly)
        XCTAssertEqual(reader.block.start.load(fromByteOffset: 4096, as: UInt64.self), 0xDEAD_BEEF)
        OSAllocator.unmapShared(reader)
        OSAllocator.unmapShared(mapping)
        // The region's own mapping is unaffected.
        XCTAssertEqual(try region.mapping.unsafePointer(forOffset: offset + 4096).load(as: UInt64.self), 0xDEAD_BEEF)
        // Huge page advice: transparent when the kernel takes it, base otherwise; never a failure.
        let advised = try OSAllocator.mapShared(
            fileDescriptor: fd, offset: 0, length: region.geometry.totalSize, access: .readWrite, pages: .transparent)
        XCTAssertTrue(advised.kind == .transparent || advised.kind == .base, "\(advised.kind)")
        OSAllocator.unmapShared(advised)
    }

    func testBadArgumentsThrowAndMapNothing() throws {
        let region = try SharedRegion.createAnonymous(self.configuration(dataSize: 1 << 20, metadataSize: 4096))
        let fd = region.fileDescriptor.rawValue
        func expect(_ code: AllocationError.Code, errno expected: Int32? = nil, _ body: () throws(AllocationError) -> OSMapping) {
            do {
                let mapping = try body()
                OSAllocator.unmapShared(mapping)
                XCTFail("expected \(code)")
            } catch {
                XCTAssertEqual(error.code, code, "\(error)")
                if let expected { XCTAssertEqual(error.systemError, expected, "\(error)") }
            }
        }
        expect(.invalidLayout) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: fd, offset: 0, length: 0, access: .readWrite)
        }
        expect(.invalidLayout) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: fd, offset: 100, length: 4096, access: .readWrite)
        }
        expect(.invalidLayout) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: fd, offset: -4096, length: 4096, access: .readWrite)
        }
        expect(.invalidLayout) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: fd, offset: 0, length: 4096, access: .readWrite, pages: .explicit2MiB)
        }
        expect(.systemCallFailed, errno: EBADF) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: -1, offset: 0, length: 4096, access: .readOnly)
        }
        // A read-only descriptor cannot be mapped read-write.
        let readOnly = open("/proc/self/fd/\(fd)", O_RDONLY)
        XCTAssertGreaterThanOrEqual(readOnly, 0)
        defer { close(readOnly) }
        expect(.systemCallFailed, errno: EACCES) { () throws(AllocationError) in
            try OSAllocator.mapShared(fileDescriptor: readOnly, offset: 0, length: 4096, access: .readWrite)
        }
        let ok = try OSAllocator.mapShared(fileDescriptor: readOnly, offset: 0, length: 4096, access: .readOnly)
        OSAllocator.unmapShared(ok)
    }
}
