/// What a configuration reload (SIGHUP, `systemctl reload divvyd`) changes, as a pure value: the settings that can
/// change while the daemon runs are taken from the new configuration, the others keep their running value and are
/// reported as needing a restart.
///
/// Reloadable (`reloadableKeys`): the access policy (`allow-*`, `direct-*`, `admin-*`), `quota`, `log-level`, the
/// connection limits (`max-clients`, `max-connections-per-uid`, `reserved-admin-connections`,
/// `handshake-timeout-ms`), `initial-lease-pages` and `shutdown-grace-ms`. Each is read when it is used (a new
/// connection, a new allocation or lease, a join, the start of a shutdown), so a new value takes effect from then
/// on; nothing already granted is taken back (a client above a lowered quota keeps its blocks, a connection beyond a
/// lowered limit stays open). Everything else (the socket, the region and heap geometry, `metrics-listen`) was used
/// once at start and needs a restart.
///
///     let reload = try ConfigurationReload(running: server.configuration, proposed: fromFile)
///     reload.applied          // what to run with from now on
///     reload.changes          // one per key whose value differs, with `needsRestart`
public struct ConfigurationReload: Hashable, Sendable {
    /// One setting whose value in the new configuration differs from the running one.
    public struct Change: Hashable, Sendable {
        /// The config-file key (`ServerConfiguration.keys`).
        public var key: String
        /// The running value, as `ServerConfiguration.render()` writes it.
        public var old: String
        /// The new value, as `ServerConfiguration.render()` writes it.
        public var new: String
        /// The key cannot change at run time: the daemon keeps `old` until it restarts.
        public var needsRestart: Bool

        /// Creates a change.
        public init(key: String, old: String, new: String, needsRestart: Bool) {
            self.key = key
            self.old = old
            self.new = new
            self.needsRestart = needsRestart
        }
    }

    /// The keys a reload applies (the others need a restart).
    public static let reloadableKeys: Set<String> = [
        "allow-uids", "allow-gids", "direct-uids", "direct-gids", "admin-uids", "admin-gids", "quota", "log-level",
        "max-clients", "max-connections-per-uid", "reserved-admin-connections", "handshake-timeout-ms",
        "initial-lease-pages", "shutdown-grace-ms",
    ]

    /// The configuration to run with: the running one with every reloadable setting taken from the new one.
    public let applied: ServerConfiguration
    /// Every key whose value differs, in `ServerConfiguration.keys` order.
    public let changes: [Change]

    /// The changes the reload applies.
    public var appliedChanges: [Change] { changes.filter { !$0.needsRestart } }
    /// The changes that wait for a restart.
    public var restartChanges: [Change] { changes.filter(\.needsRestart) }

    /// Compares a new configuration with the running one.
    ///
    /// - Parameters:
    ///   - running: The configuration the daemon runs with.
    ///   - proposed: The configuration read again (config file, then the command line's flags and `--set`).
    /// - Throws: `ServerConfiguration.ParseError` when `proposed` does not validate, or the reloadable settings it
    ///   names do not validate with the running geometry; nothing is applied then.
    public init(running: ServerConfiguration, proposed: ServerConfiguration) throws(ServerConfiguration.ParseError) {
        try proposed.validate()
        var applied = running
        applied.policy = proposed.policy
        applied.quotaBytes = proposed.quotaBytes
        applied.logLevel = proposed.logLevel
        applied.maxClients = proposed.maxClients
        applied.maxConnectionsPerUID = proposed.maxConnectionsPerUID
        applied.reservedAdminConnections = proposed.reservedAdminConnections
        applied.handshakeTimeoutMilliseconds = proposed.handshakeTimeoutMilliseconds
        applied.initialLeasePages = proposed.initialLeasePages
        applied.shutdownGraceMilliseconds = proposed.shutdownGraceMilliseconds
        try applied.validate()
        self.applied = applied

        let new = Dictionary(proposed.render().map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
        changes = running.render().compactMap { key, old in
            guard let value = new[key], value != old else { return nil }
            return Change(key: key, old: old, new: value, needsRestart: !Self.reloadableKeys.contains(key))
        }
    }

    /// A value as a reload's log line shows it: an empty list as `none`, and a `default`/`auto` limit with the value
    /// it stands for in `configuration` (`default (67108864 bytes)`).
    ///
    /// - Parameters:
    ///   - key: The config key.
    ///   - value: Its rendered value (`ServerConfiguration.render()`).
    ///   - configuration: The configuration the value belongs to.
    public static func display(key: String, value: String, in configuration: ServerConfiguration) -> String {
        switch (key, value) {
        case (_, ""): "none"
        case ("quota", "default"): "default (\(configuration.effectiveQuotaBytes) bytes)"
        case ("max-connections-per-uid", "auto"): "auto (\(configuration.effectiveMaxConnectionsPerUID))"
        default: value
        }
    }
}
