import CDivvy

#if canImport(Glibc)
import Glibc
#endif

// One thin wrapper per system call: retries EINTR, returns the result or the errno (as `Result`).

@usableFromInline
internal func retryingEINTR<T: BinaryInteger>(_ body: () -> T) -> Result<T, Errno32> {
    while true {
        let value = body()
        if value >= 0 { return .success(value) }
        let error = divvy_errno()
        if error != EINTR { return .failure(Errno32(error)) }
    }
}

/// An `errno` value as an `Error` (internal `Result` failure type).
@usableFromInline
internal struct Errno32: Error, Hashable {
    @usableFromInline let value: Int32
    @usableFromInline init(_ value: Int32) { self.value = value }
}

internal func systemClose(_ fd: Int32) {
    // close(2) must not be retried on EINTR on Linux: the descriptor is released either way.
    _ = Glibc.close(fd)
}
