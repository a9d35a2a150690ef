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

/// `divvyd --set commit=lazy` with a data area far larger than what it commits: the real executable starts, serves
/// mediated and direct clients (whose page claims commit the pages they get), and has committed little.
final class LazyDaemonTests: XCTestCase {
    func testALazyDaemonWithA1TiBDataAreaServesAndCommitsLittle() throws {
        let name = "test-lazy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // (--set overrides the small --data-size and --page-size the test daemon is given.)
        let daemon = try DaemonProcessTests.Daemon(
            ["--region-name", name, "--set", "data-size=1T", "--set", "page-size=64K", "--set", "commit=lazy"])
        let object = "/dev/shm/divvy-\(name)"
        func committed() throws -> Int {
            var info = stat()
            guard stat(object, &info) == 0 else { throw NSError(domain: "stat \(object) failed", code: Int(errno)) }
            return Int(info.st_blocks) * 512
        }
        // The daemon's heap configuration by default: 1,024 slots, slot 0 (its own) with 65,536 held entries.
        var configuration = SharedHeapConfiguration(pageSize: 64 << 10, participantCapacity: 1024, heldCapacity: 4096)
        configuration.firstSlotHeldCapacity = 65536
        let metadata = SharedHeap.requiredMetadataSize(dataSize: 1 << 40, configuration: configuration)
        let initial = SharedHeap.initialMetadataSize(dataSize: 1 << 40, configuration: configuration)
        XCTAssertGreaterThan(metadata, 256 << 30, "the layout reserves hundreds of GiB of metadata for 1 TiB")
        // A few OS pages at creation, whatever the data size, besides the participant records (128 bytes a slot).
        XCTAssertLessThanOrEqual(initial, (32 << 10) + 1024 * 128, "initial metadata of a lazy heap")
        let atStart = try committed()
        // The header, tables, first page descriptors and bitmap words, and the daemon participant's held list
        // (1 MiB: 16 bytes an entry): little more than a MiB (it was 54 MiB with the page pool and every
        // descriptor committed at start).
        XCTAssertLessThanOrEqual(atStart, initial + 4096 + 65536 * 16 + 4096, "committed at start")

        for mode in [ClientMode.mediated, .direct] {
            let client = try DivvyClient(.init(socketPath: daemon.socketPath, name: "lazy-\(mode)", mode: mode))
            var handles: [SharedHandle] = []
            for size in [64, 4096, 100_000] {
                let (handle, blockSize) = try client.allocateHandle(size)
                let pointer = try client.pointer(for: handle)
                pointer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: blockSize)
                XCTAssertEqual(pointer.load(fromByteOffset: blockSize - 1, as: UInt8.self), 0x5A)
                handles.append(handle)
                // The span tier is the data area's last quarter: a 100,000-byte block lies beyond 64 GiB, where a
                // 64-bit handle (offset / 16 in 32 bits) could not name it.
                if size == 100_000 { XCTAssertGreaterThan(handle.dataOffset, 64 << 30, "\(handle)") }
            }
            for handle in handles { try client.free(handle) }
            client.close()
        }
        let afterUse = try committed()
        XCTAssertGreaterThan(afterUse, atStart, "claimed pages committed their metadata")
        XCTAssertLessThan(afterUse, atStart + (16 << 20), "a few pages' metadata more, no more")
        let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
        XCTAssertEqual(verify["clean"] as? Bool, true, "\(verify)")
        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20)?.status, 0, daemon.process.standardError)
    }
}
