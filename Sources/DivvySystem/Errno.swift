// The one `valueOrErrno`: every wrapper in this target goes through it (or `pointerOrErrno`), so EINTR is retried
// and programmer errors trap in one place. Modelled on apple/swift-system `Sources/System/Util.swift`
// (`valueOrErrno`) and swift-nio `Sources/NIOPosix/System.swift` (`isUnacceptableErrno`).
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Errno {
    /// Whether this errno means the program passed a bad descriptor (`EBADF`) or a bad pointer (`EFAULT`).
    ///
    /// Neither can be caused by a user or a peer process once a descriptor is owned by one `OwnedDescriptor` and
    /// pointers come from Swift buffers: it means a descriptor was used after it was closed, or closed twice (and
    /// may by now name another file), or memory was passed that is not ours. The wrappers trap on it rather than
    /// report it (swift-nio's `isUnacceptableErrno`).
    package var isProgrammerError: Bool { self == .badFileDescriptor || self == .badAddress }
}

/// Traps with a message naming the call when `error` is a programmer error (see `Errno.isProgrammerError`).
@inline(__always)
package func preconditionNotProgrammerError(_ error: Errno, _ call: StaticString) {
    if _slowPath(error.isProgrammerError) {
        preconditionFailure(
            "\(call) failed with \(error) (errno \(error.rawValue)): a descriptor used after close or closed twice, "
                + "or a bad pointer; this is a bug in Divvy")
    }
}

/// Calls `body` until it stops failing with `EINTR` (unless `retryOnInterrupt` is false); returns its value, or
/// `errno` when it returned -1.
///
/// Traps on `EBADF` / `EFAULT` (see `Errno.isProgrammerError`) unless `trapOnProgrammerError` is false: only
/// probes of descriptors we do not own (an inherited `LISTEN_FDS` descriptor, a descriptor being tested for
/// openness) pass false.
///
/// - Parameters:
///   - call: the C call's name, for the trap message (`"ftruncate"`).
///   - retryOnInterrupt: retry on `EINTR`; false for calls that must not be restarted (`close`).
///   - trapOnProgrammerError: trap on `EBADF` / `EFAULT` (default) instead of returning them.
///   - body: the C call; returns -1 with `errno` set on failure.
@inline(__always)
package func valueOrErrno<I: FixedWidthInteger>(
    _ call: StaticString, retryOnInterrupt: Bool = true, trapOnProgrammerError: Bool = true, _ body: () -> I
) -> Result<I, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let error = Errno(rawValue: errno)
        if retryOnInterrupt && error == .interrupted { continue }
        if trapOnProgrammerError { preconditionNotProgrammerError(error, call) }
        return .failure(error)
    }
}

/// `valueOrErrno` for calls whose success carries nothing.
@inline(__always)
package func nothingOrErrno<I: FixedWidthInteger>(
    _ call: StaticString, retryOnInterrupt: Bool = true, trapOnProgrammerError: Bool = true, _ body: () -> I
) -> Result<Void, Errno> {
    valueOrErrno(call, retryOnInterrupt: retryOnInterrupt, trapOnProgrammerError: trapOnProgrammerError, body)
        .map { _ in () }
}

/// `valueOrErrno` for the calls that return `MAP_FAILED` (`(void *)-1`) on failure (`mmap`, `mremap`).
@inline(__always)
package func pointerOrErrno(
    _ call: StaticString, trapOnProgrammerError: Bool = true, _ body: () -> UnsafeMutableRawPointer?
) -> Result<UnsafeMutableRawPointer, Errno> {
    while true {
        let value = body()
        if let value, value != mapFailed { return .success(value) }
        let error = Errno(rawValue: errno)
        if error == .interrupted { continue }
        if trapOnProgrammerError { preconditionNotProgrammerError(error, call) }
        return .failure(error)
    }
}

/// `MAP_FAILED`, which glibc defines as a cast macro.
@inline(__always)
package var mapFailed: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: -1)! }

/// strerror(3), copied into a Swift string.
package func systemErrorDescription(_ errno: Int32) -> String {
    guard let message = strerror(errno) else { return "unknown error" }
    return String(cString: message)
}
