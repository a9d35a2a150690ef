import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyTestSupport
import DivvyTransport
import Foundation
import XCTest

/// Connection-level limits against a real daemon (issue 13, items 3 and 4): silent connections time out, one uid
/// cannot take every slot, admins keep slots of their own, and running out of descriptors neither spins nor floods
/// the log.
final class ConnectionHardeningTests: XCTestCase {
    func testSilentConnectionsAreClosedAfterTheHandshakeTimeoutAndFreeTheirSlots() throws {
        let daemon = try TestDaemon {
            $0.maxClients = 3
            $0.reservedAdminConnections = 0
            $0.handshakeTimeoutMilliseconds = 200
        }
        let silent = try (0..<3).map { _ in try RawConnection(daemon.socketPath) }
        for connection in silent {
            let reply = try connection.receive()
            assertErrorReply(reply, .handshakeRequired, requestID: 0)
            if case .error(let error)? = reply?.message {
                XCTAssertTrue(error.message.contains("handshake-timeout-ms"), error.message)
                XCTAssertEqual(error.requestType.rawValue, 0)
            }
            XCTAssertTrue(try connection.isClosedByPeer(), "closed after the timeout")
        }
        // Their slots are free again.
        let admin = try daemon.client(.mediated, name: "admin")
        XCTAssertNoThrow(try admin.admin(.status))
        admin.close()
    }

    func testThePerUIDLimitRefusesWithTheSettingsNameAndExemptsAdmins() throws {
        let daemon = try TestDaemon {
            $0.policy = AccessPolicy(allowedUIDs: [getuid()])  // not an admin
            $0.maxConnectionsPerUID = 2
        }
        let first = try daemon.client(.mediated)
        let second = try daemon.client(.mediated)
        XCTAssertThrowsError(try daemon.client(.mediated)) { error in
            XCTAssertEqual((error as? DivvyClientError)?.protocolCode, .tooManyClients, "\(error)")
            XCTAssertTrue("\(error)".contains("max-connections-per-uid"), "\(error)")
        }
        try first.ping()
        try second.ping()

        let admins = try TestDaemon { $0.maxConnectionsPerUID = 1 }  // the default policy: this uid administers
        let clients = try (0..<3).map { _ in try admins.client(.mediated) }
        for client in clients { try client.ping() }
    }

    /// Ordinary peers of another uid fill max-clients with connections that never say hello: an admin still gets
    /// in through a reserved slot and `status` works. Needs root (to run the flood as uid 65534 with setpriv).
    func testAnAdminGetsInWhenAnotherUsersSilentConnectionsFillTheDaemon() throws {
        try XCTSkipUnless(getuid() == 0, "needs root to run the flooding peer under another uid")
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs setpriv")
        let daemon = try TestDaemon {
            $0.maxClients = 4
            $0.reservedAdminConnections = 1
            $0.maxConnectionsPerUID = 0
            $0.handshakeTimeoutMilliseconds = 600_000  // the silent peers stay for the whole test
            $0.socketMode = 0o666
            $0.policy = AccessPolicy(allowedUIDs: [65534], adminUIDs: [getuid()])
        }
        XCTAssertEqual(chmod(daemon.directory, 0o755), 0)
        let flood = try ChildProcess(
            "/usr/bin/setpriv",
            ["--reuid=65534", "--regid=65534", "--clear-groups", ChildProcess.executablePath("divvy-client-helper"),
             daemon.socketPath, "any", "silent", "6"])
        defer {
            flood.closeStdin()
            flood.wait()
        }
        let line = try XCTUnwrap(flood.readLine(), flood.standardError)
        XCTAssertTrue(line.hasPrefix("SILENT "), line)
        // The flood's connections were queued before this one: the daemon has decided them all.
        let admin = try daemon.client(.mediated, name: "divvyctl")
        let status = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(admin.admin(.status).body)) as? [String: Any])
        XCTAssertEqual(status["clients"] as? Int, 5, "4 silent peers (the other 2 refused) and the admin")
        // The reserve is for admins only, and it is now used up.
        XCTAssertThrowsError(try daemon.client(.mediated, name: "second admin")) { error in
            XCTAssertEqual((error as? DivvyClientError)?.protocolCode, .tooManyClients, "\(error)")
            XCTAssertTrue("\(error)".contains("reserved-admin-connections"), "\(error)")
        }
    }

    /// A divvyd child with a low open-files limit and more connections than it has descriptors: the excess is
    /// refused (not left queued to spin on), the log stays small, and once the flood is gone clients are served.
    func testRunningOutOfDescriptorsNeitherSpinsNorFloodsTheLog() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "needs prlimit")
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/divvyd.sock"
        let daemon = try ChildProcess(
            "/usr/bin/prlimit",
            ["--nofile=40:40", "--", ChildProcess.executablePath("divvyd"), "--socket", socketPath,
             "--data-size", "32M", "--page-size", "16K", "--set", "handshake-timeout-ms=1500"])
        defer {
            daemon.signal(SIGKILL)
            daemon.wait()
        }
        try waitUntilServing(socketPath, daemon)
        let flood = try (0..<80).map { _ in try RawConnection(socketPath) }
        var codes: [ErrorCode: Int] = [:]
        for connection in flood {
            // Each gets an answer: refused at once (out of descriptors), or closed by the handshake timeout.
            guard case .error(let reply)? = try connection.receive()?.message else {
                return XCTFail("a flood connection got no error reply; log: \(daemon.standardError.suffix(2000))")
            }
            codes[reply.code, default: 0] += 1
            XCTAssertTrue(try connection.isClosedByPeer())
        }
        XCTAssertGreaterThan(codes[.tooManyClients] ?? 0, 0, "some were refused for lack of descriptors: \(codes)")
        XCTAssertGreaterThan(codes[.handshakeRequired] ?? 0, 0, "some were admitted, then timed out: \(codes)")
        flood.forEach { $0.socket.close() }
        // Served again (the daemon may need a moment to see the flood's sockets close).
        var served = false
        for _ in 0..<200 where !served {
            if let client = try? DivvyClient(.init(socketPath: socketPath, name: "after", mode: .mediated)) {
                served = (try? client.ping([1])) == [1]
                client.close()
            } else {
                usleep(50_000)
            }
        }
        XCTAssertTrue(served, "a client is served after the flood")
        let log = daemon.standardError
        let acceptLines = log.split(separator: "\n").filter { $0.contains("accept failed") }
        XCTAssertGreaterThan(acceptLines.count, 0, "the failure is reported")
        XCTAssertLessThanOrEqual(acceptLines.count, 3, "one line per burst, not one per failure:\n\(log.suffix(3000))")
        XCTAssertLessThan(log.utf8.count, 64 << 10, "the log stays small")
    }

    /// Lines a peer can provoke per connection are not written per connection: connect-and-drop, protocol errors
    /// and refusals each leave a bounded number of lines however many connections do it.
    func testPeersCannotWriteALogLinePerConnection() throws {
        let daemon = try DaemonProcessTests.Daemon(["--set", "max-connections-per-uid=1", "--set", "admin-uids="])
        for _ in 0..<50 { try RawConnection(daemon.socketPath).socket.close() }
        for _ in 0..<50 {
            let connection = try RawConnection(daemon.socketPath)
            try connection.send([0, 1, 2])  // malformedFrame: the daemon closes
            _ = try? connection.receive()
        }
        let holder = try RawConnection(daemon.socketPath)  // the uid's one connection: the next ones are refused
        for _ in 0..<50 { _ = try? RawConnection(daemon.socketPath).receive() }
        try holder.hello()
        XCTAssertEqual(try holder.roundTrip(.ping(payload: [1])).message, .pong(payload: [1]), "all handled")
        let lines = daemon.process.standardError.split(separator: "\n")
        XCTAssertLessThanOrEqual(lines.filter { $0.contains("closing client after protocol error") }.count, 2)
        XCTAssertLessThanOrEqual(lines.filter { $0.contains("connection refused") }.count, 2)
        XCTAssertEqual(
            lines.filter { $0.contains("client disconnected") && $0.contains("name=\"\"") }.count, 0,
            "connections never welcomed log their disconnect at debug:\n\(lines.suffix(20).joined(separator: "\n"))")
    }

    private func waitUntilServing(_ socketPath: String, _ daemon: ChildProcess) throws {
        for _ in 0..<400 {
            if let client = try? DivvyClient(.init(socketPath: socketPath, name: "probe", mode: .mediated)) {
                client.close()
                return
            }
            if let exit = daemon.wait(timeout: 0.05) {
                throw NSError(domain: "divvyd exited (\(exit)): \(daemon.standardError)", code: 1)
            }
        }
        throw NSError(domain: "divvyd did not start: \(daemon.standardError)", code: 1)
    }
}

/// Spec conformance at the connection level (issue 13, items 8–14).
final class SpecConformanceTests: XCTestCase {
    private var daemon: TestDaemon!

    override func setUpWithError() throws {
        daemon = try TestDaemon { $0.shutdownGraceMilliseconds = 20_000 }
    }

    override func tearDownWithError() throws {
        daemon = nil
    }

    private func helloed(_ mode: ClientMode = .mediated) throws -> RawConnection {
        let connection = try RawConnection(daemon.socketPath)
        try connection.hello(mode)
        return connection
    }

    func testDescriptorsOnARequestAreMalformedWhateverTheirCount() throws {
        let before = try daemon.audit()
        // 1…8 fit the daemon's control buffer; 9 and more are cut by the kernel (MSG_CTRUNC).
        for count in [1, 8, 9, 20] {
            let connection = try helloed()
            let files = (0..<count).map { _ in open("/dev/null", O_RDONLY) }
            defer { files.forEach { close($0) } }
            let frame = Frame(requestID: 31, message: .ping(payload: [1, 2, 3])).encoded()
            XCTAssertEqual(try sendWithDescriptors(connection.socket.fileDescriptor, frame, files), frame.count)
            assertErrorReply(try connection.receive(), .malformedFrame, requestID: 31)
            XCTAssertTrue(try connection.isClosedByPeer(), "\(count) descriptors: closed after malformedFrame")
        }
        XCTAssertEqual(try daemon.audit(), before)
    }

    /// sendmsg with one SCM_RIGHTS message of `files.count` descriptors (the library sends at most 8).
    private func sendWithDescriptors(_ socket: Int32, _ bytes: [UInt8], _ files: [Int32]) throws -> Int {
        let dataLength = files.count * MemoryLayout<Int32>.size
        let space = (MemoryLayout<cmsghdr>.size + dataLength + 7) & ~7
        var control = [UInt8](repeating: 0, count: space)
        var bytes = bytes
        return bytes.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { control in
                var io = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &io) { io in
                    let header = control.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                    header.pointee.cmsg_len = MemoryLayout<cmsghdr>.size + dataLength
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                    let payload = control.baseAddress! + MemoryLayout<cmsghdr>.size
                    files.withUnsafeBytes { payload.copyMemory(from: $0.baseAddress!, byteCount: dataLength) }
                    var message = msghdr(
                        msg_name: nil, msg_namelen: 0, msg_iov: io, msg_iovlen: 1,
                        msg_control: control.baseAddress, msg_controllen: space, msg_flags: 0)
                    return sendmsg(socket, &message, Int32(MSG_NOSIGNAL))
                }
            }
        }
    }

    func testAnOversizedDatagramWithABadMagicIsMalformedWithIDZero() throws {
        let connection = try helloed()
        var bytes = Frame(requestID: 44, message: .stats).encoded() + [UInt8](repeating: 0, count: 100_000 - 24)
        bytes[0] = 0
        bytes[1] = 0
        bytes[2] = 0
        bytes[3] = 0
        try connection.send(bytes)
        let reply = try XCTUnwrap(try connection.receive())
        assertErrorReply(reply, .malformedFrame, requestID: 0)
        if case .error(let error) = reply.message { XCTAssertEqual(error.requestType.rawValue, 0) }
        XCTAssertTrue(try connection.isClosedByPeer())
        // With a good magic the same datagram is frameTooLarge, echoing the header.
        let second = try helloed()
        bytes.replaceSubrange(0..<4, with: Frame(requestID: 44, message: .stats).encoded()[0..<4])
        try second.send(bytes)
        assertErrorReply(try second.receive(), .frameTooLarge, requestID: 44)
    }

    func testAfterTheShutdownNoticeOnlyFreesAndGoodbyeAreServed() throws {
        let connection = try helloed()
        guard case .allocated(let handle, _) = try connection.roundTrip(.allocate(size: 64)).message else {
            return XCTFail("allocate failed")
        }
        guard case .allocated(let second, _) = try connection.roundTrip(.allocate(size: 64)).message else {
            return XCTFail("allocate failed")
        }
        daemon.server.shutdown(reason: "test shutdown")
        let notice = try XCTUnwrap(try connection.receive())
        XCTAssertEqual(notice.message, .shutdown(reason: "test shutdown"))
        XCTAssertEqual(notice.requestID, 0)
        for request: Message in [.ping(payload: [1]), .allocate(size: 16), .stats, .share(handle: handle)] {
            assertErrorReply(try connection.roundTrip(request, requestID: 50), .shuttingDown, requestID: 50)
        }
        XCTAssertEqual(try connection.roundTrip(.free(handle: handle)).message, .freed(released: true))
        XCTAssertEqual(
            try connection.roundTrip(.freeBatch(handles: [second])).message, .freedBatch(statuses: [.released]))
        XCTAssertEqual(try connection.roundTrip(.goodbye).message, .farewell)
        XCTAssertTrue(try connection.isClosedByPeer())
        daemon.stop()
    }

    func testShareAndAdoptOfAFreedBlockAreStaleHandle() throws {
        let connection = try helloed()
        guard case .allocated(let handle, _) = try connection.roundTrip(.allocate(size: 64)).message else {
            return XCTFail("allocate failed")
        }
        XCTAssertEqual(try connection.roundTrip(.free(handle: handle)).message, .freed(released: true))
        let before = try daemon.audit()
        assertErrorReply(try connection.roundTrip(.share(handle: handle)), .staleHandle)
        assertErrorReply(try connection.roundTrip(.adopt(handle: handle, token: 1)), .staleHandle)
        assertErrorReply(try connection.roundTrip(.free(handle: handle)), .doubleFree, requestID: 7)
        XCTAssertEqual(try daemon.audit(), before)
    }

    /// Every invalid golden vector sent to the daemon as one datagram gets the error the vector names (with its
    /// request id and type), or the connection closes where the vector says so (`onSeqpacket`).
    func testTheDaemonAnswersEveryInvalidVectorAsItSays() throws {
        struct Vector: Decodable {
            var name, hex, error, requestID: String
            var code, requestType: UInt16
            var appendZeros: Int?
            var onSeqpacket: String?
        }
        struct File: Decodable { var vectors: [Vector] }
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../Protocol/vectors/invalid.json")
        let vectors = try JSONDecoder().decode(File.self, from: Data(contentsOf: url)).vectors
        XCTAssertGreaterThan(vectors.count, 50)
        let before = try daemon.audit()
        for vector in vectors {
            var bytes: [UInt8] = []
            var index = vector.hex.startIndex
            while index < vector.hex.endIndex {
                let next = vector.hex.index(index, offsetBy: 2)
                bytes.append(UInt8(vector.hex[index..<next], radix: 16)!)
                index = next
            }
            bytes += [UInt8](repeating: 0, count: vector.appendZeros ?? 0)
            let connection = try helloed()
            try connection.send(bytes)
            if vector.onSeqpacket == "closes" {
                XCTAssertTrue(try connection.isClosedByPeer(), vector.name)
                continue
            }
            let reply = try connection.receive()
            guard case .error(let error)? = reply?.message else {
                XCTFail("\(vector.name): \(String(describing: reply))")
                continue
            }
            XCTAssertEqual(error.code.rawValue, vector.code, "\(vector.name): \(error.message)")
            XCTAssertEqual(reply?.requestID, UInt64(vector.requestID), vector.name)
            XCTAssertEqual(error.requestType.rawValue, vector.requestType, vector.name)
        }
        XCTAssertEqual(try daemon.audit(), before)
    }

    func testAnAdminDisconnectOfItsOwnIDIsAnsweredThenClosed() throws {
        let connection = try helloed()
        let welcome = try RawConnection(daemon.socketPath)
        let id = try welcome.hello().clientID
        let reply = try welcome.roundTrip(.admin(.disconnect, argument: id))
        guard case .adminReply(let document) = reply.message else { return XCTFail("\(reply.message)") }
        XCTAssertEqual(document.operation, .disconnect)
        let body = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(document.body)) as? [String: Any])
        XCTAssertEqual((body["disconnected"] as? [String: Any])?["id"] as? Int, Int(id), "\(body)")
        XCTAssertTrue(try welcome.isClosedByPeer(), "then closed, as after goodbye")
        XCTAssertEqual(try connection.roundTrip(.ping(payload: [2])).message, .pong(payload: [2]))
    }

    func testAZeroByteDatagramClosesTheConnectionWithoutAReply() throws {
        let connection = try helloed()
        try connection.send([])
        XCTAssertTrue(try connection.isClosedByPeer(), "SOCK_SEQPACKET reads a 0-byte datagram as end of file")
    }

    func testHandleZeroAndLeaseZeroSayWhatTheyAre() throws {
        let connection = try helloed()
        for request: Message in [.free(handle: .zero), .share(handle: .zero), .adopt(handle: .zero, token: 0)] {
            let reply = try connection.roundTrip(request)
            assertErrorReply(reply, .invalidHandle)
            if case .error(let error) = reply.message {
                XCTAssertTrue(error.message.contains("the zero handle is never a valid handle"), error.message)
                XCTAssertFalse(error.message.contains("outside"), error.message)
            }
        }
        let direct = try daemon.client(.direct)
        let allowance = try direct.stats().pageAllowance
        XCTAssertGreaterThan(allowance, 0)
        XCTAssertEqual(try direct.request(.lease(pages: 0)).message, .leased(pageAllowance: allowance))
        XCTAssertEqual(try direct.stats().pageAllowance, allowance, "lease(0) changes nothing")
        direct.close()
    }
}

/// Hello names are the client's own text: the daemon's log and `divvyctl clients` show them escaped (item 14).
final class NameEscapingTests: XCTestCase {
    func testHostileNamesAreEscapedInTheLogAndInDivvyctlClients() throws {
        let daemon = try DaemonProcessTests.Daemon()
        let hostile = "evil\n<2>critical \u{1b}[31mred\u{202E}desrever"
        let client = try DivvyClient(.init(socketPath: daemon.socketPath, name: hostile, mode: .mediated))
        defer { client.close() }
        let expected = #"evil\n<2>critical \x1b[31mred\u{202e}desrever"#

        let ctl = try ChildProcess("divvyctl", ["clients", "--socket", daemon.socketPath])
        let output = ctl.remainingOutput().joined(separator: "\n")
        XCTAssertEqual(ctl.wait().status, 0, ctl.standardError)
        XCTAssertTrue(output.contains(expected), output)
        XCTAssertFalse(output.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\u{202E}" }, output)
        XCTAssertFalse(output.split(separator: "\n").contains { $0.hasPrefix("<2>critical") }, output)

        // The "client connected" line was written before the welcome was sent.
        let log = daemon.process.standardError
        XCTAssertTrue(log.contains(expected), log)
        XCTAssertFalse(log.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\u{202E}" }, log)
        XCTAssertFalse(log.split(separator: "\n").contains { $0.hasPrefix("<2>critical") }, log)
    }
}
