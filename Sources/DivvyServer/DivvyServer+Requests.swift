import DivvyProtocol
import DivvyShm
import Logging

/// Request dispatch: `SessionStateMachine.route` decides where a request goes (refused, the handshake, or served),
/// `serve` calls the part that handles it, and `handle` sends the reply (with the region's descriptors when it is
/// a region grant) and closes the connection when the exchange ends it. Loop thread only.
extension DivvyServer {
    func handle(_ frame: Frame, from session: Session) {
        let message = frame.message
        let id = frame.requestID
        switch session.machine.route(message, shuttingDown: shutdownMachine.isShuttingDown) {
        case .reject(let code, let text):
            reject(session, requestID: id, type: message.type, code, text)
            return
        case .hello(let hello):
            welcome(session, hello, requestID: id)
            return
        case .serve:
            break
        }
        let reply: Message
        do throws(ServiceError) {
            reply = try serve(message, for: session)
        } catch {
            reject(session, requestID: id, type: message.type, error.code, error.message)
            return
        }
        if case .region = reply {
            // Direct clients get the region and its data object (mapped over the data area); mediated clients
            // get the data object alone, so the metadata is out of their reach.
            let data = region.dataFileDescriptor?.rawValue
            let descriptors =
                session.mode == .direct
                ? [region.fileDescriptor.rawValue] + (data.map { [$0] } ?? [])
                : [data ?? region.fileDescriptor.rawValue]
            send(session, requestID: id, reply, descriptors: descriptors)
        } else {
            send(session, requestID: id, reply)
        }
        let leaving: Bool
        if case .farewell = reply {
            _ = session.closeAfterReplies()
            leaving = true
        } else {
            leaving = false
        }
        // After farewell, an admin disconnect of the requester's own id, or a failed send: the reply, then the close.
        if session.outbox.closesWhenFlushed, session.outbox.isEmpty, sessions[session.id] === session {
            let reason: String
            if leaving {
                reason = "goodbye"
            } else if case .adminReply = reply {
                reason = "disconnected itself (admin disconnect of its own id)"
            } else {
                reason = "the reply could not be sent"
            }
            disconnect(session.id, reason: reason)
        }
    }

    func welcome(_ session: Session, _ hello: Hello, requestID: UInt64) {
        if hello.mode != .mediated, session.machine.mayUseDirect { releaseLeftSlots() }
        let slotAvailable = directSlots.available(freeSlots: heap.freeParticipantSlots)
        switch session.machine.hello(hello, directSlotAvailable: slotAvailable) {
        case .reject(let code, let text):
            reject(session, requestID: requestID, type: .hello, code, text)
        case .welcome(let version, let mode):
            // The slot this direct client will join is promised to it until it joins or goes.
            if mode == .direct { session.holdsDirectReservation = directSlots.reserve() }
            session.name = hello.name
            session.welcomed = true
            let geometry = region.geometry
            let welcome = Welcome(
                version: version, mode: mode, clientID: session.id,
                quotaBytes: UInt64(configuration.effectiveQuotaBytes),
                regionSize: UInt64(geometry.totalSize), metadataOffset: UInt64(geometry.metadataOffset),
                metadataSize: UInt64(geometry.metadataSize), dataOffset: UInt64(geometry.dataOffset),
                dataSize: UInt64(geometry.dataSize), pageSize: UInt32(heap.pageSize),
                pageKind: PageKind(region.pageKind), sizeClasses: heap.sizeClasses.map { UInt32($0) })
            logger.log(
                level: connectionLogLevel(session), "client connected",
                metadata: ["client": "\(session.id)", "name": "\(hello.name)", "mode": "\(mode)",
                           "pid": "\(session.peer.pid)", "uid": "\(session.peer.uid)", "gid": "\(session.peer.gid)"])
            send(session, requestID: requestID, .welcome(welcome))
        }
    }

    /// Frees the slots of direct clients that left the heap (`leave(releasingSlot: false)`) and whose goodbye is
    /// still on its way: they hold nothing, and their sessions are done with the heap, so the slots can be
    /// offered to the client saying hello now. The old session forgets its participant (its later disconnect
    /// then has nothing to do).
    func releaseLeftSlots() {
        for (p, id) in recovery.owners {
            // releaseSlot frees only a slot that is leaving and was left by that pid (one word read otherwise).
            guard let owner = sessions[id], heap.releaseSlot(participant: p, pid: owner.peer.pid) else { continue }
            recovery.disown(p)
            owner.lease.forgetParticipant()
        }
    }

    /// Serves a request the route let through; its reply, or the error it gets.
    func serve(_ message: Message, for session: Session) throws(ServiceError) -> Message {
        switch message {
        case .mapRegion:
            let geometry = region.geometry
            // Mediated: the data object from its start (see `handle` for the descriptors).
            return session.mode == .direct
                ? .region(RegionGrant(access: 1, offset: 0, length: UInt64(geometry.totalSize)))
                : .region(RegionGrant(
                    access: 1, offset: region.dataFileDescriptor == nil ? UInt64(geometry.dataOffset) : 0,
                    length: UInt64(geometry.dataSize)))
        case .join(let participant): return try join(session, Int(participant))
        case .lease(let pages): return try lease(session, more: Int(pages))
        case .returnPages(let pages): return try returnPages(session, Int(pages))
        case .allocate(let size):
            let (handle, blockSize) = try allocate(session, size: size)
            return .allocated(handle: handle.wire, blockSize: UInt64(blockSize))
        case .allocateBatch(let size, let count): return try allocateBatch(session, size: size, count: Int(count))
        case .free(let handle):
            let released = try free(session, SharedHeapHandle(handle))
            metrics.count(.free)
            return .freed(released: released)
        case .freeBatch(let handles): return freeBatch(session, handles)
        case .share(let handle): return .shared(try share(session, SharedHeapHandle(handle)))
        case .adopt(let handle, let token):
            let blockSize = try adopt(session, SharedHeapHandle(handle), token: token)
            return .adopted(handle: handle, blockSize: UInt64(blockSize))
        case .stats: return .statsReply(stats(for: session))
        case .ping(let payload): return .pong(payload: payload)
        case .goodbye: return .farewell
        case .admin(let operation, let argument): return try admin(session, operation, argument)
        default:
            throw ServiceError(.unknownMessageType, "\(message.type) is not a request")
        }
    }
}
