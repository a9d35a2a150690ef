import Divvy
import DivvyProtocol
import DivvyShm
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// Builds the admin replies' JSON documents (`AdminDocument`, shared with `divvyctl`) from the daemon's state.
struct AdminReports {
    let server: DivvyServer

    /// The daemon's version.
    static let version = DivvyServer.version

    typealias Status = AdminDocument.Status
    typealias SizeClassRow = AdminDocument.SizeClass
    typealias ClientRow = AdminDocument.Client
    typealias Verify = AdminDocument.Verify
    typealias Config = AdminDocument.Config
    typealias Disconnected = AdminDocument.Disconnected

    func json<T: Encodable>(_ operation: AdminOperation, _ value: T) -> Message {
        .adminReply(AdminReply(operation: operation, format: .json, body: AdminPaging.encode(value)))
    }

    func status(clients: Int) -> Status {
        let region = server.region
        let usage = server.recentHeapUsage()
        let geometry = region.geometry
        let capacity = server.heapCapacity
        return Status(
            version: Self.version, protocolVersion: Int(ProtocolVersion.current), pid: Int(getpid()),
            uptimeSeconds: Self.seconds(.now - server.startedAt),
            socket: server.socketPath,
            region: .init(
                name: region.objectName, backing: region.objectName == nil ? "memfd" : "/dev/shm",
                totalBytes: geometry.totalSize, metadataBytes: geometry.metadataSize, dataBytes: geometry.dataSize,
                pageKind: "\(region.pageKind)", lazy: region.header.isLazy),
            heap: .init(
                pageSize: server.heap.pageSize, pages: server.heap.pageCount, spanPageSize: usage.spanPageSize,
                spanPages: usage.spanPages, freeSpanPages: usage.freeSpanPages, freePages: usage.freePages,
                ownedPages: usage.ownedPages, orphanPages: usage.orphanPages, bytesUsed: usage.bytesInUse,
                bytesFree: max(0, capacity - usage.bytesInUse)),
            clients: clients)
    }

    func classes() -> [SizeClassRow] {
        server.heap.usage().sizeClasses.map { row in
            let carved = row.blocksInUse + row.blocksFree
            return SizeClassRow(
                blockSize: row.blockSize, pages: row.pages, blocksUsed: row.blocksInUse, blocksFree: row.blocksFree,
                fragmentation: carved == 0 ? 0 : Double(row.blocksFree) / Double(carved))
        }
    }

    func client(_ session: Session, now: ContinuousClock.Instant = .now) -> ClientRow {
        ClientRow(
            id: session.id, pid: session.peer.pid, uid: session.peer.uid, gid: session.peer.gid, name: session.name,
            mode: Self.modeName(session.mode), bytesHeld: session.bytesHeld,
            blocksHeld: session.blocksHeld, quotaBytes: server.configuration.effectiveQuotaBytes,
            pageAllowance: session.pageAllowance, participant: session.participant,
            connectedSeconds: Self.seconds(now - session.connectedAt), requests: session.requests)
    }

    /// A duration in seconds (with fractions), as `clients` rows report how long a client has been connected.
    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// A `clients` row's `mode` (the case's name, as `"\(mode)"` gives it, without reflection for each row).
    static func modeName(_ mode: ClientMode?) -> String {
        switch mode {
        case nil: "handshake"
        case .any: "any"
        case .direct: "direct"
        case .mediated: "mediated"
        }
    }

    func verify() -> Verify {
        let report = server.heap.verify()
        return Verify(
            clean: report.isClean, violations: report.violations, summary: report.description,
            pooledPages: report.pooledPages, ownedPages: report.ownedPages, orphanPages: report.orphanPages,
            allocatedBlocks: report.allocatedBlocks, holdings: report.holdings,
            liveParticipants: report.liveParticipants, deadParticipants: report.deadParticipants,
            operationsInFlight: report.operationsInFlight)
    }

    func config() -> Config {
        Config(settings: server.configuration.render().map { Config.Setting(key: $0.key, value: $0.value) })
    }
}

extension DivvyServer {
    /// The daemon's version string (Divvy's release, `DivvyVersion.string`).
    public static var version: String { DivvyVersion.string }
}
