import DivvyServer
import Foundation
import Logging
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `ConfigurationReload` (what a SIGHUP changes), `ConfigurationSource` (reading the file and flags again) and
/// `LogLevelControl`, with no process and no socket.
final class ConfigurationReloadTests: XCTestCase {
    /// A second valid value for every key, different from the defaults.
    static let otherValues: [String: String] = [
        "socket": "/tmp/other.sock", "socket-mode": "0600", "region-name": "other", "region-prefix": "other-",
        "data-size": "512M", "page-size": "128K", "size-classes": "64,128,256", "held-capacity": "1024",
        "direct-held-capacity": "512", "participant-capacity": "8", "extent-percent": "50", "huge-pages": "none", "commit": "lazy", "prefault": "true",
        "allow-uids": "4242", "allow-gids": "4243", "direct-uids": "4244", "direct-gids": "4245",
        "admin-uids": "4246", "admin-gids": "4247", "quota": "8M", "max-clients": "99",
        "initial-lease-pages": "3", "shutdown-grace-ms": "900", "metrics-listen": "127.0.0.1:9464",
        "log-level": "debug", "reserved-admin-connections": "7", "max-connections-per-uid": "5",
        "handshake-timeout-ms": "1234", "max-blocks-per-client": "100", "large-quota": "1M",
        "max-share-tokens-per-client": "17",
    ]

    func testEveryKeyIsEitherAppliedOrKeptAndReportedAsNeedingARestart() throws {
        XCTAssertEqual(Set(Self.otherValues.keys), Set(ServerConfiguration.keys), "a value for every key")
        XCTAssertTrue(ConfigurationReload.reloadableKeys.isSubset(of: Set(ServerConfiguration.keys)))
        let running = ServerConfiguration()
        for key in ServerConfiguration.keys {
            var proposed = running
            try proposed.set(key, try XCTUnwrap(Self.otherValues[key]))
            let reload = try ConfigurationReload(running: running, proposed: proposed)
            let reloadable = ConfigurationReload.reloadableKeys.contains(key)
            let old = try XCTUnwrap(running.render().first { $0.key == key }?.value)
            let new = try XCTUnwrap(proposed.render().first { $0.key == key }?.value)
            XCTAssertEqual(reload.changes, [.init(key: key, old: old, new: new, needsRestart: !reloadable)], key)
            let applied = try XCTUnwrap(reload.applied.render().first { $0.key == key }?.value)
            XCTAssertEqual(applied, reloadable ? new : old, key)
            // Nothing else moves.
            for (other, value) in reload.applied.render() where other != key {
                XCTAssertEqual(value, running.render().first { $0.key == other }?.value, "\(key) moved \(other)")
            }
        }
    }

    func testTheIssuesListOfReloadableAndRestartKeys() {
        for key in [
            "allow-uids", "allow-gids", "direct-uids", "direct-gids", "admin-uids", "admin-gids", "quota",
            "log-level", "max-clients", "max-connections-per-uid", "reserved-admin-connections", "handshake-timeout-ms",
        ] {
            XCTAssertTrue(ConfigurationReload.reloadableKeys.contains(key), key)
        }
        for key in [
            "socket", "region-name", "data-size", "page-size", "size-classes", "held-capacity", "participant-capacity",
            "extent-percent", "huge-pages", "commit", "prefault", "metrics-listen",
        ] {
            XCTAssertFalse(ConfigurationReload.reloadableKeys.contains(key), key)
        }
    }

    func testSeveralChangesAtOnce() throws {
        var running = ServerConfiguration()
        try running.apply(configText: "data-size = 32M\nquota = 8M\n")
        var proposed = running
        try proposed.apply(configText: "data-size = 64M\nquota = 4M\nlog-level = debug\nmax-clients = 10\n")
        let reload = try ConfigurationReload(running: running, proposed: proposed)
        XCTAssertEqual(reload.appliedChanges.map(\.key), ["quota", "max-clients", "log-level"])
        XCTAssertEqual(reload.restartChanges.map(\.key), ["data-size"])
        XCTAssertEqual(reload.restartChanges.first?.old, String(32 << 20))
        XCTAssertEqual(reload.applied.dataSize, 32 << 20, "the running data size stays")
        XCTAssertEqual(reload.applied.effectiveQuotaBytes, 4 << 20)
        XCTAssertEqual(reload.applied.logLevel, .debug)
        XCTAssertEqual(reload.applied.maxClients, 10)
    }

    func testTheSameConfigurationChangesNothing() throws {
        let running = ServerConfiguration()
        let reload = try ConfigurationReload(running: running, proposed: running)
        XCTAssertEqual(reload.changes, [])
        XCTAssertEqual(reload.applied, running)
    }

    func testLogLinesShowWhatDefaultsStandFor() throws {
        var configuration = ServerConfiguration()
        try configuration.apply(configText: "data-size = 32M\nmax-clients = 40\n")
        XCTAssertEqual(
            ConfigurationReload.display(key: "quota", value: "default", in: configuration), "default (8388608 bytes)")
        XCTAssertEqual(ConfigurationReload.display(key: "max-connections-per-uid", value: "auto", in: configuration),
            "auto (10)")
        XCTAssertEqual(ConfigurationReload.display(key: "allow-gids", value: "", in: configuration), "none")
        XCTAssertEqual(ConfigurationReload.display(key: "quota", value: "4096", in: configuration), "4096")
    }

    func testAnInvalidConfigurationIsRefusedWhole() {
        let running = ServerConfiguration()
        var proposed = running
        proposed.quotaBytes = 1 << 20
        proposed.maxClients = 0
        XCTAssertThrowsError(try ConfigurationReload(running: running, proposed: proposed)) { error in
            XCTAssertTrue("\(error)".contains("max-clients must be positive"), "\(error)")
        }
    }

    // MARK: ConfigurationSource

    private func temporaryFile(_ text: String) throws -> String {
        let directory = try temporarySocketDirectory()
        let path = directory + "/divvyd.conf"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        return path
    }

    func testTheSourceReadsTheFileAndTheFlagsWin() throws {
        let path = try temporaryFile("quota = 8M\ndata-size = 64M\nlog-level = debug\n")
        let source = ConfigurationSource(configFile: path, overrides: [.init("data-size", "32M"), .init("quota", "2M")])
        let configuration = try source.load()
        XCTAssertEqual(configuration.dataSize, 32 << 20)
        XCTAssertEqual(configuration.quotaBytes, 2 << 20)
        XCTAssertEqual(configuration.logLevel, .debug)
        // Read again: a changed file shows, the flags still win.
        try "quota = 1M\ndata-size = 128M\nlog-level = error\n".write(toFile: path, atomically: true, encoding: .utf8)
        let again = try source.load()
        XCTAssertEqual(again.dataSize, 32 << 20)
        XCTAssertEqual(again.quotaBytes, 2 << 20)
        XCTAssertEqual(again.logLevel, .error)
    }

    func testTheSourceNamesTheFileAndLineOfABadValueOrAMissingFile() throws {
        let path = try temporaryFile("log-level = info\nquota = lots\n")
        XCTAssertThrowsError(try ConfigurationSource(configFile: path).load()) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(path): line 2:"), "\(error)")
        }
        XCTAssertThrowsError(try ConfigurationSource(configFile: path + ".missing").load()) { error in
            XCTAssertTrue("\(error)".contains("cannot read config file \(path).missing"), "\(error)")
            XCTAssertTrue("\(error)".contains("No such file"), "\(error)")
        }
    }

    // MARK: LogLevelControl and ConnectionAdmission limits

    func testHandlersFollowingAControlChangeLevelTogether() {
        let control = LogLevelControl(.info)
        let handler = DivvyLogHandler(label: "divvyd", format: .plain).following(control)
        let copy = handler
        XCTAssertEqual(handler.logLevel, .info)
        control.level = .debug
        XCTAssertEqual(handler.logLevel, .debug)
        XCTAssertEqual(copy.logLevel, .debug)
        let logger = Logger(label: "divvyd") { _ in handler }
        XCTAssertEqual(logger.logLevel, .debug, "a Logger holding a copy follows too")
        control.level = .error
        XCTAssertEqual(logger.logLevel, .error)
        var detached = handler
        detached.logLevel = .trace
        XCTAssertEqual(detached.logLevel, .trace, "setting a handler's own level detaches it")
        XCTAssertNil(detached.levelControl)
        XCTAssertEqual(handler.logLevel, .error, "and leaves the others alone")
    }

    func testChangedAdmissionLimitsDecideNewConnectionsAndCloseNone() {
        var admission = ConnectionAdmission(.init(maxClients: 1, reservedAdminConnections: 0, maxConnectionsPerUID: 0))
        admission.opened(uid: 1000)
        guard case .refuse = admission.decide(uid: 1001, isAdmin: false) else { return XCTFail("full") }
        admission.limits.maxClients = 2
        XCTAssertEqual(admission.decide(uid: 1001, isAdmin: false), .admit)
        XCTAssertEqual(admission.total, 1, "the open connection is still counted")
    }
}
