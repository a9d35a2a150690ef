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
/// ## Shape
/// The loop (this class and its `DivvyServer+…` extensions) does the effects — socket IO, descriptor passing, heap
/// calls, logging — and the decisions are values with events that return what to do, each tested without a socket:
/// `SessionStateMachine` (handshake, what a request may do, routing), `MediatedLedger` (which mediated client holds
/// what; allocate/free/adopt/share bookkeeping with `FairShare` and `ClientQuota`), `DirectLease` (a direct client's
/// page lease), `ParticipantRecovery` (direct participants' owners, exit watches, retried recoveries),
/// `ShutdownStateMachine` (graceful shutdown), `ConnectionAdmission` and `HandshakeDeadlines` (connection slots),
/// `ConfigurationReload`, `ShareTokenTable` (share tokens). Time is `ContinuousClock`'s.
///
/// ## Mediated holdings
/// The daemon's participant is the heap-level holder of every block that mediated clients hold; which client
/// holds what (and how often) is kept in the `MediatedLedger`: an account per session, with a per-handle count of
/// the holdings beyond the first. A block goes back to the heap when its last mediated holder frees it (and no
/// direct client holds it). Because the daemon is the only one that can touch these records, a mediated client
/// cannot corrupt the heap through them.
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
    let regionOwnerLock: SharedRegionOwnerLock?
    /// When the daemon started (seconds since the epoch).
    public let startTime: Double
    /// When the daemon started, for its uptime (a wall-clock step does not change that).
    let startedAt = ContinuousClock.now

    let logger: Logger
    let hooks: ServerHooks
    /// False when the listener was inherited (socket activation): the path is not ours to unlink.
    let ownsSocketPath: Bool
    var lastStatus = ""
    let listener: SeqpacketSocket
    let poller: EventPoller
    let control = ProcessLock()
    // Guarded by `control`.
    var shutdownReason: String?
    /// A configuration `reload(_:)` handed over, for the loop to apply (`applyPendingReload()`).
    var pendingReload: ServerConfiguration?
    var running = false
    var countersSnapshot = ServerCounters()

    // Event-loop state (only the thread in `run()` touches it).
    var participant: SharedHeap.Participant? {
        didSet { daemonParticipantRef = participant.map { Unmanaged.passUnretained($0) } }
    }
    /// `participant` without reference counting, for the per-block paths (a retain/release pair costs more than
    /// the heap operation). Invariant: the same object as `participant`, which keeps it alive.
    var daemonParticipantRef: Unmanaged<SharedHeap.Participant>?
    var sessions: [UInt32: Session] = [:]
    /// The ids of `sessions`, ascending, for `admin clients` pages.
    var sessionOrder = SortedClientIDs()
    /// The heap usage `stats` and `admin status` report (`HeapUsageSnapshot`); tests may change `maxAge` before
    /// `run()`.
    var heapUsageSnapshot = HeapUsageSnapshot(maxAge: HeapUsageSnapshot.defaultMaxAge)
    var nextClientID: UInt32 = 1
    /// Which mediated client holds what (`MediatedLedger`).
    var ledger: MediatedLedger
    /// Direct participants' owners, exit watches and retried recoveries (`ParticipantRecovery`).
    var recovery = ParticipantRecovery()
    /// Participant slots promised to direct clients welcomed but not yet joined.
    var directSlots = DirectSlotReservations()
    /// Graceful shutdown (`ShutdownStateMachine`).
    var shutdownMachine = ShutdownStateMachine()
    /// The heap's block sizes, ascending (read once: `heap.sizeClasses` builds an array).
    let classSizes: [Int]
    let metrics = ServerMetrics()

    /// The Prometheus text exposition of the daemon's metrics (any thread): what `divvyctl metrics` and the
    /// `metrics-listen` listener (`MetricsListenerService`) serve.
    public func metricsExposition() -> String { metrics.exposition() }

    let receiveBuffer: UnsafeMutableRawBufferPointer
    var sendBuffer: [UInt8] = []
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
    var fairShare: FairShare { ledger.fairShare }
    /// Outstanding share tokens: what a mediated `adopt` must present (`ShareTokenTable`, DivvyServer+ShareTokens).
    var shareTokens: ShareTokenTable
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
    ///   - storedRegion: the descriptors of a region a previous daemon put in the service manager's store
    ///   (`SocketActivation.storedRegion()`): re-attached instead of creating a region (`reattach`): direct
    ///   clients' blocks are kept, mediated ones dropped. The caller keeps (and closes) the descriptors.
    ///   - hooks: callbacks at ready, status changes, ticks and stopping.
    public init(
        configuration: ServerConfiguration, logger: Logger, listenerDescriptor: Int32? = nil,
        storedRegion: (region: Int32, data: Int32)? = nil, hooks: ServerHooks = ServerHooks()
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
        let heapConfiguration = Self.heapConfiguration(for: configuration)
        // A region a previous daemon stored (issue 12: restart without loss) is re-attached, never re-created.
        let reattached = try storedRegion.map { (stored) throws(ServerError) in
            try Self.reattach(stored: stored, configuration: configuration, logger: logger)
        }
        let region: SharedRegion
        let ownerLock: SharedRegionOwnerLock?
        if let reattached {
            (region, ownerLock) = (reattached.region, nil)
        } else {
            (region, ownerLock) = try Self.createRegion(configuration, heapConfiguration, logger: logger)
        }
        self.region = region
        regionOwnerLock = ownerLock
        /// Undoes the region on a failed start: removes its name and then the owner lock's.
        func abandonRegion() {
            if configuration.regionName != nil { try? region.remove() }
            ownerLock?.release(removingName: true)
        }
        shareTokens = ShareTokenTable(limitPerIssuer: configuration.maxShareTokensPerClient)
        do throws(SharedHeapError) {
            if let reattached {
                heap = reattached.heap
            } else {
                heap = try SharedHeap.create(in: region, configuration: heapConfiguration)
            }
            classSizes = heap.sizeClasses
            // The large-block tier: span pages and the extent area (blocks above the largest class).
            let spanTierBytes = heap.spanPageCount * heap.spanPageSize + heap.extentUnitCount * heap.extentUnitSize
            ledger = MediatedLedger(
                fairShare: FairShare(
                    maxBlocksPerClient: configuration.effectiveMaxBlocksPerClient,
                    heldCapacity: heap.firstSlotHeldCapacity,
                    largestSmallBlock: heap.spanPageCount == 0 ? heap.largestBlockSize : heap.largestSmallBlockSize,
                    largeQuotaBytes: configuration.effectiveLargeQuotaBytes(
                        spanTierBytes: spanTierBytes, spanPageSize: heap.spanPageSize),
                    spanTierBytes: spanTierBytes))
            holeRepair = configuration.commitment == .full ? HoleRepair(region: region) : nil
        } catch {
            abandonRegion()
            throw ServerError(.invalidConfiguration, "could not format the heap: \(error)")
        }

        // The daemon's own participant: the heap-level holder of mediated clients' blocks.
        do throws(SharedHeapError) {
            let joined: SharedHeap.Participant
            if let reattached {
                joined = reattached.participant
            } else {
                joined = try heap.join(name: "divvyd")
            }
            // Invariant: the heap was just formatted, so the first join takes slot 0, the one with the large held
            // list (`firstSlotHeldCapacity`); or `reattach` took slot 0 over (or joined it, checked there).
            precondition(joined.index == 0, "the daemon's participant must be heap slot 0, got \(joined.index)")
            participant = joined
            daemonParticipantRef = Unmanaged.passUnretained(joined)  // (property observers do not run in init)
        } catch {
            abandonRegion()
            throw ServerError(.region, "the daemon could not join its own heap: \(error)")
        }

        // The socket.
        let listening: (listener: SeqpacketSocket, poller: EventPoller)
        do throws(ServerError) {
            listening = try Self.listen(configuration, listenerDescriptor: listenerDescriptor)
        } catch {
            abandonRegion()
            throw error
        }
        listener = listening.listener
        poller = listening.poller
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
        var lastTick = ContinuousClock.now
        hooks.ready()
        reportStatus()
        while true {
            events.removeAll(keepingCapacity: true)
            do throws(TransportError) {
                try poller.wait(timeoutMilliseconds: shutdownMachine.pollTimeoutMilliseconds) { events.append($0) }
            } catch {
                throw ServerError(.eventLoop, "epoll_wait failed: \(error)")
            }
            // Before this batch: a connection made after `reload(_:)` returned is decided by the new configuration.
            applyPendingReload()
            for event in events {
                switch event.token {
                case Self.listenerToken: acceptAll()
                case EventPoller.wakeToken: break
                case let token where ParticipantRecovery.isExitWatch(token): processExited(token)
                default: service(UInt32(truncatingIfNeeded: event.token), event.events)
                }
            }
            let now = ContinuousClock.now
            resumeListenerIfDue()
            if now - lastTick >= .milliseconds(200) || events.isEmpty {
                lastTick = now
                expireHandshakes()
                reportSuppressedLogLines()
                tick()
                hooks.tick()
                reportStatus()
            }
            if progressShutdown(now: now) { break }
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

    /// The quota rules in force (`quota` may change on reload).
    var quota: ClientQuota { ClientQuota(quotaBytes: configuration.effectiveQuotaBytes, pageSize: heap.pageSize) }

    /// Refreshes the gauges and tells the hooks a one-line status when it changed.
    func reportStatus() {
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

    /// Carries out the shutdown machine's actions; returns true when the loop should end.
    private func progressShutdown(now: ContinuousClock.Instant) -> Bool {
        control.lock()
        let requested = shutdownReason
        control.unlock()
        let actions = shutdownMachine.poll(
            requested: requested, now: now, openSessions: sessions.count,
            gracePeriod: .milliseconds(configuration.shutdownGraceMilliseconds))
        for action in actions {
            switch action {
            case .stopAccepting(let reason):
                hooks.stopping()
                poller.remove(listener.fileDescriptor)
                listener.close()
                if ownsSocketPath { _ = systemUnlink(socketPath) }
                logger.notice("shutting down", metadata: ["reason": "\(reason)", "clients": "\(sessions.count)"])
                for session in sessions.values {
                    send(session, requestID: 0, .shutdown(reason: reason))
                }
            case .disconnectRemaining:
                for id in Array(sessions.keys) {
                    disconnect(id, reason: "shutdown grace period over")
                }
            case .stop:
                return true
            }
        }
        return false
    }
}
