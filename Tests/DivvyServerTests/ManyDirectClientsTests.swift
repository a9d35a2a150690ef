import DivvyClient
import DivvyTestSupport
import Foundation
import XCTest

/// Hundreds of direct client processes at once on one daemon (issue 11: the heap's participant table no longer
/// stops at 30): each is a heap participant, all hold blocks at the same time, a reader in another process sees
/// their contents, and the audit is clean before and after they leave.
final class ManyDirectClientsTests: XCTestCase {
    /// How many direct client processes: 300, or `DIVVY_DIRECT_CLIENTS` (the 1,000 for a long run).
    static let clientCount = ProcessInfo.processInfo.environment["DIVVY_DIRECT_CLIENTS"].flatMap(Int.init) ?? 300

    func testHundredsOfDirectClientProcessesAtOnce() throws {
        let count = Self.clientCount
        let daemon = try DaemonProcessTests.Daemon([
            "--set", "participant-capacity=\(max(count + 1, 2))", "--set", "max-clients=\(count + 16)",
            "--set", "max-connections-per-uid=0", "--set", "direct-held-capacity=64",
        ])
        var holders: [(process: ChildProcess, handles: [String])] = []
        defer {
            for holder in holders {
                holder.process.signal(SIGKILL)
                holder.process.wait()
            }
        }
        for index in 0..<count {
            let process = try ChildProcess(
                "divvy-client-helper", [daemon.socketPath, "direct", "hold", "200", "2", "\(1000 + index)"])
            var handles: [String] = []
            while let line = process.readLine(), line != "READY" {
                if line.hasPrefix("HANDLE ") { handles.append(String(line.dropFirst(7))) }
                if line.hasPrefix("ERROR") || line.hasPrefix("FAIL") {
                    XCTFail("client \(index): \(line)")
                    return
                }
            }
            XCTAssertEqual(handles.count, 2, "client \(index) is holding its blocks")
            holders.append((process, handles))
        }
        // All of them are heap participants at once, besides the daemon's own.
        let (verify, status) = try daemon.quiescentAudit(expectedClients: count)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        XCTAssertEqual(verify["liveParticipants"] as? Int, count + 1, "\(verify)")
        XCTAssertEqual(verify["allocatedBlocks"] as? Int, 2 * count, "\(verify)")
        XCTAssertEqual(status["clients"] as? Int, count + 1, "\(status)")
        // Another process reads what the first, a middle and the last client wrote.
        for index in [0, count / 2, count - 1] {
            let checker = try ChildProcess(
                "divvy-client-helper", [daemon.socketPath, "mediated", "check", "200", "\(1000 + index)"]
                    + holders[index].handles)
            let output = checker.remainingOutput()
            XCTAssertEqual(checker.wait().status, 0, "client \(index)'s blocks: \(output)")
            XCTAssertTrue(output.contains("OK 2"), "\(output)")
        }
        for holder in holders { holder.process.writeLine("release") }
        for (index, holder) in holders.enumerated() {
            XCTAssertEqual(holder.process.remainingOutput().last, "RELEASED 2", "client \(index)")
            XCTAssertEqual(holder.process.wait().status, 0, "client \(index)")
        }
        holders = []
        let (after, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(after["clean"] as? Bool, true, "\(after)")
        XCTAssertEqual(after["allocatedBlocks"] as? Int, 0, "\(after)")
        XCTAssertEqual(after["liveParticipants"] as? Int, 1, "only the daemon's own is left: \(after)")
    }
}
