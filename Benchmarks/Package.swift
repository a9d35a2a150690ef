// swift-tools-version: 6.2
//
// Divvy's benchmarks, kept in their own package so the main build stays lean (as swift-nio does).
// Run from this directory:  swift package benchmark           (all)
//                           ./ratios.sh                        (all, as ratios to malloc+free; see docs/benchmarks.md)
import PackageDescription

import struct Foundation.URL

// A path dependency's identity is its directory's name, which is whatever the checkout is called
// (`divvy`, `main`, a CI clone's temp name), so derive it rather than hard-code it.
let divvyPackage = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "DivvyBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        // Already in the graph through Divvy; named here for shm-two-process's ring counters.
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
    ],
    targets: [
        // glibc's own entry points (__libc_malloc/__libc_free), so the baseline bypasses the harness's malloc
        // interposer; see docs/benchmarks.md.
        .target(name: "CBenchSupport"),
        .executableTarget(
            name: "Allocators",
            dependencies: [
                .product(name: "Divvy", package: divvyPackage),
                .product(name: "Benchmark", package: "benchmark"),
                "CBenchSupport",
            ],
            path: "Benchmarks/Allocators",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // DivvyShm's SharedHeap in one process, against glibc in the same run (see shm-vs-boost.sh).
        .executableTarget(
            name: "SharedHeapBenchmarks",
            dependencies: [
                .product(name: "DivvyShm", package: divvyPackage),
                .product(name: "Benchmark", package: "benchmark"),
                "CBenchSupport",
            ],
            path: "Benchmarks/SharedHeap",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Two processes handing blocks over through a ring in the region (remote frees); prints ops/s per process.
        // Not a harness benchmark: it spawns its peer and times both. `swift run -c release shm-two-process`.
        .executableTarget(
            name: "shm-two-process",
            dependencies: [
                .product(name: "DivvyShm", package: divvyPackage),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Sources/ShmTwoProcess"
        ),
        // divvyd's figures (mediated round trips vs a bare socket ping-pong, batches, direct pairs vs malloc,
        // throughput with 1/8/64 client processes), each with its baseline in the same run.
        // `swift run -c release daemon-bench`.
        .executableTarget(
            name: "daemon-bench",
            dependencies: [
                .product(name: "DivvyServer", package: divvyPackage),
                .product(name: "DivvyClient", package: divvyPackage),
                "CBenchSupport",
            ],
            path: "Sources/DaemonBench"
        ),
        // Issue 11's figures for the shared heap (see docs/benchmarks.md, "Shared heap: issue 11 figures"); each takes
        // `--boost FILE` (boost/run.sh's output) to put Boost.Interprocess beside it. shm-targets.sh runs all three.
        // Metadata committed per data byte and per block, for 16 B, 64 B, 4 KiB and 1 MiB blocks.
        .executableTarget(
            name: "shm-metadata",
            dependencies: [.product(name: "DivvyShm", package: divvyPackage)],
            path: "Sources/ShmMetadata"
        ),
        // Mixed sizes with long churn: bytes requested (live) against data-area bytes in use, over time.
        .executableTarget(
            name: "shm-fragmentation",
            dependencies: [.product(name: "DivvyShm", package: divvyPackage)],
            path: "Sources/ShmFragmentation"
        ),
        // The C ABI of libdivvy (divvy.h, the real header) called from C: connect, n allocate+free pairs, close.
        .target(
            name: "CLibdivvyBench",
            cSettings: [.unsafeFlags(["-I", "\(Context.packageDirectory)/../Sources/CDivvyC/include"])]
        ),
        // Direct-path pairs in one run, as ratios to glibc malloc+free: SharedHeap participant, DivvyClient direct,
        // libdivvy divvy_alloc/divvy_free (through the C ABI, linked against the `divvy` product), and Boost.
        .executableTarget(
            name: "direct-ratios",
            dependencies: [
                .product(name: "DivvyShm", package: divvyPackage),
                .product(name: "DivvyServer", package: divvyPackage),
                .product(name: "DivvyClient", package: divvyPackage),
                .product(name: "divvy", package: divvyPackage),
                "CBenchSupport",
                "CLibdivvyBench",
            ],
            path: "Sources/DirectRatios"
        ),
        // How long clients are without service while divvyd is SIGKILLed and restarted through the fd store
        // (issue 12). `swift run -c release restart-gap`; see docs/benchmarks.md, "Daemon restarts".
        .executableTarget(
            name: "restart-gap",
            dependencies: [
                .product(name: "DivvyServer", package: divvyPackage),
                .product(name: "DivvyClient", package: divvyPackage),
                .product(name: "DivvyProtocol", package: divvyPackage),
            ],
            path: "Sources/RestartGap"
        ),
        // One client hammering divvyd (allocate storms, admin floods, 1,000 idle connections) vs another client's
        // round trip (issue 13). `swift run -c release noisy-neighbour`; see docs/benchmarks.md, "Noisy neighbours".
        .executableTarget(
            name: "noisy-neighbour",
            dependencies: [
                .product(name: "DivvyServer", package: divvyPackage),
                .product(name: "DivvyClient", package: divvyPackage),
            ],
            path: "Sources/NoisyNeighbour"
        ),
    ]
)
