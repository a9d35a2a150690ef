import DivvyProtocol
import DivvyShm
import DivvyTransport

/// One connected client, as the event loop sees it. Loop-thread only.
final class Session {
    /// The client id (also its poller token).
    let id: UInt32
    let socket: SeqpacketSocket
    let peer: PeerCredentials
    let connectedAt: Double
    var machine: SessionStateMachine
    /// The name the client gave in hello.
    var name = ""
    /// Whether the client was welcomed (its connection is logged at info level only then).
    var welcomed = false
    /// One handle's mediated holdings by this client.
    struct Holding {
        /// How many times this client holds the block (allocations + adoptions).
        var count: UInt32
        /// The block's size (its class), so a free needs no heap lookup for the byte count.
        var blockSize: UInt32
    }
    /// Mediated holdings: handle → holding.
    var holdings = HandleTable<Holding>()
    /// Blocks held through the daemon (the sum of the holdings' counts).
    var blocksHeld = 0
    /// Bytes of blocks in `holdings` (with multiplicity).
    var bytesHeld = 0
    /// Bytes of large (span-tier) blocks in `holdings`, with multiplicity (`large-quota`, `FairShare`).
    var largeBytesHeld = 0
    /// The heap participant this (direct) client joined, once `join` succeeded.
    var participant: Int?
    /// Whether a participant slot is promised to this direct client (welcomed, not joined yet).
    var holdsDirectReservation = false
    /// Pages the direct client may own (its lease).
    var pageAllowance = 0
    /// Frames the socket could not take yet (the client is slow to read); no request is read meanwhile.
    /// The descriptors travelling with a frame are the region's own (never closed here).
    var outbox: [(bytes: [UInt8], descriptors: [Int32])] = []
    /// Close once the outbox is flushed (after farewell or a closing error).
    var closeAfterFlush = false
    /// Requests handled, for `divvyctl clients`.
    var requests = 0
    /// A direct client's process, by a pidfd taken when it joined (admin `disconnect` kills direct clients).
    var process: PeerProcess?

    init(id: UInt32, socket: SeqpacketSocket, peer: PeerCredentials, machine: SessionStateMachine, now: Double) {
        self.id = id
        self.socket = socket
        self.peer = peer
        self.machine = machine
        self.connectedAt = now
    }

    var mode: ClientMode? { machine.mode }
}
