import Divvy
import DivvyProtocol
import DivvyShm

extension ErrorCode {
    /// The protocol error for a heap error.
    init(_ code: SharedHeapError.Code) {
        switch code {
        case .outOfRange: self = .invalidHandle
        case .misaligned: self = .misalignedHandle
        case .staleHandle: self = .staleHandle
        case .doubleFree: self = .doubleFree
        case .notHeld: self = .notHolder
        case .heapFull: self = .heapFull
        case .unsupportedSize: self = .unsupportedSize
        case .heldListFull: self = .heapFull
        case .alreadyHeld: self = .alreadyHolder
        case .pageAllowanceExhausted: self = .quotaExceeded
        case .foreignHeap: self = .foreignHandle
        default: self = .internalError
        }
    }
}

extension SharedHeapHandle {
    /// The heap's handle for one received in a message: the same 128 bits (checked when used).
    @inline(__always)
    init(_ wire: WireHandle) {
        self.init(low: wire.low, high: wire.high)
    }

    /// The handle as messages carry it.
    @inline(__always)
    var wire: WireHandle { WireHandle(low: low, high: high) }
}

extension PageKind {
    /// The protocol's page kind for the OS allocator's.
    init(_ kind: OSAllocator.PageKind) {
        switch kind {
        case .base: self = .base
        case .transparent: self = .transparentHuge
        case .explicit2MiB: self = .huge2M
        case .explicit1GiB: self = .huge1G
        }
    }
}
