import Divvy
import DivvyTestSupport
import XCTest

/// Counts live instances, to check that owners deinitialize values exactly once.
private final class Tracked {
    nonisolated(unsafe) static var live = 0
    let id: Int
    init(_ id: Int) { self.id = id; Tracked.live += 1 }
    deinit { Tracked.live -= 1 }
}

private struct Unique: ~Copyable {
    var payload: Tracked
}

final class SafeSurfaceTests: XCTestCase {
    func testOwnedBlockFreesExactlyOnceOnDeinit() throws {
        let counting = CountingAllocator(SystemAllocator())
        do {
            var block = try OwnedBlock(byteCount: 100, alignment: 64, in: counting)
            XCTAssertEqual(block.count, 100)
            XCTAssertGreaterThanOrEqual(block.capacity, 100)
            XCTAssertEqual(counting.allocations, 1)
            var bytes = block.mutableBytes
            for i in 0..<100 { bytes.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
            XCTAssertEqual(block.bytes.unsafeLoad(fromByteOffset: 99, as: UInt8.self), 99)
            XCTAssertEqual(block.bytes.byteCount, 100)
            block.withUnsafeBytes { XCTAssertEqual(UInt(bitPattern: $0.baseAddress!) % 64, 0) }
            XCTAssertEqual(counting.deallocations, 0)
        }
        XCTAssertEqual(counting.deallocations, 1)
        XCTAssertTrue(counting.live.isEmpty)
    }

    func testOwnedBlockConsumingFreeAndResizeKeepContents() throws {
        let counting = CountingAllocator(SystemAllocator())
        var block = try OwnedBlock(byteCount: 8, in: counting)
        var bytes = block.mutableBytes
        bytes.storeBytes(of: 0xDEAD_BEEF, toByteOffset: 0, as: UInt64.self)
        try block.resize(to: 4096)
        XCTAssertEqual(block.count, 4096)
        XCTAssertEqual(block.bytes.unsafeLoad(fromByteOffset: 0, as: UInt64.self), 0xDEAD_BEEF)
        XCTAssertEqual(counting.live.count, 1)
        block.free()
        XCTAssertEqual(counting.live.count, 0)
        XCTAssertEqual(counting.deallocations, counting.allocations)
    }

    func testOwnedBlockFailedResizeLeavesBlockIntact() throws {
        let slab = try SlabBuilder(size: 32).finishUnsynchronized(SystemAllocator())
        var block = try OwnedBlock(byteCount: 32, in: slab)
        var bytes = block.mutableBytes
        bytes.storeBytes(of: 7, toByteOffset: 0, as: Int.self)
        assertAllocationError(.unsupportedLayout) { try block.resize(to: 33) }
        XCTAssertEqual(block.count, 32)
        XCTAssertEqual(block.bytes.unsafeLoad(fromByteOffset: 0, as: Int.self), 7)
        XCTAssertEqual(slab.liveBlocks, 1)
        block.free()
        XCTAssertEqual(slab.liveBlocks, 0)
    }

    func testOwnedBlockUnsafeReleaseHandsOwnershipToTheCaller() throws {
        let counting = CountingAllocator(SystemAllocator())
        let owned = try OwnedBlock(byteCount: 16, in: counting)
        let layout = owned.layout
        let raw = owned.unsafeRelease()
        XCTAssertEqual(counting.deallocations, 0, "released block must not be freed by the owner")
        counting.deallocate(raw, layout: layout)
        XCTAssertTrue(counting.live.isEmpty)
    }

    func testOwnedBlockAllocationFailurePropagatesTypedError() {
        assertAllocationError(.outOfMemory) { _ = try OwnedBlock(byteCount: 16, in: FailingAllocator()) }
        assertAllocationError(.invalidLayout) { _ = try OwnedBlock(byteCount: 16, alignment: 3, in: SystemAllocator()) }
        assertAllocationError(.invalidLayout) { _ = try OwnedBlock(byteCount: -1, in: SystemAllocator()) }
    }

    func testOwnedValueInitializesDeinitializesAndTakes() throws {
        let counting = CountingAllocator(SystemAllocator())
        Tracked.live = 0
        do {
            var box = try OwnedValue(Tracked(1), in: counting)
            XCTAssertEqual(box.value.id, 1)
            box.value = Tracked(2)
            XCTAssertEqual(box.value.id, 2)
            XCTAssertEqual(Tracked.live, 1)
        }
        XCTAssertEqual(Tracked.live, 0)
        XCTAssertTrue(counting.live.isEmpty)

        let box = try OwnedValue(Unique(payload: Tracked(3)), in: counting)
        XCTAssertEqual(box.value.payload.id, 3)
        let unique = box.take()
        XCTAssertTrue(counting.live.isEmpty, "take() frees the storage")
        XCTAssertEqual(Tracked.live, 1, "take() moves the value out without destroying it")
        _ = consume unique
        XCTAssertEqual(Tracked.live, 0)
    }

    func testBlockArrayGrowsKeepsElementsAndFreesOnce() throws {
        let counting = CountingAllocator(SystemAllocator())
        Tracked.live = 0
        do {
            var array = BlockArray<Tracked, CountingAllocator<SystemAllocator>>(allocator: counting)
            XCTAssertEqual(array.capacity, 0)
            for i in 0..<1000 { try array.append(Tracked(i)) }
            XCTAssertEqual(array.count, 1000)
            XCTAssertGreaterThanOrEqual(array.capacity, 1000)
            XCTAssertEqual((0..<1000).map { array[$0].id }, Array(0..<1000))
            XCTAssertEqual(array.span.count, 1000)
            XCTAssertEqual(array.span[999].id, 999)
            XCTAssertEqual(array.removeLast().id, 999)
            array[0] = Tracked(-1)
            XCTAssertEqual(array[0].id, -1)
            XCTAssertEqual(Tracked.live, 999)
            XCTAssertEqual(counting.live.count, 1)
        }
        XCTAssertEqual(Tracked.live, 0)
        XCTAssertTrue(counting.live.isEmpty)
    }

    func testBlockArrayGrowthFailureLeavesArrayIntact() throws {
        let slab = try SlabBuilder(Layout.array(of: Int.self, count: 16)).finishUnsynchronized(SystemAllocator())
        var array = try BlockArray<Int, Slab<SystemAllocator>>(capacity: 16, allocator: slab)
        for i in 0..<16 { try array.append(i) }
        assertAllocationError(.unsupportedLayout) { try array.append(16) }
        XCTAssertEqual(array.count, 16)
        XCTAssertEqual(array[15], 15)
        assertAllocationError(.invalidLayout) {
            _ = try BlockArray<Int, SystemAllocator>(capacity: Int.max / 2, allocator: SystemAllocator())
        }
    }
}
