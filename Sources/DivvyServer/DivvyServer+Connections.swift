import DivvyProtocol
import DivvySystem
import DivvyTransport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The event loop's connection-level defences (issue 13): what it does when `accept` runs out of descriptors, and
/// how it closes connections that never say hello. The decisions are pure values (`BurstLogLimiter`,
/// `HandshakeDeadlines`, `ConnectionAdmission`), tested on their own; this file carries them out. Loop thread only.
extension DivvyServer {
    /// `accept` failed (EMFILE/ENFILE: out of descriptors). The connection stays queued and the listener stays
    /// readable, so retrying at once would spin: give up the spare descriptor to take the connection and refuse
    /// it, or, without a spare, stop polling the listener for a moment. The log line is rate-limited.
    ///
    /// - Returns: true when a queued connection was taken and refused (more may be queued: accept again).
    func acceptFailed(_ error: TransportError) -> Bool {
        let now = ContinuousClock.now
        if acceptFailures.failure(at: now) {
            logger.error(
                """
                accept failed; refusing connections until descriptors are free (raise the open-files limit, \
                LimitNOFILE=, or lower max-clients); further failures are counted
                """,
                metadata: ["error": "\(error)", "clients": "\(sessions.count)"])
        }
        metrics.count(.refusedConnection)
        let outOfDescriptors = error.errno == EMFILE || error.errno == ENFILE
        if outOfDescriptors, spareDescriptor >= 0 {
            systemClose(spareDescriptor)
            spareDescriptor = -1
            // accept4 fails with EMFILE even when nothing is queued (it takes a descriptor first): only a connection
            // actually taken means more may wait.
            var shed = false
            var failed = false
            do throws(TransportError) {
                if let socket = try listener.accept() {
                    shed = true
                    refuse(
                        socket, .tooManyClients,
                        "divvyd is out of file descriptors (\(sessions.count) clients): try again later; its "
                            + "operator can raise the open-files limit (LimitNOFILE=) or lower max-clients")
                }
            } catch {
                failed = true  // Not this process's limit (ENFILE): closing one descriptor did not help.
            }
            spareDescriptor = (try? systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()) ?? -1
            if !failed, spareDescriptor >= 0 { return shed }
        }
        pauseListener(until: now + .milliseconds(200))
        return false
    }

    func pauseListener(until deadline: ContinuousClock.Instant) {
        guard listenerPausedUntil == nil, !shutdownMachine.isShuttingDown else { return }
        poller.remove(listener.fileDescriptor)
        listenerPausedUntil = deadline
    }

    func resumeListenerIfDue() {
        guard let until = listenerPausedUntil, ContinuousClock.now >= until else { return }
        listenerPausedUntil = nil
        guard !shutdownMachine.isShuttingDown else { return }
        if spareDescriptor < 0 {
            spareDescriptor = (try? systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()) ?? -1
        }
        do throws(TransportError) {
            try poller.add(listener.fileDescriptor, events: .readable, token: Self.listenerToken)
        } catch {
            pauseListener(until: ContinuousClock.now + .milliseconds(200))
        }
    }

    /// The summary lines the rate limits held back (accept failures, handshake timeouts, protocol errors,
    /// refusals), with counts.
    func reportSuppressedLogLines() {
        if let count = acceptFailures.summary(at: .now) {
            logger.error(
                "accept failed \(count) more times since the last report (out of descriptors?)",
                metadata: ["clients": "\(sessions.count)"])
        }
        if let count = handshakeTimeouts.summary(at: .now) {
            logger.notice(
                "\(count) more connections closed for sending no hello within handshake-timeout-ms",
                metadata: ["clients": "\(sessions.count)"])
        }
        if let count = protocolErrors.summary(at: .now) {
            logger.warning(
                "\(count) more clients closed after protocol errors since the last report",
                metadata: ["clients": "\(sessions.count)"])
        }
        if let count = refusals.summary(at: .now) {
            logger.warning(
                "\(count) more connections refused since the last report (connection limits)",
                metadata: ["clients": "\(sessions.count)"])
        }
    }

    /// Closes connections that did not say hello within `handshake-timeout-ms`, freeing their slots.
    func expireHandshakes() {
        for id in handshakeDeadlines.expired(at: .now) {
            guard let session = sessions[id], case .awaitingHello = session.machine.state,
                !session.outbox.closesWhenFlushed
            else { continue }
            let message = "no hello within \(configuration.handshakeTimeoutMilliseconds) ms of connecting "
                + "(handshake-timeout-ms); closing"
            send(
                session, requestID: 0,
                .error(ErrorReply(code: .handshakeRequired, requestType: MessageType(rawValue: 0), message: message)))
            if handshakeTimeouts.failure(at: .now) {
                logger.notice(
                    """
                    closing a connection that sent no hello within handshake-timeout-ms (further ones within 10 s \
                    are counted, not logged)
                    """,
                    metadata: ["client": "\(id)", "pid": "\(session.peer.pid)", "uid": "\(session.peer.uid)"])
            }
            if session.closeAfterReplies() == .now { disconnect(id, reason: "no hello within the handshake timeout") }
        }
    }
}
