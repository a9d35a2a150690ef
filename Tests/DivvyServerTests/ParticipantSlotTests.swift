import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

/// The daemon's participant slots: `any` clients fall back to mediated when the direct side is full, an explicit
/// `direct` one gets `directUnavailable`, and the heap's usage figures count exactly the blocks held.
final class ParticipantSlotTests: XCTestCase {
    /// Capacity 4: the daemon's participant and three direct clients. Three more `any` clients are welcomed as
    /// mediated and allocate, write, share and free; an explicit `direct` client is refused with
    /// `directUnavailable` and changes nothing; once a direct client has closed, a `direct` one fits again.
    func testAnyFallsBackToMediatedAndDirectIsRefusedWhenTheSlotsAreTaken() throws {
        let daemon = try TestDaemon { $0.participantCapacity = 4 }
        let heap = daemon.server.heap
        let direct = try (0..<3).map { try daemon.client(.any, name: "direct-\($0)") }
        XCTAssertEqual(direct.map(\.mode), [.direct, .direct, .direct])
        XCTAssertEqual(heap.freeParticipantSlots, 0)
        let fallback = try (0..<3).map { try daemon.client(.any, name: "fallback-\($0)") }
        XCTAssertEqual(fallback.map(\.mode), [.mediated, .mediated, .mediated])
        for (index, client) in fallback.enumerated() {
            let (handle, _) = try client.allocateHandle(100)
            try client.pointer(for: handle).storeBytes(of: UInt64(index), as: UInt64.self)
            _ = try direct[index].adoptHandle(handle, token: try client.share(handle).token)
            XCTAssertEqual(try direct[index].pointer(for: handle).load(as: UInt64.self), UInt64(index))
            XCTAssertFalse(try client.free(handle), "the direct client still holds it")
            XCTAssertTrue(try direct[index].free(handle))
        }
        let before = try daemon.audit()
        assertClientError(.directUnavailable) { try daemon.client(.direct, name: "refused") }
        XCTAssertEqual(try daemon.audit(), before, "a refused hello changes nothing")
        XCTAssertEqual(heap.freeParticipantSlots, 0)
        // A slot comes free when a direct client closes: a direct client fits again.
        direct[0].close()
        let again = try daemon.client(.direct, name: "again")
        XCTAssertEqual(again.mode, .direct)
        _ = try again.allocateHandle(64)
        again.close()
        for client in direct + fallback { client.close() }
        let audit = try daemon.audit()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.liveParticipants, 1, "only the daemon's own participant: \(audit)")
    }

    /// Explicit `direct` is refused even before any client joined when the heap has no slot beyond the daemon's
    /// (capacity 2, one direct client in): the reservation counts a welcomed client that has not joined yet.
    func testAWelcomedDirectClientKeepsItsSlot() throws {
        let daemon = try TestDaemon { $0.participantCapacity = 2 }
        let first = try daemon.client(.direct, name: "first")
        XCTAssertEqual(first.mode, .direct)
        assertClientError(.directUnavailable) { try daemon.client(.direct, name: "second") }
        let any = try daemon.client(.any, name: "any")
        XCTAssertEqual(any.mode, .mediated)
        XCTAssertNoThrow(try any.allocateHandle(32))
        any.close()
        first.close()
    }

    /// A direct client that has left the heap (its slot *leaving*) but whose goodbye the daemon has not processed
    /// keeps its slot from other joiners; a `hello` that needs a slot frees it at once (the left session holds
    /// nothing), and the late goodbye then leaves the new occupant alone.
    func testALeftSlotIsFreedForTheNextHelloAndTheLateGoodbyeChangesNothing() throws {
        let daemon = try TestDaemon { $0.participantCapacity = 3 }
        let heap = daemon.server.heap
        let other = try daemon.client(.direct, name: "other")
        // The leaver, by hand: hello, join the heap in this process, report the slot.
        let leaver = try RawConnection(daemon.socketPath)
        XCTAssertEqual(try leaver.hello(.direct).mode, .direct)
        let participant = try heap.join(name: "leaver")
        guard case .joined = try leaver.roundTrip(.join(participant: UInt32(participant.index))).message else {
            return XCTFail("join refused")
        }
        XCTAssertEqual(heap.freeParticipantSlots, 0)
        _ = try participant.allocate(64)
        participant.leave(releasingSlot: false)
        XCTAssertEqual(heap.participantStatus(participant.index)?.state, .leaving)
        XCTAssertThrowsError(try heap.join(name: "squatter"), "a leaving slot is not offered by join")
        // No goodbye yet: the next direct hello frees the slot and gets it.
        let next = try daemon.client(.direct, name: "next")
        XCTAssertEqual(next.mode, .direct)
        let (handle, _) = try next.allocateHandle(100)
        XCTAssertEqual(heap.participantStatus(participant.index)?.state, .alive)
        XCTAssertEqual(heap.participantStatus(participant.index)?.heldCount, 1, "the new occupant's block")
        // The late goodbye: the left session's disconnect must not touch the new occupant (same pid here).
        guard case .farewell = try leaver.roundTrip(.goodbye).message else { return XCTFail("no farewell") }
        XCTAssertTrue(try leaver.isClosedByPeer())
        try next.ping()
        XCTAssertEqual(heap.participantStatus(participant.index)?.state, .alive)
        XCTAssertTrue(try next.free(handle))
        next.close()
        other.close()
        let audit = try daemon.audit()
        XCTAssertTrue(audit.isClean, "\(audit)")
        XCTAssertEqual(audit.liveParticipants, 1, "\(audit)")
    }

    /// The status's `bytesUsed` and the stats' `heapBytesUsed` are the bytes of the blocks held, also after a
    /// direct client left blocks a mediated client held on its pages (orphan pages) and those were freed, and 0
    /// after every client has gone.
    func testHeapBytesUsedIsTheBytesOfTheBlocksHeld() throws {
        let daemon = try TestDaemon()
        func bytesUsed(_ client: DivvyClient) throws -> Int {
            usleep(150_000)  // heap figures may be up to 100 ms old (`HeapUsageSnapshot`)
            let status = try XCTUnwrap(
                JSONSerialization.jsonObject(with: Data(client.admin(.status).body)) as? [String: Any])
            let used = try XCTUnwrap((status["heap"] as? [String: Any])?["bytesUsed"] as? Int, "\(status)")
            XCTAssertEqual(Int(try client.stats().heapBytesUsed), used)
            return used
        }
        let writer = try daemon.client(.direct, name: "writer")
        let reader = try daemon.client(.mediated, name: "reader")
        var handles: [(SharedHandle, Int)] = []
        for size in [48, 200, 200, 1000, 3000, 48, 48, 700] { handles.append(try writer.allocateHandle(size)) }
        for (handle, _) in handles.prefix(5) { _ = try reader.adoptHandle(handle, token: try writer.share(handle).token) }
        XCTAssertEqual(try bytesUsed(reader), handles.reduce(0) { $0 + $1.1 })
        for (handle, _) in handles.suffix(3) { try writer.free(handle) }
        XCTAssertEqual(try bytesUsed(reader), handles.prefix(5).reduce(0) { $0 + $1.1 })
        // The writer goes: its pages keep the reader's blocks (orphans); the reader frees them there.
        writer.close()
        XCTAssertEqual(try bytesUsed(reader), handles.prefix(5).reduce(0) { $0 + $1.1 })
        for (handle, _) in handles.prefix(3) { try reader.free(handle) }
        XCTAssertEqual(try bytesUsed(reader), handles.dropFirst(3).prefix(2).reduce(0) { $0 + $1.1 })
        for (handle, _) in handles.dropFirst(3).prefix(2) { try reader.free(handle) }
        XCTAssertEqual(try bytesUsed(reader), 0)
        reader.close()
        let last = try daemon.client(.mediated, name: "last")
        XCTAssertEqual(try bytesUsed(last), 0, "every client has gone")
        last.close()
    }
}
