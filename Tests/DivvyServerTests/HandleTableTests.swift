import DivvyShm
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
        var model: [SharedHeapHandle: Int] = [:]
        // Keys of one heap (same high word), keys differing only in their heap id or high generation bits (same low
        // word: a lookup must compare all 128 bits), and random ones.
        let keys: [SharedHeapHandle] = (0..<300).map { index in
            switch index % 3 {
            case 0: SharedHeapHandle(low: UInt64(index + 1) << 32, high: 0xABCD_0001 << 32)
            case 1: SharedHeapHandle(low: 0x10, high: UInt64(index) << 32 | UInt64(index & 7))
            default:
                SharedHeapHandle(
                    low: UInt64.random(in: 1...UInt64.max, using: &random),
                    high: UInt64.random(in: 0...UInt64.max, using: &random))
            }
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
