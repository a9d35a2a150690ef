import SystemPackage

/// An error from creating, opening, mapping or removing a shared-memory region.
///
/// A struct rather than an enum, so that codes can be added without breaking users (the shape of swift-nio's
/// `FileSystemError`): switch on `code` with a `default`. `message` says what happened, to which region, and what
/// to do about it; `cause` is the `errno` of the system call that failed, when one did.
///
/// ```
/// insufficientSpace: region '/divvy-cache' needs 1 GiB but /dev/shm has 64 MiB free;
///     enlarge /dev/shm, pass a smaller size, or ask for lazy commitment
/// ```
///
/// Region operations are not on a hot path, so unlike `AllocationError` this error carries an assembled `String`.
public struct SharedRegionError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        @usableFromInline internal let rawValue: UInt8
        @inlinable internal init(_ rawValue: UInt8) { self.rawValue = rawValue }

        /// Creating a named region whose name is taken (and the configuration did not ask to replace it).
        public static let alreadyExists = Code(1)
        /// Opening or removing a named region that does not exist.
        public static let notFound = Code(2)
        /// The caller may not open or remove the region (mode bits, ownership).
        public static let permissionDenied = Code(3)
        /// The region name is empty, contains `/`, or is too long.
        public static let invalidName = Code(4)
        /// The configuration cannot work (zero or overflowing sizes, bad mode bits, contradictory options).
        public static let invalidConfiguration = Code(5)
        /// The backing store (/dev/shm, memory, or the huge page pool) cannot hold what must be committed.
        public static let insufficientSpace = Code(6)
        /// Explicit or transparent huge pages were required (no fallback) and are not available.
        public static let hugePagesUnavailable = Code(7)
        /// The region's header is not (yet) complete: its creator is still initializing it, or died doing so.
        public static let notInitialized = Code(8)
        /// The object does not start with Divvy's region magic: it is not a Divvy region.
        public static let badMagic = Code(9)
        /// The region has a layout version this library does not read.
        public static let unsupportedVersion = Code(10)
        /// The header's checksum does not match its contents: it was overwritten.
        public static let corruptHeader = Code(11)
        /// The header's geometry is inconsistent, or does not match the size of the object.
        public static let geometryMismatch = Code(12)
        /// An offset or pointer lies outside the mapping it was translated against.
        public static let outOfBounds = Code(13)
        /// Another system call failed; `cause` holds errno.
        public static let systemCallFailed = Code(14)
        /// A named region's owner lock is held by a live process (another daemon serves that name).
        public static let inUse = Code(15)

        /// The code's name, e.g. `"insufficientSpace"`.
        public var description: String {
            switch rawValue {
            case 1: "alreadyExists"
            case 2: "notFound"
            case 3: "permissionDenied"
            case 4: "invalidName"
            case 5: "invalidConfiguration"
            case 6: "insufficientSpace"
            case 7: "hugePagesUnavailable"
            case 8: "notInitialized"
            case 9: "badMagic"
            case 10: "unsupportedVersion"
            case 11: "corruptHeader"
            case 12: "geometryMismatch"
            case 13: "outOfBounds"
            case 14: "systemCallFailed"
            case 15: "inUse"
            default: "code\(rawValue)"
            }
        }
    }

    /// The kind of failure.
    public var code: Code
    /// What happened, to what, and what to do: a complete sentence without the code.
    public var message: String
    /// The `errno` of the failing system call, or nil when no system call failed.
    public var cause: Errno?

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - code: the kind of failure.
    ///   - message: what happened, to what, and what to do.
    ///   - cause: the errno of the failing system call, if any.
    public init(_ code: Code, _ message: String, cause: Errno? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// `"code: message (errno N: text)"`.
    public var description: String {
        guard let cause else { return "\(code): \(message)" }
        return "\(code): \(message) (errno \(cause.rawValue): \(cause))"
    }
}

/// A byte count for messages: `"64 MiB"`, `"1.5 GiB"`, `"4097 bytes"`.
internal func formatByteCount(_ bytes: Int) -> String {
    let units: [(Int, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
    for (scale, unit) in units where bytes >= scale {
        if bytes % scale == 0 { return "\(bytes / scale) \(unit)" }
        // One decimal, rounded down so that "available" never reads larger than it is.
        let tenths = bytes / (scale / 10)
        return "\(tenths / 10).\(tenths % 10) \(unit)"
    }
    return bytes == 1 ? "1 byte" : "\(bytes) bytes"
}
