import DivvyClient
import DivvyProtocol
import DivvyTestSupport
import DivvyTransport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The fuzz harness's connection-level half (the frame-content half is DivvyProtocolTests' `PropertyTests`): random
/// attacks on how connections behave rather than on what frames hold — silent connections, descriptor floods, slow
/// readers that never read their replies, connect-and-drop, garbage datagrams — against a real divvyd whose
/// open-files limit is low, so it also runs out of descriptors (EMFILE) on the way. Throughout, a bystander
/// client keeps being served and its blocks stay intact; afterwards the heap audit is clean and the log small.
///
/// Bounded: 60 rounds by default (a few seconds). `DIVVY_FUZZ_CONNECTIONS=N` runs N rounds (a long run);
/// `DIVVY_TEST_SEED=S` replays a seed.
final class ConnectionFuzzTests: XCTestCase {
    func testConnectionLevelAttacksLeaveTheDaemonServingOthers() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "needs prlimit")
        let environment = ProcessInfo.processInfo.environment
        let rounds = environment["DIVVY_FUZZ_CONNECTIONS"].flatMap { Int($0) } ?? 60
        let seed = environment["DIVVY_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        print("\(name): \(rounds) rounds, seed \(seed) (replay with DIVVY_TEST_SEED=\(seed))")
        var random = SeededGenerator(seed: seed)

        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/divvyd.sock"
        let daemon = try ChildProcess(
            "/usr/bin/prlimit",
            ["--nofile=48:48", "--", ChildProcess.executablePath("divvyd"), "--socket", socketPath,
             "--data-size", "32M", "--page-size", "16K", "--set", "handshake-timeout-ms=300"])
        defer {
            daemon.signal(SIGKILL)
            daemon.wait()
        }
        var bystander: DivvyClient?
        for _ in 0..<400 where bystander == nil {
            bystander = try? DivvyClient(.init(socketPath: socketPath, name: "bystander", mode: .mediated))
            if bystander == nil, let exit = daemon.wait(timeout: 0.05) {
                return XCTFail("divvyd exited (\(exit)): \(daemon.standardError)")
            }
        }
        let client = try XCTUnwrap(bystander, "divvyd did not start: \(daemon.standardError)")
        let blocks = try (0..<16).map { index in
            let handle = try client.allocateHandle(64).handle
            try client.pointer(for: handle).storeBytes(of: UInt64(index) &* 7919, as: UInt64.self)
            return handle
        }

        var kept: [RawConnection] = []  // silent connections and slow readers, left open for a while
        var attacks: [String: Int] = [:]
        for round in 0..<rounds {
            let attack = random.below(6)
            switch attack {
            case 0:  // Silent: connects, never says anything (the handshake timeout must close it).
                attacks["silent", default: 0] += 1
                kept.append(try RawConnection(socketPath))
            case 1:  // A request carrying 1…24 descriptors.
                attacks["descriptors", default: 0] += 1
                let connection = try RawConnection(socketPath)
                let files = (0..<(1 + random.below(24))).map { _ in open("/dev/null", O_RDONLY) }
                defer { files.forEach { close($0) } }
                let frame = Frame(requestID: 9, message: .ping(payload: [1])).encoded()
                _ = try? connection.socket.send(frame, descriptors: Array(files.prefix(8)))
                try expectAnswerOrClose(connection, "descriptors, seed \(seed) round \(round)")
            case 2:  // Slow reader: pipelines large pings and never reads the replies.
                attacks["slow reader", default: 0] += 1
                let connection = try RawConnection(socketPath)
                _ = divvy_test_set_nonblocking(connection.socket.fileDescriptor)
                _ = try? connection.socket.send(
                    Frame(requestID: 1, message: .hello(Hello(
                        minVersion: 2, maxVersion: 2, mode: .mediated, capabilities: 0, name: "slow"))).encoded())
                let ping = Frame(requestID: 2, message: .ping(payload: [UInt8](repeating: 0xAB, count: 60_000)))
                    .encoded()
                for _ in 0..<(8 + random.below(64)) {
                    guard (try? connection.socket.send(ping)) == .sent else { break }
                }
                kept.append(connection)
            case 3:  // Connect and drop at once.
                attacks["drop", default: 0] += 1
                try RawConnection(socketPath).socket.close()
            case 4:  // A random datagram (0…70000 bytes) after hello.
                attacks["garbage", default: 0] += 1
                let connection = try RawConnection(socketPath)
                guard case .welcome? = try connection.receiveAfter(.hello(Hello(
                    minVersion: 2, maxVersion: 2, mode: .mediated, capabilities: 0, name: "garbage")))
                else { continue }  // refused (out of descriptors): fine
                let length = [0, 1, 23, 24, 100, 65_536, 65_537, 70_000][random.below(8)]
                var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                if length >= 4, random.below(2) == 0 {
                    bytes.replaceSubrange(0..<4, with: [0x44, 0x56, 0x59, 0x50])  // a good magic sometimes
                }
                _ = try? connection.socket.send(bytes)
                try expectAnswerOrClose(connection, "garbage \(length), seed \(seed) round \(round)")
            default:  // Many connections at once (pushes the daemon into EMFILE), left silent.
                attacks["burst", default: 0] += 1
                for _ in 0..<(10 + random.below(30)) { kept.append(try RawConnection(socketPath)) }
            }
            if kept.count > 60 {
                kept.prefix(30).forEach { $0.socket.close() }
                kept.removeFirst(30)
            }
            if round % 10 == 9 {
                XCTAssertEqual(try client.ping([UInt8(round & 0xFF)]), [UInt8(round & 0xFF)], "seed \(seed)")
            }
        }
        kept.forEach { $0.socket.close() }
        print("\(name): attacks \(attacks.sorted { $0.key < $1.key })")

        // The bystander was served throughout and its blocks are intact.
        for (index, handle) in blocks.enumerated() {
            XCTAssertEqual(try client.pointer(for: handle).load(as: UInt64.self), UInt64(index) &* 7919)
        }
        // Once the attackers are gone: only the bystander (and the asking admin) remain, and the audit is clean.
        var verify: [String: Any] = [:]
        var clients = -1
        for _ in 0..<400 {
            guard let admin = try? DivvyClient(.init(socketPath: socketPath, name: "divvyctl", mode: .mediated))
            else {
                usleep(50_000)
                continue
            }
            let status = try JSONSerialization.jsonObject(with: Data(admin.admin(.status).body)) as? [String: Any]
            clients = status?["clients"] as? Int ?? -1
            verify = try JSONSerialization.jsonObject(with: Data(admin.admin(.verify).body)) as? [String: Any] ?? [:]
            admin.close()
            if clients == 2 { break }
            usleep(50_000)
        }
        XCTAssertEqual(clients, 2, "seed \(seed): the attackers' connections are all gone")
        XCTAssertEqual(verify["clean"] as? Bool, true, "seed \(seed): \(verify)")
        client.close()
        let log = daemon.standardError
        let lines = log.split(separator: "\n")
        print("\(name): daemon log \(log.utf8.count) bytes, \(lines.count) lines, of which 'accept failed' (EMFILE) "
            + "\(lines.filter { $0.contains("accept failed") }.count)")
        XCTAssertLessThan(log.utf8.count, 100 * rounds + (64 << 10), "seed \(seed): the log stays small")
        XCTAssertLessThanOrEqual(
            log.split(separator: "\n").filter { $0.contains("accept failed") }.count, 2 + rounds / 20,
            "seed \(seed): accept failures are rate-limited")
    }

    /// The daemon answers (an error frame, then maybe EOF) or closes; a receive timeout means it is stuck.
    private func expectAnswerOrClose(_ connection: RawConnection, _ what: String) throws {
        do {
            _ = try connection.receive()
        } catch let error as TransportError where error.code == .timedOut {
            XCTFail("\(what): the daemon neither answered nor closed")
        } catch {
            // Reset, or an undecodable frame: the connection is over either way.
        }
        connection.socket.close()
    }
}

/// `fcntl(F_SETFL, O_NONBLOCK)` (variadic in C, so spelled out here).
private func divvy_test_set_nonblocking(_ fd: Int32) -> Int32 {
    let flags = fcntl(fd, F_GETFL)
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK)
}

extension RawConnection {
    /// Sends `message` and returns the reply's message, or nil when the daemon closed the connection (refusals).
    fileprivate func receiveAfter(_ message: Message) throws -> Message? {
        guard (try? send(message)) != nil else { return nil }  // already refused and closed
        return try? receive()?.message
    }
}
