import DivvySystem

/// A memory cgroup's limit and current usage, as read from its files.
public struct CgroupMemoryLimit: Hashable, Sendable, CustomStringConvertible {
    /// The cgroup's directory (e.g. `/sys/fs/cgroup/system.slice/divvyd.service`).
    public var directory: String
    /// 2 for the unified hierarchy (`memory.max`, `memory.current`), 1 for v1 (`memory.limit_in_bytes`,
    /// `memory.usage_in_bytes`).
    public var version: Int
    /// The limit in bytes.
    public var limit: Int
    /// The memory charged to the cgroup now, in bytes (its processes, and tmpfs pages they created).
    public var usage: Int

    /// Bytes the cgroup may still be charged before its limit is hit (0 when it is over).
    public var headroom: Int { max(0, limit - usage) }

    /// The limit file's name for the version.
    public var limitFile: String { version == 2 ? "memory.max" : "memory.limit_in_bytes" }

    /// `"cgroup /sys/fs/cgroup/x (memory.max 2.0 GiB, 1.2 GiB in use)"`.
    public var description: String {
        "cgroup \(directory) (\(limitFile) \(formatByteCount(limit)), \(formatByteCount(usage)) in use)"
    }
}

/// Reading memory cgroup limits: pure parsers over the text of the kernel's files, and a walk that takes its file
/// reader as a parameter (so that tests can give it fixtures).
///
/// Memory a process commits in shared memory (tmpfs pages, memfd pages) is charged to the memory cgroup of the
/// process that first touches or allocates it; beyond the limit the kernel reclaims, then OOM-kills inside the
/// cgroup. Limits are hierarchical: every ancestor's limit applies too, so the tightest headroom along the path
/// to the root is what the process may still commit.
public enum CgroupMemory {
    /// The cgroup paths in `/proc/self/cgroup`: the unified (v2) one (`0::/path`) and the v1 memory
    /// controller's (`N:memory:/path`, or with the controller among others, `N:cpu,memory:/path`).
    public static func parseProcCgroup(_ text: String) -> (unified: String?, memory: String?) {
        var unified: String?
        var memory: String?
        for line in text.split(separator: "\n") {
            // hierarchy-ID:controller-list:cgroup-path; the path itself may contain ':'.
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let path = trimmed(fields[2])
            guard path.hasPrefix("/") else { continue }
            if fields[0] == "0" && fields[1].isEmpty {
                unified = path
            } else if fields[1].split(separator: ",").contains("memory") {
                memory = path
            }
        }
        return (unified, memory)
    }

    /// A limit file's value in bytes: nil for no limit (`max` in v2; in v1 the "unlimited" value, a number near
    /// `Int64.max` rounded down to a page) or for text that is not a limit.
    public static func parseLimit(_ text: String) -> Int? {
        let word = trimmed(Substring(text))
        if word == "max" { return nil }
        guard let value = UInt64(word) else { return nil }
        // v1 writes PAGE_COUNTER_MAX * PAGE_SIZE (0x7FFFFFFFFFFFF000 on x86_64) for "unlimited".
        return value >= 1 << 62 ? nil : Int(value)
    }

    /// A usage file's value in bytes, or nil when the text is not a number.
    public static func parseUsage(_ text: String) -> Int? {
        UInt64(trimmed(Substring(text))).flatMap { Int(exactly: $0) }
    }

    /// The tightest memory limit that applies to the process whose `/proc/self/cgroup` text is `procSelfCgroup`:
    /// of the cgroup and each ancestor that has a limit, the one with the least headroom. Nil when no limit
    /// applies (or no cgroup file can be read).
    ///
    /// - Parameters:
    ///   - procSelfCgroup: the text of `/proc/self/cgroup`.
    ///   - unifiedRoots: where the v2 hierarchy may be mounted (`/sys/fs/cgroup` on a v2 system,
    ///     `/sys/fs/cgroup/unified` on a hybrid one); the first one with files for the path is used.
    ///   - memoryRoot: where the v1 memory hierarchy is mounted.
    ///   - read: reads a small file's text, nil when it does not exist.
    public static func tightestLimit(
        procSelfCgroup: String, unifiedRoots: [String] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"],
        memoryRoot: String = "/sys/fs/cgroup/memory", read: (String) -> String?
    ) -> CgroupMemoryLimit? {
        let paths = parseProcCgroup(procSelfCgroup)
        var candidates: [CgroupMemoryLimit] = []
        if let path = paths.unified {
            for root in unifiedRoots {
                let found = limits(along: path, root: root, version: 2, read: read)
                if !found.isEmpty {
                    candidates += found
                    break
                }
            }
        }
        if let path = paths.memory {
            candidates += limits(along: path, root: memoryRoot, version: 1, read: read)
        }
        return candidates.min { $0.headroom < $1.headroom }
    }

    /// The limits set on `path` and its ancestors under `root` (a cgroup namespace may show a path whose upper
    /// directories are not mounted: those are skipped).
    private static func limits(
        along path: String, root: String, version: Int, read: (String) -> String?
    ) -> [CgroupMemoryLimit] {
        let (limitFile, usageFile) =
            version == 2 ? ("memory.max", "memory.current") : ("memory.limit_in_bytes", "memory.usage_in_bytes")
        var components = path.split(separator: "/").map(String.init)
        var found: [CgroupMemoryLimit] = []
        while true {
            let directory = root + (components.isEmpty ? "" : "/" + components.joined(separator: "/"))
            if let limitText = read(directory + "/" + limitFile), let limit = parseLimit(limitText),
                let usage = read(directory + "/" + usageFile).flatMap(parseUsage)
            {
                found.append(CgroupMemoryLimit(directory: directory, version: version, limit: limit, usage: usage))
            }
            if components.isEmpty { break }
            components.removeLast()
        }
        return found
    }

    private static func trimmed(_ text: Substring) -> String {
        String(text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    /// The tightest limit on this process now (reads `/proc/self/cgroup` and the cgroup file system).
    public static func current() -> CgroupMemoryLimit? {
        guard let text = systemReadSmallTextFile("/proc/self/cgroup") else { return nil }
        return tightestLimit(procSelfCgroup: text, read: systemReadSmallTextFile)
    }
}

/// What memory a new region may commit: the host's available memory and the tightest cgroup limit.
internal struct MemoryBudget: Hashable, Sendable {
    /// MemAvailable + SwapFree, or nil when unknown.
    var hostAvailable: Int?
    /// The tightest memory cgroup limit, or nil when none applies.
    var cgroup: CgroupMemoryLimit?

    /// Read now.
    static func current() -> MemoryBudget {
        MemoryBudget(hostAvailable: Backing.availableMemory(), cgroup: CgroupMemory.current())
    }

    /// Throws `.insufficientSpace` when `bytes` (everything the region commits: header, metadata and data
    /// together) exceed what the host or the cgroup allow, naming both figures and what to do.
    func check(_ bytes: Int, describing what: String, lazyPossible: Bool) throws(SharedRegionError) {
        guard bytes > 0 else { return }
        let cgroupRoom = cgroup?.headroom
        let hostShort = hostAvailable.map { $0 < bytes } ?? false
        let cgroupShort = cgroupRoom.map { $0 < bytes } ?? false
        guard hostShort || cgroupShort else { return }
        let host = hostAvailable.map { "the system has \(formatByteCount($0)) available (MemAvailable + SwapFree)" }
            ?? "the system's available memory is unknown"
        let group = cgroup.map { "\($0) allows \(formatByteCount($0.headroom)) more" }
            ?? "no memory cgroup limit applies"
        var remedies = ["pass a smaller data size (--data-size)"]
        if lazyPossible { remedies.append("commit lazily (commit=lazy: pages are backed as they are used)") }
        remedies.append(cgroupShort ? "raise the cgroup's \(cgroup!.limitFile) (systemd: MemoryMax=)" : "free memory")
        // (`lazyPossible` is false for a lazily committed region: what it commits now is its header and the part of
        // its metadata it needs at once, e.g. a lazy heap's `SharedHeap.initialMetadataSize`.)
        let counted = lazyPossible ? "header, metadata and data together"
            : "header and the metadata needed at creation; the rest is committed as it is used"
        throw SharedRegionError(
            .insufficientSpace,
            "\(what) commits \(formatByteCount(bytes)) (\(counted)) but \(host) and "
                + "\(group); \(remedies.joined(separator: ", or "))")
    }
}
