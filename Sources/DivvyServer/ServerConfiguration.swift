import DivvyShm
import DivvyTransport
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Everything divvyd can be told: where to listen, what region to map, who may connect, quotas.
///
/// The defaults run a working daemon for one user with no root and no config file ("sized for a laptop": a 256 MiB
/// anonymous region). Each field has a flag in `divvyd` and a key in the config file (`ServerConfiguration.parse`).
public struct ServerConfiguration: Hashable, Sendable {
    /// The socket path. Default `DivvySocketPath.defaultPath` (`$XDG_RUNTIME_DIR/divvy/divvyd.sock`, or
    /// `/run/divvy/divvyd.sock` as root).
    public var socketPath: String
    /// Permission bits of the socket file. Default `0o660` (the policy still checks every peer).
    public var socketMode: UInt32
    /// The POSIX shared-memory name of the region (`/dev/shm/<prefix><name>`), or nil (the default) for an
    /// anonymous memfd region that only connected clients can map.
    public var regionName: String?
    /// The name prefix of a named region. Default `"divvy-"`.
    public var regionNamePrefix: String
    /// Bytes of data area (the memory clients allocate from). Default 256 MiB.
    public var dataSize: Int
    /// The heap page size. Default 64 KiB.
    public var pageSize: Int
    /// Size classes (nil: the heap's defaults for `pageSize`).
    public var sizeClasses: [Int]?
    /// Handles the daemon's own participant may hold at once (heap slot 0's held list). It holds every mediated
    /// client's blocks, so this bounds the blocks all mediated clients hold together. Default 65536.
    public var heldCapacity: Int
    /// Handles each direct client's participant may hold at once (the held list of every other heap slot).
    /// Default 4096.
    public var directHeldCapacity: Int
    /// Participant slots in the heap (2…4096, `SharedHeapConfiguration.maximumParticipants`): the daemon's own
    /// participant takes one, each connected direct client one. When they are all taken, `any` clients are served
    /// mediated and `direct` ones refused with `directUnavailable`. Default 1024. A slot costs 128 bytes at start
    /// and its held list (`directHeldCapacity` × 16 bytes) once a direct client first uses it.
    public var participantCapacity: Int
    /// The share of the data area, in percent (0…70), given to the extent area that serves blocks larger than the
    /// largest class (512 KiB by default) in whole pages, up to the area's size: with the default 25, a 256 MiB data
    /// area serves blocks up to 64 MiB and a 4 GiB one up to 1 GiB; 70 lets one block take most of the data area.
    /// Up to 25 the span tier keeps a quarter and small pages the rest; past 25 the extent area takes from the span
    /// tier first (50 − extent, none from 50 on), then from small pages. 0: no extent area.
    public var extentPercent: Int = 25
    /// Huge pages for the region. Default `.automatic`.
    public var hugePages: SharedRegion.HugePages
    /// Commit the whole region at start (`.full`, the default: never SIGBUS) or reserve lazily.
    public var commitment: SharedRegion.Commitment
    /// Prefault the region's page tables at start. Default false.
    public var prefault: Bool
    /// Who may connect, who gets direct access, who may administer.
    public var policy: AccessPolicy
    /// Bytes each client may hold (mediated: bytes of blocks held; direct: bytes of pages leased); nil (the
    /// default) means a quarter of the data area (`effectiveQuotaBytes`).
    public var quotaBytes: Int?

    /// The quota in force: `quotaBytes`, or a quarter of the data area.
    public var effectiveQuotaBytes: Int { quotaBytes ?? max(1, dataSize / 4) }
    /// Blocks one mediated client may hold through the daemon at once (`max-blocks-per-client`); nil (the default):
    /// `heldCapacity / 16` (`effectiveMaxBlocksPerClient`). Every mediated block is held by the daemon's own heap
    /// participant, whose held list (`heldCapacity`) all mediated clients share: without this limit one client
    /// allocating tiny blocks fills it and every other mediated client gets `heapFull`.
    public var maxBlocksPerClient: Int?
    /// The block limit in force: `maxBlocksPerClient`, or `heldCapacity / 16` (at least 1): 4,096 with the default
    /// held capacity — what one direct participant may hold by default (`SharedHeapConfiguration.heldCapacity`),
    /// and at most 1/16 of the shared list, so one client leaves 15/16 of it to the others.
    public var effectiveMaxBlocksPerClient: Int { maxBlocksPerClient ?? max(1, heldCapacity / 16) }
    /// Bytes of large blocks (those above `pageSize / 8`, served from the span tier and the extent area) one mediated
    /// client may hold (`large-quota`), on top of `quotaBytes`; nil (the default): a quarter of the span tier and the
    /// extent area together, at least one span page (`effectiveLargeQuotaBytes(spanTierBytes:spanPageSize:)`). Each
    /// is a quarter of the data area by default: without this limit one client takes every large block. A mediated
    /// client that needs a block larger than that (the extent area serves up to its own size: a quarter of the data
    /// area) needs a larger `large-quota`.
    public var largeQuotaBytes: Int?
    /// Share tokens one client may have outstanding (`max-share-tokens-per-client`, default 256): each `share`
    /// issues one, and it lives until a client adopts with it or the sharer stops holding the block (PROTOCOL.md
    /// 6.4). Bounds the daemon's memory for tokens; beyond it `share` is refused with `quotaExceeded`.
    public var maxShareTokensPerClient: Int

    /// The large-block limit in force for a large-block tier (span pages and extent area) of `spanTierBytes` with span
    /// pages of `spanPageSize`: `largeQuotaBytes`,
    /// or a quarter of the tier (the same share of the tier as the default quota is of the data area), but at least
    /// one span page so the largest class stays allocatable.
    public func effectiveLargeQuotaBytes(spanTierBytes: Int, spanPageSize: Int) -> Int {
        largeQuotaBytes ?? max(spanPageSize, spanTierBytes / 4)
    }
    /// Connected clients at most (more are refused with `tooManyClients`). Default 1024.
    public var maxClients: Int
    /// Connections beyond `maxClients` that only admin peers may use, so `divvyctl` works when ordinary peers
    /// fill the daemon (`reserved-admin-connections`). Default 4.
    public var reservedAdminConnections: Int
    /// Connections one non-admin uid may hold at once (`max-connections-per-uid`); 0: no limit; nil (the default):
    /// a quarter of `maxClients` (`effectiveMaxConnectionsPerUID`).
    public var maxConnectionsPerUID: Int?
    /// The per-uid limit in force: `maxConnectionsPerUID`, or a quarter of `maxClients` (at least 1).
    public var effectiveMaxConnectionsPerUID: Int { maxConnectionsPerUID ?? max(1, maxClients / 4) }
    /// How long a new connection may take to send `hello` before the daemon closes it
    /// (`handshake-timeout-ms`). Default 5 s.
    public var handshakeTimeoutMilliseconds: Int
    /// Pages granted to a direct client at join (more are leased on demand). Default 16.
    public var initialLeasePages: Int
    /// How long a graceful shutdown waits for clients to say goodbye before reclaiming their memory. Default 2 s.
    public var shutdownGraceMilliseconds: Int
    /// `host:port` (IPv4) of an HTTP listener serving `GET /metrics` for Prometheus, or nil (the default: off;
    /// `divvyctl metrics` works without it). Port 0 picks a free port. divvyd runs it as a `MetricsListenerService`;
    /// `DivvyServer` itself does not listen.
    public var metricsListen: String?
    /// The lowest level divvyd logs (`log-level`, or `--log-level`). Default `.info`. The server itself logs through
    /// the `Logger` it is given; `divvyd` gives its handler this level.
    public var logLevel: Logger.Level

    /// The defaults (see each property).
    public init() {
        socketPath = DivvySocketPath.defaultPath
        socketMode = 0o660
        regionName = nil
        regionNamePrefix = "divvy-"
        dataSize = 256 << 20
        pageSize = 64 << 10
        sizeClasses = nil
        heldCapacity = 65536
        directHeldCapacity = 4096
        participantCapacity = 1024
        hugePages = .automatic
        commitment = .full
        prefault = false
        policy = AccessPolicy()
        quotaBytes = nil
        maxBlocksPerClient = nil
        largeQuotaBytes = nil
        maxShareTokensPerClient = 256
        maxClients = 1024
        reservedAdminConnections = 4
        maxConnectionsPerUID = nil
        handshakeTimeoutMilliseconds = 5000
        initialLeasePages = 16
        shutdownGraceMilliseconds = 2000
        metricsListen = nil
        logLevel = .info
    }

    /// An error in a config file or flag value: the line and what is wrong.
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        /// What is wrong, with the line number when it came from a file.
        public var message: String
        /// Creates an error.
        public init(_ message: String) { self.message = message }
        /// The message.
        public var description: String { message }
    }

    /// The config file keys, in the order `render()` writes them.
    public static let keys = [
        "socket", "socket-mode", "region-name", "region-prefix", "data-size", "page-size", "size-classes",
        "held-capacity", "direct-held-capacity", "participant-capacity", "extent-percent", "huge-pages", "commit", "prefault", "allow-uids", "allow-gids",
        "direct-uids", "direct-gids", "admin-uids", "admin-gids", "quota", "max-clients", "initial-lease-pages",
        "shutdown-grace-ms", "metrics-listen", "log-level", "reserved-admin-connections", "max-connections-per-uid",
        "handshake-timeout-ms", "max-blocks-per-client", "large-quota", "max-share-tokens-per-client",
    ]

    /// Applies a config file's text: one `key = value` per line, `#` comments, blank lines ignored. Keys are
    /// `keys`; sizes accept `K`, `M`, `G` suffixes (powers of 1024); lists are comma-separated; `self` in a uid
    /// list means the daemon's own uid.
    ///
    /// - Throws: `ParseError` naming the line for an unknown key or a bad value.
    public mutating func apply(configText: String) throws(ParseError) {
        var number = 0
        for rawLine in configText.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let trimmed = line.trimmingWhitespace
            if trimmed.isEmpty { continue }
            guard let equals = trimmed.firstIndex(of: "=") else {
                throw ParseError("line \(number): expected 'key = value', got '\(trimmed)'")
            }
            let key = String(trimmed[..<equals].trimmingWhitespace)
            let value = String(trimmed[trimmed.index(after: equals)...].trimmingWhitespace)
            do throws(ParseError) {
                try set(key, value)
            } catch {
                throw ParseError("line \(number): \(error.message)")
            }
        }
    }

    /// Sets one setting by its config-file key (flags use the same parser).
    ///
    /// - Throws: `ParseError` for an unknown key or a bad value.
    public mutating func set(_ key: String, _ value: String) throws(ParseError) {
        switch key {
        case "socket": socketPath = value
        case "socket-mode": socketMode = try Self.octal(value, key)
        case "region-name": regionName = value.isEmpty || value == "anonymous" ? nil : value
        case "region-prefix": regionNamePrefix = value
        case "data-size": dataSize = try Self.size(value, key)
        case "page-size": pageSize = try Self.size(value, key)
        case "size-classes":
            sizeClasses = value == "default" ? nil : try Self.list(value, key).map { (item) throws(ParseError) in
                try Self.size(item, key)
            }
        case "held-capacity": heldCapacity = try Self.count(value, key)
        case "direct-held-capacity": directHeldCapacity = try Self.count(value, key)
        case "participant-capacity": participantCapacity = try Self.count(value, key)
        case "extent-percent": extentPercent = try Self.count(value, key)
        case "huge-pages":
            switch value {
            case "auto", "automatic": hugePages = .automatic
            case "none", "off": hugePages = .none
            case "transparent", "thp": hugePages = .transparent
            case "2M", "2m", "explicit": hugePages = .explicit2MiB
            default: throw ParseError("huge-pages must be auto, none, transparent or 2M, not '\(value)'")
            }
        case "commit":
            switch value {
            case "full": commitment = .full
            case "lazy": commitment = .lazy
            default: throw ParseError("commit must be full or lazy, not '\(value)'")
            }
        case "prefault": prefault = try Self.bool(value, key)
        case "allow-uids": policy.allowedUIDs = try Self.ids(value, key)
        case "allow-gids": policy.allowedGIDs = try Self.ids(value, key)
        case "direct-uids": policy.directUIDs = try Self.ids(value, key)
        case "direct-gids": policy.directGIDs = try Self.ids(value, key)
        case "admin-uids": policy.adminUIDs = try Self.ids(value, key)
        case "admin-gids": policy.adminGIDs = try Self.ids(value, key)
        case "quota": quotaBytes = value == "default" ? nil : try Self.size(value, key)
        case "max-blocks-per-client":
            maxBlocksPerClient = value == "auto" || value == "default" ? nil : try Self.count(value, key)
        case "large-quota":
            largeQuotaBytes = value == "auto" || value == "default" ? nil : try Self.size(value, key)
        case "max-share-tokens-per-client": maxShareTokensPerClient = try Self.count(value, key)
        case "max-clients": maxClients = try Self.count(value, key)
        case "reserved-admin-connections": reservedAdminConnections = try Self.count(value, key)
        case "max-connections-per-uid":
            maxConnectionsPerUID = value == "auto" || value == "default" ? nil : try Self.count(value, key)
        case "handshake-timeout-ms": handshakeTimeoutMilliseconds = try Self.count(value, key)
        case "initial-lease-pages": initialLeasePages = try Self.count(value, key)
        case "shutdown-grace-ms": shutdownGraceMilliseconds = try Self.count(value, key)
        case "metrics-listen":
            if value.isEmpty || value == "off" {
                metricsListen = nil
            } else {
                guard Self.hostAndPort(value) != nil else {
                    throw ParseError("metrics-listen must be host:port like 127.0.0.1:9464 (or off), not '\(value)'")
                }
                metricsListen = value
            }
        case "log-level":
            guard let level = Logger.Level(rawValue: value.lowercased()) else {
                throw ParseError(
                    "log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), "
                        + "not '\(value)'")
            }
            logLevel = level
        default:
            throw ParseError("unknown setting '\(key)'; known: \(Self.keys.joined(separator: ", "))")
        }
    }

    /// Checks the settings together.
    ///
    /// - Throws: `ParseError` saying which setting is impossible and why.
    public func validate() throws(ParseError) {
        guard dataSize > 0 else { throw ParseError("data-size must be positive") }
        guard pageSize >= 4096, pageSize & (pageSize - 1) == 0 else {
            throw ParseError("page-size must be a power of two of at least 4K, not \(pageSize)")
        }
        guard dataSize >= pageSize else { throw ParseError("data-size \(dataSize) is smaller than one page") }
        guard effectiveQuotaBytes > 0 else { throw ParseError("quota must be positive") }
        guard maxClients > 0 else { throw ParseError("max-clients must be positive") }
        guard handshakeTimeoutMilliseconds > 0 else {
            throw ParseError("handshake-timeout-ms must be positive (a connection that never says hello holds a slot)")
        }
        guard heldCapacity > 0 else { throw ParseError("held-capacity must be positive") }
        if let maxBlocksPerClient {
            guard maxBlocksPerClient > 0 else {
                throw ParseError("max-blocks-per-client must be positive (or auto: held-capacity / 16)")
            }
            guard maxBlocksPerClient < heldCapacity || heldCapacity == 1 else {
                throw ParseError(
                    "max-blocks-per-client (\(maxBlocksPerClient)) must be below held-capacity (\(heldCapacity)): "
                        + "all mediated clients share the held list, so one client could otherwise fill it")
            }
        }
        guard maxShareTokensPerClient > 0 else {
            throw ParseError("max-share-tokens-per-client must be positive (a client could never share a block)")
        }
        if let largeQuotaBytes, largeQuotaBytes <= 0 {
            throw ParseError("large-quota must be positive (or auto: a quarter of the large-block tier)")
        }
        guard participantCapacity >= 2, participantCapacity <= SharedHeapConfiguration.maximumParticipants else {
            throw ParseError(
                "participant-capacity must be 2…\(SharedHeapConfiguration.maximumParticipants) (the daemon takes one "
                    + "slot), not \(participantCapacity)")
        }
        guard extentPercent >= 0, extentPercent <= 70 else {
            throw ParseError(
                "extent-percent must be 0…70 (the share of the data area for blocks above the largest class; the "
                    + "small and span pages need the rest), not \(extentPercent)")
        }
        guard directHeldCapacity > 0, directHeldCapacity <= 1 << 24, heldCapacity <= 1 << 24 else {
            throw ParseError("held-capacity and direct-held-capacity must be 1…16777216")
        }
        guard socketMode <= 0o777 else { throw ParseError("socket-mode must be octal permission bits") }
    }

    /// The configuration as config-file text (what `divvyctl config` shows; `apply(configText:)` reads it back).
    public func render() -> [(key: String, value: String)] {
        func ids(_ set: Set<UInt32>) -> String { set.sorted().map(String.init).joined(separator: ",") }
        return [
            ("socket", socketPath), ("socket-mode", "0" + String(socketMode, radix: 8)),
            ("region-name", regionName ?? "anonymous"), ("region-prefix", regionNamePrefix),
            ("data-size", String(dataSize)), ("page-size", String(pageSize)),
            ("size-classes", sizeClasses.map { $0.map(String.init).joined(separator: ",") } ?? "default"),
            ("held-capacity", String(heldCapacity)), ("direct-held-capacity", String(directHeldCapacity)),
            ("participant-capacity", String(participantCapacity)),
            ("extent-percent", String(extentPercent)),
            ("huge-pages", { switch hugePages {
                case .automatic: "auto"
                case .none: "none"
                case .transparent: "transparent"
                default: "2M"
            } }()),
            ("commit", commitment == .full ? "full" : "lazy"), ("prefault", String(prefault)),
            ("allow-uids", ids(policy.allowedUIDs)), ("allow-gids", ids(policy.allowedGIDs)),
            ("direct-uids", ids(policy.directUIDs)), ("direct-gids", ids(policy.directGIDs)),
            ("admin-uids", ids(policy.adminUIDs)), ("admin-gids", ids(policy.adminGIDs)),
            ("quota", quotaBytes.map(String.init) ?? "default"), ("max-clients", String(maxClients)),
            ("initial-lease-pages", String(initialLeasePages)),
            ("shutdown-grace-ms", String(shutdownGraceMilliseconds)),
            ("metrics-listen", metricsListen ?? "off"), ("log-level", logLevel.rawValue),
            ("reserved-admin-connections", String(reservedAdminConnections)),
            ("max-connections-per-uid", maxConnectionsPerUID.map(String.init) ?? "auto"),
            ("handshake-timeout-ms", String(handshakeTimeoutMilliseconds)),
            ("max-blocks-per-client", maxBlocksPerClient.map(String.init) ?? "auto"),
            ("large-quota", largeQuotaBytes.map(String.init) ?? "auto"),
            ("max-share-tokens-per-client", String(maxShareTokensPerClient)),
        ]
    }
}
