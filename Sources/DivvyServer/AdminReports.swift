import DivvyProtocol
import DivvyShm
import Foundation

/// The admin replies' JSON documents. Their shapes are part of the daemon's interface (`divvyctl --json` prints
/// them as they come): fields are only ever added. See README "divvyctl" for the documented shapes.
struct AdminReports {
    let server: DivvyServer

    /// The daemon's version.
    static let version = DivvyServer.version

    /// `status`.
    struct Status: Codable, Hashable {
        struct Region: Codable, Hashable {
            var name: String?
            var backing: String
            var totalBytes: Int
            var metadataBytes: Int
            var dataBytes: Int
            var pageKind: String
            var lazy: Bool
        }
        struct Heap: Codable, Hashable {
            var pageSize: Int
            var pages: Int
            var spanPageSize: Int
            var spanPages: Int
            var freeSpanPages: Int
            var freePages: Int
            var ownedPages: Int
            var orphanPages: Int
            var bytesUsed: Int
            var bytesFree: Int
        }
        var version: String
        var protocolVersion: Int
        var pid: Int
        var uptimeSeconds: Double
        var socket: String
        var region: Region
        var heap: Heap
        var clients: Int
    }

    /// One row of `classes`.
    struct SizeClassRow: Codable, Hashable {
        var blockSize: Int
        var pages: Int
        var blocksUsed: Int
        var blocksFree: Int
        /// The share of the class's carved capacity not in use (0…1): internal fragmentation of its pages.
        var fragmentation: Double
    }

    /// One row of `clients`.
    struct ClientRow: Codable, Hashable {
        var id: UInt32
        var pid: Int32
        var uid: UInt32
        var gid: UInt32
        var name: String
        var mode: String
        var bytesHeld: Int
        var blocksHeld: Int
        var quotaBytes: Int
        var pageAllowance: Int
        var participant: Int?
        var connectedSeconds: Double
        var requests: Int
    }

    /// `verify`.
    struct Verify: Codable, Hashable {
        var clean: Bool
        var violations: [String]
        var summary: String
        var pooledPages: Int
        var ownedPages: Int
        var orphanPages: Int
        var allocatedBlocks: Int
        var holdings: Int
        var liveParticipants: Int
        var deadParticipants: Int
        var operationsInFlight: Int
    }

    /// `config`.
    struct Config: Codable, Hashable {
        struct Setting: Codable, Hashable {
            var key: String
            var value: String
        }
        var settings: [Setting]
    }

    /// `disconnect`.
    struct Disconnected: Codable, Hashable {
        var disconnected: ClientRow
    }

    func json<T: Encodable>(_ operation: AdminOperation, _ value: T) -> Message {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = (try? encoder.encode(value)).map { Array($0) } ?? Array("{}".utf8)
        return .adminReply(AdminReply(operation: operation, format: .json, body: body))
    }

    func status(clients: Int) -> Status {
        let region = server.region
        let usage = server.heap.usage()
        let geometry = region.geometry
        let capacity = server.heapCapacity
        return Status(
            version: Self.version, protocolVersion: Int(ProtocolVersion.current), pid: Int(getpid()),
            uptimeSeconds: Date().timeIntervalSince1970 - server.startTime,
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

    func client(_ session: Session) -> ClientRow {
        ClientRow(
            id: session.id, pid: session.peer.pid, uid: session.peer.uid, gid: session.peer.gid, name: session.name,
            mode: session.mode.map { "\($0)" } ?? "handshake", bytesHeld: session.bytesHeld,
            blocksHeld: session.blocksHeld, quotaBytes: server.configuration.effectiveQuotaBytes,
            pageAllowance: session.pageAllowance, participant: session.participant,
            connectedSeconds: Date().timeIntervalSince1970 - session.connectedAt, requests: session.requests)
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
    /// The daemon's version string.
    public static let version = "0.1.0"
}
