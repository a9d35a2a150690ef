import DivvyProtocol
import XCTest

@testable import DivvyServer

/// The quota and a direct client's page lease as values: no socket, no heap. A refused step changes nothing, and
/// an allowance changes only once the heap has taken it (`applied`).
final class DirectLeaseTests: XCTestCase {
    /// 64 KiB per client, 4 KiB pages: 16 pages.
    private let quota = ClientQuota(quotaBytes: 64 << 10, pageSize: 4096)

    func testTheInitialLeaseIsCappedByTheQuotaAndIsAtLeastOnePage() {
        XCTAssertEqual(quota.initialLease(initialLeasePages: 4), 4)
        XCTAssertEqual(quota.initialLease(initialLeasePages: 100), 16)
        XCTAssertEqual(ClientQuota(quotaBytes: 100, pageSize: 4096).initialLease(initialLeasePages: 4), 1)
    }

    func testALeaseGrantsWhatTheQuotaLeavesAndRefusesWhenNothingIsLeft() {
        XCTAssertEqual(quota.lease(client: 1, more: 0, allowance: 16, bytesHeld: 0), .unchanged, "no pages asked")
        XCTAssertEqual(quota.lease(client: 1, more: 4, allowance: 4, bytesHeld: 0), .raise(to: 8))
        // 20 KiB held leaves 11 whole pages under the quota: a partial grant.
        XCTAssertEqual(quota.lease(client: 1, more: 10, allowance: 4, bytesHeld: 20 << 10), .raise(to: 11))
        guard case .refuse(let refusal) = quota.lease(client: 9, more: 1, allowance: 16, bytesHeld: 0) else {
            return XCTFail("a full lease must be refused")
        }
        XCTAssertTrue(refusal.message.contains("client 9 has leased 16 pages"), refusal.message)
    }

    func testReturnedPagesNeverGoBelowTheOwnedOnes() {
        XCTAssertEqual(ClientQuota.afterReturning(3, allowance: 10, ownedPages: 2), 7)
        XCTAssertEqual(ClientQuota.afterReturning(9, allowance: 10, ownedPages: 4), 4)
    }

    func testLeaseRequestsBeforeJoinAreRefusedAndChangeNothing() {
        let lease = DirectLease()
        XCTAssertEqual(
            lease.lease(more: 2, client: 1, bytesHeld: 0, quota: quota),
            .refuse(ServiceError(.invalidParticipant, "join the heap (join) before leasing pages")))
        XCTAssertEqual(
            lease.returnPages(1) { _ in XCTFail("no participant to read"); return 0 },
            .refuse(ServiceError(.invalidParticipant, "join the heap (join) before leasing pages")))
        XCTAssertEqual(lease, DirectLease())
    }

    func testJoinSetsTheInitialAllowanceOnceTheHeapHasIt() {
        var lease = DirectLease()
        guard case .refuse(let notLive) = lease.join(3, joinable: false, pid: 42, quota: quota, initialLeasePages: 4)
        else { return XCTFail("a participant that is not the client's must be refused") }
        XCTAssertEqual(notLive.code, .invalidParticipant)
        XCTAssertTrue(notLive.message.contains("participant 3 is not a live participant joined by pid 42"))
        let step = lease.join(3, joinable: true, pid: 42, quota: quota, initialLeasePages: 4)
        XCTAssertEqual(step, .setAllowance(participant: 3, pages: 4))
        XCTAssertNil(lease.participant, "not joined until the heap took the allowance")
        lease.applied(step)
        XCTAssertEqual(lease.participant, 3)
        XCTAssertEqual(lease.pageAllowance, 4)
        guard case .refuse(let again) = lease.join(5, joinable: true, pid: 42, quota: quota, initialLeasePages: 4)
        else { return XCTFail("a second join must be refused") }
        XCTAssertEqual(again, ServiceError(.invalidParticipant, "this connection already joined as participant 3"))
    }

    func testLeaseAndReturnChangeTheAllowanceOnlyWhenApplied() {
        var lease = DirectLease()
        lease.applied(lease.join(3, joinable: true, pid: 42, quota: quota, initialLeasePages: 4))
        let more = lease.lease(more: 4, client: 1, bytesHeld: 0, quota: quota)
        XCTAssertEqual(more, .setAllowance(participant: 3, pages: 8))
        XCTAssertEqual(lease.pageAllowance, 4, "a heap write that fails leaves the lease as it was")
        lease.applied(more)
        XCTAssertEqual(lease.pageAllowance, 8)
        XCTAssertEqual(lease.lease(more: 0, client: 1, bytesHeld: 0, quota: quota), .unchanged(pageAllowance: 8))
        let back = lease.returnPages(6) { participant in
            XCTAssertEqual(participant, 3)
            return 5
        }
        XCTAssertEqual(back, .setAllowance(participant: 3, pages: 5), "5 pages are owned")
        lease.applied(back)
        XCTAssertEqual(lease.pageAllowance, 5)
        guard case .refuse(let full) = lease.lease(more: 1, client: 1, bytesHeld: 44 << 10, quota: quota) else {
            return XCTFail("held bytes and leased pages share the quota")
        }
        XCTAssertEqual(full.code, .quotaExceeded)
        XCTAssertEqual(lease.pageAllowance, 5)
        lease.forgetParticipant()
        XCTAssertNil(lease.participant)
    }
}
