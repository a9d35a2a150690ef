import DivvyShm

/// The heap's usage figures as of a recent walk, for `stats` and `admin status`.
///
/// `SharedHeap.usage()` walks every heap page (4,096 pages for the default 256 MiB): too much to do for each `stats`
/// request, which any client may send in a loop. The loop keeps one snapshot and walks the heap again only when the
/// snapshot is older than `maxAge` (and on each periodic status report), so heap figures in `stats` and
/// `admin status` may be up to `maxAge` old (PROTOCOL.md, `stats`). `SharedHeap.usage()` itself stays exact.
struct HeapUsageSnapshot {
    /// How old the figures may get before a request walks the heap again.
    var maxAge: Duration
    private(set) var usage: SharedHeapUsage?
    private(set) var takenAt: ContinuousClock.Instant?
    /// Heap walks made because a request found the snapshot missing or too old (not the periodic ones).
    private(set) var requestWalks = 0

    /// Creates an empty snapshot; the first request walks the heap.
    init(maxAge: Duration) {
        self.maxAge = maxAge
    }

    /// The snapshot's figures, after walking the heap (`walk`) if they are missing or older than `maxAge` at `now`.
    /// - Complexity: O(1) within `maxAge` of the last walk, else one walk.
    mutating func current(now: ContinuousClock.Instant, walk: () -> SharedHeapUsage) -> SharedHeapUsage {
        if let usage, let takenAt, maxAge > .zero, now - takenAt <= maxAge { return usage }
        requestWalks += 1
        let fresh = walk()
        store(fresh, at: now)
        return fresh
    }

    /// Replaces the snapshot with figures taken at `now` (the periodic status report's walk).
    mutating func store(_ usage: SharedHeapUsage, at now: ContinuousClock.Instant) {
        self.usage = usage
        takenAt = now
    }
}

extension HeapUsageSnapshot {
    /// How old heap figures in `stats` and `admin status` may be (PROTOCOL.md, `stats`).
    static let defaultMaxAge: Duration = .milliseconds(100)
}

extension DivvyServer {
    /// The heap's usage as of at most `heapUsageSnapshot.maxAge` ago (a walk of the heap only when older).
    func recentHeapUsage() -> SharedHeapUsage {
        heapUsageSnapshot.current(now: .now) { heap.usage() }
    }
}
