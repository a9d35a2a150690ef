// direct-ratios: every direct-path allocate+free pair of issue 11, as a ratio to glibc malloc+free, in one run.
//
//   swift run -c release direct-ratios [--samples N] [--boost FILE]      (from Benchmarks/; prints a Markdown table)
//
// Rows (64 B blocks throughout):
// - glibc malloc(64) + free (__libc_malloc / __libc_free, as every other baseline here);
// - SharedHeap participant pair: DivvyShm alone, one participant of a heap in a 64 MiB memfd region;
// - DivvyClient direct pair: the Swift client (allocateHandle + free) of the real server library on a thread of
//   this process (a temporary socket, the default 256 MiB region), as daemon-bench does;
// - libdivvy divvy_alloc + divvy_free: a C loop (Sources/CLibdivvyBench, compiled against divvy.h) calling the
//   C ABI of the `divvy` product (libdivvy.so), connected direct to the same server;
// - with `--boost FILE` (boost/run.sh pairs): Boost.Interprocess cached_node_allocator allocate_one/deallocate_one
//   and managed_shared_memory's default allocate/deallocate, as ratios to the glibc pair measured in the C++ process.
//
// Every sample is 100,000 pairs; the rows are sampled round-robin (one sample of each row, then the next round), so a
// machine whose load changes during the run affects every row alike. Median and p25–p75 of the samples.
import CBenchSupport
import CLibdivvyBench
import DivvyClient
import DivvyServer
import DivvyShm
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

@inline(never)
func blackHole<T>(_ value: T) {
    withExtendedLifetime(value) {}
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("direct-ratios: \(message)\n".utf8))
    exit(1)
}

var samples = 51
var boostFile: String?
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--samples": samples = arguments.popFirst().flatMap { Int($0) } ?? samples
    case "--boost": boostFile = arguments.popFirst()
    default: fail("unknown argument \(argument); usage: direct-ratios [--samples N] [--boost FILE]")
    }
}
let pairs = 100_000
let size = 64

// MARK: The daemon (the real server library on a thread), as in daemon-bench

let directory = NSTemporaryDirectory() + "divvy-direct-ratios-\(getpid())"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
var configuration = ServerConfiguration()
configuration.socketPath = directory + "/d.sock"
let server = try DivvyServer(
    configuration: configuration, logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }))
let serverThread = Thread { try? server.run() }
serverThread.start()

// MARK: The allocators

let heapParticipant: SharedHeap.Participant = try {
    let dataSize = 64 << 20
    let heapConfiguration = SharedHeapConfiguration()
    let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: heapConfiguration)
    let region = try SharedRegion.createAnonymous(
        .init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
    return try SharedHeap.create(in: region, configuration: heapConfiguration).join(name: "direct-ratios")
}()
let client = try DivvyClient(.init(socketPath: configuration.socketPath, name: "direct-ratios", mode: .direct))
guard client.mode == .direct else { fail("the server granted \(client.mode), not direct") }
var cClient: UnsafeMutableRawPointer?
let connected = divvy_bench_c_connect(configuration.socketPath, &cClient)
guard connected == 0, let cClient else {
    fail("divvy_connect (direct) failed with \(connected): \(String(cString: divvy_bench_c_message()))")
}

struct Row {
    let name: String
    let target: Double?
    let body: () throws -> Void
    var samples: [Double] = []
}

var rows = [
    Row(name: "glibc malloc(64) + free", target: nil) {
        for _ in 0..<pairs {
            let pointer = divvy_bench_libc_malloc(size)
            blackHole(pointer)
            divvy_bench_libc_free(pointer)
        }
    },
    Row(name: "SharedHeap participant allocate(64) + free", target: 1.0) {
        for _ in 0..<pairs {
            let handle = try heapParticipant.allocate(size)
            blackHole(handle)
            try heapParticipant.free(handle)
        }
    },
    Row(name: "DivvyClient direct allocateHandle(64) + free", target: 1.2) {
        for _ in 0..<pairs {
            let handle = try client.allocateHandle(size).handle
            blackHole(handle)
            try client.free(handle)
        }
    },
    Row(name: "libdivvy divvy_alloc(64) + divvy_free (C ABI, from C)", target: 1.2) {
        let code = divvy_bench_c_pairs(cClient, size, pairs)
        guard code == 0 else { fail("divvy_alloc/divvy_free failed with \(code)") }
    },
]

// Warm every row (first-touch faults, pages claimed, the client's lease), then sample round-robin.
for row in rows { try row.body() }
for _ in 0..<samples {
    for index in rows.indices {
        let start = now()
        try rows[index].body()
        rows[index].samples.append(Double(now() - start) / Double(pairs))
    }
}
divvy_bench_c_close(cClient)
client.close()
heapParticipant.leave()
server.shutdown()
try? FileManager.default.removeItem(atPath: directory)

func f(_ value: Double) -> String { String(format: "%.2f", value) }

func quantile(_ values: [Double], _ q: Double) -> Double {
    let sorted = values.sorted()
    return sorted[Int(q * Double(sorted.count - 1))]
}

// MARK: The table

let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3)
    .joined(separator: " ") ?? "?"
print("Pairs of allocate(64) + free; \(samples) samples of \(pairs) pairs per row, round-robin; load average "
    + "before printing: \(load).")
print("")
print("| pair (64 B) | ns/pair (p50) | p25–p75 | × glibc malloc+free | target | |")
print("|:--|--:|--:|--:|--:|:--|")
let glibc = quantile(rows[0].samples, 0.5)
func verdict(_ ratio: Double, _ target: Double?) -> (String, String) {
    guard let target else { return ("", "") }
    return (String(format: "≤ %.1f×", target), ratio <= target ? "met" : "**not met**")
}
for row in rows {
    let p50 = quantile(row.samples, 0.5)
    let ratio = p50 / glibc
    let (target, met) = verdict(ratio, row.target)
    print("| \(row.name) | \(f(p50)) | \(f(quantile(row.samples, 0.25)))–\(f(quantile(row.samples, 0.75))) | "
        + "\(f(ratio)) | \(target) | \(met) |")
}
if let boostFile {
    // boost/run.sh pairs: "pairs<TAB>name<TAB>p50<TAB>p25<TAB>p75", the first row glibc in the C++ process.
    guard let text = try? String(contentsOfFile: boostFile, encoding: .utf8) else { fail("cannot read \(boostFile)") }
    let boost = text.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        .filter { $0.count == 5 && $0[0] == "pairs" }
    guard let base = boost.first(where: { $0[1].hasPrefix("glibc") }), let baseP50 = Double(base[2]) else {
        fail("\(boostFile) has no glibc pairs row")
    }
    for fields in boost {
        guard let p50 = Double(fields[2]) else { continue }
        print("| \(fields[1]) (C++ process) | \(f(p50)) | \(fields[3])–\(fields[4]) | \(f(p50 / baseP50)) | | |")
    }
}
