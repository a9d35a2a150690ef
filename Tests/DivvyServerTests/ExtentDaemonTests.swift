import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// MiB-scale blocks from a default-configured `divvyd` (only the data size raised, lazily committed so the test
/// commits what it uses): the heap's extent area (a quarter of the data area) serves them to mediated and direct
/// clients; `unsupportedSize` only above the extent area; the large-block quota counts them.
final class ExtentDaemonTests: XCTestCase {
    func testMediatedAndDirectClientsGetMiBBlocksFromTheDefaultConfiguration() throws {
        let name = "test-extent-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // (--set overrides the small --data-size and --page-size the test daemon is given.)
        let daemon = try DaemonProcessTests.Daemon(
            ["--region-name", name, "--set", "data-size=1G", "--set", "page-size=64K", "--set", "commit=lazy"])
        for mode in [ClientMode.mediated, .direct] {
            let client = try DivvyClient(.init(socketPath: daemon.socketPath, name: "extent-\(mode)", mode: mode))
            var handles: [SharedHandle] = []
            for size in [8 << 20, 64 << 20, (1 << 20) + 1] {
                let (handle, blockSize) = try client.allocateHandle(size)
                XCTAssertEqual(blockSize, (size + 65535) / 65536 * 65536, "\(mode) \(size): whole 64 KiB units")
                let pointer = try client.pointer(for: handle)
                pointer.storeBytes(of: 0x11, as: UInt8.self)
                pointer.storeBytes(of: 0x22, toByteOffset: blockSize - 1, as: UInt8.self)
                XCTAssertEqual(pointer.load(as: UInt8.self), 0x11)
                XCTAssertEqual(pointer.load(fromByteOffset: blockSize - 1, as: UInt8.self), 0x22)
                handles.append(handle)
            }
            // The extent area is 256 MiB: above it, unsupportedSize; 200 MiB fits it, but a mediated client's
            // default large-quota (a quarter of the span tier and extent area: 128 MiB) refuses it, while a
            // direct client's page allowance (its quota, a quarter of the data area: 256 MiB) lets it through.
            assertClientError(.unsupportedSize) { try client.allocateHandle((256 << 20) + 1) }
            for handle in handles { try client.free(handle) }
            if mode == .mediated {
                assertClientError(.quotaExceeded) { try client.allocateHandle(200 << 20) }
            } else {
                let (big, blockSize) = try client.allocateHandle(200 << 20)
                XCTAssertEqual(blockSize, 200 << 20)
                try client.free(big)
            }
            client.close()
        }
        // Three mediated clients of 100 MiB each (within each one's large-quota) do not fit the 256 MiB area: the third
        // is told the extent area is full, and how much it has free.
        let clients = try (0..<3).map {
            try DivvyClient(.init(socketPath: daemon.socketPath, name: "fill-\($0)", mode: .mediated))
        }
        let first = try clients[0].allocateHandle(100 << 20).handle
        let second = try clients[1].allocateHandle(100 << 20).handle
        do {
            _ = try clients[2].allocateHandle(100 << 20)
            XCTFail("a third 100 MiB extent fit a 256 MiB extent area")
        } catch {
            XCTAssertEqual(error.protocolCode, .heapFull, "\(error)")
            XCTAssertTrue(error.message.contains("extent area"), error.message)
            XCTAssertTrue(error.message.contains("longest free run 896 units"), error.message)
        }
        try clients[0].free(first)
        try clients[1].free(second)
        for client in clients { client.close() }
        let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20)?.status, 0, daemon.process.standardError)
    }

    /// `extent-percent`: a larger extent area serves a block of most of the data area (here 40 MiB of 64 MiB to a
    /// direct client), which the default quarter refuses as `unsupportedSize`; out-of-range values are refused at
    /// start, naming the key.
    func testExtentPercentServesBlocksUpToMostOfTheDataArea() throws {
        for (percent, served) in [(25, false), (70, true)] {
            let name = "test-extent-pct-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let daemon = try DaemonProcessTests.Daemon(
                ["--region-name", name, "--set", "data-size=64M", "--set", "page-size=64K", "--set", "commit=lazy",
                 "--set", "quota=64M", "--set", "extent-percent=\(percent)"])
            let client = try DivvyClient(.init(socketPath: daemon.socketPath, name: "big", mode: .direct))
            if served {
                let (handle, blockSize) = try client.allocateHandle(40 << 20)
                XCTAssertEqual(blockSize, 40 << 20)
                let pointer = try client.pointer(for: handle)
                pointer.storeBytes(of: 0x5A, toByteOffset: blockSize - 1, as: UInt8.self)
                XCTAssertEqual(pointer.load(fromByteOffset: blockSize - 1, as: UInt8.self), 0x5A)
                try client.free(handle)
            } else {
                assertClientError(.unsupportedSize) { try client.allocateHandle(40 << 20) }
            }
            client.close()
            daemon.process.signal(SIGTERM)
            XCTAssertEqual(daemon.process.wait(timeout: 20)?.status, 0, daemon.process.standardError)
        }
        var configuration = ServerConfiguration()
        for bad in ["71", "-1"] {
            XCTAssertThrowsError(try { try configuration.set("extent-percent", bad); try configuration.validate() }()) {
                XCTAssertTrue("\($0)".contains("extent-percent"), "\($0)")
            }
            configuration = ServerConfiguration()
        }
    }
}
