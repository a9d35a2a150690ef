import DivvyProtocol
import DivvyShm
import Logging

/// Direct clients' page leases: `DirectLease` decides each request, this file writes the allowance it settles to
/// the heap and then applies it to the session (a failed heap write changes nothing). Loop thread only.
extension DivvyServer {
    func join(_ session: Session, _ p: Int) throws(ServiceError) -> Message {
        let joinable: Bool
        if session.lease.participant == nil, let status = heap.participantStatus(p) {
            joinable = status.state == .alive && status.pid == session.peer.pid && recovery.owner(of: p) == nil
                && p != participant?.index
        } else {
            joinable = false
        }
        let step = session.lease.join(
            p, joinable: joinable, pid: session.peer.pid, quota: quota,
            initialLeasePages: configuration.initialLeasePages)
        let pages = try carryOut(step, for: session)
        recovery.claim(p, by: session.id)
        // The process an admin disconnect must kill before the participant can be recovered: the one that
        // connected (SO_PEERPIDFD), never a later owner of its pid. Only direct clients need one (PeerProcess).
        session.process = PeerProcess(socket: session.socket.fileDescriptor, pid: session.peer.pid)
        if session.holdsDirectReservation { directSlots.release(&session.holdsDirectReservation) }
        metrics.count(.lease)
        logger.info("direct client joined", metadata: ["client": "\(session.id)", "participant": "\(p)",
                                                       "pages": "\(pages)"])
        return .joined(pageAllowance: UInt32(pages))
    }

    /// Raises a direct client's page lease by up to `pages`, as far as its quota allows (a partial grant is a
    /// grant: the reply carries the new total); nothing at all left under the quota is `quotaExceeded`.
    func lease(_ session: Session, more pages: Int) throws(ServiceError) -> Message {
        let step = session.lease.lease(more: pages, client: session.id, bytesHeld: session.bytesHeld, quota: quota)
        let allowance = try carryOut(step, for: session)
        if case .setAllowance = step { metrics.count(.lease) }
        return .leased(pageAllowance: UInt32(allowance))
    }

    func returnPages(_ session: Session, _ pages: Int) throws(ServiceError) -> Message {
        let step = session.lease.returnPages(pages) { heap.participantStatus($0)?.ownedPages ?? 0 }
        return .returned(pageAllowance: UInt32(try carryOut(step, for: session)))
    }

    /// Carries out a lease step: writes the allowance to the heap, then to the session. Returns the allowance.
    private func carryOut(_ step: DirectLease.Step, for session: Session) throws(ServiceError) -> Int {
        switch step {
        case .refuse(let error):
            throw error
        case .unchanged(let pages):
            return pages
        case .setAllowance(let p, let pages):
            do throws(SharedHeapError) {
                try heap.setPageAllowance(participant: p, pages: pages)
            } catch {
                throw ServiceError(error)
            }
            session.lease.applied(step)
            return pages
        }
    }
}
