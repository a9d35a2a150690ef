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
                let key = 1 + random.next() % UInt64(3 * capacity + 5)
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
}
