import DivvyProtocol
import DivvyShm

/// An error from a `DivvyClient` call: what went wrong and what to do.
public struct DivvyClientError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public enum Code: Hashable, Sendable {
        /// Nothing listens at the socket path: the daemon is not running there.
        case noDaemon
        /// The daemon went away (or closed this connection); `reconnect()` to go on.
        case daemonGone
        /// The daemon refused the request with this protocol error code (nothing changed).
        case refused(ErrorCode)
        /// A shared-memory operation (direct mode) failed with this heap error (nothing changed).
        case heap(SharedHeapError)
        /// No reply in time.
        case timedOut
        /// The daemon's reply made no sense for the request.
        case protocolViolation
        /// A system call failed (mapping the region, the socket).
        case system
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened and what to do.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The protocol error code this failure corresponds to (a refused request, or the heap error a mediated
    /// request would have got), if any: the same code whichever mode the client runs in.
    public var protocolCode: ErrorCode? {
        switch code {
        case .refused(let code): return code
        case .heap(let error):
            switch error.code {
            case .outOfRange: return .invalidHandle
            case .misaligned: return .misalignedHandle
            case .staleHandle: return .staleHandle
            case .doubleFree: return .doubleFree
            case .notHeld: return .notHolder
            case .alreadyHeld: return .alreadyHolder
            case .heapFull, .heldListFull: return .heapFull
            case .unsupportedSize: return .unsupportedSize
            case .pageAllowanceExhausted: return .quotaExceeded
            case .foreignHeap: return .foreignHandle
            default: return .internalError
            }
        default: return nil
        }
    }

    /// `code: message`.
    public var description: String {
        switch code {
        case .refused(let code): "\(code): \(message)"
        case .heap(let error): "\(error.code): \(message)"
        default: "\(code): \(message)"
        }
    }
}
