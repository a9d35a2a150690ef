import DivvyProtocol
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// divvyd's swift-log handler: one line per record on standard error, in the journal's own form when standard error
/// is connected to the systemd journal.
///
/// Under systemd, a service's standard error is a stream socket into journald, and systemd says so by setting
/// `JOURNAL_STREAM=<device>:<inode>` to that socket's `st_dev` and `st_ino` (`systemd.exec(5)`, "Environment
/// variables in spawned processes"). A process whose standard error still has those numbers (its `fstat(2)`) may
/// start each line with `<N>`, the syslog priority (`sd-daemon(3)`): journald strips the prefix, records the
/// priority (`journalctl -p warning`, colours, forwarding to syslog) and timestamps the line itself. So the two
/// forms are
///
///     <6>client connected client=3 mode=mediated name=worker pid=4242             (Format.journal)
///     2025-06-01T12:00:00.123+02:00 info divvyd: client connected client=3 …    (Format.plain)
///
/// Priorities: trace and debug 7, info 6, notice 5, warning 4, error 3, critical 2 (`syslogPriority(of:)`). In the
/// journal form the label is left out when it is the program's name (journald records that as
/// `SYSLOG_IDENTIFIER`). Metadata follows the message as `key=value`, sorted by key; a value that is empty or holds
/// a space, `"` or `=` is quoted.
///
/// Nothing a record holds can forge a second line or a priority: control characters (and the Unicode line
/// separators) in the message, keys and values are written as escapes — `\n`, `\r`, `\t`, `\\`, `\x1b`,
/// `\u2028` — so every record is exactly one line. Each record is written with one `write(2)`, so records from
/// concurrent threads do not interleave (a pipe takes up to `PIPE_BUF` bytes atomically; journald's stream socket
/// takes the whole line).
public struct DivvyLogHandler: LogHandler {
    /// How records are written.
    public enum Format: Hashable, Sendable {
        /// `<N>message key=value…`: a syslog priority prefix and no timestamp (journald stamps each line).
        case journal
        /// `timestamp level label: message key=value…` with a local ISO-8601 timestamp (milliseconds, offset).
        case plain
    }

    /// The lowest level this handler writes: its `levelControl`'s level while it has one (a configuration reload
    /// changes that), else its own. Setting it gives this handler (this copy) its own level and detaches it from
    /// the control.
    public var logLevel: Logger.Level {
        get { levelControl?.level ?? ownLevel }
        set {
            ownLevel = newValue
            levelControl = nil
        }
    }
    private var ownLevel: Logger.Level
    /// The shared level this handler follows, if any (`LogLevelControl`).
    public private(set) var levelControl: LogLevelControl?
    /// Metadata added to every record of this handler (a record's own metadata wins on equal keys).
    public var metadata: Logger.Metadata = [:]
    /// Contextual metadata read at each record (between `metadata` and the record's own).
    public var metadataProvider: Logger.MetadataProvider?
    /// The logger's label.
    public let label: String
    /// The line form.
    public let format: Format
    /// Where lines go (not owned: never closed here).
    public let fileDescriptor: Int32
    private let writesLabel: Bool

    /// Creates a handler writing to a descriptor in a given form.
    ///
    /// - Parameters:
    ///   - label: The logger's label.
    ///   - format: `.journal` or `.plain`; `standardError(label:logLevel:)` picks it from the environment.
    ///   - fileDescriptor: Where to write; default standard error. The caller keeps it open.
    ///   - logLevel: The lowest level written. Default `.info`.
    ///   - metadataProvider: Contextual metadata; default the one bootstrapped in `LoggingSystem`.
    public init(
        label: String, format: Format, fileDescriptor: Int32 = STDERR_FILENO, logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
    ) {
        self.label = label
        self.format = format
        self.fileDescriptor = fileDescriptor
        self.ownLevel = logLevel
        self.levelControl = nil
        self.metadataProvider = metadataProvider
        self.writesLabel = format == .plain || label != Self.programName
    }

    /// A handler for standard error: `.journal` when standard error is the journal stream systemd announced in
    /// `JOURNAL_STREAM`, else `.plain`.
    ///
    /// - Parameters:
    ///   - label: The logger's label.
    ///   - logLevel: The lowest level written.
    public static func standardError(label: String, logLevel: Logger.Level = .info) -> DivvyLogHandler {
        let stream = getenv("JOURNAL_STREAM").map { String(cString: $0) }
        let journal = isJournalStream(STDERR_FILENO, journalStream: stream)
        return DivvyLogHandler(label: label, format: journal ? .journal : .plain, logLevel: logLevel)
    }

    /// A handler for standard error (see `standardError(label:logLevel:)`) whose level follows `control`, so that
    /// every logger made from it changes level together when the control does (divvyd's configuration reload).
    ///
    /// - Parameters:
    ///   - label: The logger's label.
    ///   - control: The shared level.
    public static func standardError(label: String, levelControl control: LogLevelControl) -> DivvyLogHandler {
        var handler = standardError(label: label, logLevel: control.level)
        handler.levelControl = control
        return handler
    }

    /// Returns this handler following `control`'s level (see `levelControl`).
    public func following(_ control: LogLevelControl) -> DivvyLogHandler {
        var handler = self
        handler.levelControl = control
        return handler
    }

    /// Whether `fileDescriptor` is the journal stream a `JOURNAL_STREAM` value names: the value is
    /// `<st_dev>:<st_ino>` in decimal and the descriptor's `fstat(2)` has the same numbers (`sd-daemon(3)`).
    /// A stale value — stderr redirected by a shell script the service runs — does not match.
    ///
    /// - Parameters:
    ///   - fileDescriptor: The descriptor to check, usually standard error.
    ///   - journalStream: The value of `JOURNAL_STREAM`, or nil when it is not set.
    public static func isJournalStream(_ fileDescriptor: Int32, journalStream: String?) -> Bool {
        guard let journalStream, let colon = journalStream.firstIndex(of: ":"),
            let device = UInt64(journalStream[..<colon]),
            let inode = UInt64(journalStream[journalStream.index(after: colon)...])
        else { return false }
        var status = stat()
        guard fstat(fileDescriptor, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// The syslog priority of a level (`syslog(3)`'s LOG_DEBUG 7 … LOG_CRIT 2); swift-log's trace is debug too.
    public static func syslogPriority(of level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// The metadata value for a key of this handler's own metadata.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes one record as one line (one `write(2)`).
    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { _, provided in provided }
        }
        if let own = event.metadata, !own.isEmpty {
            merged.merge(own) { _, own in own }
        }
        if let error = event.error {
            merged["error"] = "\(error)"
        }
        let line = render(level: event.level, message: event.message.description, metadata: merged)
        Self.write(line, to: fileDescriptor)
    }

    /// The line for one record, with its newline.
    func render(level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var line = ""
        switch format {
        case .journal:
            line += "<\(Self.syslogPriority(of: level))>"
        case .plain:
            line += Self.timestamp()
            line += " \(level.rawValue) "
        }
        if writesLabel {
            Self.escape(label, into: &line, quoting: false)
            line += ": "
        }
        Self.escape(message, into: &line, quoting: false)
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            line += " "
            Self.escape(key, into: &line, quoting: false)
            line += "="
            let text = value.description
            let quoted = text.isEmpty || text.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" })
            if quoted { line += "\"" }
            Self.escape(text, into: &line, quoting: quoted)
            if quoted { line += "\"" }
        }
        line += "\n"
        return line
    }

    /// Appends `text` escaped by `DisplayText` (the escaping `divvyctl` uses too): no line break, control
    /// character or bidirectional override survives; when `quoting`, `"` is escaped too.
    static func escape(_ text: String, into output: inout String, quoting: Bool) {
        DisplayText.escape(text, into: &output, quoting: quoting)
    }

    /// Local time as ISO 8601 with milliseconds and the UTC offset, e.g. `2025-06-01T12:00:00.123+02:00`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var local = tm()
        guard localtime_r(&seconds, &local) != nil else { return "\(now.tv_sec)" }
        func padded(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let offset = local.tm_gmtoff / 60
        let sign = offset < 0 ? "-" : "+"
        return "\(padded(Int(local.tm_year) + 1900, 4))-\(padded(Int(local.tm_mon) + 1, 2))-"
            + "\(padded(Int(local.tm_mday), 2))T\(padded(Int(local.tm_hour), 2)):\(padded(Int(local.tm_min), 2)):"
            + "\(padded(Int(local.tm_sec), 2)).\(padded(now.tv_nsec / 1_000_000, 3))"
            + "\(sign)\(padded(abs(offset) / 60, 2)):\(padded(abs(offset) % 60, 2))"
    }

    /// Writes the whole line; retries EINTR and continues a short write. Gives up silently on any other error (a
    /// closed or full descriptor): logging must never stop or block the daemon.
    private static func write(_ line: String, to fileDescriptor: Int32) {
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                // Safe: the buffer is not empty here, so it has a base address; offset < count keeps it in bounds.
                let written = Glibc.write(fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// The executable's file name: what journald records as `SYSLOG_IDENTIFIER` for a service's stderr by default.
    private static let programName: String = {
        let path = CommandLine.arguments.first ?? ""
        return path.split(separator: "/").last.map(String.init) ?? path
    }()
}
