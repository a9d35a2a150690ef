import DivvyProtocol
import DivvyServer
import XCTest

/// The connection-level decisions as pure values: slots, per-uid limits, admin reserve, handshake deadlines, the
/// log rate limit, display escaping and what is served during shutdown.
final class ConnectionAdmissionTests: XCTestCase {
    private func refusal(_ decision: ConnectionAdmission.Decision) -> (ErrorCode, String)? {
        if case .refuse(let code, let message) = decision { return (code, message) }
        return nil
    }

    func testOrdinaryPeersShareMaxClientsAndAdminsKeepReservedSlots() {
        var admission = ConnectionAdmission(.init(maxClients: 3, reservedAdminConnections: 2, maxConnectionsPerUID: 0))
        for uid: UInt32 in [100, 101, 102] {
            XCTAssertEqual(admission.decide(uid: uid, isAdmin: false), .admit)
            admission.opened(uid: uid)
        }
        let full = refusal(admission.decide(uid: 103, isAdmin: false))
        XCTAssertEqual(full?.0, .tooManyClients)
        XCTAssertTrue(full?.1.contains("max-clients") ?? false, "\(String(describing: full))")
        // Admins get the reserved slots, and no more.
        for _ in 0..<2 {
            XCTAssertEqual(admission.decide(uid: 0, isAdmin: true), .admit)
            admission.opened(uid: 0)
        }
        let adminFull = refusal(admission.decide(uid: 0, isAdmin: true))
        XCTAssertEqual(adminFull?.0, .tooManyClients)
        XCTAssertTrue(adminFull?.1.contains("reserved-admin-connections") ?? false)
        // A slot given back is a slot to take.
        admission.closed(uid: 101)
        XCTAssertEqual(admission.total, 4)
        XCTAssertNil(admission.perUID[101])
        XCTAssertEqual(admission.perUID[0], 2)
        XCTAssertEqual(admission.decide(uid: 0, isAdmin: true), .admit)
        XCTAssertNotNil(refusal(admission.decide(uid: 103, isAdmin: false)), "admins still hold ordinary slots")
    }

    func testThePerUIDLimitNamesItsSettingAndExemptsAdmins() {
        var admission = ConnectionAdmission(.init(maxClients: 10, reservedAdminConnections: 0, maxConnectionsPerUID: 2))
        admission.opened(uid: 500)
        admission.opened(uid: 500)
        let refused = refusal(admission.decide(uid: 500, isAdmin: false))
        XCTAssertEqual(refused?.0, .tooManyClients)
        XCTAssertTrue(refused?.1.contains("max-connections-per-uid (2)") ?? false, "\(String(describing: refused))")
        XCTAssertEqual(admission.decide(uid: 501, isAdmin: false), .admit, "another uid is not affected")
        XCTAssertEqual(admission.decide(uid: 500, isAdmin: true), .admit, "admins are exempt")
        let unlimited = ConnectionAdmission(.init(maxClients: 10, reservedAdminConnections: 0, maxConnectionsPerUID: 0))
        XCTAssertEqual(unlimited.decide(uid: 500, isAdmin: false), .admit)
    }

    func testTheConfigurationCarriesTheNewLimits() throws {
        var configuration = ServerConfiguration()
        XCTAssertEqual(configuration.handshakeTimeoutMilliseconds, 5000)
        XCTAssertEqual(configuration.reservedAdminConnections, 4)
        XCTAssertEqual(configuration.effectiveMaxConnectionsPerUID, 256, "a quarter of max-clients by default")
        try configuration.apply(
            configText: "handshake-timeout-ms = 250\nreserved-admin-connections = 1\nmax-connections-per-uid = 0\n")
        XCTAssertEqual(configuration.handshakeTimeoutMilliseconds, 250)
        XCTAssertEqual(configuration.reservedAdminConnections, 1)
        XCTAssertEqual(configuration.effectiveMaxConnectionsPerUID, 0)
        var again = ServerConfiguration()
        try again.apply(configText: configuration.render().map { "\($0.key) = \($0.value)" }.joined(separator: "\n"))
        XCTAssertEqual(again, configuration, "render() reads back")
        configuration.handshakeTimeoutMilliseconds = 0
        XCTAssertThrowsError(try configuration.validate()) { error in
            XCTAssertTrue("\(error)".contains("handshake-timeout-ms"), "\(error)")
        }
    }

    func testHandshakeDeadlinesExpireInOrder() {
        var deadlines = HandshakeDeadlines()
        let start = ContinuousClock.now
        for id: UInt32 in 1...200 { deadlines.add(id, deadline: start + .milliseconds(Int(id))) }
        XCTAssertEqual(deadlines.expired(at: start), [])
        XCTAssertEqual(deadlines.expired(at: start + .milliseconds(3)), [1, 2, 3])
        XCTAssertEqual(deadlines.expired(at: start + .milliseconds(150)).count, 147)
        deadlines.add(201, deadline: start + .milliseconds(300))
        XCTAssertEqual(deadlines.count, 51)
        XCTAssertEqual(deadlines.expired(at: start + .seconds(1)), Array(151...201))
        XCTAssertEqual(deadlines.count, 0)
    }

    func testBurstLogLimiterWritesOneLinePerBurstWithACount() {
        var limiter = BurstLogLimiter(interval: .seconds(10))
        let start = ContinuousClock.now
        XCTAssertTrue(limiter.failure(at: start), "the first failure is logged")
        for step in 1...10_000 { XCTAssertFalse(limiter.failure(at: start + .microseconds(step))) }
        XCTAssertNil(limiter.summary(at: start + .seconds(1)), "not before the interval")
        XCTAssertEqual(limiter.summary(at: start + .seconds(10)), 10_000)
        XCTAssertNil(limiter.summary(at: start + .seconds(30)), "reported once")
        XCTAssertTrue(limiter.failure(at: start + .seconds(30)), "a new burst is logged at once")
    }

    func testDisplayTextEscapesEverythingThatChangesHowOutputReads() {
        XCTAssertEqual(DisplayText.escaped("worker-1 ünïcode ✓"), "worker-1 ünïcode ✓")
        XCTAssertEqual(DisplayText.escaped("x\n<2>critical"), #"x\n<2>critical"#)
        XCTAssertEqual(DisplayText.escaped("\u{1b}[31mred"), #"\x1b[31mred"#)
        XCTAssertEqual(DisplayText.escaped("abc\u{202E}fed"), #"abc\u{202e}fed"#)
        XCTAssertEqual(DisplayText.escaped("a\u{0}b\u{7F}\u{85}\r\t\\"), #"a\x00b\x7f\x85\r\t\\"#)
        XCTAssertEqual(DisplayText.escaped("\u{2066}\u{200F}\u{FEFF}"), #"\u{2066}\u{200f}\u{feff}"#)
        XCTAssertEqual(DisplayText.escaped(#"say "hi""#, quoting: true), #"say \"hi\""#)
        for name in ["\n<2>critical", "\u{1b}[31m", "\u{202E}", "\u{2028}"] {
            let escaped = DisplayText.escaped(name)
            XCTAssertFalse(escaped.unicodeScalars.contains { $0.properties.generalCategory == .control }, escaped)
            XCTAssertFalse(escaped.unicodeScalars.contains { $0.properties.generalCategory == .format }, escaped)
            XCTAssertFalse(escaped.unicodeScalars.contains { $0.properties.generalCategory == .lineSeparator })
        }
    }

    func testAfterShutdownOnlyFreesAndGoodbyeAreServed() {
        for message: Message in [.goodbye, .free(handle: WireHandle(low: 5, high: 1 << 32)), .freeBatch(handles: [WireHandle(low: 5, high: 1 << 32)])] {
            XCTAssertEqual(SessionStateMachine.duringShutdown(message), .handle, "\(message)")
        }
        for message: Message in [
            .allocate(size: 8), .ping(payload: []), .stats, .mapRegion, .share(handle: WireHandle(low: 5, high: 1 << 32)),
            .adopt(handle: WireHandle(low: 5, high: 1 << 32), token: 1),
            .lease(pages: 1), .admin(.status, argument: 0),
            .hello(Hello(minVersion: 2, maxVersion: 2, mode: .any, capabilities: 0, name: "late")),
        ] {
            guard case .reject(let code, let text) = SessionStateMachine.duringShutdown(message) else {
                XCTFail("\(message) must be refused during shutdown")
                continue
            }
            XCTAssertEqual(code, .shuttingDown)
            XCTAssertTrue(text.contains("goodbye"), text)
        }
    }
}
