import DivvyShm
import DivvySystem
import Logging
import SystemPackage

/// Re-attaching the region a previous divvyd left in the service manager's file-descriptor store (issue 12,
/// restart without loss; the plan is docs/restart.md). What is kept today: every block direct clients hold (their
/// participants live in the heap, and they never stopped allocating and freeing in it). What is not kept yet:
/// mediated clients' blocks, which the successor frees, because which client held which one lived only in the
/// dead daemon's memory.
extension DivvyServer {
    /// The region and heap taken over from a stored region, with the daemon's own participant (slot 0).
    struct Reattached {
        var region: SharedRegion
        var heap: SharedHeap
        var participant: SharedHeap.Participant
    }

    /// Opens the stored region (`SocketActivation.storedRegion()`), attaches its heap, takes over the previous
    /// daemon's participant (slot 0) and drops the mediated blocks it held, and recovers the direct clients that
    /// died while no daemon ran. Live direct clients keep their slots and holdings; `tick()` recovers each once
    /// its process exits.
    ///
    /// The descriptors stay the caller's (the region keeps duplicates).
    ///
    /// - Throws: `.region` when the descriptors hold no region, its heap has a layout this divvyd does not read
    ///   (an upgrade across a layout change: never formatted over), or the previous daemon still runs.
    static func reattach(
        stored: (region: Int32, data: Int32), configuration: ServerConfiguration, logger: Logger
    ) throws(ServerError) -> Reattached {
        let clearTheStore = "clear the store to start with a fresh heap (systemctl clean --what=fdstore divvyd, or "
            + "restart divvyd --supervise), losing the blocks it holds"
        let region: SharedRegion
        do throws(SharedRegionError) {
            region = try SharedRegion.open(
                fileDescriptor: FileDescriptor(rawValue: stored.region),
                dataFileDescriptor: FileDescriptor(rawValue: stored.data))
        } catch {
            throw ServerError(.region, "the stored region cannot be opened (\(error)); \(clearTheStore)")
        }
        let heap: SharedHeap
        do throws(SharedHeapError) {
            heap = try SharedHeap.attach(to: region)
        } catch {
            throw ServerError(
                .region, "the stored region's heap cannot be used by this divvyd \(version) (\(error)); run the "
                    + "divvyd that made it, or \(clearTheStore)")
        }
        // The stored heap keeps its geometry: say which settings it overrides.
        var differences: [String] = []
        if region.geometry.dataSize != configuration.dataSize {
            differences.append("data-size \(region.geometry.dataSize) (configured \(configuration.dataSize))")
        }
        if heap.pageSize != configuration.pageSize {
            differences.append("page-size \(heap.pageSize) (configured \(configuration.pageSize))")
        }
        if heap.participantCapacity != configuration.participantCapacity {
            differences.append(
                "participant-capacity \(heap.participantCapacity) (configured \(configuration.participantCapacity))")
        }
        if !differences.isEmpty {
            logger.notice(
                "the stored heap keeps its own geometry until the store is cleared",
                metadata: ["kept": "\(differences.joined(separator: ", "))"])
        }

        // Slot 0: the previous daemon's participant.
        let participant: SharedHeap.Participant
        var previous = "none"
        do throws(SharedHeapError) {
            if let status = heap.participantStatus(0), status.state == .alive {
                let (taken, report) = try heap.takeOver(participant: 0, name: "divvyd")
                participant = taken
                previous = "pid \(report.previousPID): \(report)"
            } else {
                // It left (a clean stop) or a recovery was under way: finish that, then join afresh.
                if let status = heap.participantStatus(0), status.state != .free { try heap.recover(participant: 0) }
                participant = try heap.join(name: "divvyd")
                guard participant.index == 0 else {
                    throw SharedHeapError(
                        .participantTableFull, "slot 0 was taken by another process before this daemon joined")
                }
            }
        } catch where error.code == .invalidConfiguration {
            throw ServerError(.region, "the stored region's daemon slot still belongs to a running process: \(error)")
        } catch {
            throw ServerError(.region, "could not take over the stored heap's daemon slot: \(error); \(clearTheStore)")
        }
        // Mediated blocks: which client held which one died with the previous daemon, so none can be resumed yet.
        var droppedMediated = 0
        for handle in participant.heldHandles where (try? participant.free(handle)) != nil { droppedMediated += 1 }
        // Direct clients that died while no daemon ran.
        var recovered = 0
        for p in heap.deadParticipants() where p != 0 {
            if (try? heap.recover(participant: p)) != nil { recovered += 1 }
        }
        participant.collectRemoteFrees()
        let audit = heap.verify()
        let metadata: Logger.Metadata = [
            "heap_id": "\(String(heap.heapID, radix: 16))", "previous_daemon": "\(previous)",
            "direct_participants_kept": "\(audit.liveParticipants - 1)", "recovered_dead": "\(recovered)",
            "mediated_blocks_dropped": "\(droppedMediated)", "blocks_kept": "\(audit.allocatedBlocks)",
        ]
        if audit.isClean {
            logger.notice("re-attached the stored region", metadata: metadata)
        } else {
            // Serving anyway keeps what can be kept; refusing would lose it for sure.
            logger.error(
                "re-attached the stored region; its audit found violations",
                metadata: metadata.merging(["violations": "\(audit.violations.prefix(5))"]) { $1 })
        }
        return Reattached(region: region, heap: heap, participant: participant)
    }

    /// The region's descriptors, for the service manager's store (`SystemdNotifier.storeDescriptors`): its own
    /// object and its data object. Valid while the server lives.
    public var regionDescriptors: (region: Int32, data: Int32?) {
        (region.fileDescriptor.rawValue, region.dataFileDescriptor?.rawValue)
    }
}
