import Divvy
import SystemPackage

/// Facts about what can back a region: free space in /dev/shm, memory, the huge page pools, shmem THP.
///
/// Read fresh on every call (they change as other processes run); none of these are cached.
internal enum Backing {
    /// Where glibc's shm_open keeps POSIX shared-memory objects.
    static let shmDirectory = "/dev/shm"

    /// Bytes the kernel could still give a tmpfs file without swapping out what it holds: MemAvailable plus
    /// SwapFree from /proc/meminfo. Nil when /proc/meminfo cannot be read.
    static func availableMemory() -> Int? {
        guard let text = readSmallTextFile("/proc/meminfo") else { return nil }
        var total = 0
        var found = false
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") || line.hasPrefix("SwapFree:") {
            let words = line.split(separator: " ")
            guard words.count >= 2, let kib = Int(words[1]) else { continue }
            total += kib * 1024
            found = true
        }
        return found ? total : nil
    }

    /// Throws `.insufficientSpace` when `bytes` of tmpfs pages cannot be committed: more than /dev/shm has free
    /// (named regions only; memfd objects live on the kernel's internal, unlimited tmpfs), or more than memory
    /// can hold (an over-committed fallocate on tmpfs would drive the machine into the OOM killer).
    static func checkTmpfsSpace(
        _ bytes: Int, named: Bool, describing what: String
    ) throws(SharedRegionError) {
        guard bytes > 0 else { return }
        if named {
            switch systemStatvfs(shmDirectory) {
            case .success(let space) where space.available < bytes:
                throw SharedRegionError(
                    .insufficientSpace,
                    "\(what) needs \(formatByteCount(bytes)) but \(shmDirectory) has "
                        + "\(formatByteCount(space.available)) free; enlarge \(shmDirectory) "
                        + "(mount -o remount,size=...), pass a smaller size, or ask for lazy commitment")
            case .success: break
            case .failure(let error):
                throw SharedRegionError(
                    .systemCallFailed, "statvfs(\(shmDirectory)) failed while sizing \(what); is /dev/shm mounted?",
                    cause: error)
            }
        }
        if let memory = availableMemory(), memory < bytes {
            throw SharedRegionError(
                .insufficientSpace,
                "\(what) needs \(formatByteCount(bytes)) but the system has \(formatByteCount(memory)) of memory "
                    + "available (MemAvailable + SwapFree); free memory, pass a smaller size, "
                    + "or ask for lazy commitment")
        }
    }

    /// Whether shmem (tmpfs, memfd) may get transparent huge pages: `shmem_enabled` selects `always`,
    /// `within_size`, `advise` or `force`. `never` and `deny` (or an unreadable file) mean no.
    static func transparentHugePagesForShmem() -> Bool {
        guard let text = readSmallTextFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled") else { return false }
        return ["[always]", "[within_size]", "[advise]", "[force]"].contains { text.contains($0) }
    }

    /// The sysfs directory of the hugetlb pool for `kind`.
    static func hugePagePoolDirectory(_ kind: OSAllocator.PageKind) -> String {
        "/sys/kernel/mm/hugepages/hugepages-\(kind.pageSize / 1024)kB"
    }

    /// Huge pages of `kind` that a new mapping can still reserve: `free_hugepages - resv_hugepages`.
    static func availableHugePages(_ kind: OSAllocator.PageKind) -> Int {
        let directory = hugePagePoolDirectory(kind)
        func number(_ file: String) -> Int {
            readSmallTextFile("\(directory)/\(file)").flatMap { Int($0.split(separator: "\n").first ?? "") } ?? 0
        }
        return max(0, number("free_hugepages") - number("resv_hugepages"))
    }
}
