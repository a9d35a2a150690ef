import DivvyProtocol
import DivvyShm

/// An error a request gets (the reply's code and message); the heap, the ledger and the session are unchanged.
struct ServiceError: Error, Hashable, Sendable {
    var code: ErrorCode
    var message: String

    init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    init(_ error: SharedHeapError) {
        self.init(ErrorCode(error.code), error.message)
    }

    init(_ refusal: FairShare.Refusal) {
        self.init(.quotaExceeded, refusal.message)
    }

    init(_ refusal: ClientQuota.Refusal) {
        self.init(.quotaExceeded, refusal.message)
    }

    /// The zero handle is never issued (PROTOCOL.md section 8): say so rather than describe offset 0.
    static let handleZero = ServiceError(
        .invalidHandle,
        "the zero handle is never a valid handle: use a handle that allocate, allocateBatch or shared returned")
}
