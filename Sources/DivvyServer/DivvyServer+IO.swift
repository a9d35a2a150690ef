import DivvyProtocol
import DivvyTransport
import Logging

/// A connection's IO: reading one request per readiness event, sending replies (queued in the session's outbox
/// while the client is slow to read), and error replies. Loop thread only.
extension DivvyServer {
    func service(_ id: UInt32, _ events: EventPoller.Events) {
        guard let session = sessions[id] else { return }
        if events.contains(.writable) {
            flush(session)
            guard sessions[id] != nil else { return }
        }
        if events.contains(.readable), session.outbox.isIdle {
            readOne(session)
            return
        }
        if events.contains(.error) || (events.contains(.hangUp) && !events.contains(.readable)) {
            disconnect(id, reason: "connection lost")
        }
    }

    func readOne(_ session: Session) {
        let receipt: SeqpacketSocket.RequestReceipt
        do throws(TransportError) {
            receipt = try session.socket.receiveRequest(into: receiveBuffer)
        } catch {
            disconnect(session.id, reason: "receive failed: \(error)")
            return
        }
        switch receipt {
        case .wouldBlock:
            return
        case .endOfFile:
            // Also a 0-byte datagram: SOCK_SEQPACKET reports it as end of file (PROTOCOL.md section 1).
            disconnect(session.id, reason: "client closed the connection")
        case .datagram(let count, _, let carriedDescriptors):
            session.requests += 1
            // The buffer holds maxFrameSize + 1 bytes, so a longer datagram arrives cut to a length that is still
            // too large, with its header intact: the decoder then applies section 5's checks in their order (a
            // bad magic is malformedFrame with id 0 before the size is looked at).
            let bytes = UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count])
            let frame: Frame
            do throws(ProtocolError) {
                frame = try Frame.decode(bytes)
            } catch {
                reject(session, requestID: error.requestID, type: error.requestType, error.code, error.message)
                return
            }
            guard !carriedDescriptors else {
                // receiveRequest closed them. Descriptors travel only on region replies (PROTOCOL.md section 1).
                reject(
                    session, requestID: frame.requestID, type: frame.message.type, .malformedFrame,
                    "\(frame.message.type) carried file descriptors; only the daemon's region reply may carry any")
                return
            }
            handle(frame, from: session)
        }
    }

    /// Sends an error reply; closes the connection after it when the code says so.
    func reject(
        _ session: Session, requestID: UInt64, type: MessageType, _ code: ErrorCode, _ message: String
    ) {
        metrics.failure(code)
        if code.closesConnection, protocolErrors.failure(at: .now) {
            logger.warning(
                "closing client after protocol error (further ones within 10 s are counted, not logged)",
                metadata: ["client": "\(session.id)", "code": "\(code)", "message": "\(message)"])
        }
        send(session, requestID: requestID, .error(ErrorReply(code: code, requestType: type, message: message)))
        if code.closesConnection, session.closeAfterReplies() == .now {
            disconnect(session.id, reason: "\(code)")
        }
    }

    func send(_ session: Session, requestID: UInt64, _ message: Message, descriptors: [Int32] = []) {
        // Until welcome, every frame is a version-1 frame (PROTOCOL.md, section 6.1): a client of another version can
        // read why it was refused.
        let version = session.welcomed ? nil : ProtocolVersion.handshake
        if let replaced = ReplyCheck.encode(message, requestID: requestID, version: version, into: &sendBuffer) {
            metrics.failure(.internalError)
            logger.error("a reply did not fit a frame; answered internalError", metadata: [
                "client": "\(session.id)", "request": "\(requestID)", "error": "\(replaced)"])
        }
        guard session.outbox.isIdle else {
            _ = session.outbox.hold(sendBuffer, descriptors: descriptors)
            return
        }
        do throws(TransportError) {
            let sent =
                descriptors.isEmpty
                ? try session.socket.send(sendBuffer) : try session.socket.send(sendBuffer, descriptors: descriptors)
            switch sent {
            case .sent: return
            case .wouldBlock:
                if session.outbox.hold(sendBuffer, descriptors: descriptors) {
                    try? poller.modify(
                        session.socket.fileDescriptor, events: [.writable, .peerClosed], token: UInt64(session.id))
                }
            }
        } catch {
            // The peer is gone; EOF handling (or the hang-up event) disconnects it.
            _ = session.outbox.closeAfterReplies()
        }
    }

    func flush(_ session: Session) {
        while let (bytes, descriptors) = session.outbox.next {
            do throws(TransportError) {
                let sent =
                    descriptors.isEmpty
                    ? try session.socket.send(bytes) : try session.socket.send(bytes, descriptors: descriptors)
                guard sent == .sent else { return }
            } catch {
                disconnect(session.id, reason: "send failed: \(error)")
                return
            }
            session.outbox.sentNext()
        }
        switch session.outbox.flushed {
        case .close:
            disconnect(session.id, reason: "closed after reply")
        case .readAgain:
            try? poller.modify(
                session.socket.fileDescriptor, events: [.readable, .peerClosed], token: UInt64(session.id))
        }
    }
}
