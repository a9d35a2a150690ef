import DivvyClient
import DivvyProtocol
import DivvyServer
import Foundation
import XCTest

/// `DivvyServer.reload(_:)` in-process: the loop applies a new configuration to the connections made after it, and
/// leaves the open ones alone.
final class ReloadServerTests: XCTestCase {
    func testAReloadedPolicyAndConnectionLimitDecideNewConnectionsAndCloseNone() throws {
        let daemon = try TestDaemon { $0.reservedAdminConnections = 0 }
        let running = try daemon.client(.mediated, name: "running")
        defer { running.close() }

        // Nobody may connect any more (not even as admin); the open connection keeps being served.
        var locked = TestDaemon.configuration(in: daemon.directory)
        locked.reservedAdminConnections = 0
        locked.policy = AccessPolicy(allowedUIDs: [])
        daemon.server.reload(locked)
        assertClientError(.notAuthorized) { try daemon.client(.mediated, name: "refused") }
        try running.ping()

        // Admitted again, but only one connection at a time: the open one fills it.
        var one = locked
        one.policy = AccessPolicy()
        one.maxClients = 1
        daemon.server.reload(one)
        assertClientError(.tooManyClients) { try daemon.client(.mediated, name: "full") }
        try running.ping()

        // Two: the next connection gets in, with the reloaded quota.
        var two = one
        two.maxClients = 2
        two.quotaBytes = 64 << 10
        daemon.server.reload(two)
        let second = try daemon.client(.mediated, name: "second")
        defer { second.close() }
        XCTAssertEqual(second.quotaBytes, 64 << 10)
        try running.ping()
    }

    func testAReloadThatDoesNotValidateChangesNothing() throws {
        let daemon = try TestDaemon { $0.quotaBytes = 1 << 20 }
        var broken = TestDaemon.configuration(in: daemon.directory)
        broken.quotaBytes = 64 << 10
        broken.maxClients = 0
        daemon.server.reload(broken)
        let client = try daemon.client(.mediated, name: "after")
        defer { client.close() }
        XCTAssertEqual(client.quotaBytes, 1 << 20, "the running quota is kept")
    }
}
