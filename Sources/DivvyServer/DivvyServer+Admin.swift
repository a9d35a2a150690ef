import DivvyProtocol
import DivvyShm
import DivvySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Admin operations (`divvyctl`): reports built by `AdminReports` and paged by `AdminPaging`; `disconnect` kills a
/// direct client before its session ends (`AdminDisconnect`). Loop thread only.
extension DivvyServer {
    func admin(_ session: Session, _ operation: AdminOperation, _ argument: UInt32) throws(ServiceError)
        -> Message
    {
        let reports = AdminReports(server: self)
        switch operation {
        case .status: return reports.json(operation, reports.status(clients: sessions.count))
        case .classes: return reports.json(operation, reports.classes())
        case .clients:
            // Paged: the argument is the id the page starts after (PROTOCOL.md, "Admin paging").
            let now = ContinuousClock.now
            let page = AdminPaging.clientsPage(
                sessions, order: sessionOrder, after: argument, limit: adminBodyLimit
            ) {
                reports.client($0, now: now)
            }
            return .adminReply(AdminReply(operation: operation, format: .json, body: page))
        case .verify:
            participant?.collectRemoteFrees()
            let body = AdminPaging.verifyBody(reports.verify(), limit: adminBodyLimit)
            return .adminReply(AdminReply(operation: operation, format: .json, body: body))
        case .config: return reports.json(operation, reports.config())
        case .metrics:
            reportStatus()
            return .adminReply(AdminReply(operation: .metrics, format: .text, body: Array(metrics.exposition().utf8)))
        case .disconnect:
            guard let target = sessions[argument] else {
                throw ServiceError(.noSuchClient, "no client with id \(argument) is connected")
            }
            let summary = reports.client(target)
            if target === session {
                // Its own id: answered, then closed as after goodbye (PROTOCOL.md, admin). No kill: the requester
                // asked to leave, and a direct client's participant is recovered when its process exits.
                _ = session.closeAfterReplies()
                return reports.json(operation, AdminReports.Disconnected(disconnected: summary))
            }
            // A direct client writes heap metadata itself: its memory can be taken back safely only once it has
            // stopped, so disconnecting it kills it first (recovery follows its exit); if it cannot be killed,
            // nothing changes (AdminDisconnect.swift).
            var killedThrough: PeerProcess.Route?
            let direct = target.participant != nil && target.peer.pid != systemGetpid()
            if direct, let process = target.process {
                switch process.signal(SIGKILL) {
                case .sent(let route):
                    killedThrough = route
                    logger.notice(
                        "killed a disconnected direct client",
                        metadata: ["pid": "\(target.peer.pid)", "through": "\(route)"])
                case .exited: break
                case .failed(let errno, let route):
                    let refusal = Self.disconnectRefused(summary, errno: errno, route: route)
                    logger.error("could not kill a direct client to disconnect it; it stays connected", metadata: [
                        "client": "\(argument)", "pid": "\(target.peer.pid)", "error": "\(refusal.message)"])
                    throw refusal
                }
            }
            logger.notice("admin disconnects a client", metadata: ["client": "\(argument)", "by": "\(session.id)"])
            send(target, requestID: 0, .shutdown(reason: "disconnected by an administrator"))
            let recovery = disconnect(argument, reason: "disconnected by client \(session.id)")
            return reports.json(
                operation,
                AdminReports.Disconnected(
                    disconnected: summary, killed: killedThrough != nil, killedThrough: killedThrough?.rawValue,
                    recovery: recovery))
        }
    }
}
