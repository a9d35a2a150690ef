import Logging

/// Configuration reload (SIGHUP in divvyd): any thread hands a new configuration over with `reload(_:)`; the loop
/// applies it on its own thread at its next wake-up (`applyPendingReload()`), so no request sees half of it. What
/// changes is decided by `ConfigurationReload`, a pure value tested on its own.
extension DivvyServer {
    /// Asks the loop to apply a configuration read again (config file, then the command line): its reloadable
    /// settings take effect, the others are logged as needing a restart (`ConfigurationReload`). Any thread;
    /// returns at once. A second call before the loop wakes replaces the first.
    ///
    /// - Parameter proposed: The new configuration (validated by the caller; the loop checks it again and keeps
    ///   the running configuration whole if it does not validate).
    public func reload(_ proposed: ServerConfiguration) {
        control.lock()
        pendingReload = proposed
        control.unlock()
        poller.waker.wake()
    }

    /// Applies the configuration `reload(_:)` handed over, if any: logs one line per changed key (notice for the
    /// applied ones, warning for those that need a restart), then puts the new settings in force. Loop thread only.
    func applyPendingReload() {
        control.lock()
        let proposed = pendingReload
        pendingReload = nil
        control.unlock()
        guard let proposed else { return }
        let reload: ConfigurationReload
        do throws(ServerConfiguration.ParseError) {
            reload = try ConfigurationReload(running: configuration, proposed: proposed)
        } catch {
            let message = "configuration reload refused: \(error.message); the running configuration is kept (fix "
                + "the file and reload again)"
            logger.error("\(message)")
            return
        }
        apply(reload)
    }

    /// Puts a reload's applied configuration in force and logs what changed. Loop thread only.
    func apply(_ reload: ConfigurationReload) {
        let oldLevel = configuration.logLevel
        let newLevel = reload.applied.logLevel
        // The lines are written at the more verbose of the two levels: lower the level first, raise it after.
        if newLevel < oldLevel { hooks.logLevelChanged(newLevel) }
        for change in reload.appliedChanges {
            let old = ConfigurationReload.display(key: change.key, value: change.old, in: configuration)
            let new = ConfigurationReload.display(key: change.key, value: change.new, in: reload.applied)
            logger.notice("configuration reload: \(change.key) changed from \(old) to \(new)")
        }
        for change in reload.restartChanges {
            let old = ConfigurationReload.display(key: change.key, value: change.old, in: configuration)
            let message = "configuration reload: \(change.key) changed in the file (\(old) to \(change.new)) "
                + "but needs a restart; still running with \(old)"
            logger.warning("\(message)")
        }
        configuration = reload.applied
        admission.limits = ConnectionAdmission.Limits(
            maxClients: configuration.maxClients,
            reservedAdminConnections: configuration.reservedAdminConnections,
            maxConnectionsPerUID: configuration.effectiveMaxConnectionsPerUID)
        logger.notice(
            "configuration reloaded",
            metadata: [
                "applied": "\(reload.appliedChanges.count)", "needs_restart": "\(reload.restartChanges.count)",
            ])
        if newLevel > oldLevel { hooks.logLevelChanged(newLevel) }
    }
}
