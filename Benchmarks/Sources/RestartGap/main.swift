// restart-gap: how long are clients without service when divvyd is SIGKILLed and restarted through the
// file-descriptor store? (issue 12, "a benchmark of how long clients are without service during a restart")
//
//   swift run -c release restart-gap [KILLS]        (from Benchmarks/; default 20 kills, ≈ 30 s)
//
// This process runs the supervisor (`DaemonSupervisor`, what `divvyd --supervise` runs, restart delay 0 so that the
// figure is divvyd's own restart; add the unit's `RestartSec=` under systemd) over this executable re-run as
// `restart-gap daemon SOCKET`: the real server library with the stored region re-attached, as divvyd does it. Two
// clients run throughout, each on its own thread:
//
// - a **mediated** client doing allocate(64) + free pairs; when a request fails it reconnects every 0.2 ms until a
//   pair succeeds again. Its *gap* per kill: from the SIGKILL to the first pair completed on the new daemon.
// - a **direct** client doing allocate(64) + free pairs in shared memory, which needs no daemon: its pairs per second
//   while the daemon is down (from the kill to the mediated client's recovery) against its steady rate.
//
// Printed: the gaps' p50 / p90 / max and the direct client's rates.
import DivvyClient
import DivvyProtocol
import DivvyServer
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

/// A value several threads read and write.
final class Shared<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.withLock { value } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&value) } }
}

// MARK: Daemon mode

if CommandLine.arguments.count >= 3, CommandLine.arguments[1] == "daemon" {
    var configuration = ServerConfiguration()
    configuration.socketPath = CommandLine.arguments[2]
    configuration.dataSize = 64 << 20
    let logger = Logger(label: "restart-gap-daemon") { _ in SwiftLogNoOpLogHandler() }
    do {
        let activation = try SocketActivation.fromProcessEnvironment()
        let stored = try activation?.storedRegion()
        let notifier = SystemdNotifier.fromProcessEnvironment()
        let server = try DivvyServer(configuration: configuration, logger: logger, storedRegion: stored)
        if let stored {
            close(stored.region)
            close(stored.data)
        }
        if let notifier, let data = server.regionDescriptors.data {
            notifier.storeDescriptors([server.regionDescriptors.region], name: SystemdNotifier.StoredName.region)
            notifier.storeDescriptors([data], name: SystemdNotifier.StoredName.regionData)
            notifier.ready()
        }
        try server.run()
    } catch {
        print("restart-gap daemon: \(error)")
        exit(1)
    }
    exit(0)
}

// MARK: The measurement

let kills = CommandLine.arguments.count >= 2 ? Int(CommandLine.arguments[1]) ?? 20 : 20
var template = Array("/tmp/restart-gap.XXXXXX".utf8CString)
let directory = String(cString: mkdtemp(&template)!)
let socket = directory + "/divvyd.sock"
defer { try? FileManager.default.removeItem(atPath: directory) }

var settings = DaemonSupervisor.Settings(
    executable: CommandLine.arguments[0].hasPrefix("/")
        ? CommandLine.arguments[0] : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0],
    arguments: ["daemon", socket], environment: ProcessInfo.processInfo.environment)
settings.restartDelay = .zero
settings.restartBurst = Int.max
settings.forwardSignals = false
let supervisor = try DaemonSupervisor(settings: settings, logger: Logger(label: "restart-gap") { _ in SwiftLogNoOpLogHandler() })
/// The supervisor, handed to its thread (it is used from that thread only).
final class Handoff: @unchecked Sendable {
    let supervisor: DaemonSupervisor
    init(_ supervisor: DaemonSupervisor) { self.supervisor = supervisor }
}
let handoff = Handoff(supervisor)
let supervisorThread = Thread { _ = handoff.supervisor.run() }
supervisorThread.start()

func child() -> pid_t? {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    for task in tasks {
        if let pid = (try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8))?
            .split(separator: " ").compactMap({ pid_t($0) }).first
        {
            return pid
        }
    }
    return nil
}

func connect(_ mode: ClientMode) -> DivvyClient {
    while true {
        if let client = try? DivvyClient(.init(socketPath: socket, name: "restart-gap", mode: mode)) { return client }
        usleep(200)
    }
}

let stop = Shared(false)
/// The end of the last mediated pair, and how many were done.
let mediatedDone = Shared((last: UInt64(0), pairs: 0))
/// The direct client's pairs, with the time of each 1,000th.
let directDone = Shared([(time: UInt64, pairs: Int)]())

let mediated = Thread {
    var client = connect(.mediated)
    while !stop.get() {
        do {
            let (handle, _) = try client.allocateHandle(64)
            try client.free(handle)
            let end = now()
            mediatedDone.update { $0.last = end; $0.pairs += 1 }
        } catch {
            client.close()
            client = connect(.mediated)
        }
    }
    client.close()
}
let direct = Thread {
    let client = connect(.direct)
    var pairs = 0
    while !stop.get() {
        guard let (handle, _) = try? client.allocateHandle(64) else { usleep(100); continue }
        _ = try? client.free(handle)
        pairs += 1
        if pairs % 1000 == 0 {
            let time = now()
            directDone.update { $0.append((time, pairs)) }
        }
    }
}
mediated.start()
direct.start()
while mediatedDone.get().pairs < 1000 { usleep(1000) }

var gaps: [Double] = []  // ms
var downRates: [Double] = []  // direct pairs/s while the daemon is down
for _ in 0..<kills {
    usleep(300_000)  // steady state between kills
    guard let pid = child() else { fatalError("no daemon child") }
    let killed = now()
    kill(pid, SIGKILL)
    // Recovered: a mediated pair ended after the kill.
    while mediatedDone.get().last <= killed { usleep(100) }
    let recovered = mediatedDone.get().last
    gaps.append(Double(recovered - killed) / 1e6)
    let samples = directDone.get().filter { $0.time >= killed && $0.time <= recovered }
    if let first = samples.first, let last = samples.last, last.time > first.time {
        downRates.append(Double(last.pairs - first.pairs) / (Double(last.time - first.time) / 1e9))
    }
}
stop.update { $0 = true }
while !mediated.isFinished || !direct.isFinished { usleep(1000) }
let samples = directDone.get()
let steady = samples.count > 1
    ? Double(samples.last!.pairs - samples.first!.pairs) / (Double(samples.last!.time - samples.first!.time) / 1e9) : 0
handoff.supervisor.stop(signal: SIGKILL)
while !supervisorThread.isFinished { usleep(1000) }

gaps.sort()
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
}
print("restart-gap: \(kills) SIGKILLs of divvyd under the supervisor (restart delay 0), 64 MiB region")
print("| measure | p50 | p90 | max |")
print("|:--|--:|--:|--:|")
print(String(
    format: "| mediated client without service (kill → first pair on the new daemon) | %.1f ms | %.1f ms | %.1f ms |",
    percentile(gaps, 0.5), percentile(gaps, 0.9), gaps.last ?? 0))
downRates.sort()
print(String(
    format: "| direct client while the daemon is down: pairs/s (steady state: %.2f M/s over the run) | %.2f M/s | — | — |",
    steady / 1e6, percentile(downRates, 0.5) / 1e6))
print("(\(downRates.count) of \(kills) gaps were long enough to time the direct client in.)")
exit(0)
