import DivvyProtocol
import DivvyShm
import Logging

extension DivvyServer {
    /// The error for a failed mediated allocation, saying which shared resource is exhausted: the large- or
    /// small-block tier (with what the other tier still has free, so `stats`' heap-wide free bytes do not mislead),
    /// or the held list all mediated clients share.
    func explainAllocationFailure(_ error: SharedHeapError, blockSize: Int) -> ServiceError {
        switch error.code {
        case .heapFull:
            let usage = heap.usage()
            let smallFree = usage.freePages - usage.freeSpanPages
            if blockSize > heap.largestClassBlockSize {
                return ServiceError(
                    .heapFull, "the extent area (\(heap.extentUnitCount) units of \(heap.extentUnitSize) bytes, for "
                        + "blocks over \(heap.largestClassBlockSize) bytes) has no free run of \(blockSize) bytes: "
                        + "\(usage.extentUnitsFree) units free, the longest free run \(usage.largestFreeExtentUnits) "
                        + "units; free large blocks, or restart the daemon with a larger data-size")
            }
            let large = fairShare.isLarge(blockSize)
            let tier = large
                ? "the large-block tier (blocks over \(fairShare.largestSmallBlock) bytes, \(heap.spanPageCount) "
                    + "span pages of \(heap.spanPageSize) bytes) has no free \(blockSize)-byte block and "
                    + "\(usage.freeSpanPages) free span pages"
                : "the small-block tier (\(heap.smallPageCount) pages of \(heap.pageSize) bytes) has no free "
                    + "\(blockSize)-byte block and \(smallFree) free pages"
            let other = large
                ? "the small-block tier still has \(smallFree) free pages of \(heap.pageSize) bytes"
                : "the large-block tier still has \(usage.freeSpanPages) free span pages of \(heap.spanPageSize) bytes"
            return ServiceError(
                .heapFull,
                "the heap is full for \(blockSize)-byte blocks: \(tier) (\(other)); free some blocks, try again "
                    + "later, or ask the operator for a larger data-size")
        case .heldListFull:
            return ServiceError(
                .heapFull,
                "the daemon's held list, shared by all mediated clients, is full (held-capacity "
                    + "\(configuration.heldCapacity) blocks): free some blocks, try again later, or ask the operator "
                    + "to raise held-capacity")
        default:
            return ServiceError(error)
        }
    }

    /// The tick's check for holes punched in the data object (`HoleRepair`): repairs them, logs one warning per
    /// event with the bytes re-committed, and counts `divvy.region.holes_repaired.total`.
    func repairHoles() {
        guard let outcome = holeRepair?.check() else {
            holeRepairFailing = false
            return
        }
        switch outcome {
        case .repaired(let missing, let recommitted):
            holeRepairFailing = false
            metrics.count(.holeRepair)
            metrics.count(.bytesRecommitted, by: recommitted)
            let note = "re-committed holes punched in the data object (a client with the data descriptor "
                + "un-committed memory commit=full promised; punched pages now read as zeros)"
            logger.warning(
                "\(note)",
                metadata: ["missing_bytes": "\(missing)", "recommitted_bytes": "\(recommitted)"])
        case .failed(let missing, let message):
            // Once per event: the check repeats every tick until it succeeds.
            guard !holeRepairFailing else { return }
            holeRepairFailing = true
            logger.error(
                "could not re-commit holes punched in the data object; writes to those pages may SIGBUS",
                metadata: ["missing_bytes": "\(missing)", "error": "\(message)"])
        }
    }
}
