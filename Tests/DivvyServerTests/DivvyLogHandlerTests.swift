import DivvyServer
import Foundation
import Logging
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `DivvyLogHandler` in-process: the journal and plain forms, escaping, whole-line writes, journal detection; and the
/// `log-level` setting.
final class DivvyLogHandlerTests: XCTestCase {
    /// A temporary file the handler writes to (O_APPEND, so concurrent writers cannot overwrite each other).
    private final class Sink {
        let path = NSTemporaryDirectory() + "divvy-log-\(UUID().uuidString)"
        let fd: Int32
        init() throws {
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw NSError(domain: "open \(path) failed", code: Int(errno)) }
        }
        deinit {
            close(fd)
            unlink(path)
        }
        var text: String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        var lines: [String] {
            text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        }
    }

    private func logger(_ format: DivvyLogHandler.Format, _ sink: Sink, label: String = "test") -> Logger {
        Logger(label: label) { label in
            DivvyLogHandler(
                label: label, format: format, fileDescriptor: sink.fd, logLevel: .trace, metadataProvider: nil)
        }
    }

    func testJournalLinesCarryThePriorityAndNoTimestamp() throws {
        let sink = try Sink()
        let logger = logger(.journal, sink)
        for level in Logger.Level.allCases {
            logger.log(level: level, "a \(level) record", metadata: ["b": "2", "a": "1"])
        }
        XCTAssertEqual(
            sink.lines,
            [
                "<7>test: a trace record a=1 b=2", "<7>test: a debug record a=1 b=2", "<6>test: a info record a=1 b=2",
                "<5>test: a notice record a=1 b=2", "<4>test: a warning record a=1 b=2",
                "<3>test: a error record a=1 b=2", "<2>test: a critical record a=1 b=2",
            ])
        XCTAssertEqual(Logger.Level.allCases.map(DivvyLogHandler.syslogPriority(of:)), [7, 7, 6, 5, 4, 3, 2])
    }

    func testJournalLinesLeaveOutTheProgramsOwnLabel() throws {
        let sink = try Sink()
        // journald records the program name as SYSLOG_IDENTIFIER; repeating it on every line adds nothing.
        let program = URL(fileURLWithPath: CommandLine.arguments[0]).lastPathComponent
        logger(.journal, sink, label: program).notice("started")
        XCTAssertEqual(sink.lines, ["<5>started"])
    }

    func testPlainLinesHaveATimestampLevelLabelAndQuotedMetadata() throws {
        let sink = try Sink()
        var logger = logger(.plain, sink, label: "divvyd")
        logger[metadataKey: "region"] = "anonymous memfd"
        logger.info("client connected", metadata: ["name": "", "client": "3"])
        let line = try XCTUnwrap(sink.lines.first)
        let pattern = #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "#
            + #"info divvyd: client connected client=3 name="" region="anonymous memfd"$"#
        XCTAssertNotNil(line.range(of: pattern, options: .regularExpression), line)
        XCTAssertEqual(sink.lines.count, 1)
    }

    func testControlCharactersCannotForgeLines() throws {
        for format in [DivvyLogHandler.Format.journal, .plain] {
            let sink = try Sink()
            let logger = logger(format, sink)
            logger.info(
                "hello from client\n<2>fake critical",
                metadata: ["name": "evil\r\n<0>also fake", "path\nkey": "a\u{1B}[31m\u{2028}b\u{0}c\\d\"e"])
            let lines = sink.lines
            XCTAssertEqual(lines.count, 1, "one record is one line: \(lines)")
            let line = try XCTUnwrap(lines.first)
            XCTAssertTrue(line.contains(#"hello from client\n<2>fake critical"#), line)
            XCTAssertTrue(line.contains(#"name="evil\r\n<0>also fake""#), line)
            XCTAssertTrue(line.contains(#"path\nkey="a\x1b[31m\u{2028}b\x00c\\d\"e""#), line)
            if format == .journal { XCTAssertTrue(line.hasPrefix("<6>test: hello"), line) }
        }
    }

    func testAnErrorIsMetadata() throws {
        struct Broken: Error, CustomStringConvertible { var description: String { "it broke" } }
        let sink = try Sink()
        logger(.journal, sink).error("failed", error: Broken())
        XCTAssertEqual(sink.lines, [#"<3>test: failed error="it broke""#])
    }

    func testConcurrentRecordsStayWholeLines() throws {
        let sink = try Sink()
        let logger = logger(.journal, sink)
        let threads = 8
        let records = 300
        let filler = String(repeating: "x", count: 900)
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for record in 0..<records {
                logger.info("record \(filler)", metadata: ["thread": "\(thread)", "n": "\(record)"])
            }
        }
        let lines = sink.lines
        XCTAssertEqual(lines.count, threads * records)
        var seen = Set<String>()
        for line in lines {
            XCTAssertTrue(line.hasPrefix("<6>test: record \(filler) n="), String(line.prefix(80)))
            let fields = line.split(separator: " ")
            XCTAssertEqual(fields.count, 5, String(line.suffix(80)))
            seen.insert(fields.suffix(2).joined(separator: " "))
        }
        XCTAssertEqual(seen.count, threads * records, "every record exactly once")
    }

    func testJournalStreamDetectionComparesDeviceAndInode() throws {
        let sink = try Sink()
        var status = stat()
        XCTAssertEqual(fstat(sink.fd, &status), 0)
        let matching = "\(status.st_dev):\(status.st_ino)"
        XCTAssertTrue(DivvyLogHandler.isJournalStream(sink.fd, journalStream: matching))
        XCTAssertFalse(DivvyLogHandler.isJournalStream(sink.fd, journalStream: "\(status.st_dev):\(status.st_ino + 1)"))
        XCTAssertFalse(DivvyLogHandler.isJournalStream(sink.fd, journalStream: nil))
        XCTAssertFalse(DivvyLogHandler.isJournalStream(sink.fd, journalStream: ""))
        XCTAssertFalse(DivvyLogHandler.isJournalStream(sink.fd, journalStream: "garbage"))
        XCTAssertFalse(DivvyLogHandler.isJournalStream(-1, journalStream: matching))
    }

    func testLogLevelSettingIsValidated() throws {
        var configuration = ServerConfiguration()
        XCTAssertEqual(configuration.logLevel, .info)
        XCTAssertThrowsError(try configuration.set("log-level", "verbose")) { error in
            let message = (error as? ServerConfiguration.ParseError)?.message ?? ""
            XCTAssertTrue(
                message.contains("log-level must be one of trace, debug, info, notice, warning, error, critical"),
                message)
        }
        try configuration.apply(configText: "log-level = DEBUG\n")
        XCTAssertEqual(configuration.logLevel, .debug)
        XCTAssertTrue(configuration.render().contains { $0.key == "log-level" && $0.value == "debug" })
        XCTAssertTrue(ServerConfiguration.keys.contains("log-level"))
    }
}
