import XCTest

@testable import DivvyServer

/// Direct participants' recovery bookkeeping as a value: owners, exit watches, retries. No socket, no heap.
final class ParticipantRecoveryTests: XCTestCase {
    func testATickRecoversOnlyDeadParticipantsNoSessionOwns() {
        var recovery = ParticipantRecovery()
        recovery.claim(3, by: 10)
        XCTAssertEqual(recovery.owner(of: 3), 10)
        XCTAssertEqual(recovery.orphans(deadParticipants: [0, 3, 5], daemonParticipant: 0), [5])
        recovery.disown(3)
        XCTAssertNil(recovery.owner(of: 3))
        XCTAssertEqual(recovery.orphans(deadParticipants: [0, 3, 5], daemonParticipant: 0), [3, 5])
    }

    func testOnlyIncompleteRecoveriesAreRetried() {
        var recovery = ParticipantRecovery()
        recovery.recovered(4, .incomplete)
        recovery.recovered(2, .incomplete)
        recovery.recovered(7, .failed)
        XCTAssertEqual(recovery.retries, [2, 4])
        recovery.recovered(4, .complete)
        XCTAssertEqual(recovery.retries, [2])
    }

    func testAnExitWatchEndsOnceAndANewWatchReplacesTheOld() {
        var recovery = ParticipantRecovery()
        let (token, replaced) = recovery.watch(6, pid: 100, descriptor: 40)
        XCTAssertNil(replaced)
        XCTAssertEqual(token, ParticipantRecovery.exitWatchBase + 6)
        XCTAssertTrue(ParticipantRecovery.isExitWatch(token))
        XCTAssertFalse(ParticipantRecovery.isExitWatch(UInt64(UInt32.max)), "client ids are never exit watches")
        let second = recovery.watch(6, pid: 101, descriptor: 41)
        XCTAssertEqual(second.token, token)
        XCTAssertEqual(second.replaced, .init(participant: 6, pid: 100, descriptor: 40), "its pidfd must be closed")
        XCTAssertEqual(recovery.endWatch(token), .init(participant: 6, pid: 101, descriptor: 41))
        XCTAssertNil(recovery.endWatch(token), "a watch ends once")
        XCTAssertTrue(recovery.watches.isEmpty)
    }
}
