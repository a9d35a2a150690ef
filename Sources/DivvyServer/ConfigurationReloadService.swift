import Logging
import ServiceLifecycle
import UnixSignals

/// Reloads divvyd's configuration on SIGHUP (`systemctl reload divvyd`), as a `Service` in the daemon's
/// `ServiceGroup`: reads the `ConfigurationSource` again and hands the result to the server's loop
/// (`DivvyServer.reload(_:)`), which applies what can change at run time and logs the rest. A file that does not
/// read, parse or validate is refused with an error line and the running configuration is kept whole.
public struct ConfigurationReloadService: Service {
    private let server: DivvyServer
    private let source: ConfigurationSource
    private let signals: UnixSignalsSequence
    private let logger: Logger

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - server: The server to reload.
    ///   - source: Where the configuration came from at start.
    ///   - signals: A sequence trapping SIGHUP, made before the server starts so that an early SIGHUP is queued
    ///     instead of killing the process (creating it sets SIGHUP's disposition).
    ///   - logger: Where refused reloads are logged.
    public init(server: DivvyServer, source: ConfigurationSource, signals: UnixSignalsSequence, logger: Logger) {
        self.server = server
        self.source = source
        self.signals = signals
        self.logger = logger
    }

    /// Reloads on every signal until the group shuts down.
    public func run() async {
        for await signal in signals.cancelOnGracefulShutdown() {
            logger.notice("reloading the configuration", metadata: ["signal": "\(signal)"])
            reloadOnce()
        }
    }

    /// Reads the configuration again and hands it to the server, or logs why it cannot.
    public func reloadOnce() {
        do throws(ServerConfiguration.ParseError) {
            server.reload(try source.load())
        } catch {
            let message = "configuration reload refused: \(error.message); the running configuration is kept (fix "
                + "the file and reload again)"
            logger.error("\(message)")
        }
    }
}
