import Divvy

/// A small, fast, seedable random number generator (SplitMix64) for reproducible randomized tests.
///
/// Tests print the seed on failure; rerun with `DIVVY_TEST_SEED=<seed>` to replay one.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator starting from `seed`.
    public init(seed: UInt64) { self.state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A random integer in `0..<bound` (`bound` > 0; modulo bias is irrelevant for picking test cases).
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    /// The seed a randomized test should use: `DIVVY_TEST_SEED` if set, otherwise a fresh random one.
    public static func testSeed() -> UInt64 {
        if let text = getenvString("DIVVY_TEST_SEED"), let seed = UInt64(text) { return seed }
        return UInt64.random(in: 0...UInt64.max)
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// `getenv` as an optional String.
public func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}
