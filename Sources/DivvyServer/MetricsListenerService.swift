import ServiceLifecycle
import Synchronization

/// The optional HTTP listener for Prometheus (`metrics-listen`: `GET /metrics`) as a `Service` in divvyd's
/// `ServiceGroup`: bound when it is created (so a port in use stops divvyd before it maps its region), serving while
/// the group runs, closed at graceful shutdown or cancellation.
///
///     let metrics = try MetricsListenerService(listen: "127.0.0.1:9464")
///     let server = try DivvyServer(configuration: configuration, logger: logger)
///     metrics.serve(server)       // then run both in a ServiceGroup
public final class MetricsListenerService: Service {
    /// The IPv4 address bound.
    public let host: String
    /// The port bound (the one asked for, or the one the kernel chose for port 0).
    public let port: UInt16
    private let listener: MetricsListener
    private let exposition = Mutex<(@Sendable () -> String)?>(nil)

    /// Binds the listener (it accepts nothing until `run()`).
    ///
    /// - Parameter listen: `host:port`, an IPv4 address and a port (`metrics-listen`).
    /// - Throws: `ServerError` when `listen` is not an IPv4 `host:port`, or the address cannot be bound.
    public init(listen: String) throws(ServerError) {
        guard let (host, port) = ServerConfiguration.hostAndPort(listen) else {
            throw ServerError(.invalidConfiguration, "metrics-listen: '\(listen)' is not host:port")
        }
        listener = try MetricsListener(host: host, port: port)
        self.host = host
        self.port = listener.port
    }

    /// Serves `server`'s metrics (its Prometheus exposition, the one `divvyctl metrics` shows). Call before `run()`.
    public func serve(_ server: DivvyServer) {
        exposition.withLock { $0 = { server.metricsExposition() } }
    }

    /// Serves until graceful shutdown or cancellation, then closes the listener.
    public func run() async {
        listener.start { [self] in exposition.withLock { $0 }?() ?? "" }
        try? await gracefulShutdown()
        listener.stop()
    }
}
