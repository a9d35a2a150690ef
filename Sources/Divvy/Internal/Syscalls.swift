// Thin wrappers over the memory-mapping system calls: one per call, retrying EINTR, returning the value or errno.
// Modelled on apple/swift-system `Sources/System/Internals/Syscalls.swift` and `Util.swift` (`valueOrErrno`).
// Failures are swift-system's `Errno`. Public APIs turn it into a thrown `AllocationError`;
// nothing here throws or traps.
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Calls `body` until it stops failing with EINTR; returns its value, or errno when it returned -1.
@inline(__always)
internal func valueOrErrno<I: FixedWidthInteger>(
    retryOnInterrupt: Bool = true, _ body: () -> I
) -> Result<I, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let error = Errno(rawValue: errno)
        if retryOnInterrupt && error == .interrupted { continue }
        return .failure(error)
    }
}

/// Like `valueOrErrno` for the calls that return `MAP_FAILED` (`(void *)-1`) on failure.
@inline(__always)
internal func pointerOrErrno(
    retryOnInterrupt: Bool = true, _ body: () -> UnsafeMutableRawPointer?
) -> Result<UnsafeMutableRawPointer, Errno> {
    while true {
        let value = body()
        if let value, value != mapFailed { return .success(value) }
        let error = Errno(rawValue: errno)
        if retryOnInterrupt && error == .interrupted { continue }
        return .failure(error)
    }
}

/// `MAP_FAILED`, which glibc defines as a cast macro.
@inline(__always)
internal var mapFailed: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: -1)! }

/// Memory-protection and mapping flags, read once from the C headers.
internal enum MapFlags {
    static let readWrite = PROT_READ | PROT_WRITE
    static let none = PROT_NONE
    static let privateAnonymous = MAP_PRIVATE | MAP_ANONYMOUS
    static let noReserve = divvy_map_noreserve()
    static let hugeTLB = divvy_map_hugetlb()
    static let huge2MiB = divvy_map_huge_2mb()
    static let huge1GiB = divvy_map_huge_1gb()
    static let fixedNoReplace = divvy_map_fixed_noreplace()
    static let mayMove = divvy_mremap_maymove()
    static let adviseHugePage = divvy_madv_hugepage()
    static let advisePopulateWrite = divvy_madv_populate_write()
}

/// mmap(2) of anonymous memory (`fd` -1, offset 0).
internal func systemMmapAnonymous(
    at address: UnsafeMutableRawPointer?, length: Int, protection: Int32, flags: Int32
) -> Result<UnsafeMutableRawPointer, Errno> {
    pointerOrErrno { mmap(address, length, protection, flags, -1, 0) }
}

/// munmap(2).
internal func systemMunmap(_ address: UnsafeMutableRawPointer, length: Int) -> Result<Void, Errno> {
    valueOrErrno { munmap(address, length) }.map { _ in () }
}

/// mremap(2) without a new address (`flags` is 0 or MREMAP_MAYMOVE). Goes through the C shim: mremap is variadic.
internal func systemMremap(
    _ address: UnsafeMutableRawPointer, oldLength: Int, newLength: Int, flags: Int32
) -> Result<UnsafeMutableRawPointer, Errno> {
    pointerOrErrno { divvy_mremap(address, oldLength, newLength, flags) }
}

/// mprotect(2).
internal func systemMprotect(_ address: UnsafeMutableRawPointer, length: Int, protection: Int32) -> Result<Void, Errno>
{
    valueOrErrno { mprotect(address, length, protection) }.map { _ in () }
}

/// madvise(2).
internal func systemMadvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Result<Void, Errno> {
    valueOrErrno { madvise(address, length, advice) }.map { _ in () }
}

/// mincore(2): one byte per page of `[address, address + length)`, bit 0 set when the page is resident.
internal func systemMincore(
    _ address: UnsafeMutableRawPointer, length: Int, into vector: UnsafeMutablePointer<UInt8>
) -> Result<Void, Errno> {
    valueOrErrno { mincore(address, length, vector) }.map { _ in () }
}

/// open(2) read-only, read(2) up to `limit` bytes, close(2): for small files under /proc and /sys.
internal func systemReadSmallFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], Errno> {
    let opened = valueOrErrno { open(path, O_RDONLY | O_CLOEXEC) }
    guard case .success(let fd) = opened else {
        if case .failure(let error) = opened { return .failure(error) }
        return .failure(.invalidArgument)
    }
    defer { _ = close(fd) }  // close(2) must not be retried on EINTR on Linux.
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let result = chunk.withUnsafeMutableBytes { buffer in
            valueOrErrno { read(fd, buffer.baseAddress, buffer.count) }
        }
        switch result {
        case .success(0): return .success(bytes)
        case .success(let count): bytes.append(contentsOf: chunk[..<count])
        case .failure(let error): return .failure(error)
        }
    }
    return .success(bytes)
}
