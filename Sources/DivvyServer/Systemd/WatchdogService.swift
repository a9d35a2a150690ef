import Logging
import ServiceLifecycle
import Synchronization

/// How many times the event loop has ticked: the loop beats it (`ServerHooks.tick`, about every 200 ms) and the
/// watchdog reads it from another thread.
public final class LoopHeartbeat: Sendable {
    private let beats = Atomic<Int>(0)

    /// A heartbeat that has not beaten yet.
    public init() {}

    /// Records one tick of the loop (any thread).
    public func beat() {
        // Relaxed: only the count's change matters, nothing else is published through it.
        beats.add(1, ordering: .relaxed)
    }

    /// The ticks so far (any thread).
    public var count: Int { beats.load(ordering: .relaxed) }
}

/// Pings systemd's watchdog (`WATCHDOG=1`) while divvyd's event loop makes progress, as a `Service` in the daemon's
/// `ServiceGroup`.
///
/// It wakes four times per ping interval (half of `WatchdogSec=`) and pings when the interval has passed since the
/// last ping *and* the loop has ticked since then (`LoopHeartbeat`). A loop that hangs stops ticking, the pings
/// stop, and systemd kills and restarts divvyd after `WatchdogSec=` (the reason to watch the loop rather than this
/// task). The service logs a warning once the loop has missed a whole watchdog interval. It returns at once when the
/// watchdog is off, and at graceful shutdown or cancellation; put it first in the group so that it is shut down
/// last, after the server's graceful shutdown (during which the loop keeps ticking).
public struct WatchdogService: Service {
    private let notifier: SystemdNotifier
    private let heartbeat: LoopHeartbeat
    private let logger: Logger

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - notifier: Where pings go; its `pingInterval` sets the pace (nil: the service returns at once).
    ///   - heartbeat: The loop's heartbeat (give the server `ServerHooks.tick = { heartbeat.beat() }`).
    ///   - logger: Where a stalled loop is reported.
    public init(notifier: SystemdNotifier, heartbeat: LoopHeartbeat, logger: Logger) {
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.logger = logger
    }

    /// Pings while the loop ticks, until graceful shutdown or cancellation.
    public func run() async {
        guard let pingInterval = notifier.pingInterval, let watchdogInterval = notifier.watchdogInterval else { return }
        let clock = ContinuousClock()
        // The first ping waits for the loop's first tick too.
        var beatsAtLastPing = heartbeat.count
        var lastProgress = clock.now
        var lastBeats = beatsAtLastPing
        var warned = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let beats = heartbeat.count
            let now = clock.now
            if beats != lastBeats {
                lastBeats = beats
                lastProgress = now
                if warned {
                    logger.notice("the event loop is ticking again; watchdog pings resumed")
                    warned = false
                }
            } else if !warned, now - lastProgress >= watchdogInterval {
                logger.warning(
                    "the event loop has not ticked for a whole watchdog interval: no pings, systemd will restart divvyd",
                    metadata: ["watchdog": "\(watchdogInterval)"])
                warned = true
            }
            if beats != beatsAtLastPing, notifier.pingWatchdogIfDue(at: now) { beatsAtLastPing = beats }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: pingInterval / 4, clock: clock) }
            } catch {
                return  // Cancelled, or the group is shutting down.
            }
        }
    }
}
