import Divvy
import DivvyTestSupport
import XCTest

final class CoreTests: XCTestCase {
    func testLayoutValidation() throws {
        let layout = try Layout(size: 10, alignment: 8)
        XCTAssertEqual(layout.stride, 16)
        XCTAssertEqual(try Layout(size: 0, alignment: 1).stride, 0)
        XCTAssertEqual(Layout.of(UInt32.self), try Layout(size: 4, alignment: 4))
        XCTAssertEqual(try Layout.array(of: UInt64.self, count: 3), try Layout(size: 24, alignment: 8))
        assertAllocationError(.invalidLayout) { _ = try Layout(size: -1) }
        assertAllocationError(.invalidLayout) { _ = try Layout(size: 8, alignment: 0) }
        assertAllocationError(.invalidLayout) { _ = try Layout(size: 8, alignment: 24) }
        assertAllocationError(.invalidLayout) { _ = try Layout(size: Int.max, alignment: 16) }
        assertAllocationError(.invalidLayout) { _ = try Layout.array(of: UInt64.self, count: Int.max / 4) }
        assertAllocationError(.invalidLayout) { _ = try Layout.array(of: UInt64.self, count: -1) }
    }

    func testErrorDescriptionNamesCodeReasonAndNumbers() {
        let error = AllocationError(.limitExceeded, "slab byte limit reached", size: 64, limit: 4096)
        XCTAssertEqual(error.description, "limitExceeded: slab byte limit reached (size 64, limit 4096)")
        let system = AllocationError(.outOfMemory, "mmap failed", size: 8, systemError: 12)
        XCTAssertTrue(system.description.contains("errno 12: Cannot allocate memory"), system.description)
        XCTAssertEqual(error, AllocationError(.limitExceeded, "other words", size: 64, limit: 4096))
        XCTAssertNotEqual(error, AllocationError(.limitExceeded, "slab byte limit reached", size: 65, limit: 4096))
    }

    func testFailingAllocatorAlwaysFailsAndOwnsNothing() throws {
        let nothing = FailingAllocator()
        for size in [0, 1, 4096, 1 << 30] {
            assertAllocationError(.outOfMemory) { _ = try nothing.allocate(Layout(size: size)) }
        }
        let block = try SystemAllocator().allocate(Layout(size: 8))
        defer { SystemAllocator().deallocate(block, layout: try! Layout(size: 8)) }
        XCTAssertFalse(nothing.owns(block))
        assertAllocationError(.foreignBlock) { try nothing.checkedDeallocate(block, layout: Layout(size: 8)) }
        nothing.deallocateAll()
    }

    func testSystemAllocatorAlignmentsAndReallocate() throws {
        let system = SystemAllocator()
        for alignment in [1, 8, 16, 32, 64, 4096, 1 << 16] {
            let layout = try Layout(size: 100, alignment: alignment)
            let block = try system.allocate(layout)
            XCTAssertEqual(block.address % UInt(alignment), 0)
            block.start.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 100)
            let bigger = try system.reallocate(block, from: layout, to: Layout(size: 10_000, alignment: alignment))
            XCTAssertEqual(bigger.address % UInt(alignment), 0)
            XCTAssertTrue((0..<100).allSatisfy { bigger.start.load(fromByteOffset: $0, as: UInt8.self) == 0xAB })
            system.deallocate(bigger, layout: try Layout(size: 10_000, alignment: alignment))
        }
        assertAllocationError(.outOfMemory) { _ = try system.allocate(Layout(size: Int.max / 2)) }
    }

    func testSystemAllocatorRandomizedAgainstModel() {
        let seed = SeededGenerator.testSeed()
        AllocatorModelCheck.run(SystemAllocator(), seed: seed, steps: 3_000) { random in
            try! Layout(size: Int.random(in: 0...5000, using: &random), alignment: 1 << Int.random(in: 0...12, using: &random))
        }
    }
}
