/// How many bytes a slab asks its backing allocator for each time it runs out of blocks.
///
/// The seed crate's `SlabGrowthPolicy::Pow2` is `.pow2()`: each refill doubles, so a slab that grows to N bytes
/// makes O(log N) requests. `.linear` adds a constant each time; `.fixed` always asks for the same amount.
/// A refill is never larger than what is left of the slab's byte limit.
public struct SlabGrowthPolicy: Hashable, Sendable, CustomStringConvertible {
    @usableFromInline
    internal enum Kind: Hashable, Sendable { case fixed, linear, pow2 }

    @usableFromInline internal let kind: Kind
    /// Bytes of the first refill.
    public let initial: Int
    /// Bytes added per refill (`.linear` only; 0 otherwise).
    public let step: Int
    /// The largest refill (`.pow2` caps here; `.fixed` is its own size; `.linear` caps at `linearMaximum`).
    public let maximum: Int

    @usableFromInline
    internal init(kind: Kind, initial: Int, step: Int, maximum: Int) {
        self.kind = kind
        self.initial = initial
        self.step = step
        self.maximum = maximum
    }

    /// Doubling refills: `initial`, `2 × initial`, `4 × initial`, … up to `maximum` (the seed's `Pow2`).
    public static func pow2(initial: Int = 64 * 1024, maximum: Int = 64 * 1024 * 1024) -> SlabGrowthPolicy {
        SlabGrowthPolicy(kind: .pow2, initial: initial, step: 0, maximum: maximum)
    }

    /// The cap on linear refills: 256 TiB, more than any address space can map, so the cap never changes what a
    /// real slab asks for; it only keeps sizes far from `Int.max`, where layout arithmetic would overflow.
    public static let linearMaximum = 1 << 48

    /// Refills growing by a constant: `initial`, `initial + step`, `initial + 2 × step`, … (up to `linearMaximum`).
    public static func linear(initial: Int = 64 * 1024, step: Int = 64 * 1024) -> SlabGrowthPolicy {
        SlabGrowthPolicy(kind: .linear, initial: initial, step: step, maximum: linearMaximum)
    }

    /// Every refill the same size.
    public static func fixed(_ bytes: Int = 64 * 1024) -> SlabGrowthPolicy {
        SlabGrowthPolicy(kind: .fixed, initial: bytes, step: 0, maximum: bytes)
    }

    /// The default: `.pow2()`, 64 KiB doubling up to 64 MiB.
    public static var `default`: SlabGrowthPolicy { .pow2() }

    /// The size in bytes of refill number `index` (0-based), saturating at `maximum`.
    public func refillSize(_ index: Int) -> Int {
        switch kind {
        case .fixed:
            return initial
        case .linear:
            let (product, overflow1) = step.multipliedReportingOverflow(by: index)
            let (sum, overflow2) = initial.addingReportingOverflow(product)
            return overflow1 || overflow2 ? maximum : Swift.min(sum, maximum)
        case .pow2:
            guard index < Int.bitWidth - 2 else { return maximum }
            let (shifted, overflow) = initial.multipliedReportingOverflow(by: 1 << index)
            return overflow ? maximum : Swift.min(shifted, maximum)
        }
    }

    /// Why this policy cannot work, or nil if it can.
    internal var configurationProblem: StaticString? {
        guard initial > 0 else { return "growth policy: initial refill size must be positive" }
        switch kind {
        case .fixed: return nil
        case .linear: return step > 0 ? nil : "growth policy: linear step must be positive"
        case .pow2: return maximum >= initial ? nil : "growth policy: pow2 maximum is below its initial size"
        }
    }

    /// `"pow2(initial: 65536, maximum: 67108864)"`.
    public var description: String {
        switch kind {
        case .fixed: "fixed(\(initial))"
        case .linear: "linear(initial: \(initial), step: \(step))"
        case .pow2: "pow2(initial: \(initial), maximum: \(maximum))"
        }
    }
}
