import Divvy
import XCTest

/// A randomized, model-based check of any allocator.
///
/// Runs thousands of random allocate / free / reallocate steps and checks every block against a simple reference
/// model: blocks are aligned and at least as large as requested, live blocks never overlap, and every live block
/// keeps the bytes written into it until it is freed (or its prefix until it is reallocated). The seed is printed
/// in every failure message; replay with `DIVVY_TEST_SEED=<seed>`.
public struct AllocatorModelCheck {
    /// What a run did, so tests can compare it with an allocator's own statistics.
    public struct Report: Sendable {
        /// The seed used.
        public var seed: UInt64
        /// Successful allocations (including those made by reallocation).
        public var allocations = 0
        /// Deallocations (including those made by reallocation).
        public var deallocations = 0
        /// Successful reallocations.
        public var reallocations = 0
        /// Allocation failures the caller accepted.
        public var failures = 0
        /// Largest number of requested bytes live at once.
        public var peakRequestedBytes = 0
    }

    /// One live block in the model.
    private struct Live {
        var block: UnsafeBlock
        var layout: Layout
        var tag: UInt8
    }

    /// Runs the check.
    ///
    /// - Parameters:
    ///   - allocator: the allocator under test.
    ///   - seed: the random seed (print it; tests take it from `SeededGenerator.testSeed()`).
    ///   - steps: number of random operations.
    ///   - maxLive: live blocks are capped here (frees become more likely near the cap).
    ///   - reallocate: whether to exercise `reallocate`.
    ///   - layout: draws the next layout to request.
    ///   - acceptFailure: whether a thrown allocation error is acceptable (e.g. a limit); unacceptable ones fail
    ///     the test.
    ///   - afterEachStep: called after every step with the current requested live bytes (to compare with stats).
    ///   - deallocate: how to free (defaults to `allocator.deallocate`).
    @discardableResult
    public static func run<A: Allocator>(
        _ allocator: A,
        seed: UInt64,
        steps: Int = 5_000,
        maxLive: Int = 300,
        reallocate: Bool = true,
        layout: (inout SeededGenerator) -> Layout,
        acceptFailure: (AllocationError) -> Bool = { _ in false },
        afterEachStep: (_ liveRequestedBytes: Int, _ liveBlocks: Int) -> Void = { _, _ in },
        deallocate: ((UnsafeBlock, Layout) -> Void)? = nil,
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> Report {
        var random = SeededGenerator(seed: seed)
        var report = Report(seed: seed)
        var live: [Live] = []
        var liveBytes = 0
        let free = deallocate ?? { allocator.deallocate($0, layout: $1) }
        var failed = false
        func fail(_ message: String) {
            if !failed { XCTFail("\(message) [seed \(seed); replay with DIVVY_TEST_SEED=\(seed)]", file: file, line: line) }
            failed = true
        }
        func fill(_ block: UnsafeBlock, count: Int, tag: UInt8) {
            for i in 0..<count { block.start.storeBytes(of: tag &+ UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
        }
        func verify(_ entry: Live, count: Int) -> Bool {
            for i in 0..<count where entry.block.start.load(fromByteOffset: i, as: UInt8.self) != entry.tag &+ UInt8(truncatingIfNeeded: i) {
                fail("block \(entry.block) (\(entry.layout)) lost its contents at byte \(i)")
                return false
            }
            return true
        }
        func checkPlacement(_ block: UnsafeBlock, _ layout: Layout, ignoring: Int? = nil) {
            if block.address % UInt(layout.alignment) != 0 { fail("block \(block) is not aligned to \(layout.alignment)") }
            if block.size < layout.size { fail("block \(block) is smaller than the requested \(layout.size) bytes") }
            let lo = block.address, hi = block.address + UInt(Swift.max(block.size, 1))
            for (index, other) in live.enumerated() where index != ignoring {
                let olo = other.block.address, ohi = other.block.address + UInt(Swift.max(other.block.size, 1))
                if lo < ohi && olo < hi { fail("block \(block) overlaps live block \(other.block)") }
            }
        }

        for _ in 0..<steps where !failed {
            let roll = Int.random(in: 0..<100, using: &random)
            let wantFree = !live.isEmpty && (live.count >= maxLive || roll < 40)
            if wantFree {
                let index = Int.random(in: 0..<live.count, using: &random)
                let entry = live.swapAt(index)
                guard verify(entry, count: entry.layout.size) else { break }
                free(entry.block, entry.layout)
                liveBytes -= entry.layout.size
                report.deallocations += 1
            } else if reallocate && !live.isEmpty && roll >= 85 {
                let index = Int.random(in: 0..<live.count, using: &random)
                let entry = live[index]
                let newLayout = layout(&random)
                do {
                    let moved = try allocator.reallocate(entry.block, from: entry.layout, to: newLayout)
                    let kept = Swift.min(entry.layout.size, newLayout.size)
                    var updated = Live(block: moved, layout: newLayout, tag: entry.tag)
                    guard verify(updated, count: kept) else { break }
                    checkPlacement(moved, newLayout, ignoring: index)
                    updated.tag = UInt8.random(in: 0...255, using: &random)
                    fill(moved, count: newLayout.size, tag: updated.tag)
                    live[index] = updated
                    liveBytes += newLayout.size - entry.layout.size
                    report.reallocations += 1
                } catch {
                    if !acceptFailure(error) { fail("reallocate(\(entry.layout) → \(newLayout)) failed: \(error)") }
                    report.failures += 1
                    guard verify(entry, count: entry.layout.size) else { break }
                }
            } else {
                let newLayout = layout(&random)
                do {
                    let block = try allocator.allocate(newLayout)
                    checkPlacement(block, newLayout)
                    let entry = Live(block: block, layout: newLayout, tag: UInt8.random(in: 0...255, using: &random))
                    fill(block, count: newLayout.size, tag: entry.tag)
                    live.append(entry)
                    liveBytes += newLayout.size
                    report.allocations += 1
                } catch {
                    if !acceptFailure(error) { fail("allocate(\(newLayout)) failed: \(error)") }
                    report.failures += 1
                }
            }
            report.peakRequestedBytes = Swift.max(report.peakRequestedBytes, liveBytes)
            afterEachStep(liveBytes, live.count)
        }
        for entry in live {
            _ = verify(entry, count: entry.layout.size)
            free(entry.block, entry.layout)
            report.deallocations += 1
        }
        afterEachStep(0, 0)
        return report
    }
}

extension Array {
    /// Removes and returns the element at `index` in O(1) by swapping it with the last one.
    fileprivate mutating func swapAt(_ index: Int) -> Element {
        swapAt(index, count - 1)
        return removeLast()
    }
}
