import Foundation

/// A value behind an `NSLock`, for test-side shared state in concurrent tests.
///
/// Not `Synchronization.Mutex`: on Linux it sits on raw futexes in the uninstrumented standard library, which
/// ThreadSanitizer does not see, so every access it protects is reported as a race. `NSLock` is a pthread mutex,
/// which ThreadSanitizer understands.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked Sendable: `value` is only touched with `lock` held.
    private let lock = NSLock()
    private var value: Value

    /// A lock around `value`.
    public init(_ value: Value) { self.value = value }

    /// Runs `body` with exclusive access to the value.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
