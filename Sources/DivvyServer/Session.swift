import DivvyProtocol
import DivvyShm
import DivvyTransport

/// One connected client, as the event loop sees it: its socket and the values that decide what it may do (its
/// protocol state, mediated account and direct lease). Loop-thread only.
final class Session {
    /// The client id (also its poller token).
    let id: UInt32
    let socket: SeqpacketSocket
    let peer: PeerCredentials
    let connectedAt: ContinuousClock.Instant
    var machine: SessionStateMachine
    /// The name the client gave in hello.
    var name = ""
    /// Whether the client was welcomed (its connection is logged at info level only then).
    var welcomed = false
    /// What it holds through the daemon (`MediatedLedger` changes it).
    var account = MediatedAccount()
    /// Its page lease, when it is a direct client.
    var lease = DirectLease()
    /// Whether a participant slot is promised to this direct client (welcomed, not joined yet).
    var holdsDirectReservation = false
    /// Replies the socket could not take yet (the client is slow to read), and whether the connection closes once
    /// they are out (`ConnectionOutbox`).
    var outbox = ConnectionOutbox()
    /// Requests handled, for `divvyctl clients`.
    var requests = 0
    /// A direct client's process, by a pidfd taken when it joined (admin `disconnect` kills direct clients).
    var process: PeerProcess?

    init(
        id: UInt32, socket: SeqpacketSocket, peer: PeerCredentials, machine: SessionStateMachine,
        now: ContinuousClock.Instant
    ) {
        self.id = id
        self.socket = socket
        self.peer = peer
        self.machine = machine
        self.connectedAt = now
    }

    var mode: ClientMode? { machine.mode }

    /// Ends the exchange (nothing more is handled) and closes the connection after the replies sent so far.
    /// - Returns: whether to close now or once the waiting replies are out.
    func closeAfterReplies() -> ConnectionOutbox.Close {
        machine.close()
        return outbox.closeAfterReplies()
    }
    /// Blocks held through the daemon.
    var blocksHeld: Int { account.blocksHeld }
    /// Bytes held through the daemon.
    var bytesHeld: Int { account.bytesHeld }
    /// The heap participant this (direct) client joined.
    var participant: Int? { lease.participant }
    /// Pages the direct client may own.
    var pageAllowance: Int { lease.pageAllowance }
}
