import DivvyShm
import DivvySystem
import DivvyTransport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// What `DivvyServer.init` makes before the loop can run: the heap's configuration, the region (with its owner
/// lock when it is named), and the listening socket with its poller.
extension DivvyServer {
    /// The heap's configuration for a server configuration.
    static func heapConfiguration(for configuration: ServerConfiguration) -> SharedHeapConfiguration {
        var heapConfiguration = SharedHeapConfiguration(pageSize: configuration.pageSize)
        if let classes = configuration.sizeClasses { heapConfiguration.sizeClasses = classes }
        // Slot 0 — the daemon's own participant, the first to join — holds every mediated block; the other slots
        // are direct clients'.
        heapConfiguration.heldCapacity = configuration.directHeldCapacity
        heapConfiguration.firstSlotHeldCapacity = configuration.heldCapacity
        heapConfiguration.participantCapacity = configuration.participantCapacity
        // Past 25 % the extent area takes from the span tier first (50 % − extent, none from 50 % on), so that small
        // pages keep half the area as long as they can.
        let extent = Double(configuration.extentPercent) / 100
        heapConfiguration.extentFraction = extent
        heapConfiguration.spanFraction = extent <= 0.25 ? 0.25 : max(0, 0.5 - extent)
        return heapConfiguration
    }

    /// Creates the region: named (after taking its owner lock, replacing an object a crashed daemon left) or an
    /// anonymous memfd.
    static func createRegion(
        _ configuration: ServerConfiguration, _ heapConfiguration: SharedHeapConfiguration, logger: Logger
    ) throws(ServerError) -> (SharedRegion, SharedRegionOwnerLock?) {
        let metadataSize = SharedHeap.requiredMetadataSize(
            dataSize: configuration.dataSize, configuration: heapConfiguration)
        let regionConfiguration = SharedRegion.Configuration(
            dataSize: configuration.dataSize, metadataSize: metadataSize, namePrefix: configuration.regionNamePrefix,
            hugePages: configuration.hugePages, commitment: configuration.commitment,
            prefault: configuration.prefault, ifExists: .fail,
            // The data in an object of its own: mediated clients receive only that descriptor.
            separateDataObject: true,
            // Lazy: the heap commits a page's metadata when it claims the page; admit what is committed at start,
            // the heap's initial metadata and the held list our own participant commits when it joins below.
            lazyCommittedMetadataSize: SharedHeap.initialMetadataSize(
                dataSize: configuration.dataSize, configuration: heapConfiguration)
                + heapConfiguration.heldCapacity * 8)
        do throws(SharedRegionError) {
            guard let name = configuration.regionName else {
                return (try SharedRegion.createAnonymous(regionConfiguration), nil)
            }
            // The owner lock first: while we hold it no other daemon serves the name, so an object that is
            // already there was left by a daemon that died without removing it (a crash, SIGKILL, OOM).
            let lock = try SharedRegionOwnerLock.acquire(
                name: name, namePrefix: configuration.regionNamePrefix, mode: regionConfiguration.mode)
            do throws(SharedRegionError) {
                return (try SharedRegion.create(name: name, regionConfiguration), lock)
            } catch where error.code == .alreadyExists {
                let note = "replacing a region left by a daemon that stopped without removing it (its clients' "
                    + "blocks are not carried over)"
                logger.warning("\(note)", metadata: ["region": "\(lock.lockObjectName.dropLast(5))"])
                var replacing = regionConfiguration
                replacing.ifExists = .replace
                return (try SharedRegion.create(name: name, replacing), lock)
            }
        } catch {
            throw ServerError(.region, "could not create the shared-memory region: \(error)")
        }
    }

    /// Binds the socket (or adopts the inherited listener) and makes the poller that watches it.
    static func listen(
        _ configuration: ServerConfiguration, listenerDescriptor: Int32?
    ) throws(ServerError) -> (listener: SeqpacketSocket, poller: EventPoller) {
        let path = configuration.socketPath
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if listenerDescriptor == nil, !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw ServerError(.socket, "could not create the socket directory \(directory): \(error)")
            }
        }
        do throws(TransportError) {
            let listener: SeqpacketSocket
            if let listenerDescriptor {
                listener = try SeqpacketSocket.adoptListener(listenerDescriptor)
            } else {
                listener = try SeqpacketSocket.listen(
                    path: configuration.socketPath, mode: mode_t(configuration.socketMode))
            }
            let poller = try EventPoller()
            try poller.add(listener.fileDescriptor, events: .readable, token: listenerToken)
            return (listener, poller)
        } catch {
            throw ServerError(.socket, "could not listen on \(configuration.socketPath): \(error)")
        }
    }
}
