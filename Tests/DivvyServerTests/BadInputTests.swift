import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

/// Every kind of bad input gets its specified error reply (or close), the heap audit is unchanged, and the
/// daemon keeps serving everyone else.
final class BadInputTests: XCTestCase {
    private var daemon: TestDaemon!
    /// A bystander with blocks of its own: they must survive every bad request of every test.
    private var bystander: DivvyClient!
    private var bystanderBlocks: [SharedHandle] = []

    override func setUpWithError() throws {
        daemon = try TestDaemon()
        bystander = try daemon.client(.mediated, name: "bystander")
        for index in 0..<20 {
            let handle = try bystander.allocateHandle(64 + index * 10).handle
            try bystander.pointer(for: handle).storeBytes(of: UInt64(index), as: UInt64.self)
            bystanderBlocks.append(handle)
        }
    }

    override func tearDownWithError() throws {
        // The bystander is still served and its blocks are intact.
        for (index, handle) in bystanderBlocks.enumerated() {
            XCTAssertEqual(try bystander.pointer(for: handle).load(as: UInt64.self), UInt64(index))
            XCTAssertEqual(try bystander.share(handle).holders, 1)
        }
        bystander.close()
        bystander = nil
        XCTAssertTrue(try daemon.audit().isClean)
        daemon = nil
    }

    /// Runs `body` and checks the heap audit is the same before and after.
    private func unchanged(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try daemon.audit()
        try body()
        XCTAssertEqual(try daemon.audit(), before, "a rejected request must not change the heap", file: file, line: line)
    }

    private func helloed(_ mode: ClientMode = .mediated) throws -> RawConnection {
        let connection = try RawConnection(daemon.socketPath)
        try connection.hello(mode)
        return connection
    }

    // MARK: Malformed frames (the daemon closes)

    func testBadMagicTruncatedAndOversizedFramesAreRefusedAndClosed() throws {
        let valid = Frame(requestID: 42, message: .allocate(size: 64)).encoded()
        var badMagic = valid
        badMagic[0] ^= 0xFF
        var badLength = valid
        badLength[16] = 200  // The header claims more payload than the datagram has.
        var badFlags = valid
        badFlags[20] = 1
        let truncated = Array(valid.prefix(10))
        let oversized = valid + [UInt8](repeating: 0, count: 70_000)
        for (name, bytes, code) in [
            ("bad magic", badMagic, ErrorCode.malformedFrame), ("bad length", badLength, .malformedFrame),
            ("flags", badFlags, .malformedFrame), ("truncated header", truncated, .malformedFrame),
            ("oversized", oversized, .frameTooLarge),
        ] {
            try unchanged {
                let connection = try helloed()
                try connection.send(bytes)
                let reply = try connection.receive()
                assertErrorReply(reply, code)
                XCTAssertTrue(try connection.isClosedByPeer(), "\(name): the daemon closes after \(code)")
            }
        }
    }

    func testTruncatedPayloadAndTrailingBytes() throws {
        var frame = Frame(requestID: 9, message: .free(handle: WireHandle(low: 12345, high: 1 << 32))).encoded()
        frame.removeLast(3)
        frame[16] = UInt8(frame.count - 24)  // A consistent header around a short payload.
        var trailing = Frame(requestID: 9, message: .ping(payload: [1, 2])).encoded() + [0]
        trailing[16] += 1
        for bytes in [frame, trailing] {
            try unchanged {
                let connection = try helloed()
                try connection.send(bytes)
                assertErrorReply(try connection.receive(), .malformedFrame, requestID: 9)
                XCTAssertTrue(try connection.isClosedByPeer())
            }
        }
    }

    func testUnknownMessageTypeIsRefusedAndTheConnectionStays() throws {
        try unchanged {
            let connection = try helloed()
            var frame = Frame(requestID: 5, message: .stats).encoded()
            frame[6] = 0x77
            frame[7] = 0x00
            try connection.send(frame)
            assertErrorReply(try connection.receive(), .unknownMessageType, requestID: 5)
            // A reply type sent as a request is refused too, and the connection still works.
            assertErrorReply(try connection.roundTrip(.pong(payload: [])), .unknownMessageType)
            XCTAssertEqual(try connection.roundTrip(.ping(payload: [9])).message, .pong(payload: [9]))
        }
    }

    func testWrongVersionAndHandshakeErrors() throws {
        try unchanged {
            let future = try RawConnection(daemon.socketPath)
            let reply = try future.roundTrip(.hello(Hello(minVersion: 3, maxVersion: 5, mode: .any, capabilities: 0, name: "x")))
            assertErrorReply(reply, .unsupportedVersion)
            XCTAssertTrue(try future.isClosedByPeer())

            // A version-1 client (64-bit handles) is refused at hello, in a version-1 frame it can read.
            let old = try RawConnection(daemon.socketPath)
            let refusal = try old.roundTrip(
                .hello(Hello(minVersion: 1, maxVersion: 1, mode: .mediated, capabilities: 0, name: "v1")))
            assertErrorReply(refusal, .unsupportedVersion)
            XCTAssertEqual(refusal.version, 1, "frames before welcome are version-1 frames")
            XCTAssertTrue(try old.isClosedByPeer())

            // A version-2 client: welcome in a version-1 frame (it answers hello), everything after in version 2.
            let current = try RawConnection(daemon.socketPath)
            let welcome = try current.roundTrip(
                .hello(Hello(minVersion: 1, maxVersion: 2, mode: .mediated, capabilities: 0, name: "v2")))
            guard case .welcome(let granted) = welcome.message else { return XCTFail("no welcome: \(welcome)") }
            XCTAssertEqual(granted.version, 2)
            XCTAssertEqual(welcome.version, 1)
            XCTAssertEqual(try current.roundTrip(.ping(payload: [])).version, 2)

            var header = Frame(requestID: 3, message: .stats).encoded()
            header[4] = 9  // Header version 9.
            let wrongHeader = try helloed()
            try wrongHeader.send(header)
            assertErrorReply(try wrongHeader.receive(), .unsupportedVersion)
            XCTAssertTrue(try wrongHeader.isClosedByPeer())

            let early = try RawConnection(daemon.socketPath)
            assertErrorReply(try early.roundTrip(.allocate(size: 16)), .handshakeRequired)
            try early.hello()
            assertErrorReply(
                try early.roundTrip(.hello(Hello(minVersion: 2, maxVersion: 2, mode: .any, capabilities: 0, name: "y"))),
                .handshakeRequired)
        }
    }

    // MARK: Bad handles

    func testBogusOffsetsStaleHandlesDoubleAndForeignFrees() throws {
        let connection = try helloed()
        guard case .allocated(let mine, _) = try connection.roundTrip(.allocate(size: 100)).message else {
            return XCTFail("allocate failed")
        }
        let foreign = bystanderBlocks[0].wire
        // Offsets are judged within this heap: the heap id of a real handle.
        let beyond = WireHandle(low: 0xFFFF_FFFF_FFFF, high: mine.high)
        try unchanged {
            assertErrorReply(try connection.roundTrip(.free(handle: beyond)), .invalidHandle)
            assertErrorReply(
                try connection.roundTrip(.free(handle: WireHandle(low: mine.low + 1, high: mine.high))),
                .misalignedHandle)
            assertErrorReply(try connection.roundTrip(.free(handle: foreign)), .notHolder)
            assertErrorReply(try connection.roundTrip(.free(handle: .zero)), .invalidHandle)
            assertErrorReply(try connection.roundTrip(.share(handle: foreign)), .notHolder)
            assertErrorReply(try connection.roundTrip(.adopt(handle: beyond, token: 1)), .invalidHandle)
        }
        XCTAssertEqual(try connection.roundTrip(.free(handle: mine)).message, .freed(released: true))
        try unchanged {
            assertErrorReply(try connection.roundTrip(.free(handle: mine)), .doubleFree)
            assertErrorReply(try connection.roundTrip(.adopt(handle: mine, token: 1)), .staleHandle)
        }
        // The slot is reused with a new generation: the old handle is stale, not the new block's.
        var reused = WireHandle.zero
        for _ in 0..<64 {
            guard case .allocated(let handle, _) = try connection.roundTrip(.allocate(size: 100)).message else {
                return XCTFail("allocate failed")
            }
            if handle.dataOffset == mine.dataOffset {
                reused = handle
                break
            }
        }
        XCTAssertNotEqual(reused, .zero, "the freed slot comes back")
        XCTAssertEqual(reused.heapID, mine.heapID)
        XCTAssertGreaterThan(reused.generation, mine.generation)
        XCTAssertNotEqual(reused, mine)
        try unchanged {
            assertErrorReply(try connection.roundTrip(.free(handle: mine)), .staleHandle)
            assertErrorReply(try connection.roundTrip(.adopt(handle: mine, token: 1)), .staleHandle)
        }
    }

    /// The same block named with another heap's id: what a handle kept from before a daemon restart looks like.
    /// Heap id 0 is avoided (the heap still takes it as "this heap" while the transitional 64-bit form exists).
    private func otherHeap(_ low: UInt64, _ high: UInt64) -> (low: UInt64, high: UInt64) {
        let heapID = high >> 32
        let other: UInt64 = heapID == 0x0BAD_BEEF ? 0x0BAD_BEF0 : 0x0BAD_BEEF
        return (low, high & 0xFFFF_FFFF | other << 32)
    }

    func testAHandleFromAnotherHeapIsForeignAndChangesNothing() throws {
        let connection = try helloed()
        guard case .allocated(let mine, let blockSize) = try connection.roundTrip(.allocate(size: 100)).message else {
            return XCTFail("allocate failed")
        }
        XCTAssertNotEqual(mine.heapID, 0, "a real handle names its heap")
        let (low, high) = otherHeap(mine.low, mine.high)
        let foreign = WireHandle(low: low, high: high)
        let before = try connection.roundTrip(.stats).message
        try unchanged {
            for request: Message in [.free(handle: foreign), .share(handle: foreign), .adopt(handle: foreign, token: 1)] {
                let reply = try connection.roundTrip(request)
                assertErrorReply(reply, .foreignHandle)
                if case .error(let error) = reply.message {
                    XCTAssertTrue(error.message.contains("another heap"), error.message)
                }
            }
            XCTAssertEqual(
                try connection.roundTrip(.freeBatch(handles: [foreign])).message,
                .freedBatch(statuses: [FreedStatus(error: .foreignHandle)]))
        }
        // The client's holdings and accounting are what they were: the real handle is still held, once.
        XCTAssertEqual(try connection.roundTrip(.stats).message, before)
        guard case .statsReply(let stats) = before else { return XCTFail("no stats") }
        XCTAssertEqual(stats.blocksHeld, 1)
        XCTAssertEqual(stats.bytesHeld, blockSize)
        XCTAssertEqual(try connection.roundTrip(.free(handle: mine)).message, .freed(released: true))
    }

    func testTheClientLibraryRefusesAForeignHandleInBothModes() throws {
        for mode: ClientMode in [.direct, .mediated] {
            let client = try daemon.client(mode, name: "foreign-\(mode)")
            XCTAssertEqual(client.mode, mode)
            let (handle, _) = try client.allocateHandle(64)
            let (low, high) = otherHeap(handle.low, handle.high)
            let foreign = SharedHandle(low: low, high: high)
            let before = try client.stats()
            try unchanged {
                var calls: [(String, () throws(DivvyClientError) -> Void)] = [
                    ("free", { () throws(DivvyClientError) in _ = try client.free(foreign) }),
                    ("adopt", { () throws(DivvyClientError) in _ = try client.adoptHandle(foreign, token: 1) }),
                    ("share", { () throws(DivvyClientError) in _ = try client.share(foreign) }),
                ]
                // Direct clients check translations against the heap, heap id included (mediated clients do not map
                // the metadata: they can only check the offset).
                if mode == .direct {
                    calls.append(("pointer", { () throws(DivvyClientError) in _ = try client.pointer(for: foreign) }))
                }
                for (name, call) in calls {
                    do throws(DivvyClientError) {
                        try call()
                        XCTFail("\(mode) \(name) of a foreign handle succeeded")
                    } catch {
                        XCTAssertEqual(error.protocolCode, .foreignHandle, "\(mode) \(name): \(error)")
                    }
                }
                XCTAssertEqual(try client.freeBatch([foreign]), [FreedStatus(error: .foreignHandle)], "\(mode)")
            }
            let after = try client.stats()
            XCTAssertEqual(after.blocksHeld, before.blocksHeld, "\(mode)")
            XCTAssertEqual(after.bytesHeld, before.bytesHeld, "\(mode)")
            XCTAssertTrue(try client.free(handle), "\(mode): the real handle is still held")
            client.close()
        }
    }

    func testBadBatchesAndSizes() throws {
        let connection = try helloed()
        try unchanged {
            var frame = Frame(requestID: 11, message: .allocateBatch(size: 16, count: 1)).encoded()
            frame[32] = 0xFF  // count = 0x10FF... over the batch limit
            frame[33] = 0xFF
            try connection.send(frame)
            assertErrorReply(try connection.receive(), .batchTooLarge, requestID: 11)
            assertErrorReply(try connection.roundTrip(.allocate(size: 0)), .unsupportedSize)
            assertErrorReply(try connection.roundTrip(.allocate(size: 1 << 40)), .unsupportedSize)
            assertErrorReply(try connection.roundTrip(.allocateBatch(size: 1 << 40, count: 4)), .unsupportedSize)
        }
    }

    // MARK: Rights

    func testUnauthorizedUidIsRefusedAndClosed() throws {
        let strict = try TestDaemon { $0.policy = AccessPolicy(allowedUIDs: [getuid() &+ 1]) }
        let before = strict.server.heap.verify()
        let connection = try RawConnection(strict.socketPath)
        assertErrorReply(try connection.receive(), .notAuthorized)
        XCTAssertTrue(try connection.isClosedByPeer())
        XCTAssertThrowsError(try DivvyClient(.init(socketPath: strict.socketPath))) { error in
            XCTAssertEqual((error as? DivvyClientError)?.protocolCode, .notAuthorized, "\(error)")
        }
        XCTAssertEqual(strict.server.heap.verify(), before)
        // Counters are published once per loop iteration.
        let deadline = Date().addingTimeInterval(5)
        while strict.server.snapshotCounters().refusedConnections < 2, Date() < deadline { usleep(10_000) }
        XCTAssertEqual(strict.server.snapshotCounters().refusedConnections, 2)
    }

    func testNonAdminAndNonDirectRightsAreEnforced() throws {
        let limited = try TestDaemon { $0.policy = AccessPolicy(allowedUIDs: [getuid()]) }
        let client = try limited.client(.any)
        XCTAssertEqual(client.mode, .mediated, "no direct right: mediated")
        assertClientError(.adminRequired) { try client.admin(.status) }
        do {
            _ = try client.admin(.status)
        } catch {
            XCTAssertTrue("\(error)".contains("admin-uids"), "the refusal names the setting that allows it: \(error)")
        }
        assertClientError(.adminRequired) { try client.admin(.disconnect, argument: client.clientID) }
        XCTAssertThrowsError(try limited.client(.direct)) { error in
            XCTAssertEqual((error as? DivvyClientError)?.protocolCode, .wrongMode, "\(error)")
        }
        let raw = try RawConnection(limited.socketPath)
        try raw.hello(.mediated)
        assertErrorReply(try raw.roundTrip(.lease(pages: 4)), .wrongMode)
        assertErrorReply(try raw.roundTrip(.join(participant: 0)), .wrongMode)
        try client.ping()
    }

    func testDirectJoinWithABogusParticipantIsRefused() throws {
        let connection = try helloed(.direct)
        try unchanged {
            assertErrorReply(try connection.roundTrip(.join(participant: 0)), .invalidParticipant, requestID: 7)
            assertErrorReply(try connection.roundTrip(.join(participant: 999)), .invalidParticipant)
            assertErrorReply(try connection.roundTrip(.lease(pages: 1)), .invalidParticipant)
        }
    }

    func testQuotaOverrunChangesNothing() throws {
        let small = try TestDaemon { $0.quotaBytes = 4096 }
        let client = try small.client(.mediated)
        let a = try client.allocateHandle(2048).handle
        let b = try client.allocateHandle(2048).handle
        let before = small.server.heap.verify()
        assertClientError(.quotaExceeded) { try client.allocateHandle(16) }
        assertClientError(.quotaExceeded) { try client.allocateBatch(size: 16, count: 2) }
        let other = try small.client(.mediated)
        let theirs = try other.allocateHandle(16).handle
        let token = try other.share(theirs).token
        let beforeAdopt = try small.audit()
        assertClientError(.quotaExceeded) { try client.adoptHandle(theirs, token: token) }
        XCTAssertEqual(try small.audit(), beforeAdopt)
        _ = before
        XCTAssertEqual(try client.stats().bytesHeld, 4096)
        try client.free(a)
        try client.free(b)
    }
}

/// What the daemon hands each kind of client when it maps the region.
final class RegionIsolationTests: XCTestCase {
    private func mapRegion(_ daemon: TestDaemon, _ mode: ClientMode) throws -> (Welcome, RegionGrant, [Int32]) {
        let connection = try RawConnection(daemon.socketPath)
        let welcome = try connection.hello(mode)
        try connection.send(.mapRegion)
        var buffer = [UInt8](repeating: 0, count: 1024)
        var descriptors: [Int32] = []
        let result = try buffer.withUnsafeMutableBytes { raw in
            try connection.socket.receive(into: raw, descriptors: &descriptors)
        }
        guard case .datagram(let count, _, _) = result,
            case .region(let grant) = try Frame.decode(Array(buffer[..<count])).message
        else { throw NSError(domain: "no region reply: \(result)", code: 1) }
        return (welcome, grant, descriptors)
    }

    private func size(_ fd: Int32) -> Int {
        var info = stat()
        XCTAssertEqual(fstat(fd, &info), 0)
        return Int(info.st_size)
    }

    func testMediatedClientsGetOnlyTheDataObject() throws {
        let daemon = try TestDaemon()
        let (welcome, grant, descriptors) = try mapRegion(daemon, .mediated)
        defer { descriptors.forEach { close($0) } }
        XCTAssertEqual(descriptors.count, 1)
        XCTAssertEqual(grant.offset, 0)
        XCTAssertEqual(grant.length, welcome.dataSize)
        XCTAssertEqual(size(descriptors[0]), Int(welcome.dataSize), "the descriptor reaches the data and nothing else")
        XCTAssertLessThan(Int(welcome.dataSize), Int(welcome.regionSize))
    }

    func testDirectClientsGetTheRegionAndItsDataObject() throws {
        let daemon = try TestDaemon()
        let (welcome, grant, descriptors) = try mapRegion(daemon, .direct)
        defer { descriptors.forEach { close($0) } }
        XCTAssertEqual(descriptors.count, 2)
        XCTAssertEqual(grant.offset, 0)
        XCTAssertEqual(grant.length, welcome.regionSize)
        XCTAssertEqual(size(descriptors[0]), Int(welcome.regionSize))
        XCTAssertEqual(size(descriptors[1]), Int(welcome.dataSize))
    }
}
