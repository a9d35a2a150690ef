import DivvyClient
import DivvyServer
import DivvyTestSupport
import Foundation
import Logging
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `DaemonSupervisor` (`divvyd --supervise`): restarts on failure, the file-descriptor store across restarts
/// (`FDSTORE=1` in, `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` out), signal forwarding, the restart limit. Real
/// processes: a Python child speaking `sd_notify` itself (so the store is checked against a client that is not
/// ours), and the real divvyd.
final class DaemonSupervisorTests: XCTestCase {
    private func pythonScript(_ directory: String, _ body: String) throws -> String {
        let path = directory + "/child.py"
        try body.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func python() throws -> String {
        for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"]
        where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw XCTSkip("python3 is not installed")
    }

    /// A child stores a memfd it wrote, then crashes (SIGKILL); the supervisor restarts it with the memfd at
    /// descriptor 3, named, and `LISTEN_PID` naming the new child; that child reads what the first wrote, replaces
    /// the store with two descriptors under one name, drops another name, and fails; the third child sees exactly
    /// what is left, and exits cleanly, which ends the supervisor with status 0.
    func testTheStoreCarriesDescriptorsAcrossCrashesAsSystemdDoes() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let result = directory + "/result"
        let script = try pythonScript(directory, """
            import os, socket, sys
            notify = os.environ["NOTIFY_SOCKET"]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(notify)
            def store(name, fds):
                socket.send_fds(s, [("FDSTORE=1\\nFDNAME=%s\\nFDPOLL=0" % name).encode()], fds)
            count = int(os.environ.get("LISTEN_FDS", "0"))
            if count == 0:
                memo = os.memfd_create("memo")
                os.write(memo, b"hello")
                other = os.memfd_create("other")
                store("memo", [memo])
                store("other", [other])
                s.send(b"READY=1")
                os.kill(os.getpid(), 9)
            names = os.environ["LISTEN_FDNAMES"].split(":")
            assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID names another process"
            if names == ["memo", "other"]:
                assert os.pread(3, 5, 0) == b"hello", "the stored memfd lost its contents"
                a, b = os.memfd_create("a"), os.memfd_create("b")
                os.write(b, b"second")
                store("memo", [a, b])
                s.send(b"FDSTOREREMOVE=1\\nFDNAME=other")
                sys.exit(3)
            with open(sys.argv[1], "w") as f:
                f.write("%s %d %s" % (":".join(names), count, os.pread(4, 6, 0).decode()))
            sys.exit(0)
            """)
        var settings = DaemonSupervisor.Settings(
            executable: try python(), arguments: [script, result], environment: ProcessInfo.processInfo.environment)
        settings.forwardSignals = false
        settings.restartDelay = .milliseconds(10)
        let supervisor = try DaemonSupervisor(settings: settings, logger: Logger(label: "test-supervisor"))
        XCTAssertEqual(supervisor.run(), 0)
        XCTAssertEqual(try String(contentsOfFile: result, encoding: .utf8), "memo:memo 2 second")
        XCTAssertEqual(supervisor.storedNames, ["memo": 2])
    }

    /// A child that keeps failing is restarted `restartBurst` times, then the supervisor gives up with status 1.
    func testARestartLoopGivesUp() throws {
        var settings = DaemonSupervisor.Settings(
            executable: "/bin/sh", arguments: ["-c", "exit 7"], environment: [:])
        settings.forwardSignals = false
        settings.restartDelay = .milliseconds(1)
        settings.restartBurst = 3
        let supervisor = try DaemonSupervisor(settings: settings, logger: Logger(label: "test-supervisor"))
        XCTAssertEqual(supervisor.run(), 1)
        // A clean exit is not restarted at all.
        var clean = DaemonSupervisor.Settings(executable: "/bin/sh", arguments: ["-c", "exit 0"], environment: [:])
        clean.forwardSignals = false
        XCTAssertEqual(try DaemonSupervisor(settings: clean, logger: Logger(label: "test-supervisor")).run(), 0)
    }

    /// The real thing: `divvyd --supervise`. SIGKILL the daemon: a new one serves the socket; SIGTERM the
    /// supervisor: the daemon shuts down gracefully and both exit 0.
    func testDivvydSuperviseRestartsACrashedDaemonAndForwardsSIGTERM() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/d.sock"
        let supervisor = try ChildProcess(
            "divvyd",
            ["--supervise", "--socket", socket, "--data-size", "8M", "--page-size", "16K", "--set",
             "shutdown-grace-ms=2000"])
        defer {
            // The daemon first: a supervisor killed with SIGKILL leaves its child running.
            if let pid = child() { kill(pid, SIGKILL) }
            supervisor.signal(SIGKILL)
            _ = supervisor.wait()
        }
        func child() -> pid_t? { currentChild(of: supervisor.pid) }
        func serving() -> Bool {
            for _ in 0..<600 {
                if let client = try? DivvyClient(.init(socketPath: socket, name: "probe", mode: .mediated)) {
                    defer { client.close() }
                    return (try? client.ping([7])) == [7]
                }
                usleep(50_000)
            }
            return false
        }
        XCTAssertTrue(serving(), "divvyd under the supervisor serves: \(supervisor.standardError)")
        let first = try XCTUnwrap(child())
        kill(first, SIGKILL)
        var second: pid_t?
        for _ in 0..<600 {
            if let pid = child(), pid != first { second = pid; break }
            usleep(20_000)
        }
        XCTAssertNotNil(second, "a new divvyd was started: \(supervisor.standardError)")
        XCTAssertTrue(serving(), "the restarted divvyd serves: \(supervisor.standardError)")
        supervisor.signal(SIGTERM)
        let exit = supervisor.wait(timeout: 60)
        XCTAssertEqual(exit?.status, 0, "\(String(describing: exit)): \(supervisor.standardError)")
        XCTAssertTrue(supervisor.standardError.contains("restarting"), supervisor.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the daemon shut down cleanly")
        if let second { XCTAssertEqual(kill(second, 0), -1, "the daemon is gone") }
    }
}
