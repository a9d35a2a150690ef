import Atomics
@testable import Divvy
import DivvyTestSupport
import XCTest

/// `UnsafeLockFreeIndexStack.walkFreeList()` and `markInUseForRecovery(_:)`, the read-only walker the shared
/// heap's recovery and audit use (tested here, with the heap that needs them).
final class LockFreeIndexStackWalkTests: XCTestCase {
    func withStack(capacity: Int, _ body: (UnsafeLockFreeIndexStack, UnsafeMutableRawPointer) throws -> Void) rethrows {
        let memory = UnsafeMutableRawPointer.allocate(
            byteCount: UnsafeLockFreeIndexStack.requiredBytes(capacity: capacity),
            alignment: UnsafeLockFreeIndexStack.requiredAlignment)
        defer { memory.deallocate() }
        try body(UnsafeLockFreeIndexStack.initialize(at: memory, capacity: capacity), memory)
    }

    func testWalkListsExactlyTheFreeIndicesTopFirst() throws {
        try withStack(capacity: 8) { stack, _ in
            var walk = stack.walkFreeList()
            XCTAssertEqual(walk, .init(indices: Array(0..<8), brokenAt: nil, isOutOfRange: false, isExact: true))
            let a = try XCTUnwrap(stack.pop()), b = try XCTUnwrap(stack.pop()), c = try XCTUnwrap(stack.pop())
            try stack.push(b)
            walk = stack.walkFreeList()
            XCTAssertEqual(walk.indices, [b] + Array(3..<8))
            XCTAssertTrue(walk.isExact)
            XCTAssertTrue(stack.isInUse(a) && stack.isInUse(c) && !stack.isInUse(b))
            while stack.pop() != nil {}
            XCTAssertEqual(stack.walkFreeList().indices, [])
        }
    }

    func testWalkStopsAtCorruptLinksWithoutWriting() throws {
        try withStack(capacity: 4) { stack, memory in
            let links = (memory + 128).assumingMemoryBound(to: UInt32.self)
            links[1] = 0  // 0 → 1 → 0: a cycle
            var walk = stack.walkFreeList()
            XCTAssertEqual(walk.indices, [0, 1])
            XCTAssertEqual(walk.brokenAt, 0)
            XCTAssertFalse(walk.isOutOfRange)
            XCTAssertFalse(walk.isExact)
            links[1] = 77  // out of range
            walk = stack.walkFreeList()
            XCTAssertEqual(walk.brokenAt, 77)
            XCTAssertTrue(walk.isOutOfRange)
            XCTAssertEqual(links[1], 77, "walking writes nothing")
        }
    }

    func testMarkInUseForRecoveryLetsAStrandedIndexBePushed() throws {
        try withStack(capacity: 4) { stack, memory in
            // A pop that died between its head exchange and its mark: index 0 is neither listed nor marked.
            let head = UnsafeAtomic<UInt64>(at: memory.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            head.store(UInt64(1) | (UInt64(1) << 32), ordering: .relaxed)
            XCTAssertEqual(stack.walkFreeList().indices, [1, 2, 3])
            XCTAssertFalse(stack.isInUse(0))
            XCTAssertThrowsError(try stack.push(0))  // Looks free: refused as a double free.
            stack.markInUseForRecovery(0)
            XCTAssertTrue(stack.isInUse(0))
            try stack.push(0)
            XCTAssertEqual(stack.walkFreeList().indices, [0, 1, 2, 3])
        }
    }

    func testConcurrentWalksNeverCrashAndExactOnesAreConsistent() throws {
        try withStack(capacity: 64) { stack, _ in
            let done = ManagedAtomic<Bool>(false)
            let worker = Thread {
                var held: [UInt32] = []
                while !done.load(ordering: .relaxed) {
                    if let index = stack.pop() { held.append(index) }
                    if held.count > 8 || (stack.approximateCount == 0 && !held.isEmpty) {
                        try? stack.push(held.removeFirst())
                    }
                }
                for index in held { try? stack.push(index) }
            }
            worker.start()
            var exact = 0
            for _ in 0..<20_000 {
                let walk = stack.walkFreeList()
                if walk.isExact {
                    exact += 1
                    XCTAssertEqual(Set(walk.indices).count, walk.indices.count)
                }
            }
            done.store(true, ordering: .relaxed)
            while !worker.isFinished { usleep(1000) }
            XCTAssertEqual(Set(stack.walkFreeList().indices).count, 64)
            XCTAssertGreaterThan(exact, 0)
        }
    }
}
