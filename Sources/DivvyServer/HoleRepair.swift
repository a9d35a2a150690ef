import DivvyShm

/// Detects and repairs holes punched in a fully committed region's data object (issue 13, item 16).
///
/// A mediated client receives the data object's descriptor (it must, to map the data area read-write), so it can
/// punch holes in it — `fallocate(FALLOC_FL_PUNCH_HOLE)` on the descriptor or `madvise(MADV_REMOVE)` on its
/// mapping — and un-commit memory that `commit = full` promised (a later write could then SIGBUS when the backing
/// store is full). File seals cannot forbid hole punching without forbidding writes, so the daemon detects and
/// repairs: each tick it compares the data object's allocated bytes with what they were once fully committed, and
/// when they shrank it fills the holes again (`SharedRegion.recommitDataObject()`: fallocate mode 0 only fills
/// holes). Punched pages read as zeros, as they did while punched: data in them is lost to whoever held it,
/// which a client able to write every block could do anyway.
///
/// Loop-thread only.
struct HoleRepair {
    /// What a check found.
    enum Outcome: Equatable {
        /// Holes were found and filled: `recommitted` bytes of backing store came back.
        case repaired(missing: Int, recommitted: Int)
        /// Holes were found and could not be filled (the message says why); tried again next check.
        case failed(missing: Int, message: String)
    }

    let region: SharedRegion
    /// The data object's allocated bytes once fully committed (nil: no data object, or fstat failed at start).
    let committedBytes: Int?

    /// Starts watching `region` (already fully committed).
    init(region: SharedRegion) {
        self.region = region
        committedBytes = (try? region.dataObjectAllocatedBytes()).flatMap { $0 }
    }

    /// Checks for holes and fills any: nil when there were none.
    func check() -> Outcome? {
        guard let committedBytes, committedBytes > 0,
            let now = (try? region.dataObjectAllocatedBytes()).flatMap({ $0 }), now < committedBytes
        else { return nil }
        do throws(SharedRegionError) {
            try region.recommitDataObject()
        } catch {
            return .failed(missing: committedBytes - now, message: "\(error)")
        }
        let after = (try? region.dataObjectAllocatedBytes()).flatMap { $0 } ?? now
        return .repaired(missing: committedBytes - now, recommitted: max(0, after - now))
    }
}
