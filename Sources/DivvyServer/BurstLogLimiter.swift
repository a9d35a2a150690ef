/// Rate-limits a log line that peers can trigger at will, as a pure value: "accept failed" and "connection
/// refused".
///
/// When the daemon runs out of descriptors (`EMFILE`/`ENFILE`) every queued connection makes `accept(2)` fail, and
/// a peer over a connection limit can reconnect in a loop; a line per event would fill the disk at full CPU. The
/// first failure of a burst is logged at once; later ones are only counted, and reported as one summary line (with
/// the count) once `interval` has passed since the last line. Quiet for `interval`, the burst is over and the next
/// failure is logged at once again.
public struct BurstLogLimiter: Hashable, Sendable {
    /// The least time between two lines.
    public let interval: Duration
    private var lastLine: ContinuousClock.Instant?
    /// Failures since the last line.
    public private(set) var suppressed = 0

    /// No failures yet.
    public init(interval: Duration = .seconds(10)) {
        self.interval = interval
    }

    /// Records a failure at `now`; true when a line should be written for it now.
    public mutating func failure(at now: ContinuousClock.Instant) -> Bool {
        if let lastLine, now - lastLine < interval {
            suppressed += 1
            return false
        }
        lastLine = now
        return true
    }

    /// Called periodically: the number of failures to report in a summary line now, or nil (none suppressed, or
    /// the last line is too recent). Resets the count it returns.
    public mutating func summary(at now: ContinuousClock.Instant) -> Int? {
        guard suppressed > 0, let lastLine, now - lastLine >= interval else { return nil }
        let count = suppressed
        suppressed = 0
        self.lastLine = now
        return count
    }
}
