@testable import DivvyShm
import DivvyTestSupport
import XCTest

/// The participant's process-local held index (open addressing, backward-shift deletion) against a Dictionary.
final class SharedHeapHeldTableTests: XCTestCase {
    func testRandomizedAgainstDictionary() {
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        for capacity in [1, 7, 64, 1000] {
            var table = SharedHeapHeldTable(capacity: capacity)
            defer { table.deallocate() }
            var model: [UInt64: Int] = [:]
            // Keys from a small range, so probe runs collide and wrap around the table.
            for step in 0..<20_000 {
                // Offsets (low half) from a small range, generations (high half) from a few: keys that share a
                // home bucket (the table hashes the offset only).
                let key = (random.next() % 3) << 32 | (1 + random.next() % UInt64(3 * capacity + 5))
                if let entry = model[key] {
                    XCTAssertEqual(table.find(key), entry, "seed \(seed) step \(step)")
                    XCTAssertEqual(table.remove(key), entry, "seed \(seed) step \(step)")
                    table.returnEntry(entry)
                    model[key] = nil
                } else if let entry = table.takeEntry() {
                    XCTAssertNil(table.find(key), "seed \(seed) step \(step)")
                    XCTAssertFalse(model.values.contains(entry), "seed \(seed): entry \(entry) handed out twice")
                    table.insert(key, entry)
                    model[key] = entry
                } else {
                    XCTAssertEqual(model.count, capacity, "seed \(seed): full only at capacity")
                }
                XCTAssertEqual(table.count, model.count, "seed \(seed) step \(step)")
                if step % 997 == 0 {
                    XCTAssertEqual(Set(table.allKeys), Set(model.keys), "seed \(seed) step \(step)")
                    for (key, entry) in model { XCTAssertEqual(table.find(key), entry, "seed \(seed)") }
                }
            }
        }
    }

    /// `locate`'s division-free slot computation against division, for every 16-byte multiple up to 64 KiB and the
    /// large sizes, at random offsets and at block boundaries up to 1 GiB.
    func testClassInfoDivisionMatchesDivision() {
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        var sizes = Array(stride(from: 16, through: 65536, by: 16))
        sizes += [10240, 98304, 524288, 1 << 20, 3 << 20, 1 << 30, (1 << 30) - 16]
        for size in sizes {
            let info = SharedHeap.ClassInfo(size: size, pageBytes: 1 << 30)
            var offsets: [Int] = [0, size - 1, size, size + 1, (1 << 30) - 1, (1 << 30) - size]
            for _ in 0..<200 {
                let n = Int(random.next() % (1 << 30))
                offsets += [n, n / size * size, max(0, n / size * size - 1)]
            }
            for n in offsets where n >= 0 && n < 1 << 30 {
                let slot = Int((UInt64(n) &* info.magic) >> info.shift)
                if slot != n / size {
                    XCTFail("seed \(seed): size \(size), offset \(n): \(slot) != \(n / size)")
                    return
                }
            }
        }
    }
}
