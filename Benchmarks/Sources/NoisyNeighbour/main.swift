// noisy-neighbour: does one client hammering divvyd change another client's round trip? (issue 13, "Done when":
// by less than 2×.)
//
//   swift run -c release noisy-neighbour        (from Benchmarks/; prints a Markdown table, ≈ 1.5 min)
//
// The daemon is the real server library on a thread of this process, as in daemon-bench (a temporary socket, a
// 256 MiB memfd region), one daemon per configuration. The *victim* is a mediated client on this process's main
// thread timing allocate(64) + free pairs (two round trips each) for a few seconds: p50 and p99 per pair. On each
// daemon the victim runs alone first (the quiet baseline), then once per scenario while *aggressor* processes (this
// executable re-run as `noisy-neighbour aggressor MODE SOCKET [COUNT]`) hammer the same daemon — or, in the control
// rows, a second daemon, to separate what sharing the machine's cores costs from what sharing the daemon costs:
//
// - storm: a mediated client doing allocate(64) + free as fast as it can;
// - batch: a mediated client doing allocateBatch(64 × 1000) + freeBatch as fast as it can;
// - admin: an admin client looping stats, `admin status` and every page of `admin clients`;
// - silent COUNT: COUNT connections that never say hello; a slot the daemon refused or closed (handshake timeout)
//   is reopened about a second later;
// - hello COUNT: COUNT mediated clients that said hello and then idle.
//
// When the benchmark runs as root, storm/batch/silent/hello aggressors drop to uid/gid 65534 (nobody) before
// connecting, so the per-uid limit and the admin exemption apply as they would to a hostile local user; the
// daemon's policy allows that uid as an ordinary (mediated, non-admin) client, and the socket is made 0666 so it
// can connect. The victim and the admin aggressor stay root (admins under the default policy).
//
// An aggressor stops when its standard input closes and prints what it did. Under the table: the serial round trip
// of one request of each kind the aggressors send (what one of them can make the victim wait for).
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

/// The uid aggressors become when the benchmark runs as root (nobody).
let hostileID: UInt32 = 65534

// MARK: Aggressor process mode

/// Whether the parent closed our standard input (the signal to stop), without blocking.
func parentSaidStop() -> Bool {
    var entry = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, 0) > 0
}

func becomeHostileUser() {
    guard getuid() == 0 else { return }
    guard setgroups(0, nil) == 0, setgid(hostileID) == 0, setuid(hostileID) == 0 else {
        print("error: could not drop to uid \(hostileID): errno \(errno)")
        exit(1)
    }
}

/// The value of the last `"id":` in a `clients` page, or nil for an empty page.
func lastClientID(_ body: [UInt8]) -> UInt32? {
    let key = Array("\"id\":".utf8)
    guard body.count > key.count else { return nil }
    var index = body.count - key.count
    while index >= 0 {
        if body[index] == key[0], Array(body[index..<index + key.count]) == key {
            var value: UInt32 = 0
            var digit = index + key.count
            while digit < body.count, body[digit] >= 48, body[digit] <= 57 {
                value = value * 10 + UInt32(body[digit] - 48)
                digit += 1
            }
            return value
        }
        index -= 1
    }
    return nil
}

func runAggressor(mode: String, socketPath: String, count: Int) throws {
    switch mode {
    case "storm", "batch":
        becomeHostileUser()
        let client = try DivvyClient(.init(socketPath: socketPath, name: "aggressor-\(mode)", mode: .mediated))
        print("ready")
        fflush(nil)  // All streams (Swift 6 rejects the global `stdout`).
        var operations = 0
        let start = now()
        while !parentSaidStop() {
            if mode == "storm" {
                for _ in 0..<256 { try client.free(try client.allocateHandle(64).handle) }
                operations += 512
            } else {
                _ = try client.freeBatch(try client.allocateBatch(size: 64, count: 1000))
                operations += 2000
            }
        }
        let perSecond = Double(operations) / (Double(now() - start) / 1e9)
        print(String(format: "done %.0f blocks allocated or freed per second", perSecond))
        client.close()
    case "admin":
        let client = try DivvyClient(.init(socketPath: socketPath, name: "aggressor-admin", mode: .mediated))
        print("ready")
        fflush(nil)  // All streams (Swift 6 rejects the global `stdout`).
        var requests = 0
        let start = now()
        while !parentSaidStop() {
            _ = try client.stats()
            _ = try client.admin(.status)
            var cursor: UInt32 = 0
            requests += 2
            while true {
                let body = try client.admin(.clients, argument: cursor).body
                requests += 1
                // The page's last id, without decoding the page (JSONDecoder would make this client the
                // bottleneck, not the daemon): rows are JSON objects with sorted keys, each with `"id":N`.
                guard let last = lastClientID(body), last > cursor else { break }
                cursor = last
            }
        }
        print(String(format: "done %.0f admin requests per second", Double(requests) / (Double(now() - start) / 1e9)))
        client.close()
    case "silent":
        becomeHostileUser()
        // Slot i: an open socket, or nil (with the round at which to try again: rounds are ≈ 120 ms).
        var sockets = [SeqpacketSocket?](repeating: nil, count: count)
        var retryRound = [Int](repeating: 0, count: count)
        var connects = 0
        var closedByDaemon = 0
        var round = 0
        func fill() {
            for index in 0..<count where sockets[index] == nil && retryRound[index] <= round {
                connects += 1
                sockets[index] = try? SeqpacketSocket.connect(path: socketPath)
                if sockets[index] == nil { retryRound[index] = round + 10 }
            }
        }
        /// Closes the sockets the daemon answered (a refusal) or closed (handshake timeout); returns how many are
        /// still open and silent.
        func sweep(refusedRetryRounds: Int) -> Int {
            var entries = sockets.map { pollfd(fd: $0?.fileDescriptor ?? -1, events: Int16(POLLIN), revents: 0) }
            _ = poll(&entries, nfds_t(entries.count), 0)
            var held = 0
            for index in 0..<count {
                guard let socket = sockets[index] else { continue }
                if entries[index].revents != 0 {
                    socket.close()
                    sockets[index] = nil
                    closedByDaemon += 1
                    retryRound[index] = round + refusedRetryRounds
                } else {
                    held += 1
                }
            }
            return held
        }
        fill()
        usleep(300_000)
        let held = sweep(refusedRetryRounds: 10)
        print("ready held=\(held)")
        fflush(nil)  // All streams (Swift 6 rejects the global `stdout`).
        var minimum = held
        var maximum = held
        while !parentSaidStop() {
            usleep(100_000)
            round += 1
            fill()
            usleep(20_000)
            let open = sweep(refusedRetryRounds: 10)
            minimum = min(minimum, open)
            maximum = max(maximum, open)
        }
        print(
            "done held \(minimum)–\(maximum) silent connections; \(connects) connects, "
                + "\(closedByDaemon) closed or refused by the daemon")
    case "hello":
        becomeHostileUser()
        var clients: [DivvyClient] = []
        var refusal = ""
        for index in 0..<count {
            do {
                clients.append(try DivvyClient(.init(socketPath: socketPath, name: "idle-\(index)", mode: .mediated)))
            } catch {
                if refusal.isEmpty { refusal = " (first refusal: \(error))" }
            }
        }
        print("ready held=\(clients.count)\(refusal)")
        fflush(nil)  // All streams (Swift 6 rejects the global `stdout`).
        while !parentSaidStop() { usleep(100_000) }
        print("done held \(clients.count) idle clients")
        for client in clients { client.close() }
    default:
        print("error: unknown aggressor mode \(mode)")
        exit(2)
    }
}

if CommandLine.arguments.count >= 4, CommandLine.arguments[1] == "aggressor" {
    do {
        try runAggressor(
            mode: CommandLine.arguments[2], socketPath: CommandLine.arguments[3],
            count: CommandLine.arguments.count > 4 ? Int(CommandLine.arguments[4]) ?? 1000 : 1000)
    } catch {
        print("error \(error)")
        exit(1)
    }
    exit(0)
}

// MARK: The daemon

let directory = NSTemporaryDirectory() + "divvy-noisy-\(getpid())"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: directory) }
let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path

/// A daemon on a thread of this process, for one configuration.
final class Daemon {
    let server: DivvyServer
    let socketPath: String
    let stopped = DispatchSemaphore(value: 0)

    init(_ configuration: ServerConfiguration) throws {
        socketPath = configuration.socketPath
        server = try DivvyServer(
            configuration: configuration,
            logger: Logger(label: "noisy", factory: { _ in SwiftLogNoOpLogHandler() }))
        let server = server
        let stopped = stopped
        Thread {
            try? server.run()
            stopped.signal()
        }.start()
    }

    func stop() {
        server.shutdown()
        stopped.wait()
        unlink(socketPath)
    }
}

/// The defaults, but for a benchmark-local socket that the hostile uid may open.
func baseConfiguration(_ name: String) -> ServerConfiguration {
    var configuration = ServerConfiguration()
    configuration.socketPath = directory + "/\(name).sock"
    configuration.socketMode = 0o666
    configuration.shutdownGraceMilliseconds = 100
    if getuid() == 0 { configuration.policy.allowedUIDs.insert(hostileID) }
    return configuration
}

// MARK: The victim

struct Latency {
    var p50: Double
    var p99: Double
    var pairs: Int
}

/// allocate(64) + free pairs on a mediated client for `seconds` (at least 2000 pairs): per-pair percentiles, µs.
func victim(_ socketPath: String, seconds: Double) throws -> Latency {
    let client = try DivvyClient(.init(socketPath: socketPath, name: "victim", mode: .mediated))
    defer { client.close() }
    for _ in 0..<500 { try client.free(try client.allocateHandle(64).handle) }  // Warm.
    var samples: [UInt64] = []
    samples.reserveCapacity(200_000)
    let end = now() + UInt64(seconds * 1e9)
    while samples.count < 2000 || now() < end {
        let start = now()
        let handle = try client.allocateHandle(64).handle
        try client.free(handle)
        samples.append(now() - start)
    }
    samples.sort()
    func percentile(_ p: Double) -> Double {
        Double(samples[min(samples.count - 1, Int(Double(samples.count) * p))]) / 1000
    }
    return Latency(p50: percentile(0.50), p99: percentile(0.99), pairs: samples.count)
}

/// Mean round trip of each kind of request the aggressors send, on a quiet daemon (µs): what one request of each
/// kind can make the victim wait for, since the loop serves one request per connection per turn.
func requestCosts(_ socketPath: String) throws -> String {
    let client = try DivvyClient(.init(socketPath: socketPath, name: "costs", mode: .mediated))
    defer { client.close() }
    func mean(_ rounds: Int, _ body: () throws -> Void) rethrows -> String {
        for _ in 0..<min(rounds, 50) { try body() }  // Warm.
        let start = now()
        for _ in 0..<rounds { try body() }
        return String(format: "%.1f", Double(now() - start) / Double(rounds) / 1000)
    }
    let ping = try mean(2000) { try client.ping() }
    let allocate = try mean(2000) { try client.free(try client.allocateHandle(64).handle) }
    let batch = try mean(200) { _ = try client.freeBatch(try client.allocateBatch(size: 64, count: 1000)) }
    let stats = try mean(2000) { _ = try client.stats() }
    let status = try mean(2000) { _ = try client.admin(.status) }
    let clients = try mean(200) { _ = try client.admin(.clients) }
    return "ping \(ping) µs; allocate+free \(allocate) µs; allocateBatch+freeBatch of 1000 \(batch) µs; "
        + "stats \(stats) µs; admin status \(status) µs; admin clients (first page) \(clients) µs"
}

// MARK: Aggressors

final class Aggressor {
    let process = Process()
    let input = Pipe()
    let output = Pipe()
    var ready = ""

    init(mode: String, socketPath: String, count: Int) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["aggressor", mode, socketPath, "\(count)"]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        ready = readLine()
        guard ready.hasPrefix("ready") else { throw NSError(domain: "aggressor \(mode) failed: \(ready)", code: 1) }
    }

    private func readLine() -> String {
        var bytes: [UInt8] = []
        while true {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            guard let first = byte.first, first != UInt8(ascii: "\n") else { break }
            bytes.append(first)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Closes the aggressor's input (its signal to stop) and returns its last line.
    func stop() -> String {
        try? input.fileHandleForWriting.close()
        let summary = readLine()
        process.waitUntilExit()
        return summary
    }
}

// MARK: Scenarios

struct Scenario {
    var name: String
    var aggressors: [(mode: String, count: Int)]
    /// The aggressors hammer a second daemon instead: what the victim loses to sharing the machine's two cores,
    /// not the daemon (the control for the rows above it).
    var elsewhere = false
}

struct Setup {
    var name: String
    var configuration: ServerConfiguration
    var scenarios: [Scenario]
}

let seconds = Double(ProcessInfo.processInfo.environment["NOISY_SECONDS"] ?? "") ?? 6
var defaults = baseConfiguration("defaults")
var raised = baseConfiguration("raised")
raised.maxConnectionsPerUID = 0
let setups = [
    Setup(
        name: "defaults (max-clients \(defaults.maxClients), max-connections-per-uid "
            + "\(defaults.effectiveMaxConnectionsPerUID), handshake-timeout-ms "
            + "\(defaults.handshakeTimeoutMilliseconds))",
        configuration: defaults,
        scenarios: [
            Scenario(name: "(a) allocate storm: allocate(64) + free pairs", aggressors: [("storm", 1)]),
            Scenario(name: "(a) allocate storm: allocateBatch 64 × 1000 + freeBatch", aggressors: [("batch", 1)]),
            Scenario(name: "(b) admin flood: stats, status, every clients page", aggressors: [("admin", 1)]),
            Scenario(
                name: "control: the (a) pair storm against a second daemon", aggressors: [("storm", 1)],
                elsewhere: true),
            Scenario(
                name: "control: the (a) batch storm against a second daemon", aggressors: [("batch", 1)],
                elsewhere: true),
            Scenario(
                name: "control: the (b) admin flood against a second daemon", aggressors: [("admin", 1)],
                elsewhere: true),
            Scenario(name: "(c) 1,000 silent connections (no hello), non-admin uid", aggressors: [("silent", 1000)]),
        ]),
    Setup(
        name: "max-connections-per-uid 0 (no limit), otherwise defaults",
        configuration: raised,
        scenarios: [
            Scenario(name: "(c′) 1,000 silent connections, per-uid limit lifted", aggressors: [("silent", 1000)]),
            Scenario(name: "(d) 1,000 idle clients that said hello", aggressors: [("hello", 1000)]),
            Scenario(
                name: "(d+b) admin flood with 1,000 idle clients connected",
                aggressors: [("hello", 1000), ("admin", 1)]),
        ]),
]

var table: [String] = []
var costs: [String] = []
func log(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
func format(_ latency: Latency) -> String { String(format: "%.1f / %.1f µs", latency.p50, latency.p99) }

for setup in setups {
    log("daemon: \(setup.name)")
    let daemon = try Daemon(setup.configuration)
    var other = setup.configuration
    other.socketPath = directory + "/other.sock"
    let otherDaemon = setup.scenarios.contains { $0.elsewhere } ? try Daemon(other) : nil
    let quiet = try victim(daemon.socketPath, seconds: seconds)
    log("  quiet: \(format(quiet)) (\(quiet.pairs) pairs)")
    costs.append("- \(setup.name), quiet: \(try requestCosts(daemon.socketPath))")
    table.append("| quiet baseline — \(setup.name) | \(format(quiet)) | 1.00 / 1.00 | |")
    for scenario in setup.scenarios {
        var running: [Aggressor] = []
        for (mode, count) in scenario.aggressors {
            let target = scenario.elsewhere ? otherDaemon!.socketPath : daemon.socketPath
            running.append(try Aggressor(mode: mode, socketPath: target, count: count))
        }
        usleep(200_000)
        let loaded = try victim(daemon.socketPath, seconds: seconds)
        if scenario.aggressors.map(\.mode) == ["hello"] {
            costs.append("- with \(scenario.name): \(try requestCosts(daemon.socketPath))")
        }
        let summaries = running.map {
            ($0.ready.dropFirst("ready".count).trimmingCharacters(in: .whitespaces), $0.stop())
        }
        let ratio50 = loaded.p50 / quiet.p50
        let ratio99 = loaded.p99 / quiet.p99
        // p50 and p99 each against 2×. On a busy machine the quiet p99 is mostly other processes' preemptions, so
        // the p99 verdict is noisier than the p50 one (run it twice).
        func verdict(_ ratio: Double) -> String { ratio < 2 ? "met" : "**not met**" }
        let met = "p50 \(verdict(ratio50)), p99 \(verdict(ratio99))"
        let notes = summaries.map { ready, done in [ready, done.hasPrefix("done ") ? String(done.dropFirst(5)) : done]
            .filter { !$0.isEmpty }.joined(separator: "; ") }.joined(separator: "; ")
        let ratios = String(format: "%.2f / %.2f", ratio50, ratio99)
        log("  \(scenario.name): \(format(loaded)) ×\(ratios) \(met) — \(notes)")
        table.append("| \(scenario.name) | \(format(loaded)) | \(ratios) | \(met) — \(notes) |")
    }
    daemon.stop()
    otherDaemon?.stop()
}

print("| scenario | victim allocate+free pair, p50 / p99 | ratio to quiet, p50 / p99 | target < 2× |")
print("|:--|--:|--:|:--|")
for line in table { print(line) }
print("\nRound trips of one request of each kind (one client, serial):\n")
for line in costs { print(line) }
