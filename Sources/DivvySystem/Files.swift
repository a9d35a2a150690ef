// File, shared-memory-object and process system calls. One thin wrapper per call; failures are swift-system's
// `Errno`, EINTR is retried, programmer errors (EBADF, EFAULT) trap (see Errno.swift).
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// memfd_create(2) and file-sealing values, read once from the C headers (`_GNU_SOURCE` macros).
package enum RegionFlags {
    /// `MFD_CLOEXEC`.
    package static let mfdCloexec = divvy_mfd_cloexec()
    /// `MFD_ALLOW_SEALING`.
    package static let mfdAllowSealing = divvy_mfd_allow_sealing()
    /// `MFD_HUGETLB`.
    package static let mfdHugeTLB = divvy_mfd_hugetlb()
    /// `MFD_HUGE_2MB`.
    package static let mfdHuge2MiB = divvy_mfd_huge_2mb()
    /// `MFD_HUGE_1GB`.
    package static let mfdHuge1GiB = divvy_mfd_huge_1gb()
    /// `F_ADD_SEALS`.
    package static let addSeals = divvy_f_add_seals()
    /// `F_GET_SEALS`.
    package static let getSeals = divvy_f_get_seals()
    /// `F_SEAL_SEAL`.
    package static let sealSeal = divvy_f_seal_seal()
    /// `F_SEAL_SHRINK`.
    package static let sealShrink = divvy_f_seal_shrink()
    /// `F_SEAL_GROW`.
    package static let sealGrow = divvy_f_seal_grow()
    /// `MADV_HUGEPAGE` (as `MapFlags.adviseHugePage`).
    package static let adviseHugePage = MapFlags.adviseHugePage
    /// `MADV_POPULATE_WRITE` (as `MapFlags.advisePopulateWrite`).
    package static let advisePopulateWrite = MapFlags.advisePopulateWrite
    /// `MADV_POPULATE_READ` (as `MapFlags.advisePopulateRead`).
    package static let advisePopulateRead = MapFlags.advisePopulateRead
    /// `MADV_REMOVE` (as `MapFlags.adviseRemove`).
    package static let adviseRemove = MapFlags.adviseRemove
}

/// open(2) (the descriptor is the caller's to own: wrap it in an `OwnedDescriptor`).
package func systemOpen(_ path: String, flags: Int32, mode: mode_t = 0) -> Result<Int32, Errno> {
    valueOrErrno("open") { open(path, flags, mode) }
}

/// read(2) into `buffer`: how many bytes were read (0 at end of file).
package func systemRead(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
    valueOrErrno("read") { read(fd, buffer.baseAddress, buffer.count) }
}

/// write(2) from `buffer`: how many bytes were written.
package func systemWrite(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> Result<Int, Errno> {
    valueOrErrno("write") { write(fd, buffer.baseAddress, buffer.count) }
}

/// open(2) read-only, read(2) up to `limit` bytes, close(2): for small files under /proc and /sys.
package func systemReadSmallFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], Errno> {
    let fd: OwnedDescriptor
    switch systemOpen(path, flags: O_RDONLY | O_CLOEXEC) {
    case .success(let raw): fd = OwnedDescriptor(taking: raw)
    case .failure(let error): return .failure(error)
    }
    let raw = fd.rawValue
    func readAll() -> Result<[UInt8], Errno> {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            switch chunk.withUnsafeMutableBytes({ systemRead(raw, into: $0) }) {
            case .success(0): return .success(bytes)
            case .success(let count): bytes.append(contentsOf: chunk[..<count])
            case .failure(let error): return .failure(error)
            }
        }
        return .success(bytes)
    }
    let result = readAll()
    fd.close()  // Explicitly after the reads: the owner must outlive every use of `raw`.
    return result
}

/// `systemReadSmallFile` as UTF-8 text (up to 64 KiB), or nil when the file cannot be read.
package func systemReadSmallTextFile(_ path: String) -> String? {
    guard case .success(let bytes) = systemReadSmallFile(path, limit: 1 << 16) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// shm_open(3). Glibc sets `FD_CLOEXEC` on the descriptor.
package func systemShmOpen(_ name: String, flags: Int32, mode: mode_t) -> Result<Int32, Errno> {
    valueOrErrno("shm_open") { shm_open(name, flags, mode) }
}

/// shm_unlink(3).
package func systemShmUnlink(_ name: String) -> Result<Void, Errno> {
    nothingOrErrno("shm_unlink") { shm_unlink(name) }
}

/// memfd_create(2), through the C shim (glibc declares it only under `_GNU_SOURCE`).
package func systemMemfdCreate(_ name: String, flags: UInt32) -> Result<Int32, Errno> {
    valueOrErrno("memfd_create") { divvy_memfd_create(name, flags) }
}

/// ftruncate(2).
package func systemFtruncate(_ fd: Int32, length: Int) -> Result<Void, Errno> {
    nothingOrErrno("ftruncate") { ftruncate(fd, off_t(length)) }
}

/// fallocate(2) with mode 0: allocates backing pages for `[offset, offset + length)`. Through the C shim.
package func systemFallocate(_ fd: Int32, offset: Int, length: Int) -> Result<Void, Errno> {
    nothingOrErrno("fallocate") { divvy_fallocate(fd, Int64(offset), Int64(length)) }
}

/// fchmod(2).
package func systemFchmod(_ fd: Int32, mode: mode_t) -> Result<Void, Errno> {
    nothingOrErrno("fchmod") { fchmod(fd, mode) }
}

/// chmod(2).
package func systemChmod(_ path: String, mode: mode_t) -> Result<Void, Errno> {
    nothingOrErrno("chmod") { chmod(path, mode) }
}

/// fstat(2).
package func systemFstat(_ fd: Int32) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno("fstat") { fstat(fd, &info) }.map { _ in info }
}

/// stat(2).
package func systemStat(_ path: String) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno("stat") { stat(path, &info) }.map { _ in info }
}

/// lstat(2).
package func systemLstat(_ path: String) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno("lstat") { lstat(path, &info) }.map { _ in info }
}

/// unlink(2).
package func systemUnlink(_ path: String) -> Result<Void, Errno> {
    nothingOrErrno("unlink") { unlink(path) }
}

/// rmdir(2).
package func systemRemoveDirectory(_ path: String) -> Result<Void, Errno> {
    nothingOrErrno("rmdir") { rmdir(path) }
}

/// mkdtemp(3): creates a new directory, mode 0700, from `template` (ending in `XXXXXX`); returns its path.
package func systemMakeTemporaryDirectory(_ template: String) -> Result<String, Errno> {
    var bytes = Array(template.utf8CString)
    return bytes.withUnsafeMutableBufferPointer { buffer -> Result<String, Errno> in
        // Safe: `buffer` is a NUL-terminated copy of the template that mkdtemp rewrites in place.
        guard let made = mkdtemp(buffer.baseAddress!) else { return .failure(Errno(rawValue: errno)) }
        return .success(String(cString: made))
    }
}

/// flock(2).
package func systemFlock(_ fd: Int32, _ operation: Int32) -> Result<Void, Errno> {
    nothingOrErrno("flock") { flock(fd, operation) }
}

/// fcntl(2) with an int argument, through the C shim (fcntl is variadic).
///
/// - Parameter trapOnProgrammerError: false only to probe a descriptor the program did not open (see
///   `systemDescriptorIsOpen`).
package func systemFcntl(
    _ fd: Int32, _ command: Int32, _ argument: Int32 = 0, trapOnProgrammerError: Bool = true
) -> Result<Int32, Errno> {
    valueOrErrno("fcntl", trapOnProgrammerError: trapOnProgrammerError) { divvy_fcntl_int(fd, command, argument) }
}

/// statvfs(3): `(bytes available to unprivileged users, total bytes)` of the file system holding `path`.
package func systemStatvfs(_ path: String) -> Result<(available: Int, total: Int), Errno> {
    var info = statvfs()
    return valueOrErrno("statvfs") { statvfs(path, &info) }.map { _ in
        // Safe: block counts times the fragment size fit easily in 64 bits for any real file system.
        (Int(info.f_bavail) &* Int(info.f_frsize), Int(info.f_blocks) &* Int(info.f_frsize))
    }
}

/// getpid(2): the calling process's id.
package func systemGetpid() -> Int32 { getpid() }

/// clock_gettime(CLOCK_REALTIME) in nanoseconds since the epoch.
package func systemRealtimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    // Safe: tv_sec is non-negative and far below 2^64 / 10^9 for centuries.
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}
