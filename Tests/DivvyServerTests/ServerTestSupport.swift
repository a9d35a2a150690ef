import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import DivvyTransport
import Foundation
import Logging
import XCTest

/// A fresh temporary directory for a test's socket (short: socket paths are limited to 107 bytes).
func temporarySocketDirectory() throws -> String {
    var template = Array("/tmp/divvy-test-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw NSError(domain: "mkdtemp failed", code: Int(errno)) }
    return String(cString: made)
}

/// A daemon served in-process by a thread: the real server library, a temporary socket and a small region.
final class TestDaemon {
    let server: DivvyServer
    let directory: String
    let socketPath: String
    private let finished = DispatchSemaphore(value: 0)
    private var stopped = false

    /// A small default configuration: 8 MiB of data, 16 KiB pages, a socket in a temporary directory.
    static func configuration(in directory: String) -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.socketPath = directory + "/divvyd.sock"
        configuration.dataSize = 8 << 20
        configuration.pageSize = 16 << 10
        configuration.heldCapacity = 4096
        configuration.shutdownGraceMilliseconds = 300
        return configuration
    }

    /// - Parameter prepare: runs on the server before its loop starts (tests with `@testable` access set internal
    ///   knobs here).
    init(
        _ configure: (inout ServerConfiguration) -> Void = { _ in }, prepare: (DivvyServer) -> Void = { _ in }
    ) throws {
        directory = try temporarySocketDirectory()
        var configuration = Self.configuration(in: directory)
        configure(&configuration)
        socketPath = configuration.socketPath
        let logger = Logger(label: "divvyd-test", factory: { _ in SwiftLogNoOpLogHandler() })
        server = try DivvyServer(configuration: configuration, logger: logger)
        prepare(server)
        let server = self.server
        let finished = self.finished
        let thread = Thread {
            do {
                try server.run()
            } catch {
                XCTFail("the daemon's loop failed: \(error)")
            }
            finished.signal()
        }
        thread.start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Shuts the daemon down and waits for its loop to end.
    func stop() {
        guard !stopped else { return }
        stopped = true
        server.shutdown(reason: "test over")
        finished.wait()
    }

    /// A client of this daemon.
    func client(_ mode: ClientMode = .any, name: String = "test") throws -> DivvyClient {
        try DivvyClient(.init(socketPath: socketPath, name: name, mode: mode, timeoutMilliseconds: 10_000))
    }

    /// The heap audit, once the daemon is idle (every request so far answered).
    func audit() throws -> SharedHeapReport {
        // A round trip through the loop first: every earlier request of every client has been handled.
        let probe = try client(.mediated, name: "audit")
        try probe.ping()
        probe.close()
        return server.heap.verify()
    }
}

/// A raw protocol connection: frames in, frames out, no client library (for bad-input tests).
final class RawConnection {
    let socket: SeqpacketSocket
    private var buffer = [UInt8](repeating: 0, count: ProtocolLimits.maxFrameSize + 1)

    init(_ path: String) throws {
        socket = try SeqpacketSocket.connect(path: path)
        try socket.setReceiveTimeout(milliseconds: 10_000)
    }

    /// Says hello and returns the welcome.
    @discardableResult
    func hello(_ mode: ClientMode = .mediated) throws -> Welcome {
        let reply = try roundTrip(.hello(Hello(minVersion: 2, maxVersion: 2, mode: mode, capabilities: 0, name: "raw")))
        guard case .welcome(let welcome) = reply.message else { throw NSError(domain: "no welcome: \(reply)", code: 1) }
        return welcome
    }

    func send(_ bytes: [UInt8]) throws {
        _ = try socket.send(bytes)
    }

    func send(_ message: Message, requestID: UInt64 = 7) throws {
        try send(Frame(requestID: requestID, message: message).encoded())
    }

    /// The next frame, or nil when the daemon closed the connection.
    func receive() throws -> Frame? {
        let result = try buffer.withUnsafeMutableBytes { raw in try socket.receive(into: raw) }
        switch result {
        case .endOfFile, .wouldBlock: return nil
        case .datagram(let count, let descriptor, _):
            if let descriptor { close(descriptor) }
            return try Frame.decode(Array(buffer[..<count]))
        }
    }

    func roundTrip(_ message: Message, requestID: UInt64 = 7) throws -> Frame {
        try send(message, requestID: requestID)
        guard let frame = try receive() else { throw NSError(domain: "connection closed", code: 1) }
        return frame
    }

    /// Whether the daemon has closed this connection (EOF on the next receive).
    func isClosedByPeer() throws -> Bool {
        try receive() == nil
    }
}

/// Asserts that a frame is an error reply with `code` (answering `type` and `requestID`).
func assertErrorReply(
    _ frame: Frame?, _ code: ErrorCode, requestID: UInt64? = nil, file: StaticString = #filePath, line: UInt = #line
) {
    guard let frame else { return XCTFail("expected error \(code), the connection closed", file: file, line: line) }
    guard case .error(let reply) = frame.message else {
        return XCTFail("expected error \(code), got \(frame.message)", file: file, line: line)
    }
    XCTAssertEqual(reply.code, code, reply.message, file: file, line: line)
    XCTAssertFalse(reply.message.isEmpty, "error replies explain themselves", file: file, line: line)
    if let requestID { XCTAssertEqual(frame.requestID, requestID, file: file, line: line) }
}

/// Asserts that a client call fails with protocol error `code`.
func assertClientError<T>(
    _ code: ErrorCode, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> T
) {
    do {
        let value = try body()
        XCTFail("expected \(code), got \(value)", file: file, line: line)
    } catch {
        XCTAssertEqual((error as? DivvyClientError)?.protocolCode, code, "\(error)", file: file, line: line)
    }
}

/// Runs the built `divvyctl` against the daemon at `socket`; returns its exit status, stdout and stderr.
func runDivvyctl(_ arguments: [String], socket: String) throws -> (status: Int32?, output: String, error: String) {
    let process = try ChildProcess("divvyctl", arguments + ["--socket", socket])
    let output = process.remainingOutput().joined(separator: "\n")
    let exit = process.wait()
    return (exit.status, output, process.standardError)
}

/// The child process a `divvyd --supervise` process (or any parent) runs now, or nil: the first pid in any of its
/// threads' `/proc/PID/task/TID/children` lists (a child belongs to the thread that spawned it).
func currentChild(of parent: pid_t) -> pid_t? {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(parent)/task")) ?? []
    // (Not `lazy.compactMap(…).first`: it reads each file twice, and a child may exit in between.)
    for task in tasks {
        let path = "/proc/\(parent)/task/\(task)/children"
        if let pid = (try? String(contentsOfFile: path, encoding: .utf8))?
            .split(separator: " ").compactMap({ pid_t($0) }).first
        {
            return pid
        }
    }
    return nil
}
