// Thin wrappers over the system calls regions need: one per call, retrying EINTR, returning the value or errno.
// Modelled on apple/swift-system `Sources/System/Internals/Syscalls.swift` (`valueOrErrno`). The `Divvy` module's
// wrappers are internal to it, so this target keeps its own. Nothing here throws or traps.
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Calls `body` until it stops failing with EINTR; returns its value, or errno when it returned -1.
@inline(__always)
internal func valueOrErrno<I: FixedWidthInteger>(_ body: () -> I) -> Result<I, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let error = Errno(rawValue: errno)
        if error == .interrupted { continue }
        return .failure(error)
    }
}

/// shm_open(3). Glibc sets `FD_CLOEXEC` on the descriptor.
internal func systemShmOpen(_ name: String, flags: Int32, mode: mode_t) -> Result<Int32, Errno> {
    valueOrErrno { shm_open(name, flags, mode) }
}

/// shm_unlink(3).
internal func systemShmUnlink(_ name: String) -> Result<Void, Errno> {
    valueOrErrno { shm_unlink(name) }.map { _ in () }
}

/// memfd_create(2), through the C shim (glibc declares it only under `_GNU_SOURCE`).
internal func systemMemfdCreate(_ name: String, flags: UInt32) -> Result<Int32, Errno> {
    valueOrErrno { divvy_memfd_create(name, flags) }
}

/// ftruncate(2).
internal func systemFtruncate(_ fd: Int32, length: Int) -> Result<Void, Errno> {
    valueOrErrno { ftruncate(fd, off_t(length)) }.map { _ in () }
}

/// fallocate(2) with mode 0: allocates backing pages for `[offset, offset + length)`.
internal func systemFallocate(_ fd: Int32, offset: Int, length: Int) -> Result<Void, Errno> {
    valueOrErrno { divvy_fallocate(fd, Int64(offset), Int64(length)) }.map { _ in () }
}

/// fchmod(2).
internal func systemFchmod(_ fd: Int32, mode: mode_t) -> Result<Void, Errno> {
    valueOrErrno { fchmod(fd, mode) }.map { _ in () }
}

/// fstat(2).
internal func systemFstat(_ fd: Int32) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno { fstat(fd, &info) }.map { _ in info }
}

/// stat(2).
internal func systemStat(_ path: String) -> Result<stat, Errno> {
    var info = stat()
    return valueOrErrno { stat(path, &info) }.map { _ in info }
}

/// flock(2).
internal func systemFlock(_ fd: Int32, _ operation: Int32) -> Result<Void, Errno> {
    valueOrErrno { flock(fd, operation) }.map { _ in () }
}

/// fcntl(2) with an int argument, through the C shim (fcntl is variadic).
internal func systemFcntl(_ fd: Int32, _ command: Int32, _ argument: Int32 = 0) -> Result<Int32, Errno> {
    valueOrErrno { divvy_fcntl_int(fd, command, argument) }
}

/// statvfs(3): `(bytes available to unprivileged users, total bytes)` of the file system holding `path`.
internal func systemStatvfs(_ path: String) -> Result<(available: Int, total: Int), Errno> {
    var info = statvfs()
    return valueOrErrno { statvfs(path, &info) }.map { _ in
        // Safe: block counts times the fragment size fit easily in 64 bits for any real file system.
        (Int(info.f_bavail) &* Int(info.f_frsize), Int(info.f_blocks) &* Int(info.f_frsize))
    }
}

// mmap(MAP_SHARED) and munmap go through Divvy's OSAllocator.mapShared / unmapShared.

/// madvise(2).
internal func systemMadvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Result<Void, Errno> {
    valueOrErrno { madvise(address, length, advice) }.map { _ in () }
}

/// close(2). Never retried: on Linux the descriptor is released even when close reports EINTR.
internal func systemClose(_ fd: Int32) {
    _ = close(fd)
}

/// open(2) read-only, read(2) up to 64 KiB, close(2): for small text files under /proc and /sys.
internal func readSmallTextFile(_ path: String) -> String? {
    let opened = valueOrErrno { open(path, O_RDONLY | O_CLOEXEC) }
    guard case .success(let fd) = opened else { return nil }
    defer { systemClose(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 1 << 16 {
        let result = chunk.withUnsafeMutableBytes { buffer in
            valueOrErrno { read(fd, buffer.baseAddress, buffer.count) }
        }
        switch result {
        case .success(0): return String(decoding: bytes, as: UTF8.self)
        case .success(let count): bytes.append(contentsOf: chunk[..<count])
        case .failure: return nil
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The calling process's id.
internal func currentProcessID() -> Int32 { getpid() }

/// CLOCK_REALTIME in nanoseconds since the epoch.
internal func realtimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    // Safe: tv_sec is non-negative and far below 2^64 / 10^9 for centuries.
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Flag values read once from the C headers.
internal enum RegionFlags {
    static let mfdCloexec = divvy_mfd_cloexec()
    static let mfdAllowSealing = divvy_mfd_allow_sealing()
    static let mfdHugeTLB = divvy_mfd_hugetlb()
    static let mfdHuge2MiB = divvy_mfd_huge_2mb()
    static let mfdHuge1GiB = divvy_mfd_huge_1gb()
    static let addSeals = divvy_f_add_seals()
    static let getSeals = divvy_f_get_seals()
    static let sealSeal = divvy_f_seal_seal()
    static let sealShrink = divvy_f_seal_shrink()
    static let sealGrow = divvy_f_seal_grow()
    static let adviseHugePage = divvy_madv_hugepage()
    static let advisePopulateWrite = divvy_madv_populate_write()
    static let advisePopulateRead = divvy_madv_populate_read()
    /// `MADV_REMOVE`: punch a hole through a shared mapping (the pages read as zeros and are no longer backed).
    static let adviseRemove = Int32(MADV_REMOVE)
}
