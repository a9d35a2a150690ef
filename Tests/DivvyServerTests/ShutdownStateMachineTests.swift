import DivvyProtocol
import XCTest

@testable import DivvyServer

/// Graceful shutdown and request routing as values: no socket, no clock of their own (instants are passed in).
final class ShutdownStateMachineTests: XCTestCase {
    private let start = ContinuousClock.now
    private let grace = Duration.milliseconds(2000)

    func testNothingHappensUntilShutdownIsAskedFor() {
        var machine = ShutdownStateMachine()
        XCTAssertEqual(machine.poll(requested: nil, now: start, openSessions: 3, gracePeriod: grace), [])
        XCTAssertFalse(machine.isShuttingDown)
        XCTAssertNil(machine.connectionRefusal)
        XCTAssertEqual(machine.pollTimeoutMilliseconds, 250)
    }

    func testClientsGetTheGracePeriodAndTheLoopStopsWhenTheLastLeaves() {
        var machine = ShutdownStateMachine()
        XCTAssertEqual(
            machine.poll(requested: "SIGTERM", now: start, openSessions: 2, gracePeriod: grace),
            [.stopAccepting(reason: "SIGTERM")])
        XCTAssertTrue(machine.isShuttingDown)
        XCTAssertEqual(machine.connectionRefusal?.code, .shuttingDown)
        XCTAssertEqual(machine.pollTimeoutMilliseconds, 20)
        // Clients are told once; a later reason does not start a second shutdown.
        XCTAssertEqual(
            machine.poll(requested: "again", now: start + .milliseconds(500), openSessions: 1, gracePeriod: grace), [])
        XCTAssertEqual(machine.state, .draining(reason: "SIGTERM", deadline: start + grace))
        XCTAssertEqual(
            machine.poll(requested: "SIGTERM", now: start + .milliseconds(600), openSessions: 0, gracePeriod: grace),
            [.stop])
        XCTAssertEqual(machine.state, .stopped)
    }

    func testClientsStillConnectedAtTheDeadlineAreDisconnected() {
        var machine = ShutdownStateMachine()
        _ = machine.poll(requested: "bye", now: start, openSessions: 2, gracePeriod: grace)
        XCTAssertEqual(
            machine.poll(requested: "bye", now: start + grace - .milliseconds(1), openSessions: 2, gracePeriod: grace),
            [])
        XCTAssertEqual(
            machine.poll(requested: "bye", now: start + grace, openSessions: 2, gracePeriod: grace),
            [.disconnectRemaining, .stop])
    }

    func testWithNoClientsTheLoopStopsAtOnce() {
        var machine = ShutdownStateMachine()
        XCTAssertEqual(
            machine.poll(requested: "bye", now: start, openSessions: 0, gracePeriod: grace),
            [.stopAccepting(reason: "bye"), .stop])
    }

    func testDuringShutdownOnlyWhatLetsAClientLeaveIsServed() {
        var machine = SessionStateMachine(mayUseDirect: true, mayAdminister: true)
        let hello = Hello(minVersion: 2, maxVersion: 2, mode: .any, capabilities: 0, name: "t")
        XCTAssertEqual(machine.route(.hello(hello), shuttingDown: false), .hello(hello))
        XCTAssertEqual(
            machine.route(.allocate(size: 16), shuttingDown: false), .reject(.handshakeRequired, "send hello first"))
        _ = machine.hello(hello)
        XCTAssertEqual(machine.route(.allocate(size: 16), shuttingDown: false), .serve)
        let handle = WireHandle(low: 1, high: 2)
        for message in [Message.free(handle: handle), .freeBatch(handles: [handle]), .goodbye] {
            XCTAssertEqual(machine.route(message, shuttingDown: true), .serve, "\(message.type)")
        }
        let refused = [
            Message.allocate(size: 16), .adopt(handle: handle, token: 1), .lease(pages: 1), .hello(hello), .stats,
        ]
        for message in refused {
            guard case .reject(let code, _) = machine.route(message, shuttingDown: true) else {
                XCTFail("\(message.type) must be refused during shutdown")
                continue
            }
            XCTAssertEqual(code, .shuttingDown, "\(message.type)")
        }
        // The connection's own state still applies to what shutdown lets through.
        machine.close()
        XCTAssertEqual(machine.route(.goodbye, shuttingDown: true), .reject(.shuttingDown, "the connection is closing"))
    }
}
