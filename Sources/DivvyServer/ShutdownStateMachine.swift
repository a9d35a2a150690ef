import DivvyProtocol

/// The daemon's graceful shutdown, as a value: serving → draining (listener closed, clients told, only `free`,
/// `freeBatch` and `goodbye` served) → stopped, when the last client has left or the grace period is over. The loop
/// calls `poll` once per iteration with the requested reason (if any) and carries out the actions it returns.
/// Time is `ContinuousClock`'s, so a wall-clock step cannot cut the grace period short or stretch it. Tested on its
/// own (`ShutdownStateMachineTests`).
struct ShutdownStateMachine: Hashable, Sendable {
    /// Where the shutdown is.
    enum State: Hashable, Sendable {
        /// No shutdown asked for.
        case serving
        /// Asked for with this reason; clients may finish until the deadline.
        case draining(reason: String, deadline: ContinuousClock.Instant)
        /// The loop ends.
        case stopped
    }

    /// What the loop does.
    enum Action: Hashable, Sendable {
        /// Stop accepting (close the listener, unlink its path if ours), tell the hooks, and send every client
        /// `shutdown` with the reason.
        case stopAccepting(reason: String)
        /// Disconnect every client still connected: the grace period is over.
        case disconnectRemaining
        /// Return from the loop.
        case stop
    }

    /// The current state.
    private(set) var state = State.serving

    /// Whether shutdown has begun: new connections and most requests are refused with `shuttingDown`.
    var isShuttingDown: Bool {
        if case .serving = state { return false }
        return true
    }

    /// How long the loop may wait for events: a draining loop checks its clients and deadline often.
    var pollTimeoutMilliseconds: Int32 { isShuttingDown ? 20 : 250 }

    /// One loop iteration: `requested` is the reason `shutdown(reason:)` gave, if it was called; `openSessions` is
    /// how many clients are still connected; `gracePeriod` is how long clients get to leave once shutdown begins
    /// (`shutdown-grace-ms` in force when it does).
    mutating func poll(
        requested: String?, now: ContinuousClock.Instant, openSessions: Int, gracePeriod: Duration
    ) -> [Action] {
        switch state {
        case .stopped:
            return [.stop]
        case .serving:
            guard let requested else { return [] }
            state = .draining(reason: requested, deadline: now + gracePeriod)
            return [.stopAccepting(reason: requested)] + drain(now: now, openSessions: openSessions)
        case .draining:
            return drain(now: now, openSessions: openSessions)
        }
    }

    private mutating func drain(now: ContinuousClock.Instant, openSessions: Int) -> [Action] {
        guard case .draining(_, let deadline) = state else { return [] }
        if openSessions == 0 {
            state = .stopped
            return [.stop]
        }
        if now >= deadline {
            state = .stopped
            return [.disconnectRemaining, .stop]
        }
        return []
    }

    /// What happens to a new connection (nil: admission goes on to the connection limits).
    var connectionRefusal: (code: ErrorCode, message: String)? {
        isShuttingDown ? (.shuttingDown, "the daemon is shutting down") : nil
    }
}

extension SessionStateMachine {
    /// Where a decoded request goes.
    enum Route: Hashable, Sendable {
        /// Refuse it with this error (closing the connection after the reply when the code says so).
        case reject(ErrorCode, String)
        /// The handshake: `hello(_:directSlotAvailable:)` decides it.
        case hello(Hello)
        /// Serve it.
        case serve
    }

    /// Routes a request: during shutdown only what lets a client leave (`duringShutdown`), then the handshake,
    /// then what this connection's state allows (`admit`).
    func route(_ message: Message, shuttingDown: Bool) -> Route {
        if shuttingDown, case .reject(let code, let text) = Self.duringShutdown(message) {
            return .reject(code, text)
        }
        if case .hello(let hello) = message { return .hello(hello) }
        switch admit(message) {
        case .reject(let code, let text): return .reject(code, text)
        case .handle: return .serve
        }
    }
}
