@testable import DivvyShm
import XCTest

/// The 128-bit handle: its fields, the heap id it carries, and the refusal of another heap's handles.
extension SharedHeapTests {
    func testHandleFieldsRoundTripAtTheirLimits() {
        let cases: [(UInt32, Int, UInt64)] = [
            (1, 16, 1), (0xFFFF_FFFF, ((1 << 48) - 1) << 4, (1 << 48) - 1), (0x8000_0001, 1 << 40, 0x1234_5678_9ABC),
            (0xDEAD_BEEF, 0, 1 << 47),
        ]
        for (heapID, offset, generation) in cases {
            let handle = SharedHeapHandle(heapID: heapID, dataOffset: offset, generation: generation)
            XCTAssertEqual(handle.heapID, heapID)
            XCTAssertEqual(handle.dataOffset, offset)
            XCTAssertEqual(handle.generation, generation)
            XCTAssertEqual(SharedHeapHandle(low: handle.low, high: handle.high), handle)
            XCTAssertFalse(handle.isZero)
        }
        // The documented bit positions: offset/16 in low 0–47, generation 0–15 in low 48–63, 16–47 in high 0–31,
        // heap id in high 32–63.
        let handle = SharedHeapHandle(heapID: 0xAABB_CCDD, dataOffset: 0x10 * 0x1234, generation: 0x1111_2222_3333)
        XCTAssertEqual(handle.low, 0x3333_0000_0000_1234)
        XCTAssertEqual(handle.high, 0xAABB_CCDD_1111_2222)
        XCTAssertTrue(SharedHeapHandle(low: 0, high: 0).isZero)
    }

    func testEveryHandleCarriesTheHeapIDWhichSurvivesAttach() throws {
        let (region, heap) = try makeHeap("heap-id-a")
        let (_, other) = try makeHeap("heap-id-b")
        XCTAssertNotEqual(heap.heapID, 0)
        XCTAssertNotEqual(heap.heapID, other.heapID, "two formats get two ids (1 in 2^32 to fail by chance)")
        let me = try heap.join(name: "a")
        let handle = try me.allocate(100)
        XCTAssertEqual(handle.heapID, heap.heapID)
        XCTAssertEqual(try heap.attach().heapID, heap.heapID)
        XCTAssertEqual(try heap.handle(for: heap.pointer(for: handle)), handle)
        _ = region
    }

    func testAnotherHeapsHandleIsRefusedAsForeignAndChangesNothing() throws {
        let (_, heap) = try makeHeap("heap-foreign")
        let me = try heap.join(name: "a")
        let other = try heap.join(name: "b")
        let handle = try me.allocate(64)
        var foreignID = heap.heapID &+ 1
        if foreignID == 0 { foreignID = 1 }
        let foreign = SharedHeapHandle(heapID: foreignID, dataOffset: handle.dataOffset, generation: handle.generation)
        let before = heap.usage()
        for (what, attempt) in [
            ("pointer", { _ = try heap.pointer(for: foreign) }), ("blockSize", { _ = try heap.blockSize(of: foreign) }),
            ("free", { _ = try me.free(foreign) }), ("adopt", { try other.adopt(foreign) }),
        ] as [(String, () throws -> Void)] {
            XCTAssertThrowsError(try attempt(), what) { error in
                XCTAssertEqual((error as? SharedHeapError)?.code, .foreignHeap, "\(what): \(error)")
            }
        }
        XCTAssertEqual(heap.usage(), before)
        XCTAssertEqual(try heap.holders(of: handle), [me.index])
        XCTAssertTrue(heap.verify().isClean)
        XCTAssertTrue(try me.free(handle))
    }
}

extension SharedHeap {
    /// Attaches a second `SharedHeap` to this heap's region (as another process would).
    fileprivate func attach() throws -> SharedHeap { try SharedHeap.attach(to: region) }
}
