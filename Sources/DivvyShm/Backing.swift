import Divvy
import DivvySystem
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
        guard let text = systemReadSmallTextFile("/proc/meminfo") else { return nil }
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
    /// — the host's, or the memory cgroup's — can hold (an over-committed fallocate on tmpfs would drive the
    /// machine, or the cgroup, into the OOM killer).
    static func checkTmpfsSpace(
        _ bytes: Int, named: Bool, describing what: String
    ) throws(SharedRegionError) {
        try checkShmSpace(bytes, named: named, describing: what)
        try MemoryBudget.current().check(bytes, describing: what, lazyPossible: false)
    }

    /// Throws `.insufficientSpace` when a named region's `bytes` do not fit in /dev/shm's free space (anonymous
    /// regions: nothing to check).
    static func checkShmSpace(_ bytes: Int, named: Bool, describing what: String) throws(SharedRegionError) {
        guard bytes > 0, named else { return }
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

    /// Whether a region may get transparent huge pages (of the PMD size, `OSAllocator.transparentHugePageSize`).
    ///
    /// - Anonymous (memfd) regions live on the kernel's internal shmem mount, governed by
    ///   `/sys/kernel/mm/transparent_hugepage/shmem_enabled`: `always`, `within_size` or `advise` allow them (we
    ///   advise). Since Linux 6.x a per-size knob `hugepages-<size>kB/shmem_enabled` can override it unless it says
    ///   `inherit`.
    /// - Named regions live in the /dev/shm tmpfs mount, governed by its `huge=` mount option (`always`,
    ///   `within_size`, `advise`), which is absent (never) by default.
    /// - `shmem_enabled` `force` forces them everywhere; `deny` forbids them everywhere.
    static func transparentHugePagesForShmem(named: Bool) -> Bool {
        let allowing = ["always", "within_size", "advise"]
        let global = selected(in: systemReadSmallTextFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled"))
        if global == "force" { return true }
        if global == "deny" || global == nil { return false }
        if named {
            // The last /dev/shm entry in /proc/self/mounts is the one in effect.
            guard let mounts = systemReadSmallTextFile("/proc/self/mounts") else { return false }
            let entry = mounts.split(separator: "\n").last { $0.split(separator: " ").dropFirst().first == "/dev/shm" }
            guard let options = entry?.split(separator: " ").dropFirst(3).first else { return false }
            let huge = options.split(separator: ",").first { $0.hasPrefix("huge=") }?.dropFirst(5)
            return huge.map { allowing.contains(String($0)) } ?? false
        }
        let perSize = selected(
            in: systemReadSmallTextFile(
                "/sys/kernel/mm/transparent_hugepage/hugepages-\(OSAllocator.transparentHugePageSize / 1024)kB/"
                    + "shmem_enabled"))
        if let perSize, perSize != "inherit" { return allowing.contains(perSize) }
        return allowing.contains(global!)
    }

    /// The bracketed word of a sysfs selection (`"always [advise] never"` → `"advise"`), or nil.
    static func selected(in text: String?) -> String? {
        guard let text, let open = text.firstIndex(of: "["), let close = text[open...].firstIndex(of: "]") else {
            return nil
        }
        return String(text[text.index(after: open)..<close])
    }

    /// The sysfs directory of the hugetlb pool for `kind`.
    static func hugePagePoolDirectory(_ kind: OSAllocator.PageKind) -> String {
        "/sys/kernel/mm/hugepages/hugepages-\(kind.pageSize / 1024)kB"
    }

    /// Huge pages of `kind` that a new mapping can still reserve: `free_hugepages - resv_hugepages`.
    static func availableHugePages(_ kind: OSAllocator.PageKind) -> Int {
        let directory = hugePagePoolDirectory(kind)
        func number(_ file: String) -> Int {
            systemReadSmallTextFile("\(directory)/\(file)").flatMap { Int($0.split(separator: "\n").first ?? "") } ?? 0
        }
        return max(0, number("free_hugepages") - number("resv_hugepages"))
    }
}
