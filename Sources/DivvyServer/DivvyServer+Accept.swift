import DivvyProtocol
import DivvyTransport
import Logging

/// Accepting connections: the policy, the shutdown machine and `ConnectionAdmission` decide; this file carries the
/// decisions out (refuse with a reply, or open a session). Loop thread only.
extension DivvyServer {
    /// Accepts what is queued, at most 64 connections per readiness event: a connect flood cannot keep the loop
    /// from its clients (the listener is level-triggered, so the rest are taken on the next round).
    func acceptAll() {
        for _ in 0..<64 where listenerPausedUntil == nil {
            let socket: SeqpacketSocket?
            do throws(TransportError) {
                socket = try listener.accept()
            } catch {
                guard acceptFailed(error) else { return }
                continue
            }
            guard let socket else { return }
            admit(socket)
        }
    }

    func admit(_ socket: SeqpacketSocket) {
        let peer: PeerCredentials
        do throws(TransportError) {
            peer = try socket.peerCredentials()
        } catch {
            logger.error("could not read peer credentials; closing", metadata: ["error": "\(error)"])
            return
        }
        let policy = configuration.policy
        guard policy.admits(peer) else {
            metrics.count(.refusedConnection)
            if refusals.failure(at: .now) {
                logger.warning(
                    "connection refused by policy (further refusals within 10 s are counted, not logged)",
                    metadata: ["pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)"])
            }
            refuse(
                socket, .notAuthorized,
                "uid \(peer.uid) gid \(peer.gid) may not use this daemon: its operator can add the uid to allow-uids "
                    + "(or admin-uids), or one of its groups to allow-gids, in divvyd.conf")
            return
        }
        if let (code, message) = shutdownMachine.connectionRefusal {
            metrics.count(.refusedConnection)
            refuse(socket, code, message)
            return
        }
        if case .refuse(let code, let message) = admission.decide(uid: peer.uid, isAdmin: policy.allowsAdmin(peer)) {
            metrics.count(.refusedConnection)
            if refusals.failure(at: .now) {
                logger.warning(
                    "connection refused (further refusals within 10 s are counted, not logged)",
                    metadata: ["pid": "\(peer.pid)", "uid": "\(peer.uid)", "reason": "\(message)"])
            }
            refuse(socket, code, message)
            return
        }
        var id = nextClientID
        while id == 0 || sessions[id] != nil { id &+= 1 }
        nextClientID = id &+ 1
        let machine = SessionStateMachine(
            mayUseDirect: policy.allowsDirect(peer), mayAdminister: policy.allowsAdmin(peer))
        let session = Session(id: id, socket: socket, peer: peer, machine: machine, now: .now)
        do throws(TransportError) {
            try poller.add(socket.fileDescriptor, events: [.readable, .peerClosed], token: UInt64(id))
        } catch {
            logger.error("could not watch a new connection", metadata: ["error": "\(error)"])
            return
        }
        sessions[id] = session
        sessionOrder.insert(id)
        admission.opened(uid: peer.uid)
        handshakeDeadlines.add(
            id, deadline: .now + .milliseconds(configuration.handshakeTimeoutMilliseconds))
        metrics.count(.connection)
        // The info-level "client connected" line waits for hello: only then is it known whether this is divvyctl.
        logger.debug(
            "connection accepted",
            metadata: ["client": "\(id)", "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)"])
    }

    /// The name divvyctl gives in hello.
    static let adminToolName = "divvyctl"

    /// The level of a session's "client connected" and "client disconnected" lines: debug for divvyctl, info for
    /// every other client. Each divvyctl command is one short connection (`divvyctl top` makes two a second), which
    /// would otherwise bury the clients' own lines. A name is only a claim, so only a peer the policy lets
    /// administer gets the quieter level: no ordinary client can hide its connections from the info log.
    func connectionLogLevel(_ session: Session) -> Logger.Level {
        session.machine.mayAdminister && session.name == Self.adminToolName ? .debug : .info
    }

    /// Replies with an error to a connection that is not admitted, then closes it (best effort, never blocks).
    func refuse(_ socket: SeqpacketSocket, _ code: ErrorCode, _ message: String) {
        // Before hello: a version-1 frame, which a client of any version can read (PROTOCOL.md, section 6.1).
        let frame = Frame(
            requestID: 0,
            message: .error(ErrorReply(code: code, requestType: MessageType(rawValue: 0), message: message)),
            version: ProtocolVersion.handshake)
        _ = try? socket.send(frame.encoded())
        socket.close()
    }
}
