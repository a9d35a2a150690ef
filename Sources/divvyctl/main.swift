import ArgumentParser
import Divvy
import DivvyClient
import DivvyProtocol
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// `divvyctl`: inspect and administer a running divvyd over its socket (the protocol's admin messages).
///
/// Exit status: 0 success; 1 the daemon could not be reached or refused; 3 `verify` found violations; 64 bad usage
/// (ArgumentParser's `EX_USAGE`).
@main
struct DivvyCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "divvyctl",
        abstract: "Inspect and administer a running divvyd.",
        discussion: """
            Talks to divvyd over its socket (--socket, else $DIVVY_SOCKET, else the default path). --socket may \
            come before or after the subcommand. Admin operations need an admin uid/gid in the daemon's policy. \
            Every read command takes --json and then prints the daemon's JSON document unchanged (shapes \
            documented in the README); `clients --json` joins the daemon's pages into one array.

            Exit status: 0 success; 1 the daemon could not be reached or refused; 3 `verify` found violations; \
            64 bad usage.
            """,
        version: DivvyVersion.string,
        subcommands: [Status.self, Classes.self, Clients.self, Verify.self, Top.self, Metrics.self, Disconnect.self,
                      Config.self])

    // The options every subcommand shares, accepted before the subcommand too (`divvyctl --socket X status`). The
    // subcommands declare the same group: ArgumentParser decodes it once, wherever it appears on the line, and hands
    // the parent's value to the subcommand (`OptionGroup.init(from:)` reuses a previously decoded group).
    @OptionGroup var connection: Connection

    /// Runs the command; a `Failure` prints `divvyctl: message` on stderr and exits with status 1.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let failure as Failure {
            printError(failure.message)
            Glibc.exit(1)
        } catch {
            exit(withError: error)
        }
    }
}

/// Options every subcommand shares.
struct Connection: ParsableArguments {
    @Option(name: .long, help: "The daemon's socket (default: $DIVVY_SOCKET, else the per-user default path).")
    var socket: String?

    /// Connects to the daemon, runs `body` with the connection, and closes it; failing to connect is a `Failure`.
    func withClient<T>(_ body: (DivvyClient) throws -> T) throws -> T {
        let client: DivvyClient
        do {
            client = try DivvyClient(.init(socketPath: socket, name: "divvyctl", mode: .mediated))
        } catch {
            throw Failure(error.message)
        }
        defer { client.close() }
        return try body(client)
    }

    /// Runs an admin operation, turning every failure into a clear message and exit status 1.
    func admin(_ operation: AdminOperation, argument: UInt32 = 0) throws -> AdminReply {
        try withClient { try Self.admin($0, operation, argument: argument) }
    }

    /// Runs an admin operation on `client`, turning every failure into a clear message.
    static func admin(_ client: DivvyClient, _ operation: AdminOperation, argument: UInt32 = 0) throws -> AdminReply {
        do {
            return try client.admin(operation, argument: argument)
        } catch where error.protocolCode == .adminRequired {
            throw Failure(
                "not allowed: \(error.message) (uid \(getuid()), gid \(getgid())); run as an admin user or add this "
                    + "uid to admin-uids in the daemon's config")
        } catch {
            throw Failure(error.message)
        }
    }

    /// Runs an admin operation and decodes its JSON body.
    func document<T: Decodable>(_ operation: AdminOperation, as type: T.Type, argument: UInt32 = 0) throws -> (T, [UInt8]) {
        let reply = try admin(operation, argument: argument)
        do {
            return (try JSONDecoder().decode(T.self, from: Data(reply.body)), reply.body)
        } catch {
            throw Failure("the daemon's \(operation) reply is not the expected JSON: \(error)")
        }
    }
}

/// A failure with its message; printed as `divvyctl: message`, exit status 1.
struct Failure: Error, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

func printJSON(_ body: [UInt8]) {
    print(String(decoding: body, as: UTF8.self))
}

/// `value` rounded to one decimal, as `%.1f` prints it (without Foundation's `String(format:)`); `value` ≥ 0.
func oneDecimal(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

/// Writes `divvyctl: message` and a newline to standard error (one write(2)).
func printError(_ message: String) {
    let line = "divvyctl: \(message)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

func bytes(_ count: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(count) B" : "\(oneDecimal(value)) \(units[unit])"
}

func duration(_ seconds: Double) -> String {
    let total = Int(seconds)
    let (days, hours, minutes, rest) = (total / 86400, total / 3600 % 24, total / 60 % 60, total % 60)
    return days > 0 ? "\(days)d \(hours)h \(minutes)m" : hours > 0 ? "\(hours)h \(minutes)m \(rest)s" : "\(minutes)m \(rest)s"
}

/// Left-aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let widths = header.indices.map { column in
        ([header[column]] + rows.map { $0[column] }).map(\.count).max() ?? 0
    }
    func line(_ cells: [String]) -> String {
        zip(cells, widths).map { $0 + String(repeating: " ", count: max(0, $1 - $0.count)) }.joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}

// MARK: Paged documents

/// The whole `clients` list, read page by page over one connection (`Protocol/PROTOCOL.md`, "Admin paging").
struct ClientList {
    /// Every row, in id order.
    var rows: [AdminDocument.Client]
    /// The rows as one JSON array: the pages' arrays joined (each row's bytes exactly as the daemon sent them).
    var json: [UInt8]
}

extension Connection {
    /// Reads every page of `clients`: asks for the clients after the last id received until a page is empty.
    ///
    /// A daemon that predates paging ignores the argument and answers every request with the whole list: a page
    /// with no row past the cursor ends the listing too, so this never loops.
    func allClients() throws -> ClientList {
        try withClient { client in
            var rows: [AdminDocument.Client] = []
            var json: [UInt8] = [UInt8(ascii: "[")]
            var cursor: UInt32 = 0
            while true {
                let body = try Self.admin(client, .clients, argument: cursor).body
                let page: [AdminDocument.Client]
                do {
                    page = try JSONDecoder().decode([AdminDocument.Client].self, from: Data(body))
                } catch {
                    throw Failure(
                        "the daemon's clients reply (after client \(cursor)) is not the expected JSON: \(error)")
                }
                guard let last = page.last, page.allSatisfy({ $0.id > cursor }) else { break }
                // Safe: the daemon's body is a JSON array, `[` … `]`; keep what is between the brackets.
                if !rows.isEmpty { json.append(UInt8(ascii: ",")) }
                json += body.dropFirst().dropLast()
                rows += page
                cursor = last.id
            }
            json.append(UInt8(ascii: "]"))
            return ClientList(rows: rows, json: json)
        }
    }
}

// MARK: Documents (the daemon's JSON shapes: `AdminDocument`, shared with the daemon)

extension AdminDocument.Status {
    /// The human form of `divvyctl status`.
    var text: String {
        """
        divvyd \(version) (protocol \(protocolVersion)), pid \(pid), up \(duration(uptimeSeconds))
        socket:  \(socket)
        region:  \(region.name.map { "/dev/shm/\($0)" } ?? "anonymous memfd"), \(bytes(region.totalBytes)) \
        (\(bytes(region.dataBytes)) data), \(region.pageKind) pages\(region.lazy ? ", lazily committed" : "")
        heap:    \(heap.pages - heap.spanPages) pages of \(bytes(heap.pageSize)) and \(heap.spanPages) span pages of \
        \(bytes(heap.spanPageSize)); \(heap.freePages) pages free
        memory:  \(bytes(heap.bytesUsed)) used, \(bytes(heap.bytesFree)) free
        clients: \(clients)
        """
    }
}

extension AdminDocument.Disconnected {
    /// The human form of `divvyctl disconnect`.
    var text: String {
        let row = disconnected
        var text = "disconnected client \(row.id) (\(DisplayText.escaped(row.name)), pid \(row.pid)); released "
            + "\(bytes(row.bytesHeld)) in \(row.blocksHeld) mediated blocks"
        if killed == true {
            text += "\nkilled pid \(row.pid) (SIGKILL \(killedThrough == "pidfd" ? "through a pidfd" : "by pid"))"
        }
        if let recovery {
            text += "\nrecovery of its participant and \(row.pageAllowance) leased pages: \(recovery)"
        }
        return text
    }
}

func clientsTable(_ rows: [AdminDocument.Client]) -> String {
    table(
        ["ID", "PID", "UID", "NAME", "MODE", "HELD", "BLOCKS", "LEASED PAGES", "QUOTA", "CONNECTED"],
        rows.map {
            // The name is the client's own choice: escaped (no newline or terminal escape reaches the screen).
            ["\($0.id)", "\($0.pid)", "\($0.uid)", DisplayText.escaped($0.name), $0.mode, bytes($0.bytesHeld),
             "\($0.blocksHeld)", "\($0.pageAllowance)", bytes($0.quotaBytes), duration($0.connectedSeconds)]
        })
}

// MARK: Subcommands

extension DivvyCtl {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Version, uptime, region size/backing/huge pages, clients, bytes used/free.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the daemon's JSON document.") var json = false

        func run() throws {
            let (status, body) = try connection.document(.status, as: AdminDocument.Status.self)
            if json { printJSON(body) } else { print(status.text) }
        }
    }

    struct Classes: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per size class: pages, blocks used/free, fragmentation.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the daemon's JSON document.") var json = false
        @Flag(help: "Show classes with no pages too.") var all = false

        func run() throws {
            let (rows, body) = try connection.document(.classes, as: [AdminDocument.SizeClass].self)
            if json { return printJSON(body) }
            print(table(
                ["CLASS", "PAGES", "USED", "FREE", "FRAGMENTATION"],
                rows.filter { all || $0.pages > 0 }.map {
                    [bytes($0.blockSize), "\($0.pages)", "\($0.blocksUsed)", "\($0.blocksFree)",
                     "\(oneDecimal($0.fragmentation * 100))%"]
                }))
        }
    }

    struct Clients: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Connected clients: id, pid, uid, name, mode, bytes held, quota.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the daemon's JSON document.") var json = false

        func run() throws {
            let list = try connection.allClients()
            if json { printJSON(list.json) } else { print(clientsTable(list.rows)) }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the heap audit and print its report; exit status 3 on any violation.",
            discussion: "Exact while no direct client is mid-operation; run it when the heap is quiet.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the daemon's JSON document.") var json = false

        func run() throws {
            let (report, body) = try connection.document(.verify, as: AdminDocument.Verify.self)
            if json { printJSON(body) } else { print(report.summary) }
            if !report.clean { throw ExitCode(3) }
        }
    }

    struct Top: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A live view of status and clients, refreshed in place until Ctrl-C.")
        @OptionGroup var connection: Connection
        @Option(help: "Seconds between refreshes.") var interval: Double = 1
        @Option(help: "Stop after this many refreshes (default: until Ctrl-C).") var iterations: Int?

        func run() throws {
            var count = 0
            while iterations.map({ count < $0 }) ?? true {
                let (status, _) = try connection.document(.status, as: AdminDocument.Status.self)
                let clients = try connection.allClients().rows
                // Clear the screen and home the cursor (ANSI), then draw.
                print("\u{1B}[H\u{1B}[2J" + status.text + "\n\n" + clientsTable(clients))
                fflush(nil)
                count += 1
                if iterations.map({ count >= $0 }) ?? false { break }
                usleep(useconds_t(max(0.05, interval) * 1_000_000))
            }
        }
    }

    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The daemon's metrics, Prometheus text format.")
        @OptionGroup var connection: Connection

        func run() throws {
            let reply = try connection.admin(.metrics)
            print(String(decoding: reply.body, as: UTF8.self), terminator: "")
        }
    }

    struct Disconnect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forcibly end a client's connection and reclaim its memory.",
            discussion: """
                A direct client is killed first (SIGKILL, through a pidfd for the process that connected); its \
                pages are recovered once it has exited. If divvyd may not kill it (it runs as another user and \
                lacks CAP_KILL), nothing is done and this fails with exit status 1, saying what to do.
                """)
        @OptionGroup var connection: Connection
        @Argument(help: "The client id (see `divvyctl clients`).") var client: UInt32
        @Flag(help: "Print the daemon's JSON document.") var json = false

        func run() throws {
            let (document, body) = try connection.document(.disconnect, as: AdminDocument.Disconnected.self, argument: client)
            if json {
                printJSON(body)
            } else {
                print(document.text)
            }
        }
    }

    struct Config: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The running configuration, as config-file lines.")
        @OptionGroup var connection: Connection
        @Flag(help: "Print the daemon's JSON document.") var json = false

        func run() throws {
            let (config, body) = try connection.document(.config, as: AdminDocument.Config.self)
            if json { return printJSON(body) }
            for setting in config.settings { print("\(setting.key) = \(setting.value)") }
        }
    }
}
