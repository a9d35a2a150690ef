import DivvyClient
import DivvyProtocol
import DivvyShm
import DivvyTestSupport
import XCTest

@testable import DivvyServer

/// Sharing is a capability (issue 13, item 15; PROTOCOL.md 6.4): a mediated client adopts only with a live share
/// token a holder got from `share` for that handle, once. First the rules of `ShareTokenTable` alone, then the
/// daemon: every refused adopt is `badShareToken` and changes nothing (holders, the client's holdings, the audit).
final class ShareTokenTableTests: XCTestCase {
    private let a = SharedHeapHandle(low: 0x0001_0000_0000_0010, high: 0x1234_5678_0000_0000)
    private let b = SharedHeapHandle(low: 0x0001_0000_0000_0020, high: 0x1234_5678_0000_0000)

    func testATokenIsSingleUseAndBoundToItsHandle() throws {
        var table = ShareTokenTable(limitPerIssuer: 8)
        var random = SeededGenerator(seed: 1)
        let token = try table.issue(for: a, to: 7, using: &random) { _ in true }
        XCTAssertNotEqual(token, 0)
        XCTAssertEqual(try table.check(token, for: a) { _ in true }.issuer, 7)
        XCTAssertThrowsError(try table.check(token, for: b) { _ in true }) {
            XCTAssertEqual($0 as? ShareTokenTable.Rejection, .otherHandle)
        }
        XCTAssertThrowsError(try table.check(token &+ 1, for: a) { _ in true }) {
            XCTAssertEqual($0 as? ShareTokenTable.Rejection, .unknown)
        }
        XCTAssertThrowsError(try table.check(0, for: a) { _ in true }) {
            XCTAssertEqual($0 as? ShareTokenTable.Rejection, .unknown)
        }
        // A check uses nothing up; a redeem does.
        XCTAssertNoThrow(try table.check(token, for: a) { _ in true })
        table.redeem(token)
        XCTAssertThrowsError(try table.check(token, for: a) { _ in true }) {
            XCTAssertEqual($0 as? ShareTokenTable.Rejection, .unknown)
        }
        XCTAssertEqual(table.count, 0)
        XCTAssertEqual(table.count(issuer: 7), 0)
    }

    func testTokensAreNeverZeroNorEqualToALiveOne() throws {
        /// Draws 0, then the same value twice, then a fresh one.
        struct Scripted: RandomNumberGenerator {
            var values: [UInt64]
            mutating func next() -> UInt64 { values.removeFirst() }
        }
        var table = ShareTokenTable(limitPerIssuer: 8)
        var random = Scripted(values: [0, 5, 5, 9])
        XCTAssertEqual(try table.issue(for: a, to: 1, using: &random) { _ in true }, 5)
        XCTAssertEqual(try table.issue(for: a, to: 1, using: &random) { _ in true }, 9, "5 is live: drawn again")
    }

    func testTokensDieWithTheirIssuersHolding() throws {
        var table = ShareTokenTable(limitPerIssuer: 8)
        var random = SeededGenerator(seed: 2)
        let onA = try table.issue(for: a, to: 1, using: &random) { _ in true }
        let onB = try table.issue(for: b, to: 1, using: &random) { _ in true }
        let other = try table.issue(for: a, to: 2, using: &random) { _ in true }
        // The issuer stopped holding without the table being told (a direct client's free in shared memory).
        XCTAssertThrowsError(try table.check(onA, for: a) { $0 != 1 }) {
            XCTAssertEqual($0 as? ShareTokenTable.Rejection, .issuerStopped(issuer: 1))
        }
        table.dropIssuer(1, handle: a)
        XCTAssertThrowsError(try table.check(onA, for: a) { _ in true })
        XCTAssertNoThrow(try table.check(onB, for: b) { _ in true })
        XCTAssertNoThrow(try table.check(other, for: a) { _ in true }, "another issuer's token for the block lives")
        table.dropIssuer(1)
        XCTAssertThrowsError(try table.check(onB, for: b) { _ in true })
        XCTAssertEqual(table.count(issuer: 1), 0)
        XCTAssertEqual(table.count, 1)
    }

    func testTheLimitForgetsDeadTokensThenRefusesNamingTheKey() throws {
        var table = ShareTokenTable(limitPerIssuer: 2)
        var random = SeededGenerator(seed: 3)
        _ = try table.issue(for: a, to: 1, using: &random) { _ in true }
        _ = try table.issue(for: b, to: 1, using: &random) { _ in true }
        XCTAssertThrowsError(try table.issue(for: b, to: 1, using: &random) { _ in true }) {
            XCTAssertTrue(
                ($0 as? ShareTokenTable.Refusal)?.message.contains("max-share-tokens-per-client (2)") ?? false, "\($0)")
        }
        XCTAssertEqual(table.count(issuer: 1), 2, "a refusal issues nothing")
        XCTAssertNoThrow(try table.issue(for: a, to: 2, using: &random) { _ in true }, "the limit is per issuer")
        // At the limit, tokens for blocks the issuer no longer holds are forgotten first.
        let fresh = try table.issue(for: b, to: 1, using: &random) { $0 != self.a }
        XCTAssertEqual(table.count(issuer: 1), 2)
        XCTAssertNoThrow(try table.check(fresh, for: b) { _ in true })
    }
}

final class ShareTokenDaemonTests: XCTestCase {
    private var daemon: TestDaemon!

    override func setUpWithError() throws {
        daemon = try TestDaemon { $0.maxShareTokensPerClient = 4 }
    }

    override func tearDownWithError() throws {
        XCTAssertTrue(try daemon.audit().isClean)
        daemon = nil
    }

    /// Asserts that `adopter`'s adopt of `handle` with `token` is `badShareToken` and changes nothing: the heap's
    /// audit, the block's holder count in the heap (`participants`: heap participants, the daemon's counting once
    /// for all its mediated clients), and the adopter's holdings.
    private func assertRefused(
        _ adopter: DivvyClient, _ handle: SharedHandle, token: UInt64, participants: Int, _ why: String,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let audit = try daemon.audit()
        let stats = try adopter.stats()
        let holdersBefore = try daemon.server.heap.holderCount(of: handle)
        assertClientError(.badShareToken, file: file, line: line) { try adopter.adoptHandle(handle, token: token) }
        XCTAssertEqual(try daemon.audit(), audit, why, file: file, line: line)
        // The client's own figures (the heap's are a snapshot up to 100 ms old, HeapUsageSnapshot).
        let after = try adopter.stats()
        XCTAssertEqual(after.blocksHeld, stats.blocksHeld, why, file: file, line: line)
        XCTAssertEqual(after.bytesHeld, stats.bytesHeld, why, file: file, line: line)
        XCTAssertEqual(try daemon.server.heap.holderCount(of: handle), holdersBefore, why, file: file, line: line)
        XCTAssertEqual(holdersBefore, participants, why, file: file, line: line)
    }

    func testAMediatedClientAdoptsOnlyWithALiveTokenForTheHandleAndOnlyOnce() throws {
        let owner = try daemon.client(.mediated, name: "owner")
        let thief = try daemon.client(.mediated, name: "thief")
        let block = try owner.allocateHandle(100).handle
        let other = try owner.allocateHandle(100).handle
        // Never given: no token, a guess, a token for another block.
        try assertRefused(thief, block, token: 0, participants: 1, "no token")
        try assertRefused(thief, block, token: 0x1234_5678_9ABC_DEF0, participants: 1, "a guessed token")
        let otherToken = try owner.share(other).token
        try assertRefused(thief, block, token: otherToken, participants: 1, "another handle's token")
        let info = try owner.share(block)
        XCTAssertEqual(info.holders, 1)
        // A handle that differs from the shared one in its generation only (what the token is bound to as well).
        let wrongGeneration = SharedHandle(low: block.low ^ (1 << 48), high: block.high)
        assertClientError(.staleHandle) { try thief.adoptHandle(wrongGeneration, token: info.token) }
        // The right token works once.
        XCTAssertGreaterThanOrEqual(try thief.adoptHandle(block, token: info.token), 100)
        XCTAssertEqual(try owner.share(block).holders, 2)
        let late = try daemon.client(.mediated, name: "late")
        try assertRefused(late, block, token: info.token, participants: 1, "a used token")
        // The other token still lets one client in.
        XCTAssertGreaterThan(try late.adoptHandle(other, token: otherToken), 0)
        XCTAssertFalse(try late.free(other))
        XCTAssertFalse(try thief.free(block))
        XCTAssertTrue(try owner.free(block))
        XCTAssertTrue(try owner.free(other))
    }

    func testATokenDiesWhenTheBlockIsFreedAndIsNotTheReusedBlocks() throws {
        let owner = try daemon.client(.mediated, name: "owner")
        let thief = try daemon.client(.mediated, name: "thief")
        let block = try owner.allocateHandle(100).handle
        let token = try owner.share(block).token
        XCTAssertTrue(try owner.free(block))
        XCTAssertEqual(daemon.server.shareTokens.count, 0, "freeing drops the sharer's tokens")
        assertClientError(.staleHandle) { try thief.adoptHandle(block, token: token) }
        // The slot comes back with a new generation: the old token does not name the new block.
        var reused: SharedHandle?
        var extra: [SharedHandle] = []
        for _ in 0..<64 {
            let handle = try owner.allocateHandle(100).handle
            if handle.dataOffset == block.dataOffset {
                reused = handle
                break
            }
            extra.append(handle)
        }
        let again = try XCTUnwrap(reused, "the freed slot is reused")
        XCTAssertNotEqual(again, block)
        try assertRefused(thief, again, token: token, participants: 1, "a token of the block's previous life")
        XCTAssertTrue(try owner.free(again))
        for handle in extra { XCTAssertTrue(try owner.free(handle)) }
    }

    func testATokenDiesWhenItsSharerStopsHoldingEvenIfOthersStillHoldTheBlock() throws {
        let owner = try daemon.client(.mediated, name: "owner")
        let keeper = try daemon.client(.mediated, name: "keeper")
        let late = try daemon.client(.mediated, name: "late")
        let block = try owner.allocateHandle(200).handle
        _ = try keeper.adoptHandle(block, token: try owner.share(block).token)
        // The owner frees its holding: its outstanding token dies, though the keeper keeps the block alive.
        let byOwner = try owner.share(block).token
        XCTAssertFalse(try owner.free(block))
        try assertRefused(late, block, token: byOwner, participants: 1, "the sharer freed its holding")
        // The keeper's token, taken before it disconnects, dies with its connection (the block is released then).
        let byKeeper = try keeper.share(block).token
        keeper.close()
        assertClientError(.staleHandle) { try late.adoptHandle(block, token: byKeeper) }
        XCTAssertEqual(try late.stats().blocksHeld, 0)
        XCTAssertEqual(daemon.server.shareTokens.count, 0)
    }

    func testASharerThatDisconnectsTakesItsTokensWithIt() throws {
        let owner = try daemon.client(.mediated, name: "owner")
        let keeper = try daemon.client(.mediated, name: "keeper")
        let late = try daemon.client(.mediated, name: "late")
        let block = try owner.allocateHandle(200).handle
        _ = try keeper.adoptHandle(block, token: try owner.share(block).token)
        let byOwner = try owner.share(block).token
        owner.close()
        // The block lives on (the keeper holds it); the departed sharer's token does not.
        try assertRefused(late, block, token: byOwner, participants: 1, "the sharer disconnected")
        XCTAssertTrue(try keeper.free(block))
    }

    func testTheTokenLimitRefusesShareWithQuotaExceededAndFreesFreeIt() throws {
        let owner = try daemon.client(.mediated, name: "owner")
        let adopter = try daemon.client(.mediated, name: "adopter")
        let first = try owner.allocateHandle(64).handle
        let second = try owner.allocateHandle(64).handle
        var tokens = try (0..<4).map { _ in try owner.share(first).token }
        XCTAssertEqual(Set(tokens).count, 4, "every share issues a new token")
        do {
            _ = try owner.share(second)
            XCTFail("a fifth outstanding token")
        } catch {
            XCTAssertEqual(error.protocolCode, .quotaExceeded)
            XCTAssertTrue(error.message.contains("max-share-tokens-per-client (4)"), error.message)
        }
        XCTAssertEqual(daemon.server.shareTokens.count, 4, "the refusal issued nothing")
        // Using one up makes room.
        _ = try adopter.adoptHandle(first, token: tokens.removeFirst())
        XCTAssertNoThrow(try owner.share(second))
        // Freeing the block drops its tokens (the adopter keeps it alive).
        XCTAssertFalse(try owner.free(first))
        XCTAssertEqual(daemon.server.shareTokens.count, 1)
        // (The adopter holds `first`: the token is checked before that, and is dead.)
        for token in tokens { try assertRefused(adopter, first, token: token, participants: 1, "first's tokens") }
        XCTAssertTrue(try adopter.free(first))
        // A free in a batch drops them too.
        XCTAssertEqual(try owner.freeBatch([second]), [.released])
        XCTAssertEqual(daemon.server.shareTokens.count, 0)
    }

    /// A direct client shares a block it allocated in shared memory: the daemon checks its participant's holding,
    /// and the token dies when the direct client frees the block there (the daemon is not told: it checks when the
    /// token is presented, and forgets such tokens at the limit).
    func testADirectSharersTokensFollowItsHoldingInTheHeap() throws {
        let direct = try daemon.client(.direct, name: "direct")
        XCTAssertEqual(direct.mode, .direct)
        let adopter = try daemon.client(.mediated, name: "adopter")
        let late = try daemon.client(.mediated, name: "late")
        let block = try direct.allocateHandle(300).handle
        try assertRefused(adopter, block, token: 0, participants: 1, "no token for a direct client's block")
        XCTAssertGreaterThan(try adopter.adoptHandle(block, token: try direct.share(block).token), 0)
        let dead = try direct.share(block).token
        XCTAssertFalse(try direct.free(block), "the adopter still holds it")
        try assertRefused(late, block, token: dead, participants: 1, "the direct sharer freed it in shared memory")
        // At the limit, the direct sharer's dead tokens are forgotten.
        let other = try direct.allocateHandle(300).handle
        for _ in 0..<3 { _ = try direct.share(other) }
        XCTAssertEqual(daemon.server.shareTokens.count(issuer: direct.clientID), 4)
        XCTAssertNoThrow(try direct.share(other), "the dead token made room")
        XCTAssertTrue(try adopter.free(block))
        XCTAssertTrue(try direct.free(other))
    }

    /// A direct client adopts in shared memory, which it may write anyway: the token a mediated sharer gives it is
    /// not checked (and stays outstanding until the sharer frees the block).
    func testADirectAdopterDoesNotNeedTheToken() throws {
        let sharer = try daemon.client(.mediated, name: "sharer")
        let direct = try daemon.client(.direct, name: "direct")
        let block = try sharer.allocateHandle(64).handle
        XCTAssertGreaterThan(try direct.adoptHandle(block, token: 0), 0)
        XCTAssertEqual(try sharer.share(block).holders, 2)
        assertClientError(.alreadyHolder) { try direct.adoptHandle(block, token: 0) }
        XCTAssertFalse(try direct.free(block))
        XCTAssertTrue(try sharer.free(block))
    }
}
