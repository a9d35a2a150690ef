import DivvyProtocol
import Foundation
import XCTest

/// SplitMix64: small, fast, seedable (the test target does not depend on DivvyTestSupport).
struct SplitMix: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// DIVVY_TEST_SEED if set (decimal or 0x-hex), else a random seed. Print it so failures can be replayed.
    static func testSeed() -> UInt64 {
        if let text = ProcessInfo.processInfo.environment["DIVVY_TEST_SEED"] {
            if text.hasPrefix("0x"), let seed = UInt64(text.dropFirst(2), radix: 16) { return seed }
            if let seed = UInt64(text) { return seed }
        }
        return UInt64.random(in: .min ... .max)
    }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        precondition(hex.count % 2 == 0, "odd hex length")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var index = hex.startIndex
        while index != hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        self = bytes
    }

    var hex: String {
        map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// Decodes `bytes`, returning the thrown ProtocolError (or nil if decoding succeeded).
func decodeError(_ bytes: [UInt8]) -> ProtocolError? {
    do {
        _ = try Frame.decode(bytes)
        return nil
    } catch {
        return error
    }
}

/// The directory holding the golden vectors, found relative to this file.
let vectorsDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()  // DivvyProtocolTests
    .deletingLastPathComponent()  // Tests
    .deletingLastPathComponent()  // package root
    .appendingPathComponent("Protocol/vectors")
