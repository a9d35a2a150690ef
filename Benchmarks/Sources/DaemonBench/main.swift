// daemon-bench: divvyd's figures, each next to its baseline measured in the same run.
//
//   swift run -c release daemon-bench            (from Benchmarks/; prints a Markdown table)
//
// - mediated allocate / free round trip  vs  a bare AF_UNIX SOCK_SEQPACKET ping-pong of the same frame size
//   (a thread echoing with blocking recv/send: the cheapest possible server);
// - batches of 1000 (allocateBatch + freeBatch), per block;
// - a direct allocate+free pair in shared memory  vs  glibc malloc+free;
// - throughput with 1, 8 and 64 client processes (mediated and direct), all ops/s summed.
//
// The daemon is the real server library on a thread of this process (a temporary socket, a 256 MiB region);
// client processes are this executable re-run as `daemon-bench client SOCKET MODE OPS`.
// Each in-process figure is the median of 7 runs.
import CBenchSupport
import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyTransport
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

/// Median nanoseconds per operation over `runs` runs of `body` (which performs `operations` operations).
func measure(runs: Int = 7, operations: Int, _ body: () throws -> Void) rethrows -> Double {
    var samples: [Double] = []
    for _ in 0..<runs {
        let start = now()
        try body()
        samples.append(Double(now() - start) / Double(operations))
    }
    return samples.sorted()[runs / 2]
}

@inline(never)
func blackHole<T>(_ value: T) {
    withExtendedLifetime(value) {}
}

// MARK: Client process mode

if CommandLine.arguments.count == 5, CommandLine.arguments[1] == "client" {
    let mode: ClientMode = CommandLine.arguments[3] == "direct" ? .direct : .mediated
    let operations = Int(CommandLine.arguments[4]) ?? 10_000
    do {
        let client = try DivvyClient(.init(socketPath: CommandLine.arguments[2], name: "bench", mode: mode))
        // Wait for "go" so all processes start together.
        _ = readLine()
        let start = now()
        for _ in 0..<operations {
            let handle = try client.allocateHandle(64).handle
            try client.free(handle)
        }
        // Start and end on CLOCK_MONOTONIC, which every process shares: the parent takes the span of the group.
        print("\(start) \(now())")
        client.close()
    } catch {
        print("error \(error)")
        exit(1)
    }
    exit(0)
}

// MARK: The daemon

let directory = NSTemporaryDirectory() + "divvy-bench-\(getpid())"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
var configuration = ServerConfiguration()
configuration.socketPath = directory + "/d.sock"
configuration.dataSize = 256 << 20
configuration.maxClients = 256
// The round-trip row holds 20,000 blocks at once: above the default per-client limit (4,096), which is there for
// fairness between clients (issue 13), not for one benchmark client.
configuration.maxBlocksPerClient = 32_768
let server = try DivvyServer(
    configuration: configuration, logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }))
let serverThread = Thread { try? server.run() }
serverThread.start()
defer {
    server.shutdown()
    try? FileManager.default.removeItem(atPath: directory)
}

// `daemon-bench direct-profile`: only direct pairs, for a profiler.
if CommandLine.arguments.count == 2, CommandLine.arguments[1] == "direct-profile" {
    let client = try DivvyClient(.init(socketPath: configuration.socketPath, name: "profile", mode: .direct))
    let start = now()
    for _ in 0..<5_000_000 { try client.free(try client.allocateHandle(64).handle) }
    print("direct pair: \(Double(now() - start) / 5e6) ns")
    client.close()
    server.shutdown()
    exit(0)
}

// `daemon-bench batch-profile`: only mediated batches, for a profiler.
if CommandLine.arguments.count == 2, CommandLine.arguments[1] == "batch-profile" {
    let client = try DivvyClient(.init(socketPath: configuration.socketPath, name: "profile", mode: .mediated))
    let start = now()
    for _ in 0..<2000 { _ = try client.freeBatch(try client.allocateBatch(size: 64, count: 1000)) }
    print("mediated batch, per block: \(Double(now() - start) / 2e6) ns")
    client.close()
    server.shutdown()
    exit(0)
}

var rows: [(String, String, String)] = []
@MainActor
func row(_ name: String, _ value: String, _ ratio: String) {
    rows.append((name, value, ratio))
    FileHandle.standardError.write(Data("\(name): \(value) \(ratio)\n".utf8))
}

// MARK: Bare ping-pong baseline

let requestSize = Frame(requestID: 1, message: .allocate(size: 64)).encoded().count
let replySize = Frame(requestID: 1, message: .allocated(handle: WireHandle(low: 1, high: 1), blockSize: 64)).encoded().count
/// A socket whose peer is a thread echoing a `replySize`-byte datagram for each one it receives.
func startEcho(replySize: Int) throws -> SeqpacketSocket {
    let (near, far) = try SeqpacketSocket.pair()
    nonisolated(unsafe) let echoSocket = far  // Used by the echo thread only from here on.
    let echo = Thread {
        var buffer = [UInt8](repeating: 0, count: 256)
        let reply = [UInt8](repeating: 7, count: replySize)
        while true {
            guard case .datagram? = try? buffer.withUnsafeMutableBytes({ try echoSocket.receive(into: $0) }) else {
                return
            }
            _ = try? echoSocket.send(reply)
        }
    }
    echo.start()
    return near
}
let near = try startEcho(replySize: replySize)
let pingRequest = [UInt8](repeating: 1, count: requestSize)
var pingBuffer = [UInt8](repeating: 0, count: 256)
let rounds = 20_000
let bare = try measure(operations: rounds) {
    for _ in 0..<rounds {
        _ = try near.send(pingRequest)
        _ = try pingBuffer.withUnsafeMutableBytes { try near.receive(into: $0) }
    }
}
near.close()
row("bare SEQPACKET ping-pong (\(requestSize) B → \(replySize) B)", String(format: "%.2f µs", bare / 1000), "1.00×")

// MARK: Mediated round trips

let mediated = try DivvyClient(.init(socketPath: configuration.socketPath, name: "bench", mode: .mediated))
var handles = [SharedHandle](repeating: SharedHandle(low: 0, high: 0), count: rounds)
let allocateTrip = try measure(operations: rounds) {
    for index in 0..<rounds { handles[index] = try mediated.allocateHandle(64).handle }
    for handle in handles { try mediated.free(handle) }
} / 2  // Each operation above is one round trip; the body did two per index.
row("mediated allocate or free (one round trip)", String(format: "%.2f µs", allocateTrip / 1000),
    String(format: "%.2f×", allocateTrip / bare))

let batch = 1000
let batchPerBlock = try measure(operations: batch * 20) {
    for _ in 0..<20 {
        let handles = try mediated.allocateBatch(size: 64, count: batch)
        _ = try mediated.freeBatch(handles)
    }
}
row("mediated batch of 1000: allocate + free, per block", String(format: "%.3f µs", batchPerBlock / 1000),
    "target < 0.1 µs")
mediated.close()

// MARK: Direct pairs vs malloc

let direct = try DivvyClient(.init(socketPath: configuration.socketPath, name: "bench", mode: .direct))
let pairs = 1_000_000
for _ in 0..<1000 { try direct.free(try direct.allocateHandle(64).handle) }  // Warm: lease, pages.
let directPair = try measure(operations: pairs) {
    for _ in 0..<pairs {
        let handle = try direct.allocateHandle(64).handle
        try direct.free(handle)
    }
}
// glibc's own entry points, as in the other benchmarks (the optimizer may not remove them).
let mallocPair = measure(operations: pairs) {
    for _ in 0..<pairs {
        let pointer = divvy_bench_libc_malloc(64)
        blackHole(pointer)
        divvy_bench_libc_free(pointer)
    }
}
row("glibc malloc(64) + free", String(format: "%.1f ns", mallocPair), "1.00×")
row("direct allocate(64) + free in shared memory", String(format: "%.1f ns", directPair),
    String(format: "%.2f×", directPair / mallocPair))
direct.close()

// MARK: Throughput with many client processes

@MainActor
func throughput(processes: Int, mode: String, operations: Int) throws -> Double {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    var children: [(Process, Pipe, Pipe)] = []
    for _ in 0..<processes {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["client", configuration.socketPath, mode, "\(operations)"]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        children.append((process, input, output))
    }
    usleep(300_000)  // Let every client connect and map the region.
    for (_, input, _) in children { input.fileHandleForWriting.write(Data("go\n".utf8)) }
    // Each client stamps the start and end of its own loop on the shared monotonic clock; the group's time runs
    // from the first start to the last end, so process start-up and exit stay out of the figure.
    var first = UInt64.max
    var last: UInt64 = 0
    for (process, _, output) in children {
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stamps = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
        guard process.terminationStatus == 0, stamps.count == 2 else {
            throw NSError(domain: "client failed: \(text)", code: 1)
        }
        first = min(first, stamps[0])
        last = max(last, stamps[1])
    }
    let slowest = last - first
    return Double(processes * operations * 2) / (Double(slowest) / 1e9)  // allocate + free each count
}

for mode in ["mediated", "direct"] {
    // A direct client is a heap participant: at most 29 besides the daemon (the holder mask has 30 bits).
    for processes in mode == "direct" ? [1, 8, 24] : [1, 8, 64] {
        let operations = mode == "direct" ? 1_000_000 : 4000
        let opsPerSecond = try throughput(processes: processes, mode: mode, operations: operations)
        row("\(mode), \(processes) client process\(processes == 1 ? "" : "es"): operations/s, all together",
            String(format: "%.0f", opsPerSecond), "")
    }
}

print("| benchmark | result | ratio to its baseline |")
print("|---|---|---|")
for (name, value, ratio) in rows { print("| \(name) | \(value) | \(ratio) |") }
