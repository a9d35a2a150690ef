import Benchmark
import CBenchSupport
import Divvy

// Every sample runs `batch` (1000) operations — allocate+free pairs, or single allocations — and the harness reports
// the time per sample; ratios.sh divides by 1000 to get nanoseconds per operation with sub-nanosecond resolution
// (the harness rounds to whole time units) and reports each as a ratio to the glibc baseline measured in the same
// run.
//
// Beware the optimizer: every block address goes into `blackHole`, so no loop is deleted.


/// Allocate and immediately free one block, `scaledIterations` times.
@inline(__always)
func pairs<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    for _ in benchmark.scaledIterations {
        for _ in 0..<batch {
            let block = try allocator.allocate(layout)
            blackHole(block.start)
            allocator.deallocate(block, layout: layout)
        }
    }
}

/// Allocate `batch` blocks, then free them all (one sample = `batch` allocations and `batch` frees, reported per pair).
@inline(__always)
func bursts<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    let blocks = UnsafeMutableBufferPointer<UnsafeBlock>.allocate(capacity: batch)
    defer { blocks.deallocate() }
    for _ in benchmark.scaledIterations {
        for i in 0..<batch { blocks[i] = try allocator.allocate(layout) }
        for i in 0..<batch { allocator.deallocate(blocks[i], layout: layout) }
    }
    blackHole(blocks.baseAddress)
}

/// Operations per sample.
let batch = 1000

let small = Layout.of((Int, Int, Int, Int).self)  // 32 bytes, 8-aligned

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = Benchmark.Configuration(
        metrics: [.wallClock],
        timeUnits: .nanoseconds,
        warmupIterations: 10,
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )

    // --- baselines ---------------------------------------------------------------------------------------------
    Benchmark("baseline: glibc malloc+free (32 B)") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<batch {
                let p = divvy_bench_libc_malloc(32)
                blackHole(p)
                divvy_bench_libc_free(p)
            }
        }
    }
    Benchmark("baseline: glibc malloc+free burst (32 B)") { benchmark in
        let blocks = UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>.allocate(capacity: 1000)
        defer { blocks.deallocate() }
        for _ in benchmark.scaledIterations {
            for i in 0..<batch { blocks[i] = divvy_bench_libc_malloc(32) }
            for i in 0..<batch { divvy_bench_libc_free(blocks[i]) }
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
