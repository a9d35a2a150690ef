import Benchmark
import CBenchSupport
import Divvy

// Every sample runs `rounds × batch` = 100,000 operations — allocate+free pairs, or single allocations — and the
// harness reports the time per sample; ratios.sh divides by 100,000 to get nanoseconds per operation with
// sub-nanosecond resolution (the harness rounds to whole time units) and reports each as a ratio to the glibc
// baseline measured in the same run.
//
// Beware the optimizer: every block address goes into `blackHole`, so no loop is deleted.


// The harness runs a benchmark's closure once per sample, so whatever a closure builds (an allocator, its first
// refill) would be timed with every sample. Each benchmark therefore builds its allocator, warms it with one
// untimed burst (so first-touch page faults are not counted either), and only then starts the measurement.

/// One untimed burst through `allocator`, then `benchmark.startMeasurement()`.
@inline(__always)
func warmThenStart<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    let blocks = UnsafeMutableBufferPointer<UnsafeBlock>.allocate(capacity: batch)
    defer { blocks.deallocate() }
    for i in 0..<batch { blocks[i] = try allocator.allocate(layout) }
    for i in 0..<batch { allocator.deallocate(blocks[i], layout: layout) }
    benchmark.startMeasurement()
}

/// Allocate and immediately free one block, `rounds × batch` times per sample.
@inline(__always)
func pairs<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    try warmThenStart(allocator, layout, benchmark)
    for _ in 0..<rounds {
        for _ in 0..<batch {
            let block = try allocator.allocate(layout)
            blackHole(block.start)
            allocator.deallocate(block, layout: layout)
        }
    }
}

/// Allocate `batch` blocks, then free them all, `rounds` times per sample (reported per allocation+free pair).
@inline(__always)
func bursts<A: Allocator>(_ allocator: A, _ layout: Layout, _ benchmark: Benchmark) throws {
    let blocks = UnsafeMutableBufferPointer<UnsafeBlock>.allocate(capacity: batch)
    defer { blocks.deallocate() }
    try warmThenStart(allocator, layout, benchmark)
    for _ in 0..<rounds {
        for i in 0..<batch { blocks[i] = try allocator.allocate(layout) }
        for i in 0..<batch { allocator.deallocate(blocks[i], layout: layout) }
    }
    blackHole(blocks.baseAddress)
}

/// Operations per burst (and per round of pairs).
let batch = 1000
/// Rounds per sample: a sample is `rounds × batch` = 100,000 operations (≈ 0.3–3 ms), so the harness's fixed
/// cost per sample (≈ µs) is amortized away; ratios.sh divides each sample's time by 100,000.
let rounds = 100

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
        for _ in 0..<rounds {
            for _ in 0..<batch {
                let p = divvy_bench_libc_malloc(32)
                blackHole(p)
                divvy_bench_libc_free(p)
            }
        }
    }
    // The floor of any Treiber-stack pop+push: two dependent compare-and-swaps on one word, in C. On the VMs
    // this was measured on, a locked instruction costs about as much as a whole glibc malloc+free (which uses none).
    Benchmark("baseline: two compare-and-swaps (floor of a lock-free pop+push)") { benchmark in
        for _ in 0..<rounds {
            for _ in 0..<batch { divvy_bench_two_cas() }
        }
    }
    Benchmark("baseline: glibc malloc+free burst (32 B)") { benchmark in
        let blocks = UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>.allocate(capacity: 1000)
        defer { blocks.deallocate() }
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch { blocks[i] = divvy_bench_libc_malloc(32) }
            for i in 0..<batch { divvy_bench_libc_free(blocks[i]) }
        }
        blackHole(blocks.baseAddress)
    }
    Benchmark("baseline: glibc malloc+free burst (mixed 16 B–1 KiB)") { benchmark in
        let sizes = (0..<batch).map { i in 16 + (i &* 7919) % 1008 }
        let blocks = UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>.allocate(capacity: batch)
        defer { blocks.deallocate() }
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch { blocks[i] = divvy_bench_libc_malloc(sizes[i]) }
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

    // Generic composition must cost nothing: the same slab behind a combinator, called through generic code.
    Benchmark("Slab pair via Segregator (generic composition, 32 B)") { benchmark in
        let slab = try SlabBuilder(small).finishUnsynchronized(SystemAllocator())
        try pairs(Segregator(threshold: 64, small: slab, large: SystemAllocator()), small, benchmark)
    }
    Benchmark("Slab pair via StatsAllocator (atomic counters, 32 B)") { benchmark in
        let slab = try SlabBuilder(small).finishUnsynchronized(SystemAllocator())
        try pairs(StatsAllocator(slab), small, benchmark)
    }

    Benchmark("ConcurrentSlab local pair (32 B)") { benchmark in
        let (local, shared) = try SlabBuilder(small).finish(SystemAllocator())
        try pairs(local, small, benchmark)
        blackHole(shared)
    }
    Benchmark("ConcurrentSlab local burst (32 B)") { benchmark in
        let (local, shared) = try SlabBuilder(small).finish(SystemAllocator())
        try bursts(local, small, benchmark)
        blackHole(shared)
    }
    Benchmark("LockFreeSlab pair (32 B, single thread)") { benchmark in
        let slab = try LockFreeSlab(layout: small, capacity: 1 << 16, backing: OSAllocator())
        try pairs(slab, small, benchmark)
    }
    Benchmark("LockFreeSlab burst (32 B, single thread)") { benchmark in
        let slab = try LockFreeSlab(layout: small, capacity: 1 << 16, backing: OSAllocator())
        try bursts(slab, small, benchmark)
    }

    // --- arenas, pools, the OS -------------------------------------------------------------------------------------
    Benchmark("Arena allocation (32 B; reset every 1000)") { benchmark in
        let arena = try Arena(OSAllocator())
        for _ in 0..<batch { blackHole(try arena.allocate(small).start) }
        arena.deallocateAll()
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for _ in 0..<batch { blackHole(try arena.allocate(small).start) }
            arena.deallocateAll()
        }
    }
    Benchmark("Pool pair (32 B)") { benchmark in
        try pairs(try Pool(OSAllocator()), small, benchmark)
    }
    Benchmark("Pool burst (mixed 16 B–1 KiB)") { benchmark in
        let pool = try Pool(OSAllocator())
        let layouts = (0..<batch).map { i in Layout(uncheckedSize: 16 + (i &* 7919) % 1008, alignment: 8) }
        let blocks = UnsafeMutableBufferPointer<UnsafeBlock>.allocate(capacity: batch)
        defer { blocks.deallocate() }
        for i in 0..<batch { blocks[i] = try pool.allocate(layouts[i]) }
        for i in 0..<batch { pool.deallocate(blocks[i], layout: layouts[i]) }
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch { blocks[i] = try pool.allocate(layouts[i]) }
            for i in 0..<batch { pool.deallocate(blocks[i], layout: layouts[i]) }
        }
    }
    Benchmark("OSAllocator pair (64 KiB: mmap+munmap)") { benchmark in
        try pairs(OSAllocator(), Layout(size: 64 * 1024, alignment: 4096), benchmark)
    }
}
