import Logging

/// Callbacks the daemon makes at points of its life, for a service manager (divvyd uses them for systemd's
/// `sd_notify` protocol: READY=1, STATUS=, WATCHDOG=1, STOPPING=1). Each runs on the event-loop thread and must
/// be quick and never block.
public struct ServerHooks: Sendable {
    /// The loop is about to serve: the region is mapped and the socket listens.
    public var ready: @Sendable () -> Void
    /// A one-line human status ("serving 3 clients, 12 MiB in use"), when it changes (at most once per tick).
    public var status: @Sendable (String) -> Void
    /// Called about every 200 ms from the loop while it runs (a stuck loop stops calling it). divvyd beats a
    /// `LoopHeartbeat` here, which its `WatchdogService` watches; `SystemdNotifier.serverHooks()` pings directly.
    public var tick: @Sendable () -> Void
    /// A graceful shutdown has begun.
    public var stopping: @Sendable () -> Void
    /// A configuration reload changed the log level (divvyd sets its log handlers' `LogLevelControl`).
    public var logLevelChanged: @Sendable (Logger.Level) -> Void

    /// Hooks that do nothing unless given.
    public init(
        ready: @escaping @Sendable () -> Void = {}, status: @escaping @Sendable (String) -> Void = { _ in },
        tick: @escaping @Sendable () -> Void = {}, stopping: @escaping @Sendable () -> Void = {},
        logLevelChanged: @escaping @Sendable (Logger.Level) -> Void = { _ in }
    ) {
        self.ready = ready
        self.status = status
        self.tick = tick
        self.stopping = stopping
        self.logLevelChanged = logLevelChanged
    }
}
