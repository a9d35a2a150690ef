/// One protocol message: a request from a client, or a reply or notice from the daemon.
///
/// Each case is one message type (see `MessageType` and `Protocol/PROTOCOL.md` for the payload layouts). A
/// `Frame` adds the request id and header version.
public enum Message: Hashable, Sendable {
    /// 0x0001: opens the handshake.
    case hello(Hello)
    /// 0x8001: answers `hello`.
    case welcome(Welcome)
    /// 0x0002: asks for the region's file descriptor.
    case mapRegion
    /// 0x8002: the range to map; the descriptor travels as SCM_RIGHTS ancillary data.
    case region(RegionGrant)
    /// 0x0003 (direct only): the client joined heap participant slot `participant`.
    case join(participant: UInt32)
    /// 0x8003: the participant's page allowance.
    case joined(pageAllowance: UInt32)
    /// 0x0004: asks for `pages` more page allowance.
    case lease(pages: UInt32)
    /// 0x8004: the new total page allowance.
    case leased(pageAllowance: UInt32)
    /// 0x0005: gives `pages` of allowance back.
    case returnPages(pages: UInt32)
    /// 0x8005: the page allowance after the return.
    case returned(pageAllowance: UInt32)
    /// 0x0006: allocate one block of at least `size` bytes.
    case allocate(size: UInt64)
    /// 0x8006: the new block's handle and usable size.
    case allocated(handle: WireHandle, blockSize: UInt64)
    /// 0x0007: drop this client's hold on `handle`.
    case free(handle: WireHandle)
    /// 0x8007: true if the block went back to the heap, false if other holders remain.
    case freed(released: Bool)
    /// 0x0008: allocate `count` blocks of `size` bytes, all or nothing.
    case allocateBatch(size: UInt64, count: UInt32)
    /// 0x8008: the blocks' size and handles.
    case allocatedBatch(blockSize: UInt64, handles: [WireHandle])
    /// 0x0009: free each handle on its own.
    case freeBatch(handles: [WireHandle])
    /// 0x8009: one status per handle, in request order.
    case freedBatch(statuses: [FreedStatus])
    /// 0x000A: prepare `handle` to be passed to another client: the reply carries a single-use share token.
    case share(handle: WireHandle)
    /// 0x800A: the shared block and the share token that lets one other client adopt it.
    case shared(SharedInfo)
    /// 0x000B: become a holder of a shared block, redeeming the share token a holder got from `share`.
    case adopt(handle: WireHandle, token: UInt64)
    /// 0x800B: the adopted block's handle and size.
    case adopted(handle: WireHandle, blockSize: UInt64)
    /// 0x000C: asks for this client's accounting.
    case stats
    /// 0x800C: this client's accounting.
    case statsReply(ClientStats)
    /// 0x000D: echo request.
    case ping(payload: [UInt8])
    /// 0x800D: the ping's payload, echoed.
    case pong(payload: [UInt8])
    /// 0x000E: the client is leaving.
    case goodbye
    /// 0x800E: goodbye acknowledged; the daemon closes the connection next.
    case farewell
    /// 0x000F: an admin operation; `argument` is the client id for `disconnect`, the id the page starts after for
    /// `clients` (0: the first page; see `Protocol/PROTOCOL.md`, "Admin paging"), else 0.
    case admin(AdminOperation, argument: UInt32)
    /// 0x800F: an admin operation's result.
    case adminReply(AdminReply)
    /// 0x8010: unsolicited (request id 0): the daemon is shutting down.
    case shutdown(reason: String)
    /// 0x80FF: a request failed.
    case error(ErrorReply)

    /// The message's type code.
    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .mapRegion: .mapRegion
        case .region: .region
        case .join: .join
        case .joined: .joined
        case .lease: .lease
        case .leased: .leased
        case .returnPages: .returnPages
        case .returned: .returned
        case .allocate: .allocate
        case .allocated: .allocated
        case .free: .free
        case .freed: .freed
        case .allocateBatch: .allocateBatch
        case .allocatedBatch: .allocatedBatch
        case .freeBatch: .freeBatch
        case .freedBatch: .freedBatch
        case .share: .share
        case .shared: .shared
        case .adopt: .adopt
        case .adopted: .adopted
        case .stats: .stats
        case .statsReply: .statsReply
        case .ping: .ping
        case .pong: .pong
        case .goodbye: .goodbye
        case .farewell: .farewell
        case .admin: .admin
        case .adminReply: .adminReply
        case .shutdown: .shutdown
        case .error: .error
        }
    }

    /// Whether clients send this message (requests); false for the daemon's replies and notices.
    public var isRequest: Bool { type.rawValue & 0x8000 == 0 }

    /// Checks the bounds a peer's decoder enforces, so a sender can refuse to send a frame that would be rejected.
    ///
    /// Strings are not checked: encoding cuts them to their limit. Everything else `Frame.decode(_:)` would
    /// reject is: batch counts, ping payload size, the granted mode in `welcome`, the admin body size, and the
    /// whole frame's size.
    ///
    /// - Throws: `ProtocolError` with the code the peer would answer with (`batchTooLarge`, `malformedFrame`,
    ///   `frameTooLarge`), `requestType` set to this message's type.
    public func validate() throws(ProtocolError) {
        func fail(_ code: ErrorCode, _ message: String) -> ProtocolError {
            ProtocolError(code: code, message: message, requestType: type)
        }
        func checkBatch(_ count: Int) throws(ProtocolError) {
            guard (1...ProtocolLimits.maxBatchCount).contains(count) else {
                throw fail(.batchTooLarge, "batch count \(count) is outside 1...\(ProtocolLimits.maxBatchCount)")
            }
        }
        switch self {
        case .welcome(let welcome):
            guard welcome.mode != .any else { throw fail(.malformedFrame, "welcome must grant direct or mediated") }
        case .allocateBatch(_, let count): try checkBatch(Int(count))
        case .allocatedBatch(_, let handles): try checkBatch(handles.count)
        case .freeBatch(let handles): try checkBatch(handles.count)
        case .freedBatch(let statuses): try checkBatch(statuses.count)
        case .ping(let payload), .pong(let payload):
            guard payload.count <= ProtocolLimits.maxPingPayload else {
                throw fail(
                    .malformedFrame,
                    "ping payload of \(payload.count) bytes exceeds \(ProtocolLimits.maxPingPayload)")
            }
        case .adminReply(let reply):
            guard reply.body.count <= ProtocolLimits.maxAdminBodyLength else {
                throw fail(
                    .frameTooLarge,
                    "admin body of \(reply.body.count) bytes exceeds \(ProtocolLimits.maxAdminBodyLength)")
            }
        default:
            break
        }
        let size = encodedPayloadSize
        guard size <= ProtocolLimits.maxPayloadSize else {
            throw fail(.frameTooLarge, "payload of \(size) bytes exceeds \(ProtocolLimits.maxPayloadSize)")
        }
    }
}
