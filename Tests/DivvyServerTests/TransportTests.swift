import DivvyTransport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class TransportTests: XCTestCase {
    /// Whether `fd` is open in this process (fcntl(F_GETFD) fails with EBADF once it is closed).
    private func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) != -1 }

    /// A socket owns its descriptor through the system layer: closed exactly once (a second close, or the deinit
    /// after close, would trap on EBADF), kept open when released.
    func testASocketClosesItsDescriptorOnceAndReleaseHandsItOver() throws {
        var (a, b): (SeqpacketSocket?, SeqpacketSocket?) = try SeqpacketSocket.pair()
        let first = a!.fileDescriptor
        let second = b!.fileDescriptor
        a!.close()
        XCTAssertFalse(isOpen(first), "close() closes")
        XCTAssertEqual(a!.fileDescriptor, -1)
        a!.close()  // Idempotent: no second close(2).
        a = nil  // deinit after close: no second close(2) either.
        let released = b!.releaseDescriptor()
        XCTAssertEqual(released, second)
        XCTAssertEqual(b!.releaseDescriptor(), -1, "released once")
        b = nil
        XCTAssertTrue(isOpen(second), "a released descriptor survives the socket")
        close(second)
        let (c, d) = try SeqpacketSocket.pair()
        let third = c.fileDescriptor
        withExtendedLifetime(d) {}
        _ = consume c
        XCTAssertFalse(isOpen(third), "the deinit closes")
    }

    func testTransportErrorCarriesSwiftSystemsErrno() {
        let error = TransportError(.closed, "the peer closed the connection", cause: .brokenPipe)
        XCTAssertEqual(error.errno, EPIPE)
        XCTAssertEqual(error.cause, .brokenPipe)
        XCTAssertNil(TransportError(.pathTooLong, "too long").cause)
        XCTAssertTrue(error.description.contains("(errno \(EPIPE))"), error.description)
    }

    func testPeerCredentialsIncludeSupplementaryGroups() throws {
        let (a, b) = try SeqpacketSocket.pair()
        let credentials = try b.peerCredentials()
        XCTAssertEqual(credentials.pid, getpid())
        XCTAssertEqual(credentials.uid, geteuid())
        XCTAssertEqual(credentials.gid, getegid())
        var groups = [gid_t](repeating: 0, count: 256)
        let count = getgroups(Int32(groups.count), &groups)
        XCTAssertEqual(Set(credentials.groups), Set(groups.prefix(Int(max(0, count)))))
        withExtendedLifetime(a) {}
    }

    func testDescriptorPassingAndDatagramBoundaries() throws {
        let (a, b) = try SeqpacketSocket.pair()
        let fd = open("/dev/null", O_RDONLY)
        defer { close(fd) }
        XCTAssertEqual(try a.send([1, 2, 3], descriptor: fd), .sent)
        XCTAssertEqual(try a.send([4, 5]), .sent)
        var buffer = [UInt8](repeating: 0, count: 16)
        let first = try buffer.withUnsafeMutableBytes { try b.receive(into: $0) }
        guard case .datagram(3, let passed?, false) = first else { return XCTFail("\(first)") }
        XCTAssertNotEqual(passed, fd, "a new descriptor for the same file")
        XCTAssertEqual(fcntl(passed, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "received close-on-exec")
        close(passed)
        let second = try buffer.withUnsafeMutableBytes { try b.receive(into: $0) }
        XCTAssertEqual(second, .datagram(count: 2, descriptor: nil, truncated: false))
        XCTAssertEqual(Array(buffer.prefix(2)), [4, 5])
        a.close()
        XCTAssertEqual(try buffer.withUnsafeMutableBytes { try b.receive(into: $0) }, .endOfFile)
    }

    func testReceiveRequestTellsDataTruncationFromDescriptorsAndClosesThem() throws {
        let (a, b) = try SeqpacketSocket.pair()
        var buffer = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(try a.send([UInt8](repeating: 7, count: 100)), .sent)
        XCTAssertEqual(
            try buffer.withUnsafeMutableBytes { try b.receiveRequest(into: $0) },
            .datagram(count: 8, dataTruncated: true, carriedDescriptors: false))
        let fd = open("/dev/null", O_RDONLY)
        defer { close(fd) }
        XCTAssertEqual(try a.send([1, 2], descriptors: [fd, fd, fd]), .sent)
        XCTAssertEqual(
            try buffer.withUnsafeMutableBytes { try b.receiveRequest(into: $0) },
            .datagram(count: 2, dataTruncated: false, carriedDescriptors: true))
        // The three received copies were closed: the next descriptor number is the lowest free one again.
        let probe = open("/dev/null", O_RDONLY)
        XCTAssertLessThanOrEqual(probe, fd + 1, "no received descriptor was kept")
        close(probe)
        XCTAssertEqual(try a.send([UInt8]()), .sent)
        XCTAssertEqual(
            try buffer.withUnsafeMutableBytes { try b.receiveRequest(into: $0) }, .endOfFile,
            "a 0-byte datagram reads as end of file")
    }

    func testListenRefusesALiveListenerAndReplacesAStaleSocketFile() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/s.sock"
        var listener: SeqpacketSocket? = try SeqpacketSocket.listen(path: path)
        XCTAssertThrowsError(try SeqpacketSocket.listen(path: path)) { error in
            XCTAssertEqual((error as? TransportError)?.code, .addressInUse)
        }
        listener?.close()
        listener = nil
        XCTAssertTrue(FileManager.default.fileExists(atPath: path), "a stale socket file stays behind")
        XCTAssertNoThrow(try SeqpacketSocket.listen(path: path), "a stale socket file is replaced")
        XCTAssertThrowsError(try SeqpacketSocket.listen(path: String(repeating: "x", count: 200))) { error in
            XCTAssertEqual((error as? TransportError)?.code, .pathTooLong)
        }
        FileManager.default.createFile(atPath: directory + "/file", contents: Data())
        XCTAssertThrowsError(try SeqpacketSocket.listen(path: directory + "/file")) { error in
            XCTAssertTrue("\(error)".contains("is not a socket"), "\(error)")
        }
    }
}
