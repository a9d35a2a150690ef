import DivvyClient
import DivvyServer
import DivvyTestSupport
import Foundation
import XCTest

/// What an operator sees of the real executables: divvyd's log lines (journal priorities, levels, which connections
/// are logged at info), `--log-level` validation, `--version`, divvyctl's option placement, the completion scripts.
final class OperationsTests: XCTestCase {
    private func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws
        -> (status: Int32?, output: String, error: String)
    {
        let process = try ChildProcess(executable, arguments, environment: environment)
        let output = process.remainingOutput().joined(separator: "\n")
        let exit = process.wait()
        return (exit.status, output, process.standardError)
    }

    /// Polls the daemon's stderr until `predicate` holds for one of its lines (the daemon logs asynchronously).
    private func waitForLine(_ process: ChildProcess, _ predicate: (String) -> Bool) -> [String] {
        let deadline = Date().addingTimeInterval(20)
        while true {
            let lines = process.standardError.split(separator: "\n").map(String.init)
            if lines.contains(where: predicate) || Date() > deadline { return lines }
            usleep(20_000)
        }
    }

    func testVersionOfBothTools() throws {
        for tool in ["divvyd", "divvyctl"] {
            let result = try run(tool, ["--version"])
            XCTAssertEqual(result.status, 0, result.error)
            XCTAssertEqual(result.output, DivvyServer.version, tool)
        }
    }

    /// A config file that cannot be read is a usage error that names the file and the system's reason (read with
    /// open/read, no Foundation error dump), and a file larger than one read is applied whole.
    func testAnUnreadableConfigFileNamesTheFileAndTheReason() throws {
        let missing = try run("divvyd", ["--config", "/nonexistent/divvyd.conf", "--print-config"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(
            missing.error.contains(
                "divvyd: cannot read config file /nonexistent/divvyd.conf: No such file or directory"), missing.error)
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let folder = try run("divvyd", ["--config", directory, "--print-config"])
        XCTAssertEqual(folder.status, 2)
        XCTAssertTrue(
            folder.error.contains("divvyd: cannot read config file \(directory): Is a directory"), folder.error)
        // A file larger than one read(2) chunk is read whole.
        let file = directory + "/divvyd.conf"
        try (String(repeating: "# padding\n", count: 10_000) + "data-size = 48M\n")
            .write(toFile: file, atomically: true, encoding: .utf8)
        let large = try run("divvyd", ["--config", file, "--print-config"])
        XCTAssertEqual(large.status, 0, large.error)
        XCTAssertTrue(large.output.contains("data-size = 50331648"), large.output)  // 48M
    }

    func testAnUnknownLogLevelIsAUsageError() throws {
        let levels = "trace, debug, info, notice, warning, error, critical"
        let flag = try run("divvyd", ["--log-level", "verbose", "--socket", "/tmp/divvy-nowhere/divvyd.sock"])
        XCTAssertEqual(flag.status, 2)
        XCTAssertTrue(flag.error.contains("divvyd: log-level must be one of \(levels), not 'verbose'"), flag.error)
        let setting = try run("divvyd", ["--set", "log-level=loud", "--print-config"])
        XCTAssertEqual(setting.status, 2)
        XCTAssertTrue(setting.error.contains(levels), setting.error)

        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/divvyd.conf"
        try "# comment\nlog-level = chatty\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try run("divvyd", ["--config", file, "--print-config"])
        XCTAssertEqual(config.status, 2)
        XCTAssertTrue(config.error.contains("\(file): line 2: log-level must be one of \(levels)"), config.error)
        // The flag overrides the file, and the effective level is part of the configuration.
        try "log-level = debug\n".write(toFile: file, atomically: true, encoding: .utf8)
        let overridden = try run("divvyd", ["--config", file, "--log-level", "warning", "--print-config"])
        XCTAssertEqual(overridden.status, 0, overridden.error)
        XCTAssertTrue(overridden.output.contains("log-level = warning"), overridden.output)
    }

    /// divvyctl's connections are debug lines: at the default level a divvyctl command adds no line to the log,
    /// while an ordinary client's connect and disconnect stay at info. A stale JOURNAL_STREAM (not stderr's
    /// device and inode) leaves the plain, timestamped form.
    func testAdminConnectionsAreLoggedAtDebug() throws {
        let daemon = try DaemonProcessTests.Daemon(environment: ["JOURNAL_STREAM": "1:1"])
        let socket = daemon.socketPath
        let commands = [["status"], ["--socket", socket, "clients"], ["top", "--iterations", "2", "--interval", "0.05"]]
        for arguments in commands {
            let result = try run("divvyctl", arguments + (arguments.contains("--socket") ? [] : ["--socket", socket]))
            XCTAssertEqual(result.status, 0, result.error)
        }
        // An ordinary client after them: once its disconnect is logged, divvyctl's (earlier) ones would be too.
        let worker = try DivvyClient(.init(socketPath: socket, name: "worker", mode: .mediated))
        worker.close()
        let lines = waitForLine(daemon.process) { $0.contains("client disconnected") && $0.contains("name=worker") }

        let log = lines.joined(separator: "\n")
        XCTAssertFalse(lines.contains { $0.contains("divvyctl") }, "no divvyctl line at info:\n\(log)")
        let timestamped =
            #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (info|notice|warning|error|critical) divvyd: "#
        for line in lines {
            XCTAssertNotNil(line.range(of: timestamped, options: .regularExpression), line)
        }
        for event in ["client connected", "client disconnected"] {
            XCTAssertTrue(lines.contains { $0.contains(" info divvyd: \(event) ") && $0.contains("name=worker") }, log)
        }
        XCTAssertTrue(lines.contains { $0.contains(" info divvyd: divvyd ready ") })
    }

    /// Under systemd, stderr is the journal stream JOURNAL_STREAM names: every line starts with its syslog priority
    /// and has no timestamp; at debug, divvyctl's connections appear as priority 7.
    func testJournalPrioritiesWhenStderrIsTheJournalStream() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/divvyd.sock"
        // A stand-in for systemd: set JOURNAL_STREAM to stderr's own device and inode (a file here), then exec divvyd.
        let daemon = try ChildProcess(
            "/bin/sh",
            [
                "-c", #"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@""#,
                ChildProcess.executablePath("divvyd"), "--socket", socket, "--data-size", "32M", "--page-size", "16K",
                "--log-level", "debug",
            ])
        defer {
            daemon.signal(SIGKILL)
            daemon.wait()
        }
        let ready = waitForLine(daemon) { $0.hasPrefix("<6>divvyd ready ") }
        XCTAssertTrue(ready.contains { $0.hasPrefix("<6>divvyd ready ") }, ready.joined(separator: "\n"))
        let status = try run("divvyctl", ["--socket", socket, "status"])
        XCTAssertEqual(status.status, 0, status.error)
        _ = waitForLine(daemon) { $0.hasPrefix("<7>client disconnected ") && $0.contains("name=divvyctl") }
        daemon.signal(SIGTERM)
        XCTAssertEqual(daemon.wait().status, 0)

        let lines = daemon.standardError.split(separator: "\n").map(String.init)
        for line in lines {
            XCTAssertNotNil(line.range(of: #"^<[2-7]>[^<\d]"#, options: .regularExpression), line)
            XCTAssertNil(line.range(of: #"\d{4}-\d\d-\d\dT\d\d:"#, options: .regularExpression), "timestamp: \(line)")
        }
        XCTAssertTrue(lines.contains { $0.hasPrefix("<7>client connected ") && $0.contains("name=divvyctl") })
        XCTAssertTrue(lines.contains { $0.hasPrefix("<5>shutting down ") })
        XCTAssertTrue(lines.contains { $0 == "<6>divvyd stopped" })
    }

    /// The bash completion scripts the parsers generate load in bash and register the commands.
    func testBashCompletionScriptsLoad() throws {
        guard FileManager.default.isExecutableFile(atPath: "/bin/bash") else { throw XCTSkip("no bash") }
        for tool in ["divvyd", "divvyctl"] {
            let script = try run(tool, ["--generate-completion-script", "bash"])
            XCTAssertEqual(script.status, 0, script.error)
            let directory = try temporarySocketDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try script.output.write(toFile: directory + "/\(tool).bash", atomically: true, encoding: .utf8)
            let loaded = try run("/bin/bash", ["-c", "source \(directory)/\(tool).bash && complete -p \(tool)"])
            XCTAssertEqual(loaded.status, 0, loaded.error)
            XCTAssertTrue(loaded.output.hasSuffix(" \(tool)"), loaded.output)
        }
    }
}
