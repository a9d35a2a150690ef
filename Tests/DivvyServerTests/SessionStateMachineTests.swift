import DivvyProtocol
import DivvyServer
import DivvyTransport
import XCTest

final class SessionStateMachineTests: XCTestCase {
    private func hello(_ mode: ClientMode, _ versions: ClosedRange<UInt16> = 2...2) -> Hello {
        Hello(minVersion: versions.lowerBound, maxVersion: versions.upperBound, mode: mode, capabilities: 0, name: "t")
    }

    func testOnlyHelloIsAdmittedBeforeTheHandshake() {
        let machine = SessionStateMachine(mayUseDirect: true, mayAdminister: true)
        XCTAssertEqual(machine.admit(.hello(hello(.any))), .handle)
        for message: Message in [.allocate(size: 8), .free(handle: WireHandle(low: 1, high: 1 << 32)), .stats, .ping(payload: []), .mapRegion] {
            guard case .reject(.handshakeRequired, _) = machine.admit(message) else {
                return XCTFail("\(message) before hello must be refused with handshakeRequired")
            }
        }
    }

    func testModeNegotiation() {
        var trusted = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        XCTAssertEqual(trusted.hello(hello(.any)), .welcome(version: 2, mode: .direct))
        var mediatedByChoice = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        XCTAssertEqual(mediatedByChoice.hello(hello(.mediated)), .welcome(version: 2, mode: .mediated))
        var untrusted = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        XCTAssertEqual(untrusted.hello(hello(.any)), .welcome(version: 2, mode: .mediated))
        var demanding = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        guard case .reject(.wrongMode, _) = demanding.hello(hello(.direct)) else {
            return XCTFail("direct without the right must be refused")
        }
        // A refused mode leaves the handshake open: the client may retry as mediated.
        XCTAssertEqual(demanding.hello(hello(.mediated)), .welcome(version: 2, mode: .mediated))
    }

    /// No participant slot for one more direct client: `any` falls back to mediated; `direct` is refused with
    /// `directUnavailable` and the handshake stays open (retry as mediated); `mediated` is unaffected.
    func testModeNegotiationWhenTheDirectSideIsFull() {
        var flexible = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        XCTAssertEqual(flexible.hello(hello(.any), directSlotAvailable: false), .welcome(version: 2, mode: .mediated))
        var demanding = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        guard case .reject(.directUnavailable, let text) = demanding.hello(hello(.direct), directSlotAvailable: false)
        else {
            return XCTFail("direct with the right but no slot must be refused with directUnavailable")
        }
        XCTAssertTrue(text.contains("mediated") && text.contains("participant-capacity"), text)
        XCTAssertEqual(demanding.state, .awaitingHello, "nothing changed: the client may say hello again")
        XCTAssertFalse(ErrorCode.directUnavailable.closesConnection)
        XCTAssertEqual(demanding.hello(hello(.any), directSlotAvailable: false), .welcome(version: 2, mode: .mediated))
        var mediated = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        XCTAssertEqual(
            mediated.hello(hello(.mediated), directSlotAvailable: false), .welcome(version: 2, mode: .mediated))
        // Without the right, the policy's refusal comes first.
        var untrusted = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        guard case .reject(.wrongMode, _) = untrusted.hello(hello(.direct), directSlotAvailable: false) else {
            return XCTFail("direct without the right is wrongMode, whatever the slots")
        }
    }

    func testVersionNegotiationPicksTheHighestCommonVersionOrRefuses() {
        var wide = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        XCTAssertEqual(wide.hello(hello(.any, 1...9)), .welcome(version: 2, mode: .mediated))
        var future = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        guard case .reject(.unsupportedVersion, _) = future.hello(hello(.any, 3...9)) else {
            return XCTFail("no common version must be refused")
        }
        XCTAssertEqual(future.state, .closed)
        // This daemon speaks version 2 only: a version-1 client (64-bit handles) is refused at hello.
        var old = SessionStateMachine(mayUseDirect: true, mayAdminister: false)
        guard case .reject(.unsupportedVersion, let text) = old.hello(hello(.any, 1...1)) else {
            return XCTFail("a version-1-only client must be refused")
        }
        XCTAssertTrue(text.contains("2…2"), text)
        XCTAssertEqual(old.state, .closed)
        var backwards = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        guard case .reject(.unsupportedVersion, _) = backwards.hello(hello(.any, 1...1).with(min: 3, max: 1)) else {
            return XCTFail("an empty version range must be refused")
        }
    }

    func testSecondHelloAndModeSpecificRequests() {
        var mediated = SessionStateMachine(mayUseDirect: false, mayAdminister: false)
        _ = mediated.hello(hello(.any))
        guard case .reject(.handshakeRequired, _) = mediated.hello(hello(.any)) else {
            return XCTFail("a second hello must be refused")
        }
        for message: Message in [.join(participant: 1), .lease(pages: 1), .returnPages(pages: 1)] {
            guard case .reject(.wrongMode, _) = mediated.admit(message) else {
                return XCTFail("\(message) is for direct clients only")
            }
        }
        guard case .reject(.adminRequired, _) = mediated.admit(.admin(.status, argument: 0)) else {
            return XCTFail("admin needs the admin right")
        }
        guard case .reject(.unknownMessageType, _) = mediated.admit(.pong(payload: [])) else {
            return XCTFail("a reply type is not a request")
        }
        XCTAssertEqual(mediated.admit(.allocate(size: 16)), .handle)
        var direct = SessionStateMachine(mayUseDirect: true, mayAdminister: true)
        _ = direct.hello(hello(.direct))
        XCTAssertEqual(direct.admit(.lease(pages: 2)), .handle)
        XCTAssertEqual(direct.admit(.admin(.verify, argument: 0)), .handle)
        direct.close()
        guard case .reject(.shuttingDown, _) = direct.admit(.stats) else { return XCTFail("closed refuses all") }
    }
}

extension Hello {
    fileprivate func with(min: UInt16, max: UInt16) -> Hello {
        var copy = self
        copy.minVersion = min
        copy.maxVersion = max
        return copy
    }
}

final class ServerConfigurationTests: XCTestCase {
    func testConfigFileRoundTripsThroughRender() throws {
        var configuration = ServerConfiguration()
        try configuration.apply(configText: """
            # a comment
            socket = /tmp/x.sock
            data-size = 1G        # trailing comment
            page-size = 128K
            quota = 64M
            region-name = cache
            huge-pages = none
            commit = lazy
            allow-uids = 1000, 1001
            direct-gids = 50
            admin-uids = self
            max-clients = 300
            """)
        XCTAssertEqual(configuration.socketPath, "/tmp/x.sock")
        XCTAssertEqual(configuration.dataSize, 1 << 30)
        XCTAssertEqual(configuration.pageSize, 128 << 10)
        XCTAssertEqual(configuration.effectiveQuotaBytes, 64 << 20)
        XCTAssertEqual(configuration.regionName, "cache")
        XCTAssertEqual(configuration.policy.allowedUIDs, [1000, 1001])
        XCTAssertEqual(configuration.policy.directGIDs, [50])
        XCTAssertEqual(configuration.policy.adminUIDs, [getuid()])
        XCTAssertEqual(configuration.maxClients, 300)
        var reread = ServerConfiguration()
        try reread.apply(configText: configuration.render().map { "\($0.key) = \($0.value)" }.joined(separator: "\n"))
        XCTAssertEqual(reread, configuration)
    }

    func testBadConfigNamesTheLineAndTheProblem() {
        var configuration = ServerConfiguration()
        for (text, fragment) in [
            ("data-size = lots", "line 1: data-size"), ("\n\nbogus = 1", "line 3: unknown setting 'bogus'"),
            ("quota", "expected 'key = value'"), ("huge-pages = maybe", "huge-pages must be"),
            ("allow-uids = alice", "numeric ids"),
        ] {
            XCTAssertThrowsError(try configuration.apply(configText: text)) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(error) should mention \(fragment)")
            }
        }
        configuration = ServerConfiguration()
        configuration.pageSize = 3000
        XCTAssertThrowsError(try configuration.validate())
        XCTAssertEqual(ServerConfiguration().effectiveQuotaBytes, (256 << 20) / 4, "quota defaults to a quarter")
    }

    func testPolicyMatchesUidsAndGidsWithoutSpecialCases() {
        let policy = AccessPolicy(allowedUIDs: [1000], allowedGIDs: [50], directUIDs: [1000], adminGIDs: [10])
        XCTAssertTrue(policy.admits(PeerCredentials(pid: 1, uid: 1000, gid: 1)))
        XCTAssertTrue(policy.admits(PeerCredentials(pid: 1, uid: 7, gid: 50)))
        XCTAssertFalse(policy.admits(PeerCredentials(pid: 1, uid: 0, gid: 0)), "root is not special-cased")
        XCTAssertTrue(policy.allowsDirect(PeerCredentials(pid: 1, uid: 1000, gid: 1)))
        XCTAssertFalse(policy.allowsDirect(PeerCredentials(pid: 1, uid: 7, gid: 50)))
        // admin-gids (or admin-uids) alone admits: an operator names admins without repeating them in allow-*.
        XCTAssertTrue(policy.allowsAdmin(PeerCredentials(pid: 1, uid: 7, gid: 10)))
        XCTAssertTrue(policy.admits(PeerCredentials(pid: 1, uid: 7, gid: 10)), "an admin rule admits")
        XCTAssertFalse(policy.allowsDirect(PeerCredentials(pid: 1, uid: 7, gid: 10)))
        XCTAssertTrue(AccessPolicy().admits(PeerCredentials(pid: 1, uid: getuid(), gid: 12345)))
        // Supplementary groups count for gid rules.
        XCTAssertTrue(policy.admits(PeerCredentials(pid: 1, uid: 7, gid: 1, groups: [3, 50])))
        XCTAssertFalse(policy.admits(PeerCredentials(pid: 1, uid: 7, gid: 1, groups: [3, 4])))
    }
}
