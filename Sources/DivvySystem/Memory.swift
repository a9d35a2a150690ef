// Memory-mapping system calls: mmap, munmap, mremap, mprotect, madvise, mincore. One thin wrapper per call;
// failures are swift-system's `Errno`, programmer errors (EBADF, EFAULT) trap (see Errno.swift).
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Memory-protection, mapping and advice values, read once from the C headers (several are `_GNU_SOURCE` macros
/// that only the C shim sees).
package enum MapFlags {
    /// `PROT_READ | PROT_WRITE`.
    package static let readWrite = PROT_READ | PROT_WRITE
    /// `PROT_READ`.
    package static let readOnly = PROT_READ
    /// `PROT_NONE`.
    package static let none = PROT_NONE
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    package static let privateAnonymous = MAP_PRIVATE | MAP_ANONYMOUS
    /// `MAP_SHARED`.
    package static let shared = MAP_SHARED
    /// `MAP_FIXED`.
    package static let fixed = MAP_FIXED
    /// `MAP_NORESERVE`.
    package static let noReserve = divvy_map_noreserve()
    /// `MAP_HUGETLB`.
    package static let hugeTLB = divvy_map_hugetlb()
    /// `MAP_HUGE_2MB`.
    package static let huge2MiB = divvy_map_huge_2mb()
    /// `MAP_HUGE_1GB`.
    package static let huge1GiB = divvy_map_huge_1gb()
    /// `MAP_FIXED_NOREPLACE`.
    package static let fixedNoReplace = divvy_map_fixed_noreplace()
    /// `MREMAP_MAYMOVE`.
    package static let mayMove = divvy_mremap_maymove()
    /// `MADV_HUGEPAGE`.
    package static let adviseHugePage = divvy_madv_hugepage()
    /// `MADV_POPULATE_WRITE` (Linux 5.14): prefault writable page tables, failing cleanly if memory is short.
    package static let advisePopulateWrite = divvy_madv_populate_write()
    /// `MADV_POPULATE_READ` (Linux 5.14): prefault readable page tables (for read-only mappings).
    package static let advisePopulateRead = divvy_madv_populate_read()
    /// `MADV_REMOVE`: punch a hole through a shared mapping (the pages read as zeros and are no longer backed).
    package static let adviseRemove = Int32(MADV_REMOVE)
}

/// mmap(2) of anonymous memory (`fd` -1, offset 0).
package func systemMmapAnonymous(
    at address: UnsafeMutableRawPointer?, length: Int, protection: Int32, flags: Int32
) -> Result<UnsafeMutableRawPointer, Errno> {
    pointerOrErrno("mmap") { mmap(address, length, protection, flags, -1, 0) }
}

/// mmap(2) of a file (`flags` usually `MAP_SHARED`, plus `MAP_FIXED` to replace pages at `address`).
///
/// - Parameter trapOnProgrammerError: false when `fd` is a caller's descriptor taken at a public boundary
///   (`OSAllocator.mapShared`), where `EBADF` is the caller's input and is reported, not trapped on.
package func systemMmapFile(
    at address: UnsafeMutableRawPointer?, length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int,
    trapOnProgrammerError: Bool = true
) -> Result<UnsafeMutableRawPointer, Errno> {
    pointerOrErrno("mmap", trapOnProgrammerError: trapOnProgrammerError) {
        mmap(address, length, protection, flags, fd, off_t(offset))
    }
}

/// munmap(2).
package func systemMunmap(_ address: UnsafeMutableRawPointer, length: Int) -> Result<Void, Errno> {
    nothingOrErrno("munmap") { munmap(address, length) }
}

/// mremap(2) without a new address (`flags` is 0 or `MREMAP_MAYMOVE`). Through the C shim: mremap is variadic.
package func systemMremap(
    _ address: UnsafeMutableRawPointer, oldLength: Int, newLength: Int, flags: Int32
) -> Result<UnsafeMutableRawPointer, Errno> {
    pointerOrErrno("mremap") { divvy_mremap(address, oldLength, newLength, flags) }
}

/// mprotect(2).
package func systemMprotect(_ address: UnsafeMutableRawPointer, length: Int, protection: Int32) -> Result<Void, Errno> {
    nothingOrErrno("mprotect") { mprotect(address, length, protection) }
}

/// madvise(2). Never traps: for madvise `EFAULT` is an answer (`MADV_POPULATE_*` could not allocate a page) and
/// `EBADF` means the range is not backed by a file (`MADV_REMOVE`).
package func systemMadvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Result<Void, Errno> {
    nothingOrErrno("madvise", trapOnProgrammerError: false) { madvise(address, length, advice) }
}

/// mincore(2): one byte per page of `[address, address + length)`, bit 0 set when the page is resident.
package func systemMincore(
    _ address: UnsafeMutableRawPointer, length: Int, into vector: UnsafeMutablePointer<UInt8>
) -> Result<Void, Errno> {
    nothingOrErrno("mincore") { mincore(address, length, vector) }
}

/// sysconf(_SC_PAGESIZE): the base page size.
package func systemPageSize() -> Int {
    sysconf(Int32(_SC_PAGESIZE))
}
