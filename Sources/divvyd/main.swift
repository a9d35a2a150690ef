import ArgumentParser
import DivvyServer
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif
import Logging
import ServiceLifecycle
import UnixSignals

/// `divvyd`: the Divvy allocator daemon. Thin: parses flags and the config file, bootstraps logging, runs the
/// server library's service.
@main
struct Divvyd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "divvyd",
        abstract: "The Divvy shared-memory allocator daemon.",
        discussion: """
            Maps a shared-memory region, carves it with a lock-free heap, and serves clients over a Unix socket \
            (see Protocol/PROTOCOL.md). Runs on built-in defaults: a 256 MiB anonymous region and a socket under \
            $XDG_RUNTIME_DIR/divvy (or /run/divvy as root). Settings come from --config, then flags, then \
            --set key=value (config-file keys: \(ServerConfiguration.keys.joined(separator: ", "))). SIGHUP reloads \
            the config file (flags still win): the policy, quota, log level and connection limits change at once, \
            other keys need a restart. SIGTERM or SIGINT shut down gracefully.
            """,
        version: DivvyServer.version)

    @Option(name: .long, help: "A config file of 'key = value' lines.")
    var config: String?

    @Option(name: .long, help: "The socket path.")
    var socket: String?

    @Option(name: .long, help: "A POSIX shared-memory name for the region (default: anonymous memfd).")
    var regionName: String?

    @Option(name: .long, help: "Bytes of data area, e.g. 256M or 4G.")
    var dataSize: String?

    @Option(name: .long, help: "Heap page size, e.g. 64K.")
    var pageSize: String?

    @Option(name: .long, help: "Bytes each client may hold, e.g. 64M.")
    var quota: String?

    @Option(name: .customLong("set"), help: "Any config key as key=value (repeatable).")
    var settings: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical (default: the config's log-level, else info).",
            valueName: "level"),
        completion: .list(Logger.Level.allCases.map(\.rawValue)))
    var logLevel: String?

    @Flag(name: .long, help: "Print the effective configuration and exit.")
    var printConfig = false

    @Flag(
        name: .long,
        help: """
            Run divvyd under a built-in supervisor that plays systemd's part: it restarts divvyd when it fails and \
            keeps the descriptors divvyd stores (FDSTORE=1) across restarts. For hosts without systemd.
            """)
    var supervise = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "With --supervise: restarts allowed within 10 s before the supervisor gives up (default 5; 0: no limit).",
            valueName: "count"))
    var restartBurst: Int?

    mutating func run() async throws {
        // Kept so that SIGHUP reads the same file and re-applies the same flags (flags win, as at start).
        var source = ConfigurationSource(configFile: config)
        var configuration: ServerConfiguration
        do {
            if let socket { source.overrides.append(.init("socket", socket)) }
            if let regionName { source.overrides.append(.init("region-name", regionName)) }
            if let dataSize { source.overrides.append(.init("data-size", dataSize)) }
            if let pageSize { source.overrides.append(.init("page-size", pageSize)) }
            if let quota { source.overrides.append(.init("quota", quota)) }
            if let logLevel { source.overrides.append(.init("log-level", logLevel)) }
            for setting in settings {
                guard let equals = setting.firstIndex(of: "=") else {
                    throw ServerConfiguration.ParseError("--set wants key=value, not '\(setting)'")
                }
                source.overrides.append(
                    .init(String(setting[..<equals]), String(setting[setting.index(after: equals)...])))
            }
            configuration = try source.load()
        } catch let error as ServerConfiguration.ParseError {
            printError(error.message)
            throw ExitCode(2)
        }
        if printConfig {
            for (key, value) in configuration.render() { print("\(key) = \(value)") }
            return
        }

        // One line per record on stderr: `<N>`-prefixed for journald under systemd, timestamped elsewhere.
        // Every logger follows one level, which a configuration reload changes.
        let levelControl = LogLevelControl(configuration.logLevel)
        LoggingSystem.bootstrap { label in DivvyLogHandler.standardError(label: label, levelControl: levelControl) }
        let logger = Logger(label: "divvyd")

        if supervise {
            // The child is this same program with the same arguments, minus --supervise; the configuration was
            // checked above, so a bad one fails here once instead of in a restart loop.
            var arguments = Array(CommandLine.arguments.dropFirst())
            arguments.removeAll { $0 == "--supervise" }
            if let index = arguments.firstIndex(of: "--restart-burst"), index + 1 < arguments.count {
                arguments.removeSubrange(index...(index + 1))
            }
            arguments.removeAll { $0.hasPrefix("--restart-burst=") }
            let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                ?? CommandLine.arguments[0]
            var settings = DaemonSupervisor.Settings(
                executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment)
            if let restartBurst { settings.restartBurst = restartBurst > 0 ? restartBurst : Int.max }
            let supervisor: DaemonSupervisor
            do {
                supervisor = try DaemonSupervisor(settings: settings, logger: Logger(label: "divvyd-supervise"))
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
            let status = supervisor.run()
            if status != 0 { throw ExitCode(status) }
            return
        }

        // Under systemd (see deploy/): sd_notify for Type=notify, the watchdog, and socket activation. Both read
        // (and unset) their variables now, before the server's threads start; outside systemd both are nil.
        let notifier = SystemdNotifier.fromProcessEnvironment(logger: logger)
        func fail(_ message: String) -> ExitCode {
            printError(message)
            notifier?.notify("STATUS=divvyd failed: \(message.split(whereSeparator: \.isNewline).joined(separator: " "))")
            return ExitCode(1)
        }
        let listener: SocketActivation.Socket?
        // The region a previous divvyd stored in the service manager's file-descriptor store, if any.
        let storedRegion: (region: Int32, data: Int32)?
        do {
            let activation = try SocketActivation.fromProcessEnvironment()
            listener = try activation?.onlyListener()
            storedRegion = try activation?.storedRegion()
        } catch {
            throw fail("socket activation: \(error)")
        }
        if let listener, let path = SocketActivation.boundPath(of: listener.descriptor),
            path != configuration.socketPath
        {
            // The service manager owns the socket: its path is the one clients use, whatever the config says.
            logger.notice(
                "serving the socket-activated listener instead of the configured socket",
                metadata: ["listener": "\(path)", "configured": "\(configuration.socketPath)"])
            configuration.socketPath = path
            source.overrides.append(.init("socket", path))
        }
        if notifier != nil || listener != nil {
            logger.info(
                "service manager integration",
                metadata: [
                    "notify_socket": "\(notifier.map { "\($0.destination)" } ?? "none")",
                    "watchdog": "\(notifier?.watchdogInterval.map { "\($0)" } ?? "off")",
                    "socket_activated": "\(listener.map { "fd \($0.descriptor) '\($0.name)'" } ?? "no")",
                ])
        }

        // Trap SIGHUP before the server serves: from here a SIGHUP waits for the reload service instead of
        // killing the process (its default action).
        let reloadSignals = await UnixSignalsSequence(trapping: .sighup)
        var hooks = notifier?.serverHooks() ?? ServerHooks()
        hooks.logLevelChanged = { levelControl.level = $0 }
        // The loop only beats; the watchdog service pings systemd while it does.
        let heartbeat = LoopHeartbeat()
        hooks.tick = { heartbeat.beat() }
        // Bound before the region is mapped: a port in use stops divvyd before it has made anything.
        let metricsListener: MetricsListenerService?
        do {
            metricsListener = try configuration.metricsListen.map { (listen) throws(ServerError) in
                try MetricsListenerService(listen: listen)
            }
        } catch {
            throw fail("\(error)")
        }
        let server: DivvyServer
        do {
            server = try DivvyServer(
                configuration: configuration, logger: logger, listenerDescriptor: listener?.descriptor,
                storedRegion: storedRegion, hooks: hooks)
        } catch {
            throw fail("\(error)")
        }
        // The server keeps duplicates of a re-attached region's descriptors: the inherited ones go.
        if let storedRegion {
            close(storedRegion.region)
            close(storedRegion.data)
        }
        // An anonymous region dies with its last descriptor: hand duplicates to the service manager (systemd with
        // FileDescriptorStoreMax=, or `divvyd --supervise`), which passes them to the next divvyd after a crash or
        // restart. (A named region is replaced after a crash instead: its data object is an anonymous memfd.)
        if let notifier, configuration.regionName == nil, let data = server.regionDescriptors.data {
            notifier.storeDescriptors([server.regionDescriptors.region], name: SystemdNotifier.StoredName.region)
            notifier.storeDescriptors([data], name: SystemdNotifier.StoredName.regionData)
        }
        // Shut down in reverse order: reloading stops first, then the server; the watchdog last, since the loop
        // keeps ticking through its graceful shutdown.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let notifier, notifier.watchdogInterval != nil {
            services.append(
                .init(
                    service: WatchdogService(notifier: notifier, heartbeat: heartbeat, logger: logger),
                    successTerminationBehavior: .ignore))
        }
        if let metricsListener {
            metricsListener.serve(server)
            logger.info(
                "serving metrics for Prometheus",
                metadata: ["url": "http://\(metricsListener.host):\(metricsListener.port)/metrics"])
            services.append(.init(service: metricsListener))
        }
        services.append(.init(service: DivvyServerService(server: server)))
        services.append(
            .init(
                service: ConfigurationReloadService(
                    server: server, source: source, signals: reloadSignals, logger: logger),
                successTerminationBehavior: .ignore))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            notifier?.notify("STATUS=divvyd failed: \(error)")
            throw error
        }
    }
}

/// Writes `divvyd: message` and a newline to standard error (one write(2); before logging is set up, and for
/// failures that end the process).
func printError(_ message: String) {
    let line = "divvyd: \(message)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}
