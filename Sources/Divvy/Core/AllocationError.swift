/// An error from an allocator: what went wrong, for which request, and the system's reason if any.
///
/// Throwing one never allocates: the human-readable message is assembled only when `description` is read.
/// That matters for allocators that serve `malloc` itself.
///
/// Errors are compared by code and by the numbers they carry, not by their message text.
public struct AllocationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        @usableFromInline internal let rawValue: UInt8
        @inlinable internal init(_ rawValue: UInt8) { self.rawValue = rawValue }

        /// The allocator (or the system behind it) has no memory for this request.
        public static let outOfMemory = Code(1)
        /// A configured byte limit or quota would be exceeded.
        public static let limitExceeded = Code(2)
        /// The layout itself is invalid (negative size, alignment not a power of two, overflow).
        public static let invalidLayout = Code(3)
        /// The layout is valid but this allocator cannot serve it (too large, alignment too strict).
        public static let unsupportedLayout = Code(4)
        /// An allocator was configured in a way that cannot work (reported when it is built).
        public static let invalidConfiguration = Code(5)
        /// A block was freed that is already free.
        public static let doubleFree = Code(6)
        /// A block was freed to an allocator that did not allocate it.
        public static let foreignBlock = Code(7)
        /// A system call failed; `systemError` holds errno.
        public static let systemCallFailed = Code(8)

        /// The code's name, e.g. `"outOfMemory"`.
        public var description: String {
            switch rawValue {
            case 1: "outOfMemory"
            case 2: "limitExceeded"
            case 3: "invalidLayout"
            case 4: "unsupportedLayout"
            case 5: "invalidConfiguration"
            case 6: "doubleFree"
            case 7: "foreignBlock"
            case 8: "systemCallFailed"
            default: "code\(rawValue)"
            }
        }
    }

    /// The kind of failure.
    public let code: Code
    /// The size involved: the requested size, or the configured value that was rejected.
    public let size: Int
    /// The alignment involved, or 0 when none applies.
    public let alignment: Int
    /// The limit that was hit (bytes), or 0 when none applies.
    public let limit: Int
    /// The `errno` of the failing system call, or 0.
    public let systemError: Int32
    /// What happened, in words fixed at compile time (so that throwing never allocates).
    public let reason: StaticString

    /// Creates an error. Library code and custom allocators use this; the message is `reason` plus the numbers.
    @inlinable
    public init(
        _ code: Code, _ reason: StaticString, size: Int = 0, alignment: Int = 0, limit: Int = 0,
        systemError: Int32 = 0
    ) {
        self.code = code
        self.reason = reason
        self.size = size
        self.alignment = alignment
        self.limit = limit
        self.systemError = systemError
    }

    /// A one-line message: code, reason, and the numbers that apply.
    ///
    /// `"limitExceeded: slab byte limit reached (size 64, limit 1048576)"`.
    public var description: String {
        var parts: [String] = []
        if size != 0 || code == .invalidLayout { parts.append("size \(size)") }
        if alignment != 0 { parts.append("alignment \(alignment)") }
        if limit != 0 { parts.append("limit \(limit)") }
        if systemError != 0 { parts.append("errno \(systemError): \(systemErrorDescription(systemError))") }
        let detail = parts.isEmpty ? "" : " (\(parts.joined(separator: ", ")))"
        return "\(code): \(reason)\(detail)"
    }

    /// Two errors are equal when their code and numbers are; the reason text is ignored, so tests can compare
    /// against an expected error without repeating its message.
    public static func == (lhs: AllocationError, rhs: AllocationError) -> Bool {
        lhs.code == rhs.code && lhs.size == rhs.size && lhs.alignment == rhs.alignment && lhs.limit == rhs.limit
            && lhs.systemError == rhs.systemError
    }

    /// Hashes what `==` compares: the code and the numbers, not the reason.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(size)
        hasher.combine(alignment)
        hasher.combine(limit)
        hasher.combine(systemError)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// strerror(3), copied into a Swift string.
internal func systemErrorDescription(_ errno: Int32) -> String {
    guard let message = strerror(errno) else { return "unknown error" }
    return String(cString: message)
}
