import Benchmark
import CBenchSupport
import Divvy

// Every benchmark measures one operation (an allocate+free pair, or one allocation) per inner iteration, with
// 1000 inner iterations per sample (`scalingFactor: .kilo`), so figures are per operation. Ratios against the
// glibc baseline (measured in the same run) are what the README reports: see ratios.sh.
//
// Beware the optimizer: every block address goes into `blackHole`, so no loop is deleted.

let perOperation = Benchmark.Configuration(
    metrics: [.wallClock, .instructions],
    timeUnits: .nanoseconds,
    warmupIterations: 10,
    scalingFactor: .kilo,
    maxDuration: .seconds(2),
    maxIterations: 100_000
)

/// Allocate and immediately free one block, `scaledIterations` times.
@inline(__always)
func pairs<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    for _ in benchmark.scaledIterations {
        let block = try allocator.allocate(layout)
        blackHole(block.start)
        allocator.deallocate(block, layout: layout)
    }
}

/// Allocate `burst` blocks, then free them all, per 1000 operations (burst allocations + burst frees = 2·burst ops).
@inline(__always)
func bursts<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark, burst: Int = 1000) throws {
    let blocks = UnsafeMutableBufferPointer<UnsafeBlock>.allocate(capacity: burst)
    defer { blocks.deallocate() }
    for _ in 0..<(benchmark.scaledIterations.count / burst) {
        for i in 0..<burst { blocks[i] = try allocator.allocate(layout) }
        for i in 0..<burst { allocator.deallocate(blocks[i], layout: layout) }
    }
    blackHole(blocks.baseAddress)
}

let small = Layout.of((Int, Int, Int, Int).self)  // 32 bytes, 8-aligned

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = perOperation

    // --- baselines ---------------------------------------------------------------------------------------------
    Benchmark("baseline: glibc malloc+free (32 B)") { benchmark in
        for _ in benchmark.scaledIterations {
            let p = divvy_bench_libc_malloc(32)
            blackHole(p)
            divvy_bench_libc_free(p)
        }
    }
    Benchmark("baseline: glibc malloc+free burst (32 B)") { benchmark in
        let blocks = UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>.allocate(capacity: 1000)
        defer { blocks.deallocate() }
        for _ in 0..<(benchmark.scaledIterations.count / 1000) {
            for i in 0..<1000 { blocks[i] = divvy_bench_libc_malloc(32) }
            for i in 0..<1000 { divvy_bench_libc_free(blocks[i]) }
        }
        blackHole(blocks.baseAddress)
    }
    Benchmark("SystemAllocator pair (32 B, through the protocol)") { benchmark in
        try pairs(SystemAllocator(), small, benchmark)
    }

    // --- slabs -------------------------------------------------------------------------------------------------
    Benchmark("Slab pair (32 B)") { benchmark in
        let slab = try SlabBuilder(small).finishUnsynchronized(SystemAllocator())
        try pairs(slab, small, benchmark)
    }
    Benchmark("Slab burst (32 B)") { benchmark in
        let slab = try SlabBuilder(small).finishUnsynchronized(SystemAllocator())
        try bursts(slab, small, benchmark)
    }
}
