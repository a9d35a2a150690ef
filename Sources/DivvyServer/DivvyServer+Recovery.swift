import DivvyShm
import DivvySystem
import DivvyTransport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import SystemPackage

/// Disconnects and recovery: a departing session's mediated holdings go back through the `MediatedLedger`, and its
/// direct participant is recovered once its process has exited, with `ParticipantRecovery` keeping the owners,
/// exit watches and retries. This file does the effects (heap frees and recoveries, pidfds, the poller). Loop
/// thread only.
extension DivvyServer {
    /// Ends a session and reclaims everything it held: its mediated holdings are dropped (blocks only it held go
    /// back to the heap), and its direct participant, if any and still joined, is recovered.
    /// - Returns: what happens to the direct participant (the recovery's outcome), or nil when there is none.
    @discardableResult
    func disconnect(_ id: UInt32, reason: String) -> String? {
        guard let session = sessions.removeValue(forKey: id) else { return nil }
        sessionOrder.remove(id)
        admission.closed(uid: session.peer.uid)
        poller.remove(session.socket.fileDescriptor)
        session.socket.close()
        shareTokens.dropIssuer(id)
        var released = 0
        for handle in ledger.release(session.account) {
            do throws(SharedHeapError) {
                if try daemonFree(handle) { released += 1 }
            } catch {
                logger.error("could not drop a holding of a departed client", metadata: [
                    "client": "\(id)", "handle": "\(handle)", "error": "\(error)"])
            }
        }
        var metadata: Logger.Metadata = [
            "client": "\(id)", "name": "\(session.name)", "reason": "\(reason)",
            "mediated_blocks_released": "\(released)",
        ]
        var outcome: String?
        if session.holdsDirectReservation { directSlots.release(&session.holdsDirectReservation) }
        if let p = session.participant {
            recovery.disown(p)
            if let status = heap.participantStatus(p), status.state != .free, status.pid == session.peer.pid {
                metadata["participant"] = "\(p)"
                let description: String
                if status.state == .leaving, heap.releaseSlot(participant: p, pid: session.peer.pid) {
                    // It left cleanly; only now that its session is over may the slot be offered again.
                    description = "none needed: it left; slot released"
                } else {
                    description = recoverWhenExited(p, pid: session.peer.pid, pidfd: session.process?.takeDescriptor())
                }
                metadata["recovery"] = "\(description)"
                outcome = description
            }
        }
        session.process?.close()
        metrics.count(.disconnection)
        // A connection that was never welcomed logs at debug, like its "connection accepted": otherwise every
        // connect-and-drop would write an info line (a log flood on demand).
        logger.log(
            level: session.welcomed ? connectionLogLevel(session) : .debug, "client disconnected", metadata: metadata)
        return outcome
    }

    /// Recovers participant `p` of process `pid` once that process has exited: at once if it has, else when its
    /// pidfd turns readable (or, without pidfd support, when `tick()` sees it gone). `pidfd` (taken when the
    /// client connected; this function owns it) is used when given, else one is opened.
    private func recoverWhenExited(_ p: Int, pid: Int32, pidfd: Int32? = nil) -> String {
        guard pid != systemGetpid() else {
            if let pidfd, pidfd >= 0 { systemClose(pidfd) }
            return "kept: the participant belongs to the daemon's own process"
        }
        let opened: Result<Int32, Errno> = pidfd.flatMap { $0 >= 0 ? .success($0) : nil } ?? systemPidfdOpen(pid)
        guard case .success(let fd) = opened else {
            if case .failure(.noSuchProcess) = opened { return recover(p) }
            if processHasExited(pid) { return recover(p) }
            // No pidfd (kernel < 5.3): `tick()` recovers it via deadParticipants() once the process is gone.
            return "deferred until process \(pid) exits"
        }
        // The pid may have been reused before the pidfd was opened (the pidfd then names another process): the
        // start time recorded at join tells, checked after opening so that no reuse can slip in between.
        if !heap.participantProcessIsRunning(p) {
            systemClose(fd)
            return recover(p)
        }
        let (token, replaced) = recovery.watch(p, pid: pid, descriptor: fd)
        if let replaced {
            poller.remove(replaced.descriptor)
            systemClose(replaced.descriptor)
        }
        do throws(TransportError) {
            try poller.add(fd, events: .readable, token: token)
        } catch {
            _ = recovery.endWatch(token)
            systemClose(fd)
            return processHasExited(pid) ? recover(p) : "deferred until process \(pid) exits"
        }
        return "when process \(pid) exits"
    }

    /// A watched process exited: recover its participant if it still holds the slot.
    func processExited(_ token: UInt64) {
        guard let watch = recovery.endWatch(token) else { return }
        poller.remove(watch.descriptor)
        systemClose(watch.descriptor)
        guard let status = heap.participantStatus(watch.participant), status.state != .free, status.pid == watch.pid
        else { return }
        let outcome = recover(watch.participant)
        logger.info(
            "recovered a direct client's participant after its process exited",
            metadata: ["participant": "\(watch.participant)", "pid": "\(watch.pid)", "outcome": "\(outcome)"])
    }

    /// Whether a process is gone or a zombie (`kill(pid, 0)` still succeeds for a zombie).
    private func processHasExited(_ pid: Int32) -> Bool {
        if case .failure(.noSuchProcess) = systemKill(pid, 0) { return true }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].trimmingWhitespace.first == "Z"
    }

    /// Recovers a participant; an incomplete recovery is retried by `tick()`.
    private func recover(_ p: Int) -> String {
        do throws(SharedHeapError) {
            let report = try heap.recover(participant: p)
            recovery.recovered(p, .complete)
            metrics.count(.recovery)
            return report.description
        } catch {
            recovery.recovered(p, error.code == .recoveryIncomplete ? .incomplete : .failed)
            return "\(error)"
        }
    }

    /// Periodic work: retries incomplete recoveries, and recovers participants whose process died without a
    /// session (it joined the heap but died before telling the daemon).
    func tick() {
        for p in recovery.retries {
            let outcome = recover(p)
            logger.info("retried recovery", metadata: ["participant": "\(p)", "outcome": "\(outcome)"])
        }
        for p in recovery.orphans(deadParticipants: heap.deadParticipants(), daemonParticipant: participant?.index) {
            let outcome = recover(p)
            logger.info("recovered an orphaned participant", metadata: ["participant": "\(p)", "outcome": "\(outcome)"])
        }
        // Frees other processes made into the daemon's pages.
        participant?.collectRemoteFrees()
        repairHoles()
    }
}
