import DivvyClient
import DivvyServer
import Foundation
import Logging
import XCTest

/// `DivvyServerService`: the event loop as a swift-service-lifecycle `Service`.
final class ServerServiceTests: XCTestCase {
    func testCancellingTheServicesTaskShutsTheLoopDownGracefully() async throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = TestDaemon.configuration(in: directory)
        let server = try DivvyServer(
            configuration: configuration, logger: Logger(label: "divvyd-test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let task = Task { try await DivvyServerService(server: server).run() }
        let client = try DivvyClient(.init(socketPath: configuration.socketPath, name: "held", mode: .mediated))
        defer { client.close() }
        _ = try client.allocateHandle(64)

        task.cancel()
        // The loop starts its graceful shutdown (calls other than free and goodbye are refused with `shuttingDown`)
        // and, after the grace period, stops: then a call fails as "daemon gone".
        let deadline = Date().addingTimeInterval(20)
        var gone = false
        while !gone, Date() < deadline {
            do {
                try client.ping()
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                switch (error as? DivvyClientError)?.code {
                case .refused(.shuttingDown): break  // Told of the shutdown; gone after the grace period.
                case .daemonGone: gone = true
                default: XCTFail("\(error)")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        XCTAssertTrue(gone, "cancelling the service's task must stop the loop")
        if !gone { server.shutdown(reason: "test cleanup") }
        try await task.value  // Returns: the loop ended without an error.
        XCTAssertFalse(FileManager.default.fileExists(atPath: configuration.socketPath), "the socket file is removed")
        XCTAssertEqual(server.heap.verify().allocatedBlocks, 0, "the client's block was reclaimed")
    }
}
