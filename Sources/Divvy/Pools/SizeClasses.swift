/// The block sizes a `Pool` serves: multiples of 16 up to 128 bytes, then four classes per doubling.
///
/// `16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, …` — above 128 bytes a class
/// wastes at most a quarter of its size (under 20% on average for uniform sizes), and there are only four
/// classes per power of two, so a pool up to 32 KiB has 40 classes.
///
/// Every class size is a multiple of 16, and every power of two from 16 up is a class. The lookup from a size to
/// its class is a few instructions of bit arithmetic, no table.
public enum SizeClasses {
    /// The smallest class, and the granularity up to `linearLimit`.
    public static let granularity = 16
    /// Classes up to this size are the multiples of `granularity`; above it, four per doubling.
    public static let linearLimit = 128
    /// Number of classes at or below `linearLimit`.
    @usableFromInline internal static let linearClasses = 8

    /// The index of the smallest class that holds `size` bytes (a zero-byte request uses class 0).
    ///
    /// - Precondition: `0 <= size <= 1 << 60`.
    /// - Complexity: O(1), branch-light bit arithmetic.
    @inlinable
    @inline(__always)
    public static func index(forSize size: Int) -> Int {
        if size <= 128 {
            // Safe: 0 <= size <= 128. Size 0 shares class 0 with sizes 1...16.
            return Swift.max(size &- 1, 0) &>> 4
        }
        // Above 128 the classes within [2^k, 2^(k+1)) are 5, 6, 7, 8 × 2^(k-2) (exclusive below, inclusive above):
        // the two bits after the leading one of (size - 1) pick the class.
        let s = UInt(bitPattern: size &- 1)
        let log = (UInt.bitWidth &- 1) &- s.leadingZeroBitCount  // floor(log2(size - 1)) >= 7
        let sub = Int(truncatingIfNeeded: (s &>> UInt(log &- 2)) & 3)
        // Safe: log >= 7, so the index is at least 8.
        return linearClasses &+ (log &- 7) &* 4 &+ sub
    }

    /// The size of class `index`.
    ///
    /// - Precondition: `0 <= index < 200`.
    @inlinable
    public static func size(ofClass index: Int) -> Int {
        if index < linearClasses { return (index &+ 1) &* granularity }
        let group = (index &- linearClasses) &>> 2
        let sub = (index &- linearClasses) & 3
        // Class 8 + 4g + s is (5 + s) × 2^(5 + g).
        return (5 &+ sub) &<< (5 &+ group)
    }
}
