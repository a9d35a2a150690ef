import Benchmark
import CBenchSupport
import DivvyShm

// DivvyShm's SharedHeap, one participant in one process: allocate+free pairs and bursts of 1000, against glibc
// malloc+free of the same sizes measured in the same run. Same conventions as Allocators.swift: every sample runs
// `rounds × batch` = 100,000 operations; the heap is built and warmed (one untimed burst) before
// `benchmark.startMeasurement()` and torn down after `benchmark.stopMeasurement()`; ratios.sh divides by 100,000 and prints ratios to the glibc baseline whose name
// ends in the same "(workload)". shm-vs-boost.sh puts these next to Boost.Interprocess.

/// Operations per burst (and per round of pairs).
let batch = 1000
/// Rounds per sample (a sample is 100,000 operations).
let rounds = 100
/// The mixed workload: 16 B … 1 KiB, the same sequence as the Allocators benchmarks and the Boost driver.
let mixedSizes = (0..<batch).map { i in 16 + (i &* 7919) % 1008 }

/// A 64 MiB anonymous (memfd) region with a default-configured heap, and one participant.
func makeParticipant() throws -> SharedHeap.Participant {
    let dataSize = 64 << 20
    let configuration = SharedHeapConfiguration()
    let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
    let region = try SharedRegion.createAnonymous(
        .init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
    return try SharedHeap.create(in: region, configuration: configuration).join(name: "bench")
}

/// One untimed burst of `sizes` (first-touch faults, the first pages claimed), then start the measurement.
func warmThenStart(_ me: SharedHeap.Participant, _ sizes: [Int], _ benchmark: Benchmark) throws {
    let handles = try sizes.map { try me.allocate($0) }
    for handle in handles { try me.free(handle) }
    benchmark.startMeasurement()
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = Benchmark.Configuration(
        metrics: [.wallClock],
        timeUnits: .nanoseconds,
        warmupIterations: 10,
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )

    // --- baselines (same workloads; the 32 B ones live in Allocators.swift) -----------------------------------
    Benchmark("baseline: glibc malloc+free (64 B)") { _ in
        for _ in 0..<rounds {
            for _ in 0..<batch {
                let p = divvy_bench_libc_malloc(64)
                blackHole(p)
                divvy_bench_libc_free(p)
            }
        }
    }
    Benchmark("baseline: glibc malloc+free (mixed 16 B–1 KiB)") { benchmark in
        let sizes = mixedSizes
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch {
                let p = divvy_bench_libc_malloc(sizes[i])
                blackHole(p)
                divvy_bench_libc_free(p)
            }
        }
    }
    Benchmark("baseline: glibc malloc+free burst (64 B)") { benchmark in
        let blocks = UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>.allocate(capacity: batch)
        defer { blocks.deallocate() }
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch { blocks[i] = divvy_bench_libc_malloc(64) }
            for i in 0..<batch { divvy_bench_libc_free(blocks[i]) }
        }
        blackHole(blocks.baseAddress)
    }

    // --- SharedHeap ------------------------------------------------------------------------------------------
    Benchmark("SharedHeap participant pair (64 B)") { benchmark in
        let me = try makeParticipant()
        try warmThenStart(me, Array(repeating: 64, count: batch), benchmark)
        for _ in 0..<rounds {
            for _ in 0..<batch {
                let handle = try me.allocate(64)
                blackHole(handle)
                try me.free(handle)
            }
        }
        benchmark.stopMeasurement()  // Not the teardown (leave, unmapping 64 MiB): milliseconds.
    }
    Benchmark("SharedHeap participant pair (mixed 16 B–1 KiB)") { benchmark in
        let me = try makeParticipant()
        let sizes = mixedSizes
        try warmThenStart(me, sizes, benchmark)
        for _ in 0..<rounds {
            for i in 0..<batch {
                let handle = try me.allocate(sizes[i])
                blackHole(handle)
                try me.free(handle)
            }
        }
        benchmark.stopMeasurement()  // Not the teardown (leave, unmapping 64 MiB): milliseconds.
    }
    Benchmark("SharedHeap participant burst (64 B)") { benchmark in
        let me = try makeParticipant()
        let handles = UnsafeMutableBufferPointer<SharedHeapHandle>.allocate(capacity: batch)
        defer { handles.deallocate() }
        try warmThenStart(me, Array(repeating: 64, count: batch), benchmark)
        for _ in 0..<rounds {
            for i in 0..<batch { handles[i] = try me.allocate(64) }
            for i in 0..<batch { try me.free(handles[i]) }
        }
        benchmark.stopMeasurement()
        blackHole(handles.baseAddress)
    }
    Benchmark("SharedHeap participant burst (mixed 16 B–1 KiB)") { benchmark in
        let me = try makeParticipant()
        let sizes = mixedSizes
        let handles = UnsafeMutableBufferPointer<SharedHeapHandle>.allocate(capacity: batch)
        defer { handles.deallocate() }
        try warmThenStart(me, sizes, benchmark)
        for _ in 0..<rounds {
            for i in 0..<batch { handles[i] = try me.allocate(sizes[i]) }
            for i in 0..<batch { try me.free(handles[i]) }
        }
        benchmark.stopMeasurement()
        blackHole(handles.baseAddress)
    }
    // Handle → pointer translation (what a reader does before touching a block): checks range, epoch, generation.
    Benchmark("SharedHeap pointer(for:) (64 B)") { benchmark in
        let me = try makeParticipant()
        let handles = try (0..<batch).map { _ in try me.allocate(64) }
        let heap = me.heap
        benchmark.startMeasurement()
        for _ in 0..<rounds {
            for i in 0..<batch { blackHole(try heap.pointer(for: handles[i])) }
        }
        benchmark.stopMeasurement()
    }
}
