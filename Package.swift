// swift-tools-version: 6.2
//
// Divvy: composable allocators, a shared-memory heap and an allocator daemon.
// Layers (see docs/design.md, "Layers"): each target
// only imports the ones below it.
//
//   CDivvy      — C shim: only what Swift cannot express (variadic mremap, MAP_HUGE_* macros, CMSG_*).
//   DivvySystem — the system layer: one thin wrapper per system call (EINTR retried, swift-system's `Errno`,
//                 EBADF/EFAULT trap), owned descriptors. The only target that imports CDivvy (DivvySystemTests
//                 check it).
//   Divvy   — allocator protocols, primitives, slabs, arenas, pools, combinators, safe owners.
import PackageDescription

/// A product of the daemon's stack: a dependency only while the `Server` trait is on (see `traits` below).
func server(_ product: String, _ package: String) -> Target.Dependency {
    .product(name: product, package: package, condition: .when(traits: ["Server"]))
}

let package = Package(
    name: "Divvy",
    products: [
        .library(name: "Divvy", targets: ["Divvy"]),
        .executable(name: "divvy-demo", targets: ["DivvyDemo"]),
        .library(name: "DivvyShm", targets: ["DivvyShm"]),
        .library(name: "DivvyProtocol", targets: ["DivvyProtocol"]),
        .library(name: "DivvyServer", targets: ["DivvyServer"]),
        .library(name: "DivvyClient", targets: ["DivvyClient"]),
        .executable(name: "divvyd", targets: ["divvyd"]),
        .executable(name: "divvyctl", targets: ["divvyctl"]),
        // `LD_PRELOAD=.build/<config>/libDivvyMalloc.so program`: a Divvy composition as the process's malloc.
        .library(name: "DivvyMalloc", type: .dynamic, targets: ["DivvyMalloc"]),
        // The C client ABI: `libdivvy.so` + `divvy.h` (Sources/CDivvyC/include); C programs link with `-ldivvy`.
        .library(name: "divvy", type: .dynamic, targets: ["DivvyC"]),
    ],
    // The `Server` trait (on by default) brings the daemon's stack: logging, service lifecycle, metrics, Prometheus
    // and argument parsing. A program that only needs the allocators or the client turns it off and fetches
    // swift-atomics and swift-system alone:
    //     .package(url: "…/divvy", from: "0.2.0", traits: [])
    // SwiftPM leaves out a dependency whose every use is guarded by a disabled trait (docs/packaging.md).
    traits: [
        .trait(
            name: "Server",
            description: "The daemon, divvyctl and their dependencies (swift-log, swift-metrics, swift-prometheus, "
                + "swift-service-lifecycle, swift-argument-parser)."),
        .default(enabledTraits: ["Server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(name: "CDivvy"),
        // The system layer: every system call the targets above make goes through one wrapper here.
        .target(
            name: "DivvySystem",
            dependencies: ["CDivvy", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "DivvySystemTests",
            dependencies: [
                "DivvySystem", "divvy-shm-helper", "DivvyTestSupport",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "Divvy",
            dependencies: [
                "DivvySystem",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: [
                // Invariant checks (`_checkInvariants()`) in debug builds and tests only.
                .define("DIVVY_INTERNAL_CHECKS", .when(configuration: .debug)),
                // `Span` properties on our own owner types (`OwnedBlock.bytes`, `BlockArray.span`).
                .enableExperimentalFeature("Lifetimes"),
            ]
        ),
        // The malloc shim: C exports (re-entry guard, lock, bootstrap arena) over a Swift heap.
        .target(name: "CDivvyMalloc"),
        // libDivvyMalloc.map: the library exports the malloc family and its diagnostics only.
        .target(
            name: "DivvyMalloc", dependencies: ["Divvy", "CDivvyMalloc"], exclude: ["libDivvyMalloc.map"],
            linkerSettings: [
                .unsafeFlags([
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/DivvyMalloc/libDivvyMalloc.map",
                ])
            ]
        ),
        // A multi-threaded C workout of the malloc family that the preload tests run with and without the library.
        .executableTarget(name: "DivvyMallocStress", linkerSettings: [.linkedLibrary("pthread")]),
        // The demo is written the way users are meant to write code: the compiler rejects any
        // unsafe construct in it (strict memory safety, as an error).
        .executableTarget(
            name: "DivvyDemo",
            dependencies: ["Divvy"],
            swiftSettings: [
                .strictMemorySafety(),
                .treatWarning("StrictMemorySafety", as: .error),
            ]
        ),
        .target(
            name: "DivvyTestSupport",
            dependencies: ["Divvy", .product(name: "Atomics", package: "swift-atomics")],
            path: "Tests/DivvyTestSupport"
        ),
        .testTarget(
            name: "DivvyTests",
            dependencies: [
                "Divvy",
                "DivvyTestSupport",
                "DivvyMallocStress",
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // Shared-memory regions (POSIX shm / memfd) for the shared-memory heap.
        .target(
            name: "DivvyShm",
            dependencies: [
                "Divvy",
                "DivvySystem",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: [
                .define("DIVVY_INTERNAL_CHECKS", .when(configuration: .debug)),
            ]
        ),
        // A second process for DivvyShmTests: maps a region by name or inherited descriptor, reads and writes it.
        .executableTarget(
            name: "divvy-shm-helper",
            dependencies: [
                "DivvyShm",
                "DivvySystem",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Sources/DivvyShmHelper"
        ),
        .testTarget(
            name: "DivvyShmTests",
            dependencies: [
                "DivvyShm",
                "DivvySystem",
                "divvy-shm-helper",
                "DivvyTestSupport",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The divvyd wire protocol: message values, framing, encode/decode, error codes. Pure values, no I/O.
        .target(name: "DivvyProtocol"),
        .testTarget(name: "DivvyProtocolTests", dependencies: ["DivvyProtocol"]),
        // AF_UNIX SOCK_SEQPACKET sockets with descriptor passing and peer credentials, and an epoll poller:
        // the I/O under the daemon, its clients and divvyctl.
        .target(
            name: "DivvyTransport",
            dependencies: ["DivvySystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The daemon as a library: configuration, policy, sessions, quotas, leases, recovery, admin.
        .target(
            name: "DivvyServer",
            dependencies: [
                "DivvySystem", "DivvyShm", "DivvyProtocol", "DivvyTransport",
                .product(name: "SystemPackage", package: "swift-system"),
                server("Logging", "swift-log"),
                server("ServiceLifecycle", "swift-service-lifecycle"),
                server("UnixSignals", "swift-service-lifecycle"),
                server("Metrics", "swift-metrics"),
                server("Prometheus", "swift-prometheus"),
            ]
        ),
        // The daemon executable: parses flags and the config file, bootstraps logging, runs the server.
        .executableTarget(
            name: "divvyd",
            dependencies: [
                "DivvyServer",
                server("ArgumentParser", "swift-argument-parser"),
                server("Logging", "swift-log"),
                server("ServiceLifecycle", "swift-service-lifecycle"),
                server("UnixSignals", "swift-service-lifecycle"),
            ]
        ),
        // The admin CLI: talks to divvyd through the client library's admin calls (never links the server).
        .executableTarget(
            name: "divvyctl",
            dependencies: [
                "DivvyClient", "DivvyProtocol",
                server("ArgumentParser", "swift-argument-parser"),
            ]
        ),
        // The Swift client library: connect, map the region, direct (shared-memory) and mediated (socket) paths.
        .target(
            name: "DivvyClient",
            dependencies: [
                "Divvy", "DivvyShm", "DivvyProtocol", "DivvyTransport",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: [.enableExperimentalFeature("Lifetimes")]
        ),
        // The C client ABI: the header, the error strings and the thread-local last-error message (C) ...
        .target(name: "CDivvyC"),
        // ... and the `@_cdecl` functions over DivvyClient (Swift). Product `divvy` (libdivvy.so).
        // libdivvy.map: the library exports exactly divvy.h's functions (the Swift and C shim symbols stay local).
        .target(
            name: "DivvyC", dependencies: ["CDivvyC", "Divvy", "DivvyClient", "DivvyProtocol"],
            exclude: ["libdivvy.map"],
            linkerSettings: [
                // SONAME libdivvy.so.1 (C ABI 2: 128-bit handles; .so.0 was ABI 1): programs record the ABI they were linked
                // against, not the bare name. deploy/install-libdivvy.sh and build-deb.sh read the number here.
                .unsafeFlags([
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/DivvyC/libdivvy.map",
                    "-Xlinker", "-soname=libdivvy.so.1",
                ])
            ]
        ),
        // A client process for the end-to-end tests: runs scripted client operations against a daemon.
        .executableTarget(
            name: "divvy-client-helper", dependencies: ["DivvyClient"], path: "Sources/DivvyClientHelper"),
        .testTarget(
            name: "DivvyServerTests",
            dependencies: [
                "DivvyServer", "DivvyClient", "DivvyTransport", "DivvyTestSupport", "divvyd", "divvyctl",
                "divvy-client-helper",
                server("Logging", "swift-log"),
            ]
        ),
    ]
)

// Documentation (DocC catalogs in Sources/*/*.docc): `DIVVY_DOCS=1 swift package generate-documentation --target Divvy`
// (docs/check-docc.sh runs all three). The plugin is added only when asked for, so library users never fetch it.
if Context.environment["DIVVY_DOCS"] != nil {
    package.dependencies.append(.package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"))
}
