import CoreMetrics
import DivvyProtocol
import DivvyShm
import Prometheus

/// The daemon's metrics, recorded through swift-metrics with dotted labels (`divvy.alloc`, `divvy.clients`, …)
/// into a Prometheus registry of the daemon's own, so `divvyctl metrics` (the admin `metrics` operation) can serve
/// the Prometheus text exposition whatever metrics backend the host process bootstrapped. Dots become underscores
/// in Prometheus names (`divvy_alloc_total`).
///
/// Every event is counted once, through `count(_:by:)` or `failure(_:)`, which feeds both the swift-metrics counters
/// and the plain `ServerCounters` that `DivvyServer.snapshotCounters()` publishes.
///
/// Event-loop thread only (the swift-metrics handles themselves are thread-safe).
final class ServerMetrics {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    /// The same counts as plain values (`disconnections` has no Prometheus counter: `clients` is the gauge).
    private(set) var counters = ServerCounters()

    /// What the daemon counts.
    enum Event {
        case connection, refusedConnection, disconnection, allocation, free, adoption, lease, recovery
        /// Holes punched in the data object were re-committed (`HoleRepair`); `bytesRecommitted` counts the bytes.
        case holeRepair, bytesRecommitted
    }

    private let allocations: CoreMetrics.Counter
    private let frees: CoreMetrics.Counter
    private let adoptions: CoreMetrics.Counter
    private let leases: CoreMetrics.Counter
    private let recoveries: CoreMetrics.Counter
    private let connections: CoreMetrics.Counter
    private let refusedConnections: CoreMetrics.Counter
    private let holesRepaired: CoreMetrics.Counter
    private let bytesRecommitted: CoreMetrics.Counter
    let clients: CoreMetrics.Gauge
    let freePages: CoreMetrics.Gauge
    let leasedPages: CoreMetrics.Gauge
    private var failures: [ErrorCode: CoreMetrics.Counter] = [:]
    private var classBytes: [Int: CoreMetrics.Gauge] = [:]

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // swift-metrics labels are dotted; Prometheus names may not contain dots. Counters get the conventional
        // `_total` suffix.
        factory.nameAndLabelSanitizer = { name, labels in
            (name.replacingDots(), labels.map { ($0.0.replacingDots(), $0.1) })
        }
        self.factory = factory
        allocations = CoreMetrics.Counter(label: "divvy.alloc.total", factory: factory)
        frees = CoreMetrics.Counter(label: "divvy.free.total", factory: factory)
        adoptions = CoreMetrics.Counter(label: "divvy.adopt.total", factory: factory)
        leases = CoreMetrics.Counter(label: "divvy.leases.total", factory: factory)
        recoveries = CoreMetrics.Counter(label: "divvy.recoveries.total", factory: factory)
        connections = CoreMetrics.Counter(label: "divvy.connections.total", factory: factory)
        refusedConnections = CoreMetrics.Counter(label: "divvy.connections.refused.total", factory: factory)
        holesRepaired = CoreMetrics.Counter(label: "divvy.region.holes_repaired.total", factory: factory)
        bytesRecommitted = CoreMetrics.Counter(label: "divvy.region.recommitted_bytes.total", factory: factory)
        clients = CoreMetrics.Gauge(label: "divvy.clients", factory: factory)
        freePages = CoreMetrics.Gauge(label: "divvy.heap.pages.free", factory: factory)
        leasedPages = CoreMetrics.Gauge(label: "divvy.leased.pages", factory: factory)
    }

    /// Counts `amount` occurrences of `event`.
    func count(_ event: Event, by amount: Int = 1) {
        let (field, counter) = handles(event)
        counters[keyPath: field] += amount
        counter?.increment(by: amount)
    }

    /// Where `event` is counted: its plain counter, and its Prometheus counter if it has one.
    private func handles(_ event: Event) -> (WritableKeyPath<ServerCounters, Int>, CoreMetrics.Counter?) {
        switch event {
        case .connection: (\.connections, connections)
        case .refusedConnection: (\.refusedConnections, refusedConnections)
        case .disconnection: (\.disconnections, nil)
        case .allocation: (\.allocations, allocations)
        case .free: (\.frees, frees)
        case .adoption: (\.adoptions, adoptions)
        case .lease: (\.leases, leases)
        case .recovery: (\.recoveries, recoveries)
        case .holeRepair: (\.holesRepaired, holesRepaired)
        case .bytesRecommitted: (\.bytesRecommitted, bytesRecommitted)
        }
    }

    /// Counts a refused request or failed operation by its error code (`divvy.failures.total{reason=…}`).
    func failure(_ code: ErrorCode) {
        counters.countError(code)
        if let counter = failures[code] {
            counter.increment()
            return
        }
        let counter = CoreMetrics.Counter(label: "divvy.failures.total", dimensions: [("reason", "\(code)")], factory: factory)
        failures[code] = counter
        counter.increment()
    }

    /// Refreshes the heap gauges (`divvy.heap.bytes{class=…}`, free pages) from a usage snapshot.
    func update(_ usage: SharedHeapUsage, clients count: Int, leasedPages leased: Int) {
        clients.record(count)
        freePages.record(usage.freePages)
        leasedPages.record(leased)
        for row in usage.sizeClasses {
            let gauge = classBytes[row.blockSize] ?? {
                let gauge = CoreMetrics.Gauge(
                    label: "divvy.heap.bytes", dimensions: [("class", "\(row.blockSize)")], factory: factory)
                classBytes[row.blockSize] = gauge
                return gauge
            }()
            gauge.record(row.blocksInUse * row.blockSize)
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    func exposition() -> String {
        registry.emitToString()
    }
}

extension String {
    fileprivate func replacingDots() -> String {
        String(map { $0 == "." ? "_" : $0 })
    }
}
