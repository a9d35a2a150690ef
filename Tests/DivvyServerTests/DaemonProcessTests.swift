import DivvyClient
import DivvyProtocol
import DivvyTestSupport
import Foundation
import XCTest

/// The real `divvyd` executable with real client processes (`divvy-client-helper`).
final class DaemonProcessTests: XCTestCase {
    /// A running divvyd process on a temporary socket.
    final class Daemon {
        let process: ChildProcess
        let directory: String
        let socketPath: String
        /// The `--region-name` the daemon was given, if any: its objects are removed when the test is done.
        let regionName: String?

        init(_ extra: [String] = [], environment: [String: String] = [:], socketPath: String? = nil) throws {
            regionName = extra.firstIndex(of: "--region-name").flatMap { extra.indices.contains($0 + 1) ? extra[$0 + 1] : nil }
            directory = try temporarySocketDirectory()
            self.socketPath = socketPath ?? directory + "/divvyd.sock"
            process = try ChildProcess(
                "divvyd", ["--socket", self.socketPath, "--data-size", "32M", "--page-size", "16K"] + extra,
                environment: environment)
            try waitUntilListening()
        }

        func waitUntilListening() throws {
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                if let client = try? DivvyClient(.init(socketPath: socketPath, name: "probe", mode: .mediated)) {
                    client.close()
                    return
                }
                if let exit = process.wait(timeout: 0.05) {
                    throw NSError(domain: "divvyd exited (\(exit)): \(process.standardError)", code: 1)
                }
            }
            throw NSError(domain: "divvyd did not start listening: \(process.standardError)", code: 1)
        }

        deinit {
            process.signal(SIGKILL)
            process.wait()
            try? FileManager.default.removeItem(atPath: directory)
            // A killed daemon leaves its named region and owner lock behind: tests leave nothing in /dev/shm.
            if let regionName {
                shm_unlink("/divvy-\(regionName)")
                shm_unlink("/divvy-\(regionName).lock")
            }
        }

        func admin() throws -> DivvyClient {
            try DivvyClient(.init(socketPath: socketPath, name: "admin", mode: .mediated))
        }

        /// The daemon's audit and status, once only `expectedClients` (plus the asking one) are connected.
        func quiescentAudit(expectedClients: Int) throws -> (verify: [String: Any], status: [String: Any]) {
            let admin = try admin()
            defer { admin.close() }
            let deadline = Date().addingTimeInterval(20)
            while true {
                let status = try XCTUnwrap(
                    JSONSerialization.jsonObject(with: Data(admin.admin(.status).body)) as? [String: Any])
                if status["clients"] as? Int == expectedClients + 1 || Date() > deadline {
                    // Heap figures may be up to 100 ms old (`HeapUsageSnapshot`): read them once that has passed.
                    usleep(150_000)
                    let status = try XCTUnwrap(
                        JSONSerialization.jsonObject(with: Data(admin.admin(.status).body)) as? [String: Any])
                    let verify = try XCTUnwrap(
                        JSONSerialization.jsonObject(with: Data(admin.admin(.verify).body)) as? [String: Any])
                    return (verify, status)
                }
                usleep(20_000)
            }
        }
    }

    private func helper(_ daemon: Daemon, _ mode: String, _ arguments: [String]) throws -> ChildProcess {
        try ChildProcess("divvy-client-helper", [daemon.socketPath, mode] + arguments)
    }

    /// Starts a `hold` helper and returns it with the handles it printed.
    private func holder(_ daemon: Daemon, _ mode: String, size: Int, count: Int, seed: Int) throws
        -> (ChildProcess, [String])
    {
        let process = try helper(daemon, mode, ["hold", "\(size)", "\(count)", "\(seed)"])
        var handles: [String] = []
        while let line = process.readLine(), line != "READY" {
            if line.hasPrefix("HANDLE ") { handles.append(String(line.dropFirst(7))) }
            if line.hasPrefix("ERROR") || line.hasPrefix("FAIL") { XCTFail(line) }
        }
        XCTAssertEqual(handles.count, count)
        return (process, handles)
    }

    func testBlocksPassBetweenClientProcessesInEveryModePair() throws {
        let daemon = try Daemon()
        for writer in ["direct", "mediated"] {
            for reader in ["direct", "mediated"] {
                for size in [24, 700, 2048] {
                    let (holding, handles) = try holder(daemon, writer, size: size, count: 12, seed: size)
                    let checker = try helper(daemon, reader, ["check", "\(size)", "\(size)"] + handles)
                    let output = checker.remainingOutput()
                    XCTAssertEqual(checker.wait(), .init(status: 0, signal: nil), "\(writer)→\(reader): \(output)")
                    XCTAssertTrue(output.contains("OK 12"), "\(output)")
                    holding.writeLine("release")
                    XCTAssertEqual(holding.remainingOutput().last, "RELEASED 12", "the writer's free releases")
                    XCTAssertEqual(holding.wait().status, 0)
                }
            }
        }
        let (verify, status) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(verify)")
        XCTAssertEqual((status["heap"] as? [String: Any])?["bytesUsed"] as? Int, 0)
    }

    /// A direct client whose connection breaks while its process keeps running could still be writing into the
    /// heap, so the daemon must not recover its participant then — only once the process has exited (it watches the
    /// process's pidfd). The helper allocates, closes its socket without a goodbye and stays alive; then it exits.
    func testADirectClientThatDropsItsSocketIsRecoveredOnlyOnceItsProcessExits() throws {
        let daemon = try Daemon()
        let dropper = try helper(daemon, "direct", ["drop", "256", "20", "7"])
        var skipped: [String] = []
        XCTAssertEqual(dropper.readLine(startingWith: "DROPPED", skipped: &skipped), "DROPPED 1", "\(skipped)")
        // The daemon has seen the connection end (only the asking admin is connected) ...
        let (seen, status) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(status["clients"] as? Int, 1, "\(status)")
        XCTAssertEqual(seen["liveParticipants"] as? Int, 2, "the daemon's own and the dropped client's: \(seen)")
        // ... but the process lives, so its participant and its 20 blocks stay, however long we wait.
        usleep(500_000)
        let (waited, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(waited["allocatedBlocks"] as? Int, 20, "recovered while the process could still write: \(waited)")
        XCTAssertEqual(waited["liveParticipants"] as? Int, 2, "\(waited)")
        dropper.closeStdin()
        XCTAssertEqual(dropper.wait().status, 0)
        // Once it has exited, the participant is recovered: nothing held, one participant left, a clean heap.
        let deadline = Date().addingTimeInterval(10)
        var after = try daemon.quiescentAudit(expectedClients: 0).verify
        while after["allocatedBlocks"] as? Int != 0, Date() < deadline {
            usleep(20_000)
            after = try daemon.quiescentAudit(expectedClients: 0).verify
        }
        XCTAssertEqual(after["allocatedBlocks"] as? Int, 0, "\(after)")
        XCTAssertEqual(after["liveParticipants"] as? Int, 1, "\(after)")
        XCTAssertEqual(after["clean"] as? Bool, true, "\(after)")
    }

    /// Participant slots change hands safely: 4 processes connect a direct client, allocate, free and close it in
    /// a loop, so slots are left and taken again all the time; not one connection may fail (a slot freed before
    /// the daemon processed its client's goodbye used to be refused as `invalidParticipant` to the next taker).
    /// 3 s each; `DIVVY_SLOT_CHURN_SECONDS` sets another duration.
    func testDirectClientsConnectingAndClosingInALoopNeverFail() throws {
        // A small held list: joining and leaving walk it, and a debug build walks 65536 entries slowly.
        let daemon = try Daemon(["--set", "held-capacity=256"])
        let seconds = ProcessInfo.processInfo.environment["DIVVY_SLOT_CHURN_SECONDS"].flatMap(Double.init) ?? 3
        let processes = try (0..<4).map { _ in try helper(daemon, "direct", ["cycle", "\(seconds)"]) }
        var cycles = 0
        for process in processes {
            let output = process.remainingOutput()
            XCTAssertEqual(process.wait(), .init(status: 0, signal: nil), "\(output)")
            let line = output.first { $0.hasPrefix("CYCLED ") } ?? ""
            let fields = line.split(separator: " ")
            XCTAssertEqual(fields.count, 3, "no failure codes expected: \(output)")
            XCTAssertEqual(fields.count > 2 ? Int(fields[2]) : nil, 0, "failed connections: \(output)")
            cycles += fields.count > 1 ? Int(fields[1]) ?? 0 : 0
        }
        XCTAssertGreaterThan(cycles, 4, "the processes did cycle")
        print("slot churn: \(cycles) connect/close cycles by 4 processes in \(seconds) s, 0 failures")
        let (verify, status) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        XCTAssertEqual(verify["liveParticipants"] as? Int, 1, "\(verify)")
        XCTAssertEqual((status["heap"] as? [String: Any])?["bytesUsed"] as? Int, 0, "\(status)")
    }

    /// `bytesUsed` is the bytes of the blocks held, also after a direct client that held blocks another client
    /// adopted was SIGKILLed (its pages stay as orphans while the adopter's blocks live in them), and 0 once the
    /// adopter has freed them and everyone has gone.
    func testBytesUsedIsExactAfterAClientDies() throws {
        let daemon = try Daemon()
        let adopter = try DivvyClient(.init(socketPath: daemon.socketPath, name: "adopter", mode: .mediated))
        func bytesUsed() throws -> Int {
            usleep(150_000)  // heap figures may be up to 100 ms old (`HeapUsageSnapshot`)
            let status = try XCTUnwrap(
                JSONSerialization.jsonObject(with: Data(adopter.admin(.status).body)) as? [String: Any])
            return try XCTUnwrap((status["heap"] as? [String: Any])?["bytesUsed"] as? Int, "\(status)")
        }
        let (victim, handles) = try holder(daemon, "direct", size: 700, count: 10, seed: 3)
        var adopted: [(SharedHandle, Int)] = []
        for text in handles.prefix(4) {
            // divvy-client-helper prints a handle as LOW:HIGH (128 bits) and a share token: LOW:HIGH:TOKEN.
            let words = text.split(separator: ":").compactMap { UInt64($0) }
            XCTAssertEqual(words.count, 3, text)
            let handle = SharedHandle(low: words[0], high: words[1])
            adopted.append((handle, try adopter.adoptHandle(handle, token: words[2])))
        }
        let blockSize = adopted[0].1
        XCTAssertEqual(try bytesUsed(), 10 * blockSize)
        victim.signal(SIGKILL)
        _ = victim.wait()
        // Recovery runs once the daemon sees the process gone: then only the adopted blocks are held.
        let deadline = Date().addingTimeInterval(10)
        var used = try bytesUsed()
        while used != 4 * blockSize, Date() < deadline {
            usleep(20_000)
            used = try bytesUsed()
        }
        XCTAssertEqual(used, 4 * blockSize, "only the adopted blocks are held")
        for (handle, _) in adopted.prefix(3) { XCTAssertTrue(try adopter.free(handle)) }
        XCTAssertEqual(try bytesUsed(), blockSize, "blocks freed onto orphan pages are not in use")
        XCTAssertTrue(try adopter.free(adopted[3].0))
        XCTAssertEqual(try bytesUsed(), 0)
        adopter.close()
        let (verify, status) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual((status["heap"] as? [String: Any])?["bytesUsed"] as? Int, 0, "\(status)")
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(verify)")
    }

    func testSeveralClientProcessesChurnConcurrently() throws {
        let daemon = try Daemon()
        let base = SeededGenerator.testSeed()
        let processes = try (0..<8).map { index in
            try helper(daemon, index % 2 == 0 ? "direct" : "mediated", ["churn", "3000", "\(base &+ UInt64(index))"])
        }
        for (index, process) in processes.enumerated() {
            let output = process.remainingOutput()
            XCTAssertEqual(process.wait().status, 0, "churn \(index) (seed \(base)): \(output.suffix(3))")
            XCTAssertEqual(output.last, "OK 3000", "seed \(base)")
        }
        let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["clean"] as? Bool, true, "seed \(base): \(verify)")
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "seed \(base): \(verify)")
    }

    func testClientsKilledMidTrafficAreReclaimedAndSurvivorsKeepTheirBlocks() throws {
        let daemon = try Daemon()
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        // A survivor that adopted a block from each victim, and holds blocks of its own.
        let (survivor, survivorHandles) = try holder(daemon, "direct", size: 512, count: 8, seed: 99)
        for trial in 0..<10 {
            let mode = trial % 2 == 0 ? "direct" : "mediated"
            let victim = try helper(daemon, mode, ["churn", "100000", "\(seed &+ UInt64(trial))"])
            // Kill it after a random amount of traffic: 1…20 progress lines plus a random sub-millisecond delay.
            let lines = Int(random.next() % 20) + 1
            var seen = 0
            while seen < lines, let line = victim.readLine() {
                if line.hasPrefix("PROGRESS") { seen += 1 }
            }
            usleep(UInt32(random.next() % 1000))
            victim.signal(SIGKILL)
            XCTAssertEqual(victim.wait().signal, SIGKILL, "trial \(trial)")
            let (verify, _) = try daemon.quiescentAudit(expectedClients: 1)
            XCTAssertEqual(verify["clean"] as? Bool, true, "trial \(trial), seed \(seed): \(verify)")
            XCTAssertEqual(
                verify["allocatedBlocks"] as? Int, 8, "only the survivor's blocks remain (trial \(trial), seed \(seed))")
        }
        // The survivor's blocks were never freed or reused: their contents are intact.
        let checker = try helper(daemon, "mediated", ["check", "512", "99"] + survivorHandles)
        XCTAssertTrue(checker.remainingOutput().contains("OK 8"))
        survivor.writeLine("release")
        XCTAssertEqual(survivor.remainingOutput().last, "RELEASED 8")
        let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(verify)")
    }

    func testSigtermShutsDownGracefully() throws {
        let daemon = try Daemon()
        let (holding, _) = try holder(daemon, "mediated", size: 64, count: 3, seed: 1)
        daemon.process.signal(SIGTERM)
        let exit = daemon.process.wait(timeout: 20)
        XCTAssertEqual(exit, .init(status: 0, signal: nil), daemon.process.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.socketPath), "the socket file is removed")
        XCTAssertTrue(daemon.process.standardError.contains("shutting down"), daemon.process.standardError)
        holding.writeLine("release")
        let output = holding.remainingOutput()
        XCTAssertTrue(output.last?.hasPrefix("ERROR daemonGone") ?? false, "the next call fails cleanly: \(output)")
        XCTAssertEqual(holding.wait().status, 3, "a clear error, not a crash")
    }

    func testASecondDaemonOnTheSameSocketOrRegionRefusesToStart() throws {
        let name = "test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let first = try Daemon(["--region-name", name])
        let sameSocket = try ChildProcess("divvyd", ["--socket", first.socketPath, "--data-size", "4M"])
        XCTAssertEqual(sameSocket.wait(timeout: 20)?.status, 1)
        XCTAssertTrue(sameSocket.standardError.contains("already listens at \(first.socketPath)"), sameSocket.standardError)
        let otherDirectory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: otherDirectory) }
        let sameRegion = try ChildProcess(
            "divvyd", ["--socket", otherDirectory + "/d.sock", "--data-size", "4M", "--region-name", name])
        XCTAssertEqual(sameRegion.wait(timeout: 20)?.status, 1)
        XCTAssertTrue(
            sameRegion.standardError.contains("is served by another running process"), sameRegion.standardError)
        XCTAssertTrue(sameRegion.standardError.contains("divvy-\(name).lock"), "names the lock: \(sameRegion.standardError)")
        // The first still serves.
        let client = try first.admin()
        try client.ping()
        client.close()
        first.process.signal(SIGTERM)
        XCTAssertEqual(first.process.wait(timeout: 20)?.status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/dev/shm/divvy-\(name)"), "a named region is removed on exit")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/dev/shm/divvy-\(name).lock"), "and its owner lock")
    }

    /// A daemon killed with SIGKILL leaves its named region behind; the next start on the same name must not need
    /// anyone to clean up (`Restart=on-failure` would never bring it back): the dead daemon's owner lock is gone, so
    /// the new one replaces the object, says so, and serves.
    func testADaemonKilledWithSigkillDoesNotBlockTheNextStart() throws {
        let name = "test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var first: Daemon? = try Daemon(["--region-name", name])
        let client = try XCTUnwrap(first).admin()
        _ = try client.allocateHandle(64)
        client.close()
        let firstPID = try XCTUnwrap(first).process.pid
        kill(firstPID, SIGKILL)
        XCTAssertEqual(first?.process.wait(timeout: 20)?.signal, SIGKILL)
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/dev/shm/divvy-\(name)"), "the killed daemon's region stays")
        let second = try ChildProcess(
            "divvyd", ["--socket", try XCTUnwrap(first).socketPath, "--data-size", "4M", "--region-name", name])
        defer {
            second.signal(SIGKILL)
            second.wait()
        }
        let deadline = Date().addingTimeInterval(20)
        var served: DivvyClient?
        while served == nil, Date() < deadline, second.wait(timeout: 0.05) == nil {
            served = try? DivvyClient(.init(socketPath: try XCTUnwrap(first).socketPath, name: "after", mode: .mediated))
        }
        let after = try XCTUnwrap(served, "the second daemon serves: \(second.standardError)")
        _ = try after.allocateHandle(64)
        after.close()
        XCTAssertTrue(
            second.standardError.contains("replacing a region left by a daemon that stopped without removing it"),
            second.standardError)
        second.signal(SIGTERM)
        XCTAssertEqual(second.wait(timeout: 20)?.status, 0, second.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/dev/shm/divvy-\(name)"), "removed on a clean exit")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/dev/shm/divvy-\(name).lock"))
        first = nil
    }

    func testRunsOnBuiltInDefaultsUnderXdgRuntimeDir() throws {
        let runtime = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: runtime) }
        let process = try ChildProcess("divvyd", [], environment: ["XDG_RUNTIME_DIR": runtime])
        let expected = runtime + "/divvy/divvyd.sock"
        // As root the default is /run/divvy: the test only checks the XDG default for other users.
        let path = getuid() == 0 ? "/run/divvy/divvyd.sock" : expected
        let deadline = Date().addingTimeInterval(20)
        var client: DivvyClient?
        while client == nil, Date() < deadline {
            client = try? DivvyClient(.init(socketPath: path, name: "defaults"))
            if client == nil { usleep(50_000) }
        }
        XCTAssertNotNil(client, "divvyd on defaults listens at \(path): \(process.standardError)")
        XCTAssertEqual(try client?.stats().quotaBytes, UInt64(256 << 20) / 4)
        client?.close()
        process.signal(SIGTERM)
        XCTAssertEqual(process.wait(timeout: 20)?.status, 0, process.standardError)
    }

    func testBadFlagsAndConfigFilesGiveAClearErrorAndExitCode2() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = directory + "/divvyd.conf"
        try "data-size = 64M\nfrobnicate = yes\n".write(toFile: config, atomically: true, encoding: .utf8)
        let bad = try ChildProcess("divvyd", ["--config", config])
        XCTAssertEqual(bad.wait(timeout: 20)?.status, 2)
        XCTAssertTrue(bad.standardError.contains("line 2: unknown setting 'frobnicate'"), bad.standardError)
        let printed = try ChildProcess("divvyd", ["--set", "quota=1M", "--data-size", "8M", "--print-config"])
        let output = printed.remainingOutput()
        XCTAssertEqual(printed.wait().status, 0)
        XCTAssertTrue(output.contains("quota = 1048576"), "\(output)")
        XCTAssertTrue(output.contains("data-size = 8388608"), "\(output)")
    }

    /// SIGHUP reloads the config file (the command line's flags still win): reloadable keys change, the others are
    /// reported as needing a restart, a broken file is refused whole, and the daemon keeps serving throughout.
    func testSighupReloadsTheConfigFileAndRefusesABrokenOne() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let config = directory + "/divvyd.conf"
        try "quota = 8M\nlog-level = info\n".write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = try Daemon(["--config", config])
        let before = try DivvyClient(.init(socketPath: daemon.socketPath, name: "before", mode: .mediated))
        defer { before.close() }
        XCTAssertEqual(before.quotaBytes, 8 << 20)
        XCTAssertFalse(daemon.process.standardError.contains("connection accepted"), "debug lines are off at info")

        /// Sends SIGHUP and waits for the daemon's answer line.
        func reload(expecting line: String) throws -> String {
            daemon.process.signal(SIGHUP)
            let deadline = Date().addingTimeInterval(20)
            while !daemon.process.standardError.contains(line), Date() < deadline {
                XCTAssertNil(daemon.process.wait(timeout: 0.02), "SIGHUP must not end divvyd")
            }
            let log = daemon.process.standardError
            XCTAssertTrue(log.contains(line), log)
            return log
        }

        // The data size in the file loses to the test's --data-size 32M flag: not even reported.
        try "quota = 64K\nlog-level = debug\nheld-capacity = 1024\ndata-size = 64M\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        var log = try reload(expecting: "configuration reloaded")
        XCTAssertTrue(log.contains("configuration reload: quota changed from 8388608 to 65536"), log)
        XCTAssertTrue(log.contains("configuration reload: log-level changed from info to debug"), log)
        XCTAssertTrue(
            log.contains("configuration reload: held-capacity changed in the file (65536 to 1024) but needs a restart"),
            log)
        XCTAssertFalse(log.contains("data-size"), log)

        // The new quota applies to a new client (and the log level changed for real: debug lines now appear).
        let after = try DivvyClient(.init(socketPath: daemon.socketPath, name: "after", mode: .mediated))
        defer { after.close() }
        XCTAssertEqual(after.quotaBytes, 64 << 10)
        var held = 0
        var refusal: DivvyClientError?
        for _ in 0..<100 {
            do {
                held += try after.allocateHandle(4096).blockSize
            } catch {
                refusal = error
                break
            }
        }
        XCTAssertEqual(refusal?.protocolCode, .quotaExceeded, "\(String(describing: refusal))")
        XCTAssertGreaterThan(held, 0)
        XCTAssertLessThanOrEqual(held, 64 << 10)
        XCTAssertTrue(daemon.process.standardError.contains("connection accepted"), daemon.process.standardError)

        // A broken file is refused and nothing changes.
        try "quota = lots\nlog-level = error\n".write(toFile: config, atomically: true, encoding: .utf8)
        log = try reload(expecting: "configuration reload refused")
        XCTAssertTrue(log.contains("\(config): line 1: quota"), log)
        XCTAssertTrue(log.contains("the running configuration is kept"), log)
        XCTAssertFalse(log.contains("log-level changed from debug"), log)
        let third = try DivvyClient(.init(socketPath: daemon.socketPath, name: "third", mode: .mediated))
        defer { third.close() }
        XCTAssertEqual(third.quotaBytes, 64 << 10, "the reloaded quota stays in force")
        XCTAssertNil(daemon.process.wait(timeout: 0), "divvyd is still running")
    }

    /// Under a (fake) systemd with a watchdog: READY=1, then WATCHDOG=1 pings from the watchdog service while the
    /// loop ticks, and STOPPING=1 at SIGTERM, after which divvyd exits 0.
    func testTheWatchdogServicePingsSystemdWhileTheDaemonServes() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let daemon = try Daemon([], environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"])
        XCTAssertTrue(
            listener.wait(upTo: 20) { $0.contains("READY=1") && $0.filter { $0 == "WATCHDOG=1" }.count >= 3 },
            "\(listener.lines)\n\(daemon.process.standardError)")
        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20), .init(status: 0, signal: nil), daemon.process.standardError)
        XCTAssertTrue(listener.lines.contains("STOPPING=1"), "\(listener.lines)")
    }
}
