import DivvyClient
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

/// `divvyctl` (the real executable) against a real `divvyd`.
final class DivvyCtlTests: XCTestCase {
    private func divvyctl(_ arguments: [String], socket: String?) throws -> (status: Int32?, output: String, error: String) {
        let process = try ChildProcess("divvyctl", arguments + (socket.map { ["--socket", $0] } ?? []))
        let output = process.remainingOutput().joined(separator: "\n")
        let exit = process.wait()
        return (exit.status, output, process.standardError)
    }

    private func json(_ text: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    func testEveryReadCommandInTextAndJSON() throws {
        let daemon = try DaemonProcessTests.Daemon()
        let socket = daemon.socketPath
        let client = try DivvyClient(.init(socketPath: socket, name: "worker", mode: .mediated))
        let handles = try client.allocateBatch(size: 100, count: 10)
        usleep(150_000)  // heap figures may be up to 100 ms old (`HeapUsageSnapshot`)

        let status = try divvyctl(["status"], socket: socket)
        XCTAssertEqual(status.status, 0, status.error)
        XCTAssertTrue(status.output.contains("clients: 2"), status.output)
        XCTAssertTrue(status.output.contains("region:  anonymous memfd"), status.output)
        let statusJSON = try XCTUnwrap(json(try divvyctl(["status", "--json"], socket: socket).output) as? [String: Any])
        XCTAssertEqual(statusJSON["clients"] as? Int, 2)
        XCTAssertEqual((statusJSON["heap"] as? [String: Any])?["bytesUsed"] as? Int, 10 * 112)
        XCTAssertNotNil(statusJSON["uptimeSeconds"] as? Double)
        XCTAssertEqual(statusJSON["socket"] as? String, socket)

        let classes = try divvyctl(["classes"], socket: socket)
        XCTAssertTrue(classes.output.contains("112 B"), classes.output)
        let classesJSON = try XCTUnwrap(json(try divvyctl(["classes", "--json"], socket: socket).output) as? [[String: Any]])
        let row = try XCTUnwrap(classesJSON.first { $0["blockSize"] as? Int == 112 })
        XCTAssertEqual(row["blocksUsed"] as? Int, 10)
        XCTAssertEqual(row["pages"] as? Int, 1)

        let clients = try divvyctl(["clients"], socket: socket)
        XCTAssertTrue(clients.output.contains("worker"), clients.output)
        let clientsJSON = try XCTUnwrap(json(try divvyctl(["clients", "--json"], socket: socket).output) as? [[String: Any]])
        let worker = try XCTUnwrap(clientsJSON.first { $0["name"] as? String == "worker" })
        XCTAssertEqual(worker["blocksHeld"] as? Int, 10)
        XCTAssertEqual(worker["bytesHeld"] as? Int, 1120)
        XCTAssertEqual(worker["mode"] as? String, "mediated")
        XCTAssertEqual(worker["id"] as? Int, Int(client.clientID))

        let verify = try divvyctl(["verify", "--json"], socket: socket)
        XCTAssertEqual(verify.status, 0)
        XCTAssertEqual((try json(verify.output) as? [String: Any])?["clean"] as? Bool, true)
        XCTAssertEqual(try divvyctl(["verify"], socket: socket).status, 0)

        let config = try divvyctl(["config"], socket: socket)
        XCTAssertTrue(config.output.contains("socket = \(socket)"), config.output)
        XCTAssertTrue(config.output.contains("data-size = \(32 << 20)"), config.output)
        let configJSON = try XCTUnwrap(json(try divvyctl(["config", "--json"], socket: socket).output) as? [String: Any])
        XCTAssertNotNil((configJSON["settings"] as? [[String: String]])?.first { $0["key"] == "page-size" && $0["value"] == "16384" })

        let metrics = try divvyctl(["metrics"], socket: socket)
        XCTAssertTrue(metrics.output.contains("divvy_heap_bytes{class=\"112\"} 1120.0"), metrics.output)
        XCTAssertTrue(metrics.output.contains("# TYPE divvy_alloc_total counter"), metrics.output)

        let top = try divvyctl(["top", "--iterations", "2", "--interval", "0.1"], socket: socket)
        XCTAssertEqual(top.status, 0, top.error)
        XCTAssertEqual(top.output.components(separatedBy: "\u{1B}[H\u{1B}[2J").count, 3, "two refreshes in place")
        XCTAssertTrue(top.output.contains("worker"))

        _ = try client.freeBatch(handles)
        client.close()
    }

    func testSocketBeforeOrAfterTheSubcommandAndJSONOnlyAfterIt() throws {
        let daemon = try DaemonProcessTests.Daemon()
        let socket = daemon.socketPath
        for arguments in [
            ["--socket", socket, "status", "--json"], ["--socket=\(socket)", "status", "--json"],
            ["status", "--socket", socket, "--json"], ["status", "--json", "--socket", socket],
        ] {
            let result = try divvyctl(arguments, socket: nil)
            XCTAssertEqual(result.status, 0, "\(arguments): \(result.error)")
            let status = try XCTUnwrap(json(result.output) as? [String: Any], "\(arguments)")
            XCTAssertEqual(status["socket"] as? String, socket, "\(arguments)")
        }
        let disconnect = try divvyctl(["--socket", socket, "disconnect", "4242"], socket: nil)
        XCTAssertEqual(disconnect.status, 1, "an unknown client, reported by the daemon: \(disconnect.error)")
        XCTAssertTrue(disconnect.error.hasPrefix("divvyctl: "), disconnect.error)
        // --json belongs to the subcommands that print documents.
        let misplaced = try divvyctl(["--json", "status"], socket: socket)
        XCTAssertEqual(misplaced.status, 64, misplaced.error)
        XCTAssertTrue(misplaced.error.contains("Unknown option '--json'"), misplaced.error)
        let help = try divvyctl(["--help"], socket: nil)
        XCTAssertTrue(help.output.contains("USAGE: divvyctl [--socket <socket>] <subcommand>"), help.output)
    }

    func testDisconnectReclaimsAClient() throws {
        let daemon = try DaemonProcessTests.Daemon()
        let victim = try ChildProcess("divvy-client-helper", [daemon.socketPath, "direct", "hold", "64", "5", "1"])
        var skipped: [String] = []
        let connected = try XCTUnwrap(victim.readLine(startingWith: "CONNECTED", skipped: &skipped))
        let id = String(connected.split(separator: " ")[1])
        XCTAssertNotNil(victim.readLine(startingWith: "READY", skipped: &skipped))
        let result = try divvyctl(["disconnect", id, "--json"], socket: daemon.socketPath)
        XCTAssertEqual(result.status, 0, result.error)
        let document = try XCTUnwrap(json(result.output) as? [String: Any])
        XCTAssertEqual((document["disconnected"] as? [String: Any])?["id"] as? Int, Int(id))
        _ = victim.wait(timeout: 20)
        var verify: [String: Any] = [:]
        for _ in 0..<100 {  // Recovery follows the process's exit.
            verify = try daemon.quiescentAudit(expectedClients: 0).verify
            if verify["allocatedBlocks"] as? Int == 0 { break }
            usleep(20_000)
        }
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "the victim's blocks are reclaimed: \(verify)")
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        XCTAssertEqual(try divvyctl(["disconnect", "4242"], socket: daemon.socketPath).status, 1)
        XCTAssertEqual(victim.wait().signal, SIGKILL, "a disconnected direct client is killed: it could still write")
    }

    func testRefusalForANonAdminPolicyAndTheMessageWhenNoDaemonRuns() throws {
        let daemon = try DaemonProcessTests.Daemon(["--set", "admin-uids=\(getuid() &+ 1)"])
        for command in [["status"], ["verify"], ["metrics"], ["disconnect", "1"], ["config", "--json"]] {
            let result = try divvyctl(command, socket: daemon.socketPath)
            XCTAssertEqual(result.status, 1, "\(command)")
            XCTAssertTrue(result.error.contains("divvyctl: not allowed"), result.error)
            XCTAssertTrue(result.error.contains("admin-uids"), result.error)
        }
        let none = try divvyctl(["status"], socket: "/tmp/divvy-nowhere/divvyd.sock")
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(
            none.error.contains("no daemon at /tmp/divvy-nowhere/divvyd.sock: start it with `swift run divvyd`"),
            none.error)
        let usage = try divvyctl(["frobnicate"], socket: nil)
        XCTAssertEqual(usage.status, 64, "a usage error: \(usage.error)")
    }

    func testVerifyExitsNonZeroOnViolations() throws {
        let name = "ctl-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let daemon = try DaemonProcessTests.Daemon(["--region-name", name])
        let client = try DivvyClient(.init(socketPath: daemon.socketPath, name: "victim", mode: .mediated))
        let handles = try client.allocateBatch(size: 64, count: 20)
        XCTAssertEqual(try divvyctl(["verify"], socket: daemon.socketPath).status, 0)
        // Scribble over the heap's metadata behind its back (as a buggy or hostile process with access to the
        // region's object could): map the named object's metadata area directly.
        let status = try XCTUnwrap(
            json(try divvyctl(["status", "--json"], socket: daemon.socketPath).output) as? [String: Any])
        let metadataSize = try XCTUnwrap((status["region"] as? [String: Any])?["metadataBytes"] as? Int)
        let fd = shm_open("/divvy-\(name)", O_RDWR, 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let length = SharedRegionHeader.reservedSize + metadataSize
        let base = try XCTUnwrap(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        XCTAssertNotEqual(base, MAP_FAILED)
        defer { munmap(base, length) }
        let metadata = base + SharedRegionHeader.reservedSize
        // The heap header (DivvyShm's `SharedHeapHeaderField`, little-endian) gives the block words' offset: overwrite
        // the block words of the first page, the one the daemon's blocks came from (pages are claimed from the
        // bump index up). Held lists and pages never used are holes the audit does not read.
        let blockWords = Int(UInt64(littleEndian: metadata.loadUnaligned(fromByteOffset: 72, as: UInt64.self)))
        XCTAssertLessThan(blockWords, metadataSize)
        for index in 0..<64 {
            (metadata + blockWords + 8 * index).storeBytes(of: 0x5555_5555_5555_5555, as: UInt64.self)
        }
        _ = handles
        let result = try divvyctl(["verify"], socket: daemon.socketPath)
        XCTAssertEqual(result.status, 3, "violations give exit status 3: \(result.output)")
        XCTAssertTrue(result.output.contains("violation"), result.output)
        let jsonResult = try divvyctl(["verify", "--json"], socket: daemon.socketPath)
        XCTAssertEqual(jsonResult.status, 3)
        XCTAssertEqual((try json(jsonResult.output) as? [String: Any])?["clean"] as? Bool, false)
    }
}
