import Divvy
import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A region of shared memory that several processes map at once: a POSIX shared-memory object (`shm_open`, with a
/// name any process may open) or an anonymous `memfd` (no name; handed to other processes only as a file
/// descriptor), sized with `ftruncate`, mapped `MAP_SHARED`, and laid out as header + metadata area + data area.
///
/// ```swift
/// // Create a named region with 1 GiB of data, committed (backed) up front, and map it.
/// let region = try SharedRegion.create(name: "cache", .init(dataSize: 1 << 30))
/// let p = try region.mapping.unsafePointer(forOffset: region.geometry.dataOffset, length: 8)
///
/// // In another process: open it by name; offsets mean the same bytes there.
/// let peer = try SharedRegion.open(name: "cache")
///
/// // Removing is explicit; closing (dropping the last reference) only unmaps.
/// try region.remove()
/// ```
///
/// ## Commitment: never SIGBUS later
/// A tmpfs page that cannot be allocated when it is first touched kills the process with SIGBUS. So by default
/// (`Commitment.full`) creation *commits* the whole region: it checks that /dev/shm (for named regions) and memory
/// can hold it, then allocates every page with `fallocate`, and fails with `.insufficientSpace` naming the size
/// needed and the space available if they cannot ("region '/divvy-x' needs 1 GiB but /dev/shm has 64 MiB free;
/// …"). Nothing is left behind when creation fails. `Commitment.lazy` is the explicit opt-in to reservation: only
/// the header and metadata area are committed, the data area is backed page by page as it is touched, so regions
/// far larger than memory (64 GiB on a 24 GiB machine) can be created — and touching an uncommitted page when
/// /dev/shm or memory is exhausted raises SIGBUS. `commit(offset:length:)` commits part of a lazy region later,
/// with the same checks; a `SharedHeap` in a lazy region commits each page (and its metadata) when it claims it,
/// and turns a failure into `heapFull`, so its users never meet that SIGBUS.
/// Anonymous regions are sealed against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`, not possible for
/// hugetlb), so no peer can truncate them under a mapping; a named region can be truncated by anyone allowed to
/// open it for writing: give it a mode that admits only trusted users.
///
/// ## Pages
/// `HugePages.automatic` (the default) uses explicit 2 MiB hugetlb pages when the pool (`vm.nr_hugepages`) has
/// enough free pages for the whole region (anonymous regions only: /dev/shm is a tmpfs, not hugetlbfs), then
/// transparent huge pages when the kernel allows them for this kind of shared memory (anonymous regions:
/// `/sys/kernel/mm/transparent_hugepage/shmem_enabled`; named regions: the `huge=` mount option of /dev/shm), then
/// base pages. `pageKind` reports what was used. Hugetlb pages are always reserved when the region is mapped,
/// whatever the commitment, so they never SIGBUS either. The data area is aligned to the page size of the kind.
///
/// ## Header
/// Offset 0 holds a versioned, position-independent header (`SharedRegionHeader`); `open` checks it and refuses a
/// mismatch with a distinct error per problem. Nothing in the region is a pointer: translate offsets with
/// `mapping.unsafePointer(forOffset:length:)` and back with `mapping.offset(of:)`.
///
/// ## Lifetime
/// The region owns its descriptor (closed in `deinit`) and its whole-region `mapping` (unmapped when the last
/// reference to it goes). Neither removes the region: call `remove()` or `SharedRegion.remove(name:namePrefix:)`.
///
/// `@unchecked Sendable`: every stored property is immutable after creation.
public final class SharedRegion: @unchecked Sendable {
    /// Which pages to back a new region with.
    public enum HugePages: Hashable, Sendable {
        /// Explicit 2 MiB pages if the hugetlb pool holds the whole region (anonymous regions), else transparent
        /// huge pages if shmem allows them, else base pages. Never fails for lack of huge pages.
        case automatic
        /// Base pages (4 KiB on x86_64).
        case none
        /// Transparent huge pages (`MADV_HUGEPAGE`, data area aligned to the THP size), if `shmem_enabled` allows.
        case transparent
        /// Explicit 2 MiB hugetlb pages (`MFD_HUGETLB | MFD_HUGE_2MB`); anonymous regions only.
        case explicit2MiB
        /// Explicit 1 GiB hugetlb pages (`MFD_HUGETLB | MFD_HUGE_1GB`); anonymous regions only.
        case explicit1GiB
    }

    /// How much of a new region is backed by real pages at creation.
    public enum Commitment: Hashable, Sendable {
        /// Every page is allocated at creation, after checking the space: no SIGBUS later. Base pages are allocated
        /// with `fallocate`; transparent huge pages by populating the advised mapping (`MADV_POPULATE_WRITE`),
        /// because pages that fallocate allocates without a mapping are never huge under `shmem_enabled=advise`.
        case full
        /// Lazy reservation: only the header and metadata area (or its first `lazyCommittedMetadataSize` bytes)
        /// are allocated; data pages are allocated when first touched. Touching an uncommitted page when the
        /// backing store is full raises SIGBUS, so whoever hands pages out commits them first: `SharedHeap` does
        /// so for every page it claims, and answers `heapFull` when that fails. Hugetlb regions are still
        /// reserved.
        case lazy
    }

    /// What `create(name:_:)` does when the name is taken.
    public enum ExistingName: Hashable, Sendable {
        /// Throw `.alreadyExists`; never reuse silently.
        case fail
        /// Unlink the existing object and create a new one. Processes that have the old one mapped keep it.
        case replace
    }

    /// How to create a region.
    public struct Configuration: Hashable, Sendable {
        /// Bytes of data area wanted; rounded up to the region's page size. Must be positive.
        public var dataSize: Int
        /// Bytes of metadata area wanted (after the 4 KiB header). Default 60 KiB, so with base pages the data
        /// area starts at 64 KiB.
        public var metadataSize: Int
        /// Prefix of the shared-memory object name: a region named `n` is `/<prefix>n`. Default `"divvy-"`.
        public var namePrefix: String
        /// Permission bits of a named region, set exactly (the umask does not apply). Default `0600`.
        public var mode: FilePermissions
        /// Which pages to use. Default `.automatic`.
        public var hugePages: HugePages
        /// When the requested huge pages are not available: settle for smaller ones (true, the default) or throw.
        public var fallback: Bool
        /// How much is committed at creation. Default `.full`.
        public var commitment: Commitment
        /// Populate this process's page tables for every committed page at creation
        /// (`MADV_POPULATE_WRITE`), so first accesses do not fault. Default false.
        public var prefault: Bool
        /// What to do when the name is taken. Default `.fail`.
        public var ifExists: ExistingName
        /// Keep the data area in a second object (an anonymous memfd) mapped over the region's data range, so that
        /// the data can be handed to a process (`dataFileDescriptor`) without handing it the metadata: a process
        /// holding only that descriptor cannot reach the header or metadata at all. The region's own object then
        /// commits only the header and metadata. Default false.
        public var separateDataObject: Bool
        /// With `.lazy`: how many bytes at the start of the metadata area are committed at creation (and counted
        /// by the admission check); nil, the default, commits the whole metadata area. A heap's creator passes
        /// `SharedHeap.initialMetadataSize(dataSize:configuration:)`: the heap commits the rest (a page's block
        /// words, a participant's held list) as it is used. Ignored with `.full`.
        public var lazyCommittedMetadataSize: Int?
        /// Test hook: the memory budget to check against instead of the host's and the cgroup's now.
        internal var _memoryBudget: MemoryBudget?

        /// Creates a configuration; see the properties for each parameter.
        public init(
            dataSize: Int, metadataSize: Int = 60 << 10, namePrefix: String = "divvy-",
            mode: FilePermissions = [.ownerReadWrite], hugePages: HugePages = .automatic, fallback: Bool = true,
            commitment: Commitment = .full, prefault: Bool = false, ifExists: ExistingName = .fail,
            separateDataObject: Bool = false, lazyCommittedMetadataSize: Int? = nil
        ) {
            self.dataSize = dataSize
            self.metadataSize = metadataSize
            self.namePrefix = namePrefix
            self.mode = mode
            self.hugePages = hugePages
            self.fallback = fallback
            self.commitment = commitment
            self.prefault = prefault
            self.ifExists = ifExists
            self.separateDataObject = separateDataObject
            self.lazyCommittedMetadataSize = lazyCommittedMetadataSize
        }
    }

    /// The shared-memory object name (`"/divvy-cache"`), or nil for an anonymous region.
    public let objectName: String?
    /// The region's descriptor, owned by the region (closed once, when the region is destroyed). Pass it to other
    /// processes (inherit it, or send it with SCM_RIGHTS) to share an anonymous region; do not close it.
    public var fileDescriptor: FileDescriptor { descriptor.fileDescriptor }
    /// The descriptor of the separate data object (owned by the region, closed once, when the region is
    /// destroyed), when the region has one (`header.hasSeparateData`): pass it — alone — to a process that may see
    /// the data but not the metadata (it maps it with `mapDataObject(_:geometry:access:)`).
    public var dataFileDescriptor: FileDescriptor? { dataDescriptorValue.map { FileDescriptor(rawValue: $0) } }
    /// The owner of `fileDescriptor`: its `deinit` closes it.
    private let descriptor: OwnedDescriptor
    /// The owner of `dataFileDescriptor`, when there is one.
    private let dataDescriptor: OwnedDescriptor?
    /// `dataDescriptor`'s number (read without borrowing the optional owner).
    private let dataDescriptorValue: Int32?
    /// The header, as written at creation or read at open.
    public let header: SharedRegionHeader
    /// The whole region, mapped in this process.
    public let mapping: SharedMapping

    /// Where the region's parts lie.
    public var geometry: SharedRegionGeometry { header.geometry }
    /// The pages backing the region.
    public var pageKind: OSAllocator.PageKind { header.pageKind }
    /// How the region was mapped in this process.
    public var access: SharedMapping.Access { mapping.access }

    private init(
        objectName: String?, fd: Int32, dataFD: Int32? = nil, header: SharedRegionHeader, mapping: SharedMapping
    ) {
        self.objectName = objectName
        // From here on the region owns both descriptors: they close when it is destroyed, exactly once.
        self.descriptor = OwnedDescriptor(taking: fd)
        self.dataDescriptor = dataFD.map { OwnedDescriptor(taking: $0) }
        self.dataDescriptorValue = dataFD
        self.header = header
        self.mapping = mapping
    }

    /// `"region '/divvy-cache'"` or `"anonymous region (fd 7)"`, for messages.
    internal var describing: String { Self.describe(objectName: objectName, fd: fileDescriptor.rawValue) }

    internal static func describe(objectName: String?, fd: Int32) -> String {
        objectName.map { "region '\($0)'" } ?? "anonymous region (fd \(fd))"
    }

    // MARK: Names

    /// The shared-memory object name for region `name` under `namePrefix`: `"/" + namePrefix + name`.
    ///
    /// - Throws: `.invalidName` when the name is empty, contains `/` or NUL, or the result exceeds 255 bytes.
    public static func objectName(for name: String, namePrefix: String = "divvy-") throws(SharedRegionError) -> String {
        let full = namePrefix + name
        guard !name.isEmpty, !full.contains("/"), !full.utf8.contains(0), full != ".", full != ".." else {
            throw SharedRegionError(
                .invalidName,
                "region name '\(name)' with prefix '\(namePrefix)' is not valid: it must be non-empty and contain "
                    + "no '/' or NUL; choose another name")
        }
        guard full.utf8.count <= 254 else {
            throw SharedRegionError(
                .invalidName,
                "region name '\(full)' is \(full.utf8.count) bytes; the limit is 254 (NAME_MAX minus the "
                    + "leading '/'); choose a shorter name or prefix")
        }
        return "/" + full
    }

    // MARK: Creating

    /// Creates a named region: a POSIX shared-memory object `/<namePrefix><name>` (shm_open(3) with
    /// `O_CREAT | O_EXCL`), sized, committed as configured, mapped, with its header written last.
    ///
    /// - Parameters:
    ///   - name: the region name; the object is `/<namePrefix><name>` in /dev/shm.
    ///   - configuration: sizes, mode, pages, commitment, prefault, and what to do when the name is taken.
    /// - Returns: the region, mapped read-write.
    /// - Throws: `.alreadyExists` (name taken and `ifExists == .fail`), `.invalidName`, `.invalidConfiguration`,
    ///   `.insufficientSpace` (with the size needed and the space available), `.hugePagesUnavailable`,
    ///   `.permissionDenied`, `.systemCallFailed`. On any failure no object is left behind.
    public static func create(name: String, _ configuration: Configuration) throws(SharedRegionError) -> SharedRegion {
        let objectName = try objectName(for: name, namePrefix: configuration.namePrefix)
        return try create(objectName: objectName, configuration)
    }

    /// Creates an anonymous region: a `memfd` (memfd_create(2)) with no name in any file system. Other processes
    /// reach it only through its `fileDescriptor` (inherited, or sent over a Unix socket) and
    /// `open(fileDescriptor:access:prefault:)`. It disappears when the last descriptor and mapping are gone.
    ///
    /// Unless it uses hugetlb pages, the memfd is sealed against shrinking and growing.
    ///
    /// - Throws: as `create(name:_:)`, except for the name errors.
    public static func createAnonymous(_ configuration: Configuration) throws(SharedRegionError) -> SharedRegion {
        try create(objectName: nil, configuration)
    }

    private static func create(objectName: String?, _ configuration: Configuration) throws(SharedRegionError)
        -> SharedRegion
    {
        let what = objectName.map { "region '\($0)'" } ?? "anonymous region"
        try validate(configuration, describing: what)
        let (kind, geometry) = try choosePages(configuration, named: objectName != nil, describing: what)
        // What must be backed now: everything, or (lazy) the header and the metadata area, or as much of it as the
        // configuration asks (a lazy heap commits the rest as it uses it). Hugetlb is reserved at mmap.
        let committed = configuration.commitment == .full ? geometry.totalSize
            : configuration.lazyCommittedMetadataSize.map {
                min(geometry.dataOffset, geometry.metadataOffset + max(0, $0))
            } ?? geometry.dataOffset
        let separate = configuration.separateDataObject
        // With a separate data object the region's own object backs only the header and metadata.
        let committedHere = separate ? min(committed, geometry.dataOffset) : committed
        let hugeTLB = kind == .explicit2MiB || kind == .explicit1GiB
        if !hugeTLB {
            // /dev/shm holds only the region's own object; memory (host and cgroup) has to hold everything
            // committed, in both objects, together.
            try Backing.checkShmSpace(committedHere, named: objectName != nil, describing: what)
            try (configuration._memoryBudget ?? MemoryBudget.current()).check(
                committed, describing: what, lazyPossible: configuration.commitment == .full)
        }

        let fd = try createObject(objectName, configuration, kind: kind, describing: what)
        var dataFD: Int32?
        // From here on, a failure must leave nothing behind.
        func discard() {
            if let dataFD { systemClose(dataFD) }
            // Unlink only if the name still refers to our object: a concurrent `.replace` may have put its own there.
            if let objectName, case .success(let ours) = systemFstat(fd),
                case .success(let named) = systemStat(Backing.shmDirectory + objectName),
                ours.st_ino == named.st_ino && ours.st_dev == named.st_dev
            {
                _ = systemShmUnlink(objectName)
            }
            systemClose(fd)
        }
        do throws(SharedRegionError) {
            if case .failure(let error) = systemFchmod(fd, mode: mode_t(configuration.mode.rawValue)) {
                throw SharedRegionError(.systemCallFailed, "fchmod of \(what) failed", cause: error)
            }
            if case .failure(let error) = systemFtruncate(fd, length: geometry.totalSize) {
                throw SharedRegionError(
                    error == .noSpace || error == .fileTooLarge ? .insufficientSpace : .systemCallFailed,
                    "could not size \(what) to \(formatByteCount(geometry.totalSize)) with ftruncate", cause: error)
            }
            // Transparent huge pages are committed below, by populating the advised mapping: fallocate has no
            // mapping to consult, so under shmem_enabled=advise it would allocate base pages, which then can never
            // be mapped huge. Lazy hugetlb needs nothing: mmap reserves the pages.
            let lazyNow = kind == .transparent || (hugeTLB && configuration.commitment == .lazy)
            try commitPages(
                fd, offset: 0, length: lazyNow ? 0 : committedHere, named: objectName != nil, describing: what)
            if objectName == nil && !hugeTLB {
                // Seal the size so that no holder of the descriptor can truncate the region under a mapping
                // (which would SIGBUS every process), nor grow it past what was checked.
                let seals = RegionFlags.sealShrink | RegionFlags.sealGrow | RegionFlags.sealSeal
                if case .failure(let error) = systemFcntl(fd, RegionFlags.addSeals, seals) {
                    throw SharedRegionError(.systemCallFailed, "could not seal \(what)", cause: error)
                }
            }
            let mapping = try SharedMapping.map(
                fd: fd, regionOffset: 0, length: geometry.totalSize, access: .readWrite, describing: what)
            if separate {
                let data = try createObject(nil, configuration, kind: kind, describing: what + " (data)")
                dataFD = data
                if case .failure(let error) = systemFtruncate(data, length: geometry.dataSize) {
                    throw SharedRegionError(
                        error == .noSpace || error == .fileTooLarge ? .insufficientSpace : .systemCallFailed,
                        "could not size the data object of \(what) with ftruncate", cause: error)
                }
                try commitPages(
                    data, offset: 0, length: lazyNow ? 0 : committed - committedHere, named: false,
                    describing: what + " (data)")
                if !hugeTLB {
                    let seals = RegionFlags.sealShrink | RegionFlags.sealGrow | RegionFlags.sealSeal
                    if case .failure(let error) = systemFcntl(data, RegionFlags.addSeals, seals) {
                        throw SharedRegionError(.systemCallFailed, "could not seal the data of \(what)", cause: error)
                    }
                }
                try overlayData(data, on: mapping, geometry: geometry, describing: what)
            }
            try prepare(
                mapping, kind: kind, prefaultLength: configuration.prefault || kind == .transparent ? committed : 0,
                describing: what)
            let header = SharedRegionHeader(
                geometry: geometry, pageKind: kind, isLazy: configuration.commitment == .lazy,
                isAnonymous: objectName == nil, hasSeparateData: separate, creatorPID: systemGetpid(),
                creationTime: systemRealtimeNanoseconds(),
                nonce: UInt64.random(in: 1...UInt64.max))
            #if DIVVY_INTERNAL_CHECKS
            precondition(geometry.inconsistency(fileSize: geometry.totalSize) == nil, "bad geometry \(geometry)")
            #endif
            header.write(to: mapping.base)
            SharedRegionHeader.publishReady(at: mapping.base)
            return SharedRegion(objectName: objectName, fd: fd, dataFD: dataFD, header: header, mapping: mapping)
        } catch {
            discard()
            throw error
        }
    }

    /// Maps the separate data object over the data range of a region mapping (`MAP_FIXED`): from then on the
    /// mapping's data offsets are the data object's bytes.
    private static func overlayData(
        _ dataFD: Int32, on mapping: SharedMapping, geometry: SharedRegionGeometry, describing what: String
    ) throws(SharedRegionError) {
        // Safe: the range lies inside `mapping` (dataRange is within totalSize), which owns it and unmaps all of it
        // in its deinit; MAP_FIXED replaces exactly those pages.
        let address = mapping.base + geometry.dataOffset
        let protection = mapping.access == .readWrite ? MapFlags.readWrite : MapFlags.readOnly
        let result = systemMmapFile(
            at: address, length: geometry.dataSize, protection: protection, flags: MapFlags.shared | MapFlags.fixed,
            fd: dataFD, offset: 0)
        switch result {
        case .success(let mapped):
            // Invariant: MAP_FIXED maps exactly at `address` or fails.
            precondition(mapped == address, "mmap(MAP_FIXED) of the data object of \(what) moved it")
        case .failure(let error):
            throw SharedRegionError(
                .systemCallFailed, "could not map the data object of \(what) over its data area", cause: error)
        }
    }

    private static func validate(_ configuration: Configuration, describing what: String) throws(SharedRegionError) {
        guard configuration.dataSize > 0, configuration.metadataSize >= 0 else {
            throw SharedRegionError(
                .invalidConfiguration,
                "\(what) cannot have a data size of \(configuration.dataSize) and a metadata size of "
                    + "\(configuration.metadataSize); the data size must be positive and the metadata size "
                    + "not negative")
        }
        guard configuration.mode.rawValue & ~0o777 == 0 else {
            throw SharedRegionError(
                .invalidConfiguration,
                "mode 0\(String(configuration.mode.rawValue, radix: 8)) for \(what) has bits outside 0777; "
                    + "pass permission bits only (default 0600)")
        }
    }

    /// The page kind to use and the geometry for it, in the fallback order of the configuration.
    private static func choosePages(
        _ configuration: Configuration, named: Bool, describing what: String
    ) throws(SharedRegionError) -> (OSAllocator.PageKind, SharedRegionGeometry) {
        let fallback = configuration.fallback
        let candidates: [OSAllocator.PageKind] =
            switch configuration.hugePages {
            case .none: [.base]
            case .automatic: [.explicit2MiB, .transparent, .base]
            case .transparent: fallback ? [.transparent, .base] : [.transparent]
            case .explicit2MiB: fallback ? [.explicit2MiB, .transparent, .base] : [.explicit2MiB]
            case .explicit1GiB: fallback ? [.explicit1GiB, .explicit2MiB, .transparent, .base] : [.explicit1GiB]
            }
        var refusal = SharedRegionError(.hugePagesUnavailable, "no page kind fits \(what)")
        for kind in candidates {
            let pageSize = kind == .base ? OSAllocator.pageSize : kind.pageSize
            guard
                let geometry = SharedRegionGeometry.layout(
                    metadataSize: configuration.metadataSize, dataSize: configuration.dataSize, pageSize: pageSize)
            else {
                throw SharedRegionError(
                    .invalidConfiguration,
                    "\(what) with \(configuration.dataSize) bytes of data and \(configuration.metadataSize) of "
                        + "metadata is larger than 2^48 bytes; pass smaller sizes")
            }
            switch kind {
            case .base:
                return (kind, geometry)
            case .transparent:
                if Backing.transparentHugePagesForShmem(named: named) { return (kind, geometry) }
                refusal = SharedRegionError(
                    .hugePagesUnavailable,
                    named
                        ? "\(what) asked for transparent huge pages but \(Backing.shmDirectory) is not mounted with "
                            + "huge=advise (or always, within_size); remount it so, create an anonymous region, "
                            + "or allow fallback"
                        : "\(what) asked for transparent huge pages but "
                            + "/sys/kernel/mm/transparent_hugepage/shmem_enabled does not allow them for shared "
                            + "memory; set it to 'advise', or allow fallback")
            case .explicit2MiB, .explicit1GiB:
                if named {
                    refusal = SharedRegionError(
                        .hugePagesUnavailable,
                        "\(what) asked for explicit \(kind) pages, but named regions live in /dev/shm (tmpfs), which "
                            + "has no hugetlb pages; create an anonymous region, or allow fallback")
                    continue
                }
                let needed = geometry.totalSize / kind.pageSize
                let available = Backing.availableHugePages(kind)
                if needed <= available { return (kind, geometry) }
                refusal = SharedRegionError(
                    .insufficientSpace,
                    "\(what) needs \(formatByteCount(geometry.totalSize)) of \(formatByteCount(kind.pageSize)) huge "
                        + "pages (\(needed) pages) but the pool has \(available) free "
                        + "(\(formatByteCount(available * kind.pageSize))); "
                        + "reserve more with \(Backing.hugePagePoolDirectory(kind))/nr_hugepages "
                        + "(or vm.nr_hugepages), pass a smaller size, or allow fallback")
            }
        }
        throw refusal
    }

    /// shm_open(O_CREAT | O_EXCL) or memfd_create; returns the descriptor.
    private static func createObject(
        _ objectName: String?, _ configuration: Configuration, kind: OSAllocator.PageKind, describing what: String
    ) throws(SharedRegionError) -> Int32 {
        guard let objectName else {
            var flags = RegionFlags.mfdCloexec
            switch kind {
            case .explicit2MiB: flags |= RegionFlags.mfdHugeTLB | RegionFlags.mfdHuge2MiB
            case .explicit1GiB: flags |= RegionFlags.mfdHugeTLB | RegionFlags.mfdHuge1GiB
            case .base, .transparent: flags |= RegionFlags.mfdAllowSealing
            }
            switch systemMemfdCreate("divvy-region", flags: flags) {
            case .success(let fd): return fd
            case .failure(let error):
                throw SharedRegionError(
                    error == .tooManyOpenFiles || error == .noMemory ? .insufficientSpace : .systemCallFailed,
                    "memfd_create for \(what) with \(kind) pages failed", cause: error)
            }
        }
        let mode = mode_t(configuration.mode.rawValue)
        var replaced = false
        while true {
            switch systemShmOpen(objectName, flags: O_RDWR | O_CREAT | O_EXCL, mode: mode) {
            case .success(let fd):
                return fd
            case .failure(.fileExists) where configuration.ifExists == .replace && !replaced:
                replaced = true
                if case .failure(let error) = systemShmUnlink(objectName), error != .noSuchFileOrDirectory {
                    throw openError(error, creating: true, describing: what)
                }
            case .failure(let error):
                throw openError(error, creating: true, describing: what)
            }
        }
    }

    private static func openError(_ error: Errno, creating: Bool, describing what: String) -> SharedRegionError {
        switch error {
        case .fileExists:
            SharedRegionError(
                .alreadyExists,
                "\(what) already exists; open it, remove it first, or create with ifExists: .replace", cause: error)
        case .noSuchFileOrDirectory:
            SharedRegionError(
                .notFound,
                "\(what) does not exist in \(Backing.shmDirectory); check the name and prefix, or create it",
                cause: error)
        case .permissionDenied, .notPermitted:
            SharedRegionError(
                .permissionDenied,
                "not allowed to \(creating ? "create" : "open") \(what); check its owner and mode "
                    + "(ls -l \(Backing.shmDirectory))",
                cause: error)
        case .fileNameTooLong, .invalidArgument:
            SharedRegionError(.invalidName, "the name of \(what) is not valid for shm_open", cause: error)
        default:
            SharedRegionError(.systemCallFailed, "shm_open of \(what) failed", cause: error)
        }
    }

    /// fallocate `[offset, offset + length)`: after it, touching those pages cannot SIGBUS.
    private static func commitPages(
        _ fd: Int32, offset: Int, length: Int, named: Bool, describing what: String
    ) throws(SharedRegionError) {
        guard length > 0 else { return }
        switch systemFallocate(fd, offset: offset, length: length) {
        case .success: return
        case .failure(let error) where error == .noSpace || error == .noMemory:
            // Someone else took the space between the check and the allocation: report what is left now.
            let free =
                if named, case .success(let space) = systemStatvfs(Backing.shmDirectory) {
                    "\(Backing.shmDirectory) has \(formatByteCount(space.available)) free"
                } else {
                    "the system has \(formatByteCount(Backing.availableMemory() ?? 0)) of memory available"
                }
            throw SharedRegionError(
                .insufficientSpace,
                "\(what) needs \(formatByteCount(length)) committed but \(free); enlarge the backing store, "
                    + "pass a smaller size, or ask for lazy commitment",
                cause: error)
        case .failure(let error):
            throw SharedRegionError(
                .systemCallFailed, "fallocate of \(formatByteCount(length)) at \(offset) in \(what) failed",
                cause: error)
        }
    }

    /// THP advice and prefaulting for a fresh mapping of a region.
    ///
    /// Populating (`MADV_POPULATE_WRITE`) also allocates the pages in the object, so it commits as fallocate does:
    /// a page that cannot be allocated fails the call with ENOMEM or EFAULT instead of raising SIGBUS.
    private static func prepare(
        _ mapping: SharedMapping, kind: OSAllocator.PageKind, prefaultLength: Int, describing what: String
    ) throws(SharedRegionError) {
        if kind == .transparent {
            // Advice only: failure leaves base pages, which is what `shmem_enabled` decides anyway.
            _ = systemMadvise(mapping.base, length: mapping.length, advice: RegionFlags.adviseHugePage)
        }
        guard prefaultLength > 0 else { return }
        let advice = mapping.access == .readWrite ? RegionFlags.advisePopulateWrite : RegionFlags.advisePopulateRead
        if case .failure(let error) = systemMadvise(mapping.base, length: prefaultLength, advice: advice) {
            throw SharedRegionError(
                error == .noMemory || error == .badAddress ? .insufficientSpace : .systemCallFailed,
                "could not populate \(formatByteCount(prefaultLength)) of \(what); the backing store or memory "
                    + "is exhausted: free some, or pass a smaller size",
                cause: error)
        }
    }

    // MARK: Opening

    /// Opens an existing named region (shm_open(3) without `O_CREAT`), maps all of it and checks its header.
    ///
    /// - Parameters:
    ///   - name: the region name; the object is `/<namePrefix><name>`.
    ///   - namePrefix: the prefix it was created with. Default `"divvy-"`.
    ///   - access: map read-write (default) or read-only.
    ///   - prefault: populate page tables for the committed part (`MADV_POPULATE_WRITE` / `_READ`).
    /// - Throws: `.notFound`, `.permissionDenied`, `.invalidName`, and the header errors: `.notInitialized`,
    ///   `.badMagic`, `.unsupportedVersion`, `.corruptHeader`, `.geometryMismatch`. Opening never writes.
    public static func open(
        name: String, namePrefix: String = "divvy-", access: SharedMapping.Access = .readWrite, prefault: Bool = false
    ) throws(SharedRegionError) -> SharedRegion {
        let objectName = try objectName(for: name, namePrefix: namePrefix)
        let what = "region '\(objectName)'"
        let flags = access == .readWrite ? O_RDWR : O_RDONLY
        let fd: Int32
        switch systemShmOpen(objectName, flags: flags, mode: 0) {
        case .success(let opened): fd = opened
        case .failure(let error): throw openError(error, creating: false, describing: what)
        }
        return try open(objectName: objectName, fd: fd, access: access, prefault: prefault, describing: what)
    }

    /// Opens a region from a descriptor (an anonymous region received from its creator, or any region's
    /// descriptor), maps all of it and checks its header. The descriptor is duplicated (`F_DUPFD_CLOEXEC`): the
    /// caller keeps, and still closes, its own.
    ///
    /// - Throws: `.systemCallFailed` for a descriptor that cannot be duplicated or is not a file, and the header
    ///   errors of `open(name:namePrefix:access:prefault:)`.
    public static func open(
        fileDescriptor: FileDescriptor, dataFileDescriptor: FileDescriptor? = nil,
        access: SharedMapping.Access = .readWrite, prefault: Bool = false
    ) throws(SharedRegionError) -> SharedRegion {
        let what = "region behind fd \(fileDescriptor.rawValue)"
        let fd: Int32
        // The caller's descriptors are input, not ours: a closed one is reported (trapOnProgrammerError: false).
        // The duplicates are ours.
        switch systemFcntl(fileDescriptor.rawValue, F_DUPFD_CLOEXEC, 0, trapOnProgrammerError: false) {
        case .success(let duplicate): fd = duplicate
        case .failure(let error):
            throw SharedRegionError(
                .systemCallFailed, "could not duplicate fd \(fileDescriptor.rawValue)", cause: error)
        }
        var dataFD: Int32?
        if let dataFileDescriptor {
            switch systemFcntl(dataFileDescriptor.rawValue, F_DUPFD_CLOEXEC, 0, trapOnProgrammerError: false) {
            case .success(let duplicate): dataFD = duplicate
            case .failure(let error):
                systemClose(fd)
                throw SharedRegionError(
                    .systemCallFailed, "could not duplicate fd \(dataFileDescriptor.rawValue)", cause: error)
            }
        }
        return try open(objectName: nil, fd: fd, dataFD: dataFD, access: access, prefault: prefault, describing: what)
    }

    private static func open(
        objectName: String?, fd: Int32, dataFD: Int32? = nil, access: SharedMapping.Access, prefault: Bool,
        describing what: String
    ) throws(SharedRegionError) -> SharedRegion {
        do throws(SharedRegionError) {
            let size = try objectSize(fd, describing: what)
            guard size >= SharedRegionHeader.reservedSize else {
                throw size == 0
                    ? SharedRegionError(
                        .notInitialized,
                        "\(what) has size 0: its creator has not sized it yet, or died before doing so; try again "
                            + "shortly, or remove it and create it again")
                    : SharedRegionError(
                        .geometryMismatch,
                        "\(what) has \(size) bytes, less than a \(SharedRegionHeader.reservedSize)-byte header; "
                            + "it is not a Divvy region, or was truncated: remove it and create it again")
            }
            let mapping = try SharedMapping.map(fd: fd, regionOffset: 0, length: size, access: access, describing: what)
            let header = try SharedRegionHeader.read(at: mapping.base, fileSize: size, describing: what)
            if header.hasSeparateData {
                guard let dataFD else {
                    throw SharedRegionError(
                        .invalidConfiguration,
                        "\(what) keeps its data in a separate object, and no descriptor for it was given: open it "
                            + "with open(fileDescriptor:dataFileDescriptor:) (its creator hands both out)")
                }
                let dataSize = try objectSize(dataFD, describing: what + " (data)")
                guard dataSize == header.geometry.dataSize else {
                    throw SharedRegionError(
                        .geometryMismatch,
                        "the data object given for \(what) has \(dataSize) bytes; its header says "
                            + "\(header.geometry.dataSize): pass the data descriptor of this region")
                }
                try overlayData(dataFD, on: mapping, geometry: header.geometry, describing: what)
            } else if dataFD != nil {
                throw SharedRegionError(
                    .invalidConfiguration, "\(what) has no separate data object, but a data descriptor was given")
            }
            // A lazy region's metadata may be committed only in part (a lazy heap commits it as it uses it), and
            // populating would commit it all: prefault only the header then.
            let committed = header.isLazy ? header.geometry.metadataOffset : header.geometry.totalSize
            try prepare(mapping, kind: header.pageKind, prefaultLength: prefault ? committed : 0, describing: what)
            return SharedRegion(objectName: objectName, fd: fd, dataFD: dataFD, header: header, mapping: mapping)
        } catch {
            systemClose(fd)
            if let dataFD { systemClose(dataFD) }
            throw error
        }
    }

    private static func objectSize(_ fd: Int32, describing what: String) throws(SharedRegionError) -> Int {
        switch systemFstat(fd) {
        case .success(let info):
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw SharedRegionError(
                    .badMagic, "\(what) is not a regular file (a shared-memory object or memfd); pass a region's fd")
            }
            return Int(info.st_size)
        case .failure(let error):
            throw SharedRegionError(.systemCallFailed, "fstat of \(what) failed", cause: error)
        }
    }

    // MARK: Removing

    /// Removes the named region `/<namePrefix><name>` (shm_unlink(3)). Processes that have it mapped or open keep
    /// using it; the memory is freed when the last of them lets go. New `open` calls fail with `.notFound`.
    ///
    /// - Throws: `.notFound`, `.permissionDenied`, `.invalidName`.
    public static func remove(name: String, namePrefix: String = "divvy-") throws(SharedRegionError) {
        let objectName = try objectName(for: name, namePrefix: namePrefix)
        try unlink(objectName)
    }

    /// Removes this region's name (shm_unlink(3)); this mapping and every other process's stay valid.
    ///
    /// - Throws: `.invalidConfiguration` for an anonymous region (it has no name: it goes away with its last
    ///   descriptor and mapping); `.notFound` when the name was already removed; `.permissionDenied`.
    public func remove() throws(SharedRegionError) {
        guard let objectName else {
            throw SharedRegionError(
                .invalidConfiguration,
                "\(describing) has no name to remove; it disappears when its last descriptor and mapping are gone")
        }
        try Self.unlink(objectName)
    }

    private static func unlink(_ objectName: String) throws(SharedRegionError) {
        if case .failure(let error) = systemShmUnlink(objectName) {
            throw openError(error, creating: false, describing: "region '\(objectName)'")
        }
    }

    // MARK: Data area, commitment, usage

    /// Maps the data area alone (`geometry.dataRange`), read-write or read-only: what a mediated client, which must
    /// not see the metadata, maps. Translating a metadata offset through it throws `.outOfBounds`.
    ///
    /// - Throws: `.permissionDenied` for a read-write mapping of a region opened read-only; `.systemCallFailed`.
    public func mapDataArea(access: SharedMapping.Access = .readWrite) throws(SharedRegionError) -> SharedMapping {
        if let dataFileDescriptor {
            return try Self.mapDataObject(dataFileDescriptor, geometry: geometry, access: access)
        }
        return try Self.mapDataArea(of: fileDescriptor, geometry: geometry, access: access)
    }

    /// Maps a region's separate data object (`dataFileDescriptor`, received from the region's owner with the
    /// geometry) as the region's data area: offsets translate as in the region (`regionOffset` is
    /// `geometry.dataOffset`). A process holding only this descriptor can reach the data and nothing else.
    ///
    /// - Throws: `.geometryMismatch` when the object does not have `geometry.dataSize` bytes; `.permissionDenied`;
    ///   `.systemCallFailed`.
    public static func mapDataObject(
        _ fileDescriptor: FileDescriptor, geometry: SharedRegionGeometry, access: SharedMapping.Access = .readWrite
    ) throws(SharedRegionError) -> SharedMapping {
        let what = "data object behind fd \(fileDescriptor.rawValue)"
        let size = try objectSize(fileDescriptor.rawValue, describing: what)
        guard size == geometry.dataSize, geometry.dataSize > 0 else {
            throw SharedRegionError(
                .geometryMismatch, "the \(what) has \(size) bytes; the region's data area has \(geometry.dataSize)")
        }
        return try SharedMapping.map(
            fd: fileDescriptor.rawValue, fileOffset: 0, regionOffset: geometry.dataOffset, length: size,
            access: access, describing: what)
    }

    /// Maps the data area of the region behind `fileDescriptor`, given its geometry (from the region's owner, e.g.
    /// over a socket), without mapping or reading the header. Checks that the object has `geometry.totalSize` bytes.
    ///
    /// - Throws: `.geometryMismatch` when the object's size differs or the geometry is inconsistent;
    ///   `.permissionDenied`; `.systemCallFailed`.
    public static func mapDataArea(
        of fileDescriptor: FileDescriptor, geometry: SharedRegionGeometry, access: SharedMapping.Access = .readOnly
    ) throws(SharedRegionError) -> SharedMapping {
        let what = "data area of the region behind fd \(fileDescriptor.rawValue)"
        let size = try objectSize(fileDescriptor.rawValue, describing: what)
        if let problem = geometry.inconsistency(fileSize: size) {
            throw SharedRegionError(.geometryMismatch, "cannot map the \(what): \(problem)")
        }
        do {
            return try SharedMapping.map(
                fd: fileDescriptor.rawValue, regionOffset: geometry.dataOffset, length: geometry.dataSize,
                access: access, describing: what)
        } catch where error.cause == .permissionDenied {
            throw SharedRegionError(
                .permissionDenied,
                "cannot map the \(what) \(access == .readWrite ? "read-write" : "read-only"): the descriptor "
                    + "does not allow it; open the region read-write or map read-only",
                cause: error.cause)
        }
    }

    /// Commits (allocates backing pages for) `[offset, offset + length)` of a lazily reserved region, after the
    /// same space checks as creation, so that touching those pages cannot SIGBUS. Committing committed pages is a
    /// no-op; the range is rounded out to whole pages by the kernel.
    ///
    /// - Throws: `.outOfBounds` for a range outside the region; `.permissionDenied` for a region opened
    ///   read-only; `.insufficientSpace` naming the size and the space available.
    public func commit(offset: Int, length: Int) throws(SharedRegionError) {
        guard offset >= 0, length >= 0, offset <= geometry.totalSize - length else {
            throw SharedRegionError(
                .outOfBounds,
                "cannot commit offsets \(offset)+\(length) of \(describing), which has \(geometry.totalSize) bytes")
        }
        guard access == .readWrite else {
            throw SharedRegionError(
                .permissionDenied, "\(describing) was opened read-only; open it read-write to commit pages")
        }
        let hugeTLB = pageKind == .explicit2MiB || pageKind == .explicit1GiB
        if !hugeTLB { try Backing.checkTmpfsSpace(length, named: objectName != nil, describing: describing) }
        if pageKind == .transparent && length > 0 {
            // Through the advised mapping, so the pages can be huge (see `create`). Page-aligned outward.
            let start = offset & ~(OSAllocator.pageSize - 1)
            let end = min(geometry.totalSize, (offset + length + OSAllocator.pageSize - 1) & ~(OSAllocator.pageSize - 1))
            if case .failure(let error) = systemMadvise(
                mapping.base + start, length: end - start, advice: RegionFlags.advisePopulateWrite)
            {
                throw SharedRegionError(
                    error == .noMemory || error == .badAddress ? .insufficientSpace : .systemCallFailed,
                    "could not commit \(formatByteCount(length)) at offset \(offset) of \(describing); the backing "
                        + "store or memory is exhausted: free some, or commit less",
                    cause: error)
            }
            return
        }
        if let dataFileDescriptor {
            // The part in the data range lives in the data object, at offsets relative to the data area.
            let dataStart = geometry.dataOffset
            let before = max(0, min(offset + length, dataStart) - offset)
            try Self.commitPages(
                fileDescriptor.rawValue, offset: offset, length: before, named: objectName != nil,
                describing: describing)
            let inData = length - before
            try Self.commitPages(
                dataFileDescriptor.rawValue, offset: offset + before - dataStart, length: inData, named: false,
                describing: describing + " (data)")
            return
        }
        try Self.commitPages(
            fileDescriptor.rawValue, offset: offset, length: length, named: objectName != nil, describing: describing)
    }

    /// Commits `[offset, offset + length)` (region offsets) for a lazy heap that starts using that part: a page
    /// it claims (data, block words, links), a participant's held list. fallocate(2) on whichever object holds
    /// the range (the region's own, or its separate data object); for transparent huge pages MADV_POPULATE_WRITE
    /// through this mapping instead, so the pages can still be huge (see `create`); nothing for hugetlb pages,
    /// which are reserved when mapped. Either call allocates the pages or fails with an error (ENOSPC when
    /// /dev/shm is full, ENOMEM): a page that cannot be backed is reported here, never by a SIGBUS later.
    ///
    /// Unlike `commit(offset:length:)` it runs no admission check (it runs whenever a heap claims a page it never
    /// used; the backing store's own limit is the check) and returns the error instead of throwing. Idempotent:
    /// committed pages stay as they are. Needs a read-write region.
    internal func commitInPlace(offset: Int, length: Int) -> Errno? {
        guard length > 0 else { return nil }
        switch pageKind {
        case .explicit2MiB, .explicit1GiB:
            return nil
        case .transparent:
            let start = offset & ~(OSAllocator.pageSize - 1)
            let end = min(
                geometry.totalSize, (offset + length + OSAllocator.pageSize - 1) & ~(OSAllocator.pageSize - 1))
            if case .failure(let error) = systemMadvise(
                mapping.base + start, length: end - start, advice: RegionFlags.advisePopulateWrite)
            {
                return error
            }
            return nil
        case .base:
            break
        }
        var pieces = [(fd: fileDescriptor.rawValue, offset: offset, length: length)]
        if let dataFileDescriptor, offset + length > geometry.dataOffset {
            // The part in the data range lives in the data object, at offsets relative to the data area.
            let before = max(0, geometry.dataOffset - offset)
            pieces = [(fileDescriptor.rawValue, offset, before),
                      (dataFileDescriptor.rawValue, offset + before - geometry.dataOffset, length - before)]
        }
        for piece in pieces where piece.length > 0 {
            if case .failure(let error) = systemFallocate(piece.fd, offset: piece.offset, length: piece.length) {
                return error
            }
        }
        return nil
    }

    /// Punches a hole over `[offset, offset + length)` (region offsets, page aligned; MADV_REMOVE through this
    /// mapping): the pages read as zeros afterwards, in every process, and are no longer backed. A lazy heap's
    /// `create` uses it to clear its metadata area without writing zeros (which would commit it all). Returns
    /// the error when the kernel refuses (hugetlb, a read-only mapping).
    internal func removePages(offset: Int, length: Int) -> Errno? {
        guard length > 0 else { return nil }
        if case .failure(let error) = systemMadvise(
            mapping.base + offset, length: length, advice: RegionFlags.adviseRemove)
        {
            return error
        }
        return nil
    }

    /// Bytes of backing store the region uses now (fstat(2) `st_blocks * 512`): its committed and touched pages,
    /// shared by every process that maps it.
    ///
    /// - Throws: `.systemCallFailed` when fstat fails.
    public func allocatedBytes() throws(SharedRegionError) -> Int {
        var total = 0
        for fd in [fileDescriptor.rawValue] + (dataFileDescriptor.map { [$0.rawValue] } ?? []) {
            switch systemFstat(fd) {
            case .success(let info): total += Int(info.st_blocks) * 512
            case .failure(let error):
                throw SharedRegionError(.systemCallFailed, "fstat of \(describing) failed", cause: error)
            }
        }
        return total
    }
}
