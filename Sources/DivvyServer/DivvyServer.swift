import Divvy
import DivvyProtocol
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

#if canImport(Glibc)
import Glibc
#endif

/// The allocator daemon as a library: it maps a shared-memory region, formats a `SharedHeap` in it, listens on a
/// Unix `SOCK_SEQPACKET` socket, admits clients by their kernel credentials, and serves the protocol of
/// `Protocol/PROTOCOL.md` — direct clients allocate in shared memory themselves under a page lease; mediated
/// clients allocate over the socket. When a client's connection ends (goodbye, EOF, or its death: the kernel
/// closes its socket), the daemon reclaims everything only it held, at once.
///
/// ```swift
/// import Logging
///
/// let server = try DivvyServer(configuration: .init(), logger: Logger(label: "divvyd"))
/// try server.run()              // blocks until `shutdown(reason:)` is called from another thread
/// ```
///
/// ## Threading
/// One event-loop thread (the one calling `run()`) does everything: accepting, reading, heap operations for
/// mediated clients (through the daemon's own heap participant), replies and recovery. Every socket is
/// non-blocking and the loop reads one request per readiness event, so no client can stall the others: a client
/// that does not read its replies only stops its own requests from being read (its replies wait in its outbox).
/// `shutdown(reason:)`, `isReady` and `snapshotCounters()` may be called from any thread.
///
/// ## Mediated holdings
/// The daemon's participant is the heap-level holder of every block that mediated clients hold; which client
/// holds what (and how often) is kept here, per session, with a per-handle count across sessions. A block goes
/// back to the heap when its last mediated holder frees it (and no direct client holds it). Because the daemon
/// is the only one that can touch these records, a mediated client cannot corrupt the heap through them.
public final class DivvyServer: @unchecked Sendable {
    /// The configuration the daemon runs with. A reload (`reload(_:)`) changes its reloadable settings on the loop
    /// thread; read it there (or before `run()`).
    public internal(set) var configuration: ServerConfiguration
    /// The shared-memory region.
    public let region: SharedRegion
    /// The heap in the region.
    public let heap: SharedHeap
    /// The path the daemon listens on.
    public let socketPath: String
    /// The named region's owner lock (nil for an anonymous region): held from before the region is created until
    /// the daemon has removed it, so a successor can tell a live daemon from a crashed one.
    private let regionOwnerLock: SharedRegionOwnerLock?
    /// When the daemon started (seconds since the epoch).
    public let startTime: Double

    let logger: Logger
    let hooks: ServerHooks
    /// False when the listener was inherited (socket activation): the path is not ours to unlink.
    private let ownsSocketPath: Bool
    private var lastStatus = ""
    let listener: SeqpacketSocket
    let poller: EventPoller
    let control = ProcessLock()
    // Guarded by `control`.
    private var shutdownReason: String?
    /// A configuration `reload(_:)` handed over, for the loop to apply (`applyPendingReload()`).
    var pendingReload: ServerConfiguration?
    private var running = false
    private var countersSnapshot = ServerCounters()

    // Event-loop state (only the thread in `run()` touches it).
    private var participant: SharedHeap.Participant? {
        didSet { daemonParticipantRef = participant.map { Unmanaged.passUnretained($0) } }
    }
    /// `participant` without reference counting, for the per-block paths (a retain/release pair costs more than
    /// the heap operation). Invariant: the same object as `participant`, which keeps it alive.
    private var daemonParticipantRef: Unmanaged<SharedHeap.Participant>?
    var sessions: [UInt32: Session] = [:]
    /// The ids of `sessions`, ascending, for `admin clients` pages.
    var sessionOrder = SortedClientIDs()
    /// The heap usage `stats` and `admin status` report (`HeapUsageSnapshot`); tests may change `maxAge` before
    /// `run()`.
    var heapUsageSnapshot = HeapUsageSnapshot(maxAge: HeapUsageSnapshot.defaultMaxAge)
    private var nextClientID: UInt32 = 1
    /// Mediated holdings beyond the first, per handle. The daemon's participant holds a mediated block once (one
    /// bit in the block's word), whichever sessions hold it; that bit stands for the first mediated holding, and
    /// any further ones (another client adopting the block, or the same one adopting it again) are counted here.
    /// Usually empty, so allocating and freeing touch only the session's own table.
    private var extraMediatedHoldings: [SharedHeapHandle: Int] = [:]
    private var directOwners: [Int: UInt32] = [:]
    /// Participant slots promised to direct clients welcomed but not yet joined.
    private var directSlots = DirectSlotReservations()
    private var pendingRecoveries: Set<Int> = []
    /// Direct participants whose connection ended while their process may still run, by poller token: recovered
    /// when the process exits (its pidfd turns readable), never before — recovering a participant whose process
    /// still runs would race with that process's own operations on the heap.
    private var exitWatches: [UInt64: (participant: Int, pid: Int32, fd: Int32)] = [:]
    private static let exitWatchBase: UInt64 = 1 << 40
    /// The heap's block sizes, ascending (read once: `heap.sizeClasses` builds an array).
    private let classSizes: [Int]
    let metrics = ServerMetrics()

    /// The Prometheus text exposition of the daemon's metrics (any thread): what `divvyctl metrics` and the
    /// `metrics-listen` listener (`MetricsListenerService`) serve.
    public func metricsExposition() -> String { metrics.exposition() }

    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private var sendBuffer: [UInt8] = []
    var shutdownDeadline: Double?
    /// The largest admin body the daemon builds (`AdminPaging`); only tests change it, before `run()`, to provoke
    /// an over-long reply.
    var adminBodyLimit = ProtocolLimits.maxAdminBodyLength
    /// Connection slots: max-clients, the per-uid limit, the slots kept for admins.
    var admission: ConnectionAdmission
    /// Connections that have not said hello yet, by deadline (`handshake-timeout-ms`).
    var handshakeDeadlines = HandshakeDeadlines()
    /// An open descriptor given up when `accept` fails for lack of descriptors, so the connection at the head of
    /// the queue can be taken and refused instead of staying queued (and readiness firing again at once).
    var spareDescriptor: Int32 = -1
    /// When the listener is not polled (out of descriptors and no spare), until when.
    var listenerPausedUntil: ContinuousClock.Instant?
    var acceptFailures = BurstLogLimiter()
    var refusals = BurstLogLimiter()
    var handshakeTimeouts = BurstLogLimiter()
    var protocolErrors = BurstLogLimiter()
    /// Per-client block and large-block limits for mediated clients (`FairShare`).
    let fairShare: FairShare
    /// Watches the data object for punched holes while the region is fully committed (`HoleRepair`); nil otherwise.
    var holeRepair: HoleRepair?
    /// Whether the last hole repair failed (its error is logged once until a repair succeeds).
    var holeRepairFailing = false

    static let listenerToken: UInt64 = 0

    /// Maps the region, formats the heap and binds the socket: once this returns the daemon is ready to accept
    /// (connections queue in the listen backlog until `run()` serves them).
    ///
    /// - Throws: `ServerError` with a message saying what to do: `.invalidConfiguration`, `.region` (e.g. not
    ///   enough space in /dev/shm, or a region name in use), `.socket` (e.g. another daemon listens there).
    ///
    /// - Parameters:
    ///   - listenerDescriptor: an already bound and listening `AF_UNIX` `SOCK_SEQPACKET` socket to serve instead
    ///   of binding `configuration.socketPath` (socket activation: systemd passes it as fd 3). The daemon owns it
    ///   from now on, and does not unlink the socket path when it stops (the service manager owns the path).
    ///   - hooks: callbacks at ready, status changes, ticks and stopping.
    public init(
        configuration: ServerConfiguration, logger: Logger, listenerDescriptor: Int32? = nil,
        hooks: ServerHooks = ServerHooks()
    ) throws(ServerError) {
        do throws(ServerConfiguration.ParseError) {
            try configuration.validate()
        } catch {
            throw ServerError(.invalidConfiguration, error.message)
        }
        self.configuration = configuration
        self.logger = logger
        self.hooks = hooks
        self.ownsSocketPath = listenerDescriptor == nil
        self.socketPath = configuration.socketPath
        self.startTime = Date().timeIntervalSince1970
        self.admission = ConnectionAdmission(
            .init(
                maxClients: configuration.maxClients,
                reservedAdminConnections: configuration.reservedAdminConnections,
                maxConnectionsPerUID: configuration.effectiveMaxConnectionsPerUID))

        // The region and heap.
        var heapConfiguration = SharedHeapConfiguration(pageSize: configuration.pageSize)
        if let classes = configuration.sizeClasses { heapConfiguration.sizeClasses = classes }
        // Slot 0 — the daemon's own participant, the first to join — holds every mediated block; the other slots
        // are direct clients'.
        heapConfiguration.heldCapacity = configuration.directHeldCapacity
        heapConfiguration.firstSlotHeldCapacity = configuration.heldCapacity
        heapConfiguration.participantCapacity = configuration.participantCapacity
        let metadataSize = SharedHeap.requiredMetadataSize(
            dataSize: configuration.dataSize, configuration: heapConfiguration)
        let regionConfiguration = SharedRegion.Configuration(
            dataSize: configuration.dataSize, metadataSize: metadataSize, namePrefix: configuration.regionNamePrefix,
            hugePages: configuration.hugePages, commitment: configuration.commitment,
            prefault: configuration.prefault, ifExists: .fail,
            // The data in an object of its own: mediated clients receive only that descriptor.
            separateDataObject: true,
            // Lazy: the heap commits a page's metadata when it claims the page; admit what is committed at start,
            // the heap's initial metadata and the held list our own participant commits when it joins below.
            lazyCommittedMetadataSize: SharedHeap.initialMetadataSize(
                dataSize: configuration.dataSize, configuration: heapConfiguration)
                + heapConfiguration.heldCapacity * 8)
        let region: SharedRegion
        let ownerLock: SharedRegionOwnerLock?
        do throws(SharedRegionError) {
            if let name = configuration.regionName {
                // The owner lock first: while we hold it no other daemon serves the name, so an object that is
                // already there was left by a daemon that died without removing it (a crash, SIGKILL, OOM).
                let lock = try SharedRegionOwnerLock.acquire(
                    name: name, namePrefix: configuration.regionNamePrefix, mode: regionConfiguration.mode)
                ownerLock = lock
                do throws(SharedRegionError) {
                    region = try SharedRegion.create(name: name, regionConfiguration)
                } catch where error.code == .alreadyExists {
                    let note = "replacing a region left by a daemon that stopped without removing it (its clients' "
                        + "blocks are not carried over)"
                    logger.warning(
                        "\(note)",
                        metadata: ["region": "\(lock.lockObjectName.dropLast(5))"])
                    var replacing = regionConfiguration
                    replacing.ifExists = .replace
                    region = try SharedRegion.create(name: name, replacing)
                }
            } else {
                ownerLock = nil
                region = try SharedRegion.createAnonymous(regionConfiguration)
            }
        } catch {
            throw ServerError(.region, "could not create the shared-memory region: \(error)")
        }
        self.region = region
        regionOwnerLock = ownerLock
        /// Undoes the region on a failed start: removes its name and then the owner lock's.
        func abandonRegion() {
            if configuration.regionName != nil { try? region.remove() }
            ownerLock?.release(removingName: true)
        }
        do throws(SharedHeapError) {
            heap = try SharedHeap.create(in: region, configuration: heapConfiguration)
            classSizes = heap.sizeClasses
            // The large-block tier: span pages and the extent area (blocks above the largest class).
            let spanTierBytes = heap.spanPageCount * heap.spanPageSize + heap.extentUnitCount * heap.extentUnitSize
            fairShare = FairShare(
                maxBlocksPerClient: configuration.effectiveMaxBlocksPerClient,
                heldCapacity: configuration.heldCapacity,
                largestSmallBlock: heap.spanPageCount == 0 ? heap.largestBlockSize : heap.largestSmallBlockSize,
                largeQuotaBytes: configuration.effectiveLargeQuotaBytes(
                    spanTierBytes: spanTierBytes, spanPageSize: heap.spanPageSize),
                spanTierBytes: spanTierBytes)
            holeRepair = configuration.commitment == .full ? HoleRepair(region: region) : nil
        } catch {
            abandonRegion()
            throw ServerError(.invalidConfiguration, "could not format the heap: \(error)")
        }

        // The daemon's own participant: the heap-level holder of mediated clients' blocks.
        do throws(SharedHeapError) {
            let joined = try heap.join(name: "divvyd")
            // Invariant: the heap was just formatted, so the first join takes slot 0, the one with the large held
            // list (`firstSlotHeldCapacity`).
            precondition(joined.index == 0, "the daemon's participant must be heap slot 0, got \(joined.index)")
            participant = joined
            daemonParticipantRef = Unmanaged.passUnretained(joined)  // (property observers do not run in init)
        } catch {
            abandonRegion()
            throw ServerError(.region, "the daemon could not join its own heap: \(error)")
        }

        // The socket.
        let path = configuration.socketPath
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if listenerDescriptor == nil, !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                abandonRegion()
                throw ServerError(.socket, "could not create the socket directory \(directory): \(error)")
            }
        }
        do throws(TransportError) {
            if let listenerDescriptor {
                listener = try SeqpacketSocket.adoptListener(listenerDescriptor)
            } else {
                listener = try SeqpacketSocket.listen(
                    path: configuration.socketPath, mode: mode_t(configuration.socketMode))
            }
            poller = try EventPoller()
            try poller.add(listener.fileDescriptor, events: .readable, token: Self.listenerToken)
        } catch {
            abandonRegion()
            throw ServerError(.socket, "could not listen on \(configuration.socketPath): \(error)")
        }
        receiveBuffer = .allocate(byteCount: ProtocolLimits.maxFrameSize + 1, alignment: 16)
        spareDescriptor = (try? systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()) ?? -1
        logger.info(
            "divvyd ready",
            metadata: [
                "socket": "\(configuration.socketPath)", "region": "\(region.objectName ?? "anonymous memfd")",
                "data_bytes": "\(region.geometry.dataSize)",
                "pages": "\(heap.smallPageCount)x\(heap.pageSize) + \(heap.spanPageCount)x\(heap.spanPageSize)",
                "page_kind": "\(region.pageKind)",
            ])
    }

    deinit {
        receiveBuffer.deallocate()
        if spareDescriptor >= 0 { systemClose(spareDescriptor) }
    }

    /// Asks the loop to shut down gracefully: stop accepting, tell every client (`shutdown`), wait up to the grace
    /// period for them to leave, reclaim the rest, return from `run()`. Any thread; idempotent.
    public func shutdown(reason: String = "divvyd is shutting down") {
        control.lock()
        if shutdownReason == nil { shutdownReason = reason }
        control.unlock()
        poller.waker.wake()
    }

    /// The counters as of the last loop iteration (any thread).
    public func snapshotCounters() -> ServerCounters {
        control.lock()
        defer { control.unlock() }
        return countersSnapshot
    }

    /// Runs the event loop on the calling thread until a graceful shutdown completes.
    ///
    /// - Throws: `ServerError.eventLoop` when polling fails (out of descriptors is survived, not thrown).
    public func run() throws(ServerError) {
        control.lock()
        precondition(!running, "DivvyServer.run() called twice")
        running = true
        control.unlock()
        var events: [EventPoller.Event] = []
        events.reserveCapacity(64)
        var lastTick = Date().timeIntervalSince1970
        hooks.ready()
        reportStatus()
        while true {
            events.removeAll(keepingCapacity: true)
            do throws(TransportError) {
                try poller.wait(timeoutMilliseconds: shutdownDeadline == nil ? 250 : 20) { events.append($0) }
            } catch {
                throw ServerError(.eventLoop, "epoll_wait failed: \(error)")
            }
            // Before this batch: a connection made after `reload(_:)` returned is decided by the new configuration.
            applyPendingReload()
            for event in events {
                switch event.token {
                case Self.listenerToken: acceptAll()
                case EventPoller.wakeToken: break
                case let token where token >= Self.exitWatchBase: processExited(token)
                default: service(UInt32(truncatingIfNeeded: event.token), event.events)
                }
            }
            let now = Date().timeIntervalSince1970
            resumeListenerIfDue()
            if now - lastTick >= 0.2 || events.isEmpty {
                lastTick = now
                expireHandshakes()
                reportSuppressedLogLines()
                tick()
                hooks.tick()
                reportStatus()
            }
            if try progressShutdown(now: now) { break }
            publishCounters()
        }
        participant?.leave()
        participant = nil
        if configuration.regionName != nil {
            do throws(SharedRegionError) {
                try region.remove()
            } catch {
                logger.error("could not remove the region", metadata: ["error": "\(error)"])
            }
        }
        // Last: until the region's name is gone, a successor must see the name as served.
        regionOwnerLock?.release(removingName: true)
        publishCounters()
        logger.info("divvyd stopped")
    }

    /// Bytes of heap pages in the data area (small pages and span pages).
    var heapCapacity: Int {
        heap.smallPageCount * heap.pageSize + heap.spanPageCount * heap.spanPageSize
            + heap.extentUnitCount * heap.extentUnitSize
    }

    /// Refreshes the gauges and tells the hooks a one-line status when it changed.
    private func reportStatus() {
        let usage = heap.usage()
        heapUsageSnapshot.store(usage, at: .now)
        metrics.update(
            usage, clients: sessions.count, leasedPages: sessions.values.reduce(0) { $0 + $1.pageAllowance })
        let status = "serving \(sessions.count) client(s); \(usage.bytesInUse >> 10) KiB of "
            + "\(heapCapacity >> 20) MiB in use"
        if status != lastStatus {
            lastStatus = status
            hooks.status(status)
        }
    }

    private func publishCounters() {
        control.lock()
        countersSnapshot = metrics.counters
        countersSnapshot.clients = sessions.count
        countersSnapshot.heapUsageRequestWalks = heapUsageSnapshot.requestWalks
        control.unlock()
    }

    // MARK: Shutdown

    /// Returns true when the loop should end.
    private func progressShutdown(now: Double) throws(ServerError) -> Bool {
        control.lock()
        let reason = shutdownReason
        control.unlock()
        guard let reason else { return false }
        if shutdownDeadline == nil {
            shutdownDeadline = now + Double(configuration.shutdownGraceMilliseconds) / 1000
            hooks.stopping()
            poller.remove(listener.fileDescriptor)
            listener.close()
            if ownsSocketPath { _ = systemUnlink(socketPath) }
            logger.notice(
                "shutting down", metadata: ["reason": "\(reason)", "clients": "\(sessions.count)"])
            for session in sessions.values {
                send(session, requestID: 0, .shutdown(reason: reason))
            }
        }
        if sessions.isEmpty { return true }
        if let deadline = shutdownDeadline, now >= deadline {
            for id in Array(sessions.keys) {
                disconnect(id, reason: "shutdown grace period over")
            }
            return true
        }
        return false
    }

    // MARK: Accepting

    /// Accepts what is queued, at most 64 connections per readiness event: a connect flood cannot keep the loop
    /// from its clients (the listener is level-triggered, so the rest are taken on the next round).
    private func acceptAll() {
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

    private func admit(_ socket: SeqpacketSocket) {
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
        guard shutdownDeadline == nil else {
            metrics.count(.refusedConnection)
            refuse(socket, .shuttingDown, "the daemon is shutting down")
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
        let machine = SessionStateMachine(mayUseDirect: policy.allowsDirect(peer), mayAdminister: policy.allowsAdmin(peer))
        let session = Session(id: id, socket: socket, peer: peer, machine: machine, now: Date().timeIntervalSince1970)
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
    private func connectionLogLevel(_ session: Session) -> Logger.Level {
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

    // MARK: Serving a connection

    private func service(_ id: UInt32, _ events: EventPoller.Events) {
        guard let session = sessions[id] else { return }
        if events.contains(.writable) {
            flush(session)
            guard sessions[id] != nil else { return }
        }
        if events.contains(.readable), session.outbox.isEmpty {
            readOne(session)
            return
        }
        if events.contains(.error) || (events.contains(.hangUp) && !events.contains(.readable)) {
            disconnect(id, reason: "connection lost")
        }
    }

    private func readOne(_ session: Session) {
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
    private func reject(
        _ session: Session, requestID: UInt64, type: MessageType, _ code: ErrorCode, _ message: String
    ) {
        metrics.failure(code)
        if code.closesConnection, protocolErrors.failure(at: .now) {
            logger.warning(
                "closing client after protocol error (further ones within 10 s are counted, not logged)",
                metadata: ["client": "\(session.id)", "code": "\(code)", "message": "\(message)"])
        }
        send(session, requestID: requestID, .error(ErrorReply(code: code, requestType: type, message: message)))
        if code.closesConnection {
            session.machine.close()
            session.closeAfterFlush = true
            if session.outbox.isEmpty { disconnect(session.id, reason: "\(code)") }
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
        guard session.outbox.isEmpty else {
            session.outbox.append((sendBuffer, descriptors))
            return
        }
        do throws(TransportError) {
            let sent =
                descriptors.isEmpty
                ? try session.socket.send(sendBuffer) : try session.socket.send(sendBuffer, descriptors: descriptors)
            switch sent {
            case .sent: return
            case .wouldBlock:
                session.outbox.append((sendBuffer, descriptors))
                try? poller.modify(session.socket.fileDescriptor, events: [.writable, .peerClosed], token: UInt64(session.id))
            }
        } catch {
            // The peer is gone; EOF handling (or the hang-up event) disconnects it.
            session.closeAfterFlush = true
        }
    }

    private func flush(_ session: Session) {
        while let (bytes, descriptors) = session.outbox.first {
            do throws(TransportError) {
                let sent =
                    descriptors.isEmpty ? try session.socket.send(bytes) : try session.socket.send(bytes, descriptors: descriptors)
                guard sent == .sent else { return }
            } catch {
                disconnect(session.id, reason: "send failed: \(error)")
                return
            }
            session.outbox.removeFirst()
        }
        if session.closeAfterFlush {
            disconnect(session.id, reason: "closed after reply")
            return
        }
        try? poller.modify(session.socket.fileDescriptor, events: [.readable, .peerClosed], token: UInt64(session.id))
    }

    // MARK: Requests

    private func handle(_ frame: Frame, from session: Session) {
        let message = frame.message
        let id = frame.requestID
        if shutdownDeadline != nil, case .reject(let code, let text) = SessionStateMachine.duringShutdown(message) {
            reject(session, requestID: id, type: message.type, code, text)
            return
        }
        if case .hello(let hello) = message {
            welcome(session, hello, requestID: id)
            return
        }
        switch session.machine.admit(message) {
        case .reject(let code, let text):
            reject(session, requestID: id, type: message.type, code, text)
            return
        case .handle:
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
            session.machine.close()
            session.closeAfterFlush = true
            leaving = true
        } else {
            leaving = false
        }
        // After farewell, an admin disconnect of the requester's own id, or a failed send: the reply, then the close.
        if session.closeAfterFlush, session.outbox.isEmpty, sessions[session.id] === session {
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

    private func welcome(_ session: Session, _ hello: Hello, requestID: UInt64) {
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
                version: version, mode: mode, clientID: session.id, quotaBytes: UInt64(configuration.effectiveQuotaBytes),
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
    private func releaseLeftSlots() {
        for (p, id) in directOwners {
            // releaseSlot frees only a slot that is leaving and was left by that pid (one word read otherwise).
            guard let owner = sessions[id], heap.releaseSlot(participant: p, pid: owner.peer.pid) else { continue }
            directOwners[p] = nil
            owner.participant = nil
        }
    }

    /// An error a request gets (the reply's code and message); the heap and the session are unchanged.
    struct ServiceError: Error {
        var code: ErrorCode
        var message: String
        init(_ code: ErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
        init(_ error: SharedHeapError) {
            self.init(ErrorCode(error.code), error.message)
        }
        init(_ refusal: FairShare.Refusal) {
            self.init(.quotaExceeded, refusal.message)
        }
    }

    private func serve(_ message: Message, for session: Session) throws(ServiceError) -> Message {
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
        case .freeBatch(let handles):
            var statuses: [FreedStatus] = []
            statuses.reserveCapacity(handles.count)
            var freed = 0
            defer {
                metrics.count(.free, by: freed)
            }
            // The table is moved out of the session for the loop (see allocateBatch).
            var holdings = session.holdings
            session.holdings = HandleTable()
            defer { session.holdings = holdings }
            for handle in handles {
                do throws(ServiceError) {
                    statuses.append(
                        try free(session, SharedHeapHandle(handle), in: &holdings) ? .released : .stillHeld)
                    freed += 1
                } catch {
                    metrics.failure(error.code)
                    statuses.append(FreedStatus(error: error.code))
                }
            }
            return .freedBatch(statuses: statuses)
        case .share(let handle): return .shared(try share(session, SharedHeapHandle(handle)))
        case .adopt(let handle):
            let blockSize = try adopt(session, SharedHeapHandle(handle))
            return .adopted(handle: handle, blockSize: UInt64(blockSize))
        case .stats: return .statsReply(stats(for: session))
        case .ping(let payload): return .pong(payload: payload)
        case .goodbye: return .farewell
        case .admin(let operation, let argument): return try admin(session, operation, argument)
        default:
            throw ServiceError(.unknownMessageType, "\(message.type) is not a request")
        }
    }

    // MARK: Direct clients

    private func join(_ session: Session, _ p: Int) throws(ServiceError) -> Message {
        guard session.participant == nil else {
            throw ServiceError(.invalidParticipant, "this connection already joined as participant \(session.participant!)")
        }
        guard let status = heap.participantStatus(p), status.state == .alive, status.pid == session.peer.pid,
            directOwners[p] == nil, p != participant?.index
        else {
            throw ServiceError(
                .invalidParticipant,
                "participant \(p) is not a live participant joined by pid \(session.peer.pid) (join the heap first, "
                    + "then send join with its index)")
        }
        let pages = max(1, min(configuration.initialLeasePages, configuration.effectiveQuotaBytes / heap.pageSize))
        do throws(SharedHeapError) {
            try heap.setPageAllowance(participant: p, pages: pages)
        } catch {
            throw ServiceError(error)
        }
        directOwners[p] = session.id
        session.participant = p
        // The process an admin disconnect must kill before the participant can be recovered: the one that
        // connected (SO_PEERPIDFD), never a later owner of its pid. Only direct clients need one (PeerProcess).
        session.process = PeerProcess(socket: session.socket.fileDescriptor, pid: session.peer.pid)
        session.pageAllowance = pages
        if session.holdsDirectReservation { directSlots.release(&session.holdsDirectReservation) }
        metrics.count(.lease)
        logger.info("direct client joined", metadata: ["client": "\(session.id)", "participant": "\(p)",
                                                       "pages": "\(pages)"])
        return .joined(pageAllowance: UInt32(pages))
    }

    private func requireParticipant(_ session: Session) throws(ServiceError) -> Int {
        guard let p = session.participant else {
            throw ServiceError(.invalidParticipant, "join the heap (join) before leasing pages")
        }
        return p
    }

    /// Raises a direct client's page lease by up to `pages`, as far as its quota allows (a partial grant is a
    /// grant: the reply carries the new total); nothing at all left under the quota is `quotaExceeded`.
    private func lease(_ session: Session, more pages: Int) throws(ServiceError) -> Message {
        let p = try requireParticipant(session)
        // Asking for no pages changes nothing: the answer is the allowance as it is (PROTOCOL.md, lease).
        guard pages > 0 else { return .leased(pageAllowance: UInt32(session.pageAllowance)) }
        let quotaPages = (configuration.effectiveQuotaBytes - session.bytesHeld) / heap.pageSize
        let granted = min(pages, quotaPages - session.pageAllowance)
        guard granted > 0 else {
            throw ServiceError(
                .quotaExceeded,
                "client \(session.id) has leased \(session.pageAllowance) pages of \(heap.pageSize) bytes; its quota of "
                    + "\(configuration.effectiveQuotaBytes) bytes allows no more: free blocks (and return pages) first, "
                    + "or ask the operator to raise quota")
        }
        let wanted = session.pageAllowance + granted
        do throws(SharedHeapError) {
            try heap.setPageAllowance(participant: p, pages: wanted)
        } catch {
            throw ServiceError(error)
        }
        session.pageAllowance = wanted
        metrics.count(.lease)
        return .leased(pageAllowance: UInt32(wanted))
    }

    private func returnPages(_ session: Session, _ pages: Int) throws(ServiceError) -> Message {
        let p = try requireParticipant(session)
        let owned = heap.participantStatus(p)?.ownedPages ?? 0
        let allowance = max(owned, session.pageAllowance - pages)
        do throws(SharedHeapError) {
            try heap.setPageAllowance(participant: p, pages: allowance)
        } catch {
            throw ServiceError(error)
        }
        session.pageAllowance = allowance
        return .returned(pageAllowance: UInt32(allowance))
    }

    // MARK: Mediated operations

    /// The daemon participant's allocate, without reference counting (see `daemonParticipantRef`).
    @inline(__always)
    private func daemonAllocate(_ size: Int) throws(SharedHeapError) -> SharedHeapHandle {
        guard let reference = daemonParticipantRef else { preconditionFailure("the daemon's participant is gone") }
        // Safe: `participant` keeps it alive while the loop runs.
        return try reference._withUnsafeGuaranteedRef { participant in
            Result { () throws(SharedHeapError) in try participant.allocate(size) }
        }.get()
    }

    /// The daemon participant's free, without reference counting.
    @inline(__always)
    private func daemonFree(_ handle: SharedHeapHandle) throws(SharedHeapError) -> Bool {
        guard let reference = daemonParticipantRef else { preconditionFailure("the daemon's participant is gone") }
        // Safe: `participant` keeps it alive while the loop runs.
        return try reference._withUnsafeGuaranteedRef { participant in
            Result { () throws(SharedHeapError) in try participant.free(handle) }
        }.get()
    }

    private var daemonParticipant: SharedHeap.Participant {
        guard let participant else { preconditionFailure("the daemon's participant is gone while serving") }
        return participant
    }

    private func classSize(for size: UInt64) throws(ServiceError) -> Int {
        guard size > 0, let last = classSizes.last, size <= UInt64(heap.largestBlockSize) else {
            throw ServiceError(
                .unsupportedSize, "cannot allocate \(size) bytes: sizes 1…\(heap.largestBlockSize) are supported")
        }
        // Above the largest class: an extent of the heap's extent area, in whole units.
        if size > UInt64(last) {
            let unit = UInt64(heap.extentUnitSize)
            return Int((size + unit - 1) / unit * unit)
        }
        // Binary search: the first class at least `size` (the classes ascend).
        var low = 0
        var high = classSizes.count - 1
        while low < high {
            let middle = (low + high) / 2
            if UInt64(classSizes[middle]) >= size { high = middle } else { low = middle + 1 }
        }
        return classSizes[low]
    }

    private func checkQuota(_ session: Session, adding bytes: Int) throws(ServiceError) {
        let leased = session.pageAllowance * heap.pageSize
        guard session.bytesHeld + leased + bytes <= configuration.effectiveQuotaBytes else {
            throw ServiceError(
                .quotaExceeded,
                "client \(session.id) holds \(session.bytesHeld) bytes (+\(leased) leased); \(bytes) more would pass "
                    + "its quota of \(configuration.effectiveQuotaBytes) bytes: free some blocks first, or ask the operator "
                    + "to raise quota")
        }
    }

    private func record(_ session: Session, _ handle: SharedHeapHandle, _ blockSize: Int) {
        if let holding = session.holdings[handle] {
            session.holdings[handle] = Session.Holding(count: holding.count + 1, blockSize: holding.blockSize)
        } else {
            session.holdings[handle] = Session.Holding(count: 1, blockSize: UInt32(blockSize))
        }
        session.blocksHeld += 1
        session.bytesHeld += blockSize
        if fairShare.isLarge(blockSize) { session.largeBytesHeld += blockSize }
    }

    /// Drops one mediated holding of `handle` at the heap level: an extra holding just goes; the last one is the
    /// daemon's participant's free. True when that released the block.
    private func dropMediatedHolding(_ handle: SharedHeapHandle) throws(SharedHeapError) -> Bool {
        if !extraMediatedHoldings.isEmpty, let extra = extraMediatedHoldings[handle] {
            extraMediatedHoldings[handle] = extra == 1 ? nil : extra - 1
            return false
        }
        return try daemonFree(handle)
    }

    /// Whether the daemon's participant holds the block (for some mediated client).
    private func daemonHolds(_ handle: SharedHeapHandle) -> Bool {
        participant?.holds(handle) ?? false
    }

    private func allocate(_ session: Session, size: UInt64) throws(ServiceError) -> (SharedHeapHandle, Int) {
        let blockSize = try classSize(for: size)
        try checkFairShare(session, adding: 1, of: blockSize)
        try checkQuota(session, adding: blockSize)
        let handle: SharedHeapHandle
        do throws(SharedHeapError) {
            handle = try daemonAllocate(Int(size))
        } catch {
            throw explainAllocationFailure(error, blockSize: blockSize)
        }
        record(session, handle, blockSize)
        metrics.count(.allocation)
        return (handle, blockSize)
    }

    private func allocateBatch(_ session: Session, size: UInt64, count: Int) throws(ServiceError) -> Message {
        let blockSize = try classSize(for: size)
        try checkFairShare(session, adding: count, of: blockSize)
        try checkQuota(session, adding: blockSize * count)
        var handles: [SharedHeapHandle] = []
        handles.reserveCapacity(count)
        for _ in 0..<count {
            do throws(SharedHeapError) {
                handles.append(try daemonAllocate(Int(size)))
            } catch {
                // All or nothing: give back what this batch took.
                for handle in handles { _ = try? daemonParticipant.free(handle) }
                throw explainAllocationFailure(error, blockSize: blockSize)
            }
        }
        // Fresh handles cannot be in the table yet. The table is moved out of the session for the loop, so it is
        // uniquely referenced (no copy) and mutated without a dynamic exclusivity check per block.
        var holdings = session.holdings
        session.holdings = HandleTable()
        let holding = Session.Holding(count: 1, blockSize: UInt32(blockSize))
        for handle in handles { holdings.insertNew(handle, holding) }
        session.holdings = holdings
        session.blocksHeld += count
        session.bytesHeld += blockSize * count
        if fairShare.isLarge(blockSize) { session.largeBytesHeld += blockSize * count }
        metrics.count(.allocation, by: count)
        return .allocatedBatch(blockSize: UInt64(blockSize), handles: handles.map(\.wire))
    }

    /// Drops one of the session's holdings of `handle`; true when the block went back to the heap.
    private func free(_ session: Session, _ handle: SharedHeapHandle) throws(ServiceError) -> Bool {
        try free(session, handle, in: &session.holdings)
    }

    /// `free(_:_:)` with the session's holdings table passed in (a batch moves it out of the session).
    private func free(
        _ session: Session, _ handle: SharedHeapHandle, in holdings: inout HandleTable<Session.Holding>
    ) throws(ServiceError) -> Bool {
        // The ledger is keyed by all 128 bits: a handle that differs in any bit (heap id, generation) from one this
        // session holds is not found, and the heap then says what is wrong with it.
        guard let holding = holdings[handle] else {
            throw diagnoseForeign(handle)
        }
        let released: Bool
        do throws(SharedHeapError) {
            released = try dropMediatedHolding(handle)
        } catch {
            throw ServiceError(error)
        }
        if holding.count == 1 {
            holdings[handle] = nil
        } else {
            holdings[handle] = Session.Holding(count: holding.count - 1, blockSize: holding.blockSize)
        }
        session.blocksHeld -= 1
        session.bytesHeld -= Int(holding.blockSize)
        if fairShare.isLarge(Int(holding.blockSize)) { session.largeBytesHeld -= Int(holding.blockSize) }
        return released
    }

    /// The precise error for a handle this session does not hold: bad offsets, stale or double frees, or a
    /// block someone else holds. Never changes anything: the daemon's participant is asked to free only a block
    /// that is not allocated at all (so its free fails, reporting why) — a block it holds for another session is
    /// never passed to it here.
    private func diagnoseForeign(_ handle: SharedHeapHandle) -> ServiceError {
        if handle.isZero { return Self.handleZero }
        do throws(SharedHeapError) {
            _ = try heap.pointer(for: handle)
            return ServiceError(.notHolder, "this client does not hold \(handle); adopt it first")
        } catch {
            // Not allocated, so the daemon's participant cannot be holding it for anyone: asking it to free the
            // handle changes nothing and names the problem (double free vs stale).
            guard error.code == .staleHandle else { return ServiceError(error) }
            do throws(SharedHeapError) {
                _ = try daemonParticipant.free(handle)
                return ServiceError(.internalError, "freeing \(handle) should have failed")
            } catch let freeError {
                return freeError.code == .notHeld ? ServiceError(error) : ServiceError(freeError)
            }
        }
    }

    /// The zero handle is never issued (PROTOCOL.md section 8): say so rather than describe offset 0.
    private static let handleZero = ServiceError(
        .invalidHandle,
        "the zero handle is never a valid handle: use a handle that allocate, allocateBatch or shared returned")

    private func adopt(_ session: Session, _ handle: SharedHeapHandle) throws(ServiceError) -> Int {
        guard !handle.isZero else { throw Self.handleZero }
        let blockSize: Int
        do throws(SharedHeapError) {
            blockSize = try heap.blockSize(of: handle)
        } catch {
            throw ServiceError(error)
        }
        // One holding per client, as in direct mode (the heap refuses a participant's second holding): a block's
        // holders are then clients, and one free drops a client's holding.
        guard session.holdings[handle] == nil else {
            throw ServiceError(
                .alreadyHolder, "this client already holds \(handle); a client holds a block once: free it "
                    + "before adopting it again")
        }
        try checkFairShare(session, adding: 1, of: blockSize)
        try checkQuota(session, adding: blockSize)
        if daemonHolds(handle) {
            extraMediatedHoldings[handle, default: 0] += 1
        } else {
            do throws(SharedHeapError) {
                try daemonParticipant.adopt(handle)
            } catch {
                throw ServiceError(error)
            }
        }
        record(session, handle, blockSize)
        metrics.count(.adoption)
        return blockSize
    }

    private func share(_ session: Session, _ handle: SharedHeapHandle) throws(ServiceError) -> SharedInfo {
        guard !handle.isZero else { throw Self.handleZero }
        let holderCount: Int
        do throws(SharedHeapError) {
            holderCount = try heap.holderCount(of: handle)
        } catch {
            throw ServiceError(error)
        }
        let holdsThroughDaemon = session.holdings[handle] != nil
        let holdsDirectly = session.participant.map { heap.holds(participant: $0, handle) } ?? false
        guard holdsThroughDaemon || holdsDirectly else {
            throw ServiceError(.notHolder, "this client does not hold \(handle): only a holder can share it")
        }
        let daemonHoldsIt = daemonParticipant.holds(handle)
        let directHolders = holderCount - (daemonHoldsIt ? 1 : 0)
        let mediatedHolders = daemonHoldsIt ? 1 + (extraMediatedHoldings[handle] ?? 0) : 0
        let blockSize = (try? heap.blockSize(of: handle)) ?? 0
        return SharedInfo(
            handle: handle.wire, offset: UInt64(handle.dataOffset), blockSize: UInt64(blockSize),
            holders: UInt32(directHolders + mediatedHolders))
    }

    private func stats(for session: Session) -> ClientStats {
        let usage = recentHeapUsage()
        let used = usage.bytesInUse
        return ClientStats(
            bytesHeld: UInt64(session.bytesHeld), blocksHeld: UInt64(session.blocksHeld),
            quotaBytes: UInt64(configuration.effectiveQuotaBytes), pageAllowance: UInt32(session.pageAllowance),
            heapBytesUsed: UInt64(used), heapBytesFree: UInt64(max(0, heapCapacity - used)),
            clients: UInt32(sessions.count))
    }

    // MARK: Disconnects and recovery

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
        var released = 0
        for (handle, holding) in session.holdings.entries {
            for _ in 0..<holding.count {
                do throws(SharedHeapError) {
                    if try dropMediatedHolding(handle) { released += 1 }
                } catch {
                    logger.error("could not drop a holding of a departed client", metadata: [
                        "client": "\(id)", "handle": "\(handle)", "error": "\(error)"])
                }
            }
        }
        var metadata: Logger.Metadata = [
            "client": "\(id)", "name": "\(session.name)", "reason": "\(reason)",
            "mediated_blocks_released": "\(released)",
        ]
        var recovery: String?
        if session.holdsDirectReservation { directSlots.release(&session.holdsDirectReservation) }
        if let p = session.participant {
            directOwners[p] = nil
            if let status = heap.participantStatus(p), status.state != .free, status.pid == session.peer.pid {
                metadata["participant"] = "\(p)"
                let outcome: String
                if status.state == .leaving, heap.releaseSlot(participant: p, pid: session.peer.pid) {
                    // It left cleanly; only now that its session is over may the slot be offered again.
                    outcome = "none needed: it left; slot released"
                } else {
                    outcome = "\(recoverWhenExited(p, pid: session.peer.pid, pidfd: session.process?.takeDescriptor()))"
                }
                metadata["recovery"] = "\(outcome)"
                recovery = outcome
            }
        }
        session.process?.close()
        metrics.count(.disconnection)
        // A connection that was never welcomed logs at debug, like its "connection accepted": otherwise every
        // connect-and-drop would write an info line (a log flood on demand).
        logger.log(
            level: session.welcomed ? connectionLogLevel(session) : .debug, "client disconnected", metadata: metadata)
        return recovery
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
        let token = Self.exitWatchBase + UInt64(p)
        if let previous = exitWatches.removeValue(forKey: token) { systemClose(previous.fd) }
        do throws(TransportError) {
            try poller.add(fd, events: .readable, token: token)
        } catch {
            systemClose(fd)
            return processHasExited(pid) ? recover(p) : "deferred until process \(pid) exits"
        }
        exitWatches[token] = (p, pid, fd)
        return "when process \(pid) exits"
    }

    /// A watched process exited: recover its participant if it still holds the slot.
    private func processExited(_ token: UInt64) {
        guard let watch = exitWatches.removeValue(forKey: token) else { return }
        poller.remove(watch.fd)
        systemClose(watch.fd)
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
            pendingRecoveries.remove(p)
            metrics.count(.recovery)
            return report.description
        } catch {
            if error.code == .recoveryIncomplete { pendingRecoveries.insert(p) }
            return "\(error)"
        }
    }

    /// Periodic work: retries incomplete recoveries, and recovers participants whose process died without a
    /// session (it joined the heap but died before telling the daemon).
    private func tick() {
        for p in pendingRecoveries {
            let outcome = recover(p)
            logger.info("retried recovery", metadata: ["participant": "\(p)", "outcome": "\(outcome)"])
        }
        for p in heap.deadParticipants() where directOwners[p] == nil && p != participant?.index {
            let outcome = recover(p)
            logger.info("recovered an orphaned participant", metadata: ["participant": "\(p)", "outcome": "\(outcome)"])
        }
        // Frees other processes made into the daemon's pages.
        participant?.collectRemoteFrees()
        repairHoles()
    }

    // MARK: Admin

    private func admin(_ session: Session, _ operation: AdminOperation, _ argument: UInt32) throws(ServiceError)
        -> Message
    {
        let reports = AdminReports(server: self)
        switch operation {
        case .status: return reports.json(operation, reports.status(clients: sessions.count))
        case .classes: return reports.json(operation, reports.classes())
        case .clients:
            // Paged: the argument is the id the page starts after (PROTOCOL.md, "Admin paging").
            let now = Date().timeIntervalSince1970
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
                session.machine.close()
                session.closeAfterFlush = true
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

extension ErrorCode {
    /// The protocol error for a heap error.
    init(_ code: SharedHeapError.Code) {
        switch code {
        case .outOfRange: self = .invalidHandle
        case .misaligned: self = .misalignedHandle
        case .staleHandle: self = .staleHandle
        case .doubleFree: self = .doubleFree
        case .notHeld: self = .notHolder
        case .heapFull: self = .heapFull
        case .unsupportedSize: self = .unsupportedSize
        case .heldListFull: self = .heapFull
        case .alreadyHeld: self = .alreadyHolder
        case .pageAllowanceExhausted: self = .quotaExceeded
        case .foreignHeap: self = .foreignHandle
        default: self = .internalError
        }
    }
}

extension SharedHeapHandle {
    /// The heap's handle for one received in a message: the same 128 bits (checked when used).
    @inline(__always)
    init(_ wire: WireHandle) {
        self.init(low: wire.low, high: wire.high)
    }

    /// The handle as messages carry it.
    @inline(__always)
    var wire: WireHandle { WireHandle(low: low, high: high) }
}

extension PageKind {
    /// The protocol's page kind for the OS allocator's.
    init(_ kind: OSAllocator.PageKind) {
        switch kind {
        case .base: self = .base
        case .transparent: self = .transparentHuge
        case .explicit2MiB: self = .huge2M
        case .explicit1GiB: self = .huge1G
        }
    }
}
