import DivvyTestSupport
import XCTest

@testable import DivvyServer

final class HandleTableTests: XCTestCase {
    /// Random inserts, updates and removals against a Dictionary, with keys crowded into few buckets so probe
    /// runs wrap around and backward-shift deletion is exercised.
    func testMatchesADictionaryUnderRandomOperations() {
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        var table = HandleTable<Int>(capacity: 4)
        var model: [UInt64: Int] = [:]
        let keys: [UInt64] = (0..<300).map { index in
            index % 3 == 0 ? UInt64(index + 1) << 32 : UInt64.random(in: 1...UInt64.max, using: &random)
        }
        for step in 0..<20_000 {
            let key = keys[Int(random.next() % UInt64(keys.count))]
            switch random.next() % 3 {
            case 0, 1:
                table[key] = step
                model[key] = step
            default:
                table[key] = nil
                model[key] = nil
            }
            if step % 997 == 0 {
                for key in keys { XCTAssertEqual(table[key], model[key], "seed \(seed), step \(step)") }
            }
        }
        XCTAssertEqual(table.count, model.count, "seed \(seed)")
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: table.entries.map { ($0.key, $0.value) }), model, "seed \(seed)")
        for key in model.keys { table[key] = nil }
        XCTAssertTrue(table.isEmpty)
        XCTAssertTrue(table.entries.isEmpty)
    }
}
