import DivvyClient
import DivvyTestSupport
import Foundation
import XCTest

/// `divvyctl disconnect` of a direct client (issue 13, item 7): the daemon kills it through a pidfd for the process
/// that connected, and when it may not signal the client it says so and leaves the client and its memory alone.
final class AdminDisconnectTests: XCTestCase {
    private func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    /// Starts a direct `hold` helper holding 5 blocks; returns it with its client id.
    private func directHolder(_ socket: String) throws -> (ChildProcess, String) {
        let victim = try ChildProcess("divvy-client-helper", [socket, "direct", "hold", "64", "5", "1"])
        var skipped: [String] = []
        let connected = try XCTUnwrap(victim.readLine(startingWith: "CONNECTED", skipped: &skipped))
        XCTAssertNotNil(victim.readLine(startingWith: "READY", skipped: &skipped), "\(skipped)")
        return (victim, String(connected.split(separator: " ")[1]))
    }

    func testDisconnectKillsADirectClientThroughItsPidfd() throws {
        let daemon = try DaemonProcessTests.Daemon()
        let (victim, id) = try directHolder(daemon.socketPath)
        let result = try runDivvyctl(["disconnect", id, "--json"], socket: daemon.socketPath)
        XCTAssertEqual(result.status, 0, result.error)
        let document = try json(result.output)
        XCTAssertEqual((document["disconnected"] as? [String: Any])?["id"] as? Int, Int(id))
        XCTAssertEqual(document["killed"] as? Bool, true, "\(document)")
        XCTAssertEqual(document["killedThrough"] as? String, "pidfd", "a pidfd for the process that connected, not the pid")
        XCTAssertNotNil(document["recovery"] as? String, "\(document)")
        XCTAssertEqual(victim.wait().signal, SIGKILL)

        let (second, secondID) = try directHolder(daemon.socketPath)
        let text = try runDivvyctl(["disconnect", secondID], socket: daemon.socketPath)
        XCTAssertEqual(text.status, 0, text.error)
        XCTAssertTrue(text.output.contains("killed pid \(second.pid) (SIGKILL through a pidfd)"), text.output)
        XCTAssertEqual(second.wait().signal, SIGKILL)
    }

    /// A daemon running as `nobody` with no capabilities (as under the shipped unit) cannot signal a client of
    /// another uid: the disconnect fails loudly, and the client keeps its connection and its blocks.
    func testDisconnectThatCannotSignalTheClientFailsLoudlyAndTouchesNothing() throws {
        guard getuid() == 0 else {
            throw XCTSkip("needs root to run divvyd as another uid than its client (CI runs tests as root)")
        }
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        XCTAssertEqual(chmod(directory, 0o777), 0)
        let socket = directory + "/divvyd.sock"
        let nobody = "65534"
        let daemon = try ChildProcess(
            "/usr/bin/setpriv",
            ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
             ChildProcess.executablePath("divvyd"), "--socket", socket, "--data-size", "32M", "--page-size", "16K"])
        defer {
            daemon.signal(SIGKILL)
            daemon.wait()
        }
        var listening = false
        for _ in 0..<400 where !listening {
            if let probe = try? DivvyClient(.init(socketPath: socket, name: "probe", mode: .mediated)) {
                probe.close()
                listening = true
            } else if let exit = daemon.wait(timeout: 0.05) {
                return XCTFail("divvyd as nobody exited (\(exit)): \(daemon.standardError)")
            }
        }
        XCTAssertTrue(listening, daemon.standardError)

        let (victim, id) = try directHolder(socket)  // runs as root: the daemon may not signal it
        let before = try json(try runDivvyctl(["verify", "--json"], socket: socket).output)
        XCTAssertEqual(before["allocatedBlocks"] as? Int, 5)

        let result = try runDivvyctl(["disconnect", id], socket: socket)
        XCTAssertEqual(result.status, 1, "a disconnect that did not happen is a failure: \(result.output)")
        XCTAssertFalse(result.output.contains("reclaimed"), result.output)
        XCTAssertTrue(result.error.contains("EPERM"), result.error)
        XCTAssertTrue(result.error.contains("CAP_KILL"), "says what to do: \(result.error)")
        XCTAssertTrue(result.error.contains("\(victim.pid)"), result.error)

        XCTAssertNil(victim.wait(timeout: 0.2), "the client still runs")
        let clients = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(try runDivvyctl(["clients", "--json"], socket: socket).output.utf8))
                as? [[String: Any]])
        XCTAssertTrue(clients.contains { $0["id"] as? Int == Int(id) }, "the client is still connected")
        let after = try json(try runDivvyctl(["verify", "--json"], socket: socket).output)
        XCTAssertEqual(after["allocatedBlocks"] as? Int, 5, "its blocks are untouched")
        XCTAssertEqual(after["ownedPages"] as? Int, before["ownedPages"] as? Int, "its pages are still its own")
        XCTAssertEqual(after["clean"] as? Bool, true, "\(after)")
        // And they are still its to free.
        victim.writeLine("release")
        var skipped: [String] = []
        XCTAssertEqual(victim.readLine(startingWith: "RELEASED", skipped: &skipped), "RELEASED 5", "\(skipped)")
        XCTAssertEqual(victim.wait().status, 0)
    }
}
