import DivvyProtocol
import DivvyShm
import XCTest

@testable import DivvyServer

/// The mediated ledger's rules as values: no socket, no heap. Every refusal leaves the ledger and the account as
/// they were; the heap's step is asked for, and the ledger changes only once it is reported done.
final class MediatedLedgerTests: XCTestCase {
    /// 4 blocks per client; blocks over 8 KiB are large, 64 KiB of them per client.
    private let ledger0 = MediatedLedger(
        fairShare: FairShare(
            maxBlocksPerClient: 4, heldCapacity: 64, largestSmallBlock: 8192, largeQuotaBytes: 64 << 10,
            spanTierBytes: 1 << 20))
    /// 100 KiB per client, 4 KiB pages.
    private let quota = ClientQuota(quotaBytes: 100 << 10, pageSize: 4096)

    private func handle(_ n: UInt64, generation: UInt64 = 1) -> SharedHeapHandle {
        SharedHeapHandle(low: n << 16 | generation, high: 0xD1)
    }

    /// What a test compares to say "nothing changed".
    private struct Snapshot: Equatable {
        var blocks: Int
        var bytes: Int
        var large: Int
        var holdings: [SharedHeapHandle: MediatedAccount.Holding]
        var extra: [SharedHeapHandle: Int]
    }

    private func snapshot(_ ledger: MediatedLedger, _ account: MediatedAccount) -> Snapshot {
        Snapshot(
            blocks: account.blocksHeld, bytes: account.bytesHeld, large: account.largeBytesHeld,
            holdings: Dictionary(uniqueKeysWithValues: account.holdings.entries.map { ($0.key, $0.value) }),
            extra: ledger.extraHoldings)
    }

    func testAllocationsWithinTheLimitsAreRecorded() {
        let ledger = ledger0
        var account = MediatedAccount()
        XCTAssertNil(ledger.refusal(client: 1, adding: 1, of: 64, to: account, leasedPages: 0, quota: quota))
        ledger.allocated(handle(1), blockSize: 64, to: &account)
        ledger.allocated([handle(2), handle(3)], blockSize: 16 << 10, to: &account)
        XCTAssertEqual(account.blocksHeld, 3)
        XCTAssertEqual(account.bytesHeld, 64 + 32 << 10)
        XCTAssertEqual(account.largeBytesHeld, 32 << 10, "only the 16 KiB blocks are large")
        XCTAssertEqual(account[handle(2)], .init(count: 1, blockSize: 16 << 10))
    }

    func testQuotaCountsHeldBytesAndLeasedPages() throws {
        let ledger = ledger0
        var account = MediatedAccount()
        ledger.allocated(handle(1), blockSize: 8192, to: &account)
        // 8 KiB held + 22 pages (88 KiB) leased = 96 KiB: 4 KiB more fit exactly, one byte more does not.
        XCTAssertNil(ledger.refusal(client: 7, adding: 1, of: 4096, to: account, leasedPages: 22, quota: quota))
        let refusal = try XCTUnwrap(
            ledger.refusal(client: 7, adding: 1, of: 4097, to: account, leasedPages: 22, quota: quota))
        XCTAssertEqual(refusal.code, .quotaExceeded)
        XCTAssertTrue(refusal.message.contains("client 7 holds 8192 bytes (+90112 leased)"), refusal.message)
        XCTAssertTrue(refusal.message.contains("quota of 102400 bytes"), refusal.message)
    }

    func testTheBlockLimitIsCheckedBeforeTheQuota() throws {
        let ledger = ledger0
        let account = MediatedAccount()
        // Five 64 KiB blocks pass both the block limit (4) and the quota: the block limit is named.
        let refusal = try XCTUnwrap(
            ledger.refusal(client: 1, adding: 5, of: 64 << 10, to: account, leasedPages: 0, quota: quota))
        XCTAssertEqual(refusal.code, .quotaExceeded)
        XCTAssertTrue(refusal.message.contains("max-blocks-per-client (4)"), refusal.message)
        // Two 64 KiB large blocks pass large-quota (64 KiB) first.
        let large = try XCTUnwrap(
            ledger.refusal(client: 1, adding: 2, of: 64 << 10, to: account, leasedPages: 0, quota: quota))
        XCTAssertTrue(large.message.contains("large-quota of 65536"), large.message)
    }

    func testAFreeOfAHandleNotHeldIsRefusedAndNothingChanges() {
        var ledger = ledger0
        var account = MediatedAccount()
        ledger.allocated(handle(1), blockSize: 64, to: &account)
        let before = snapshot(ledger, account)
        XCTAssertEqual(ledger.free(handle(2), from: &account), .notHeld)
        XCTAssertEqual(ledger.free(handle(1, generation: 2), from: &account), .notHeld, "another generation")
        XCTAssertEqual(snapshot(ledger, account), before)
    }

    func testTheLastHoldingIsFreedInTheHeapAndChangesOnlyOnceItIsDone() {
        var ledger = ledger0
        var account = MediatedAccount()
        ledger.allocated(handle(1), blockSize: 16 << 10, to: &account)
        let before = snapshot(ledger, account)
        XCTAssertEqual(ledger.free(handle(1), from: &account), .freeInHeap)
        XCTAssertEqual(snapshot(ledger, account), before, "the heap's free may still fail: nothing changed yet")
        ledger.freedInHeap(handle(1), from: &account)
        XCTAssertNil(account[handle(1)])
        XCTAssertEqual(account.blocksHeld, 0)
        XCTAssertEqual(account.bytesHeld, 0)
        XCTAssertEqual(account.largeBytesHeld, 0)
        XCTAssertEqual(ledger.free(handle(1), from: &account), .notHeld, "a second free is refused")
    }

    func testASecondClientsAdoptionIsAnExtraHoldingItsFreeDropsIt() {
        var ledger = ledger0
        var a = MediatedAccount()
        var b = MediatedAccount()
        ledger.allocated(handle(1), blockSize: 64, to: &a)
        XCTAssertEqual(ledger.mediatedHolders(of: handle(1), daemonHolds: true), 1)
        XCTAssertEqual(
            ledger.adopt(handle(1), blockSize: 64, daemonHolds: true, client: 2, to: &b, leasedPages: 0, quota: quota),
            .counted)
        XCTAssertEqual(ledger.extraHoldings, [handle(1): 1])
        XCTAssertEqual(b.blocksHeld, 1)
        XCTAssertEqual(ledger.mediatedHolders(of: handle(1), daemonHolds: true), 2)
        // Either holder's free first drops the extra holding: the heap is not touched.
        XCTAssertEqual(ledger.free(handle(1), from: &b), .dropped)
        XCTAssertEqual(ledger.extraHoldings, [:])
        XCTAssertEqual(b.blocksHeld, 0)
        XCTAssertEqual(ledger.free(handle(1), from: &a), .freeInHeap, "the last holding is the heap's")
    }

    func testAdoptingABlockTheDaemonDoesNotHoldAsksTheHeapFirst() {
        var ledger = ledger0
        var account = MediatedAccount()
        let before = snapshot(ledger, account)
        XCTAssertEqual(
            ledger.adopt(
                handle(1), blockSize: 64, daemonHolds: false, client: 1, to: &account, leasedPages: 0, quota: quota),
            .adoptInHeap)
        XCTAssertEqual(snapshot(ledger, account), before)
        ledger.adoptedInHeap(handle(1), blockSize: 64, to: &account)
        XCTAssertEqual(account[handle(1)], .init(count: 1, blockSize: 64))
        XCTAssertEqual(ledger.extraHoldings, [:], "the daemon's bit stands for this holding")
    }

    func testRefusedAdoptionsChangeNothing() {
        var ledger = ledger0
        var a = MediatedAccount()
        var b = MediatedAccount()
        ledger.allocated(handle(1), blockSize: 64, to: &a)
        ledger.allocated([handle(2), handle(3), handle(4), handle(5)], blockSize: 64, to: &b)
        let beforeA = snapshot(ledger, a)
        let beforeB = snapshot(ledger, b)
        guard
            case .refuse(let again) = ledger.adopt(
                handle(1), blockSize: 64, daemonHolds: true, client: 1, to: &a, leasedPages: 0, quota: quota)
        else { return XCTFail("a second holding by the same client must be refused") }
        XCTAssertEqual(again.code, .alreadyHolder)
        XCTAssertEqual(snapshot(ledger, a), beforeA)
        guard
            case .refuse(let full) = ledger.adopt(
                handle(1), blockSize: 64, daemonHolds: true, client: 2, to: &b, leasedPages: 0, quota: quota)
        else { return XCTFail("a fifth block must pass max-blocks-per-client") }
        XCTAssertEqual(full.code, .quotaExceeded)
        XCTAssertEqual(snapshot(ledger, b), beforeB, "no extra holding was counted")
        var c = MediatedAccount()
        guard
            case .refuse(let overQuota) = ledger.adopt(
                handle(1), blockSize: 64, daemonHolds: true, client: 3, to: &c, leasedPages: 25, quota: quota)
        else { return XCTFail("25 leased pages fill the quota") }
        XCTAssertEqual(overQuota.code, .quotaExceeded)
        XCTAssertTrue(overQuota.message.contains("quota of 102400"), overQuota.message)
        XCTAssertEqual(snapshot(ledger, c), snapshot(ledger, MediatedAccount()))
        XCTAssertEqual(ledger.extraHoldings, [:])
    }

    func testALeavingClientsHoldingsAreFreedInTheHeapExceptThoseOthersStillHold() {
        var ledger = ledger0
        var a = MediatedAccount()
        var b = MediatedAccount()
        ledger.allocated([handle(1), handle(2)], blockSize: 64, to: &a)
        _ = ledger.adopt(handle(2), blockSize: 64, daemonHolds: true, client: 2, to: &b, leasedPages: 0, quota: quota)
        XCTAssertEqual(ledger.release(a), [handle(1)], "block 2 is still held by b")
        XCTAssertEqual(ledger.extraHoldings, [:])
        XCTAssertEqual(ledger.free(handle(2), from: &b), .freeInHeap, "b's holding is now the last")
        XCTAssertEqual(ledger.release(MediatedAccount()), [])
    }
}
