import DivvySystem

#if canImport(Glibc)
import Glibc
#endif

extension SharedRegion {
    /// Bytes of backing store the separate data object holds now (fstat(2) `st_blocks * 512`), or nil for a region
    /// without one (`Configuration.separateDataObject`).
    ///
    /// Anyone with the data object's descriptor — every mediated client gets it — can punch holes in it
    /// (`fallocate(FALLOC_FL_PUNCH_HOLE)`, or `madvise(MADV_REMOVE)` on a shared mapping), which un-commits memory a
    /// fully committed region promised; no seal forbids that without forbidding writes. A drop of this figure is
    /// how the owner detects it (`recommitDataObject()` repairs it).
    ///
    /// - Throws: `.systemCallFailed` when fstat fails.
    public func dataObjectAllocatedBytes() throws(SharedRegionError) -> Int? {
        guard let dataFileDescriptor else { return nil }
        switch systemFstat(dataFileDescriptor.rawValue) {
        case .success(let info): return Int(info.st_blocks) * 512
        case .failure(let error):
            throw SharedRegionError(.systemCallFailed, "fstat of \(describing) (data) failed", cause: error)
        }
    }

    /// Allocates backing pages again for every hole in the separate data object (`fallocate` mode 0 over the whole
    /// data range: it only fills holes, pages already there are left alone, their contents kept). Punched pages
    /// read as zeros afterwards, as they did while punched. No-op without a data object.
    ///
    /// - Throws: `.insufficientSpace` when the backing store cannot hold the pages again (they stay unbacked:
    ///   touching them may SIGBUS), `.systemCallFailed` for other failures.
    public func recommitDataObject() throws(SharedRegionError) {
        guard let dataFileDescriptor else { return }
        switch systemFallocate(dataFileDescriptor.rawValue, offset: 0, length: geometry.dataSize) {
        case .success: return
        case .failure(let error) where error == .noSpace || error == .noMemory:
            throw SharedRegionError(
                .insufficientSpace,
                "could not re-commit the holes punched in \(describing) (data): the backing store is full; free "
                    + "memory or space in /dev/shm",
                cause: error)
        case .failure(let error):
            throw SharedRegionError(.systemCallFailed, "fallocate of \(describing) (data) failed", cause: error)
        }
    }
}
