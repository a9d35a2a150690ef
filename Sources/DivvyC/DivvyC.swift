// libdivvy's C ABI (`Sources/CDivvyC/include/divvy.h`): `@_cdecl` functions over `DivvyClient`.
//
// The rules every function here follows (the header promises them):
// - No Swift error crosses the boundary: every `DivvyClientError` becomes a `divvy_error` code, and its message
//   goes to the calling thread's last-error buffer (C half, `Sources/CDivvyC/errors.c`).
// - No trap on bad input: NULL where a pointer is required, an unknown mode, a size or count that does not fit
//   give `DIVVY_EINVAL` (or the protocol's code for the same mistake) before anything is sent. Integer conversions
//   from C values are checked, never trapping.
// - Output parameters are written only on success (except `divvy_free_batch`'s per-handle arrays).
//
// The opaque `divvy_client *` is an `Unmanaged<DivvyClient>` retained once by `divvy_connect` and released by
// `divvy_close`. Calls borrow it without retain/release (`_withUnsafeGuaranteedRef`): the caller owns the
// reference for as long as it uses the pointer (the header's ownership rule).
import CDivvyC
import Divvy
import DivvyClient
import DivvyProtocol

#if canImport(Glibc)
import Glibc
#endif

// MARK: Errors

/// The `divvy_error` code of a client error: the protocol code (same number) when there is one, else a
/// client-side code.
func divvyErrorCode(_ error: DivvyClientError) -> Int32 {
    if let code = error.protocolCode { return Int32(code.rawValue) }
    switch error.code {
    case .noDaemon: return Int32(DIVVY_ENO_DAEMON.rawValue)
    case .daemonGone: return Int32(DIVVY_EDAEMON_GONE.rawValue)
    case .timedOut: return Int32(DIVVY_ETIMED_OUT.rawValue)
    case .system: return Int32(DIVVY_ESYSTEM.rawValue)
    case .protocolViolation: return Int32(DIVVY_EPROTOCOL.rawValue)
    // `protocolCode` covers both (a heap error maps to a protocol code; unknown heap errors to internalError).
    case .refused, .heap: return Int32(DIVVY_EINTERNAL_ERROR.rawValue)
    }
}

/// Stores `message` as the calling thread's last error and returns `code`.
func fail(_ code: divvy_error, _ message: String) -> Int32 {
    setLastError(message)
    return Int32(code.rawValue)
}

/// Stores the error's message as the calling thread's last error and returns its code. Protocol errors keep their
/// spec name in front (`staleHandle: …`); client-side messages say what happened on their own.
func fail(_ error: DivvyClientError) -> Int32 {
    if let code = error.protocolCode {
        setLastError("\(code): \(error.message)")
    } else {
        setLastError(error.message)
    }
    return divvyErrorCode(error)
}

/// Copies `message` into the calling thread's last-error buffer (cut to its capacity at a UTF-8 boundary).
func setLastError(_ message: String) {
    var message = message
    message.withUTF8 { bytes in
        bytes.withMemoryRebound(to: CChar.self) { divvy_c_set_last_error($0.baseAddress, $0.count) }
    }
}

/// `DIVVY_OK` as the functions return it.
let ok = Int32(DIVVY_OK.rawValue)

/// Runs `body` with the client behind `pointer`, or fails with `DIVVY_EINVAL` when it is NULL.
@inline(__always)
func withClient(
    _ pointer: OpaquePointer?, _ function: StaticString, _ body: (DivvyClient) throws(DivvyClientError) -> Int32
) -> Int32 {
    guard let pointer else { return fail(DIVVY_EINVAL, "\(function): the client is NULL") }
    // Safe: a non-NULL `divvy_client *` is a reference retained by `divvy_connect` and not yet released by
    // `divvy_close` (the caller's obligation, as with any C handle); borrowing it needs no retain.
    return Unmanaged<DivvyClient>.fromOpaque(UnsafeRawPointer(pointer))._withUnsafeGuaranteedRef { client in
        do throws(DivvyClientError) {
            return try body(client)
        } catch {
            return fail(error)
        }
    }
}

/// A C `size_t` as a Swift `Int`, or nil when it does not fit (above `Int.max`).
@inline(__always)
func checkedInt(_ value: UInt) -> Int? {
    value <= UInt(Int.max) ? Int(value) : nil
}

// MARK: Handles

extension SharedHandle {
    /// The handle a C caller passed (`divvy_handle_t`, two words by value): the same 128 bits.
    @inline(__always)
    init(_ handle: divvy_handle_t) {
        self.init(low: handle.low, high: handle.high)
    }

    /// The handle as C receives it (`divvy_handle_t`).
    @inline(__always)
    var c: divvy_handle_t {
        divvy_handle_t(low: low, high: high)
    }
}

// MARK: Connecting

/// `divvy_connect`: see divvy.h.
@_cdecl("divvy_connect")
public func divvyConnect(
    _ socketPath: UnsafePointer<CChar>?, _ name: UnsafePointer<CChar>?, _ mode: Int32,
    _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> Int32 {
    guard let out else { return fail(DIVVY_EINVAL, "divvy_connect: out is NULL") }
    out.pointee = nil
    guard let clientMode = UInt8(exactly: mode).flatMap(ClientMode.init(rawValue:)) else {
        return fail(
            DIVVY_EINVAL,
            "divvy_connect: unknown mode \(mode) (use DIVVY_MODE_ANY, DIVVY_MODE_DIRECT or DIVVY_MODE_MEDIATED)")
    }
    if let socketPath {
        // `sun_path` holds 108 bytes with the terminator.
        let length = strlen(socketPath)
        guard length >= 1, length <= 107 else {
            return fail(
                DIVVY_EINVAL, "divvy_connect: the socket path is \(length) bytes; a Unix socket path is 1…107 bytes")
        }
    }
    let options = DivvyClient.Options(
        socketPath: socketPath.map { String(cString: $0) }, name: name.map { String(cString: $0) } ?? "c-client",
        mode: clientMode)
    do throws(DivvyClientError) {
        let client = try DivvyClient(options)
        out.pointee = OpaquePointer(Unmanaged.passRetained(client).toOpaque())
        return ok
    } catch {
        return fail(error)
    }
}

/// `divvy_close`: see divvy.h.
@_cdecl("divvy_close")
public func divvyClose(_ pointer: OpaquePointer?) -> Int32 {
    guard let pointer else { return ok }
    // Safe: `pointer` came from `divvy_connect`'s `passRetained`; this is its one release (the caller's
    // obligation). `close()` ends the connection even if Swift code elsewhere still referenced the object.
    let client = Unmanaged<DivvyClient>.fromOpaque(UnsafeRawPointer(pointer)).takeRetainedValue()
    client.close()
    return ok
}

/// `divvy_reconnect`: see divvy.h.
@_cdecl("divvy_reconnect")
public func divvyReconnect(_ pointer: OpaquePointer?) -> Int32 {
    withClient(pointer, "divvy_reconnect") { client throws(DivvyClientError) in
        try client.reconnect()
        return ok
    }
}

/// `divvy_client_info`: see divvy.h.
@_cdecl("divvy_client_info")
public func divvyClientInfo(
    _ pointer: OpaquePointer?, _ mode: UnsafeMutablePointer<Int32>?, _ clientID: UnsafeMutablePointer<UInt32>?
) -> Int32 {
    withClient(pointer, "divvy_client_info") { client in
        mode?.pointee = Int32(client.mode.rawValue)
        clientID?.pointee = client.clientID
        return ok
    }
}

// MARK: Blocks

/// `divvy_alloc`: see divvy.h.
@_cdecl("divvy_alloc")
public func divvyAlloc(
    _ pointer: OpaquePointer?, _ size: UInt, _ handle: UnsafeMutablePointer<divvy_handle_t>?,
    _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    withClient(pointer, "divvy_alloc") { client throws(DivvyClientError) in
        guard let handle else { return fail(DIVVY_EINVAL, "divvy_alloc: handle is NULL") }
        guard let size = checkedInt(size) else {
            return fail(DIVVY_EUNSUPPORTED_SIZE, "divvy_alloc: size \(size) is larger than any size class")
        }
        // One look-up: the allocation itself yields the address (no second check of a handle just made).
        let allocated = try client.allocateBlock(size)
        address?.pointee = allocated.address
        handle.pointee = allocated.handle.c
        return ok
    }
}

/// `divvy_free`: see divvy.h.
@_cdecl("divvy_free")
public func divvyFree(
    _ pointer: OpaquePointer?, _ handle: divvy_handle_t, _ released: UnsafeMutablePointer<Int32>?
) -> Int32 {
    withClient(pointer, "divvy_free") { client throws(DivvyClientError) in
        let wasReleased = try client.free(SharedHandle(handle))
        released?.pointee = wasReleased ? 1 : 0
        return ok
    }
}

/// A batch count checked the way the daemon checks it (1…`maxBatchCount`), so both modes answer alike; nil (with
/// the message stored) when it is out of range.
func checkedBatchCount(_ count: UInt, _ function: StaticString) -> Int? {
    guard count >= 1, count <= UInt(ProtocolLimits.maxBatchCount) else {
        setLastError("\(function): count \(count) is not in 1...\(ProtocolLimits.maxBatchCount) (DIVVY_MAX_BATCH)")
        return nil
    }
    return Int(count)
}

/// `divvy_alloc_batch`: see divvy.h.
@_cdecl("divvy_alloc_batch")
public func divvyAllocBatch(
    _ pointer: OpaquePointer?, _ size: UInt, _ count: UInt, _ handles: UnsafeMutablePointer<divvy_handle_t>?
) -> Int32 {
    withClient(pointer, "divvy_alloc_batch") { client throws(DivvyClientError) in
        guard let handles else { return fail(DIVVY_EINVAL, "divvy_alloc_batch: handles is NULL") }
        guard let count = checkedBatchCount(count, "divvy_alloc_batch") else {
            return Int32(DIVVY_EBATCH_TOO_LARGE.rawValue)
        }
        guard let size = checkedInt(size) else {
            return fail(DIVVY_EUNSUPPORTED_SIZE, "divvy_alloc_batch: size \(size) is larger than any size class")
        }
        let allocated = try client.allocateBatch(size: size, count: count)
        guard allocated.count == count else {
            // The daemon answered a different number of handles: give them back, report the mismatch.
            _ = try? client.freeBatch(allocated)
            return fail(
                DIVVY_EPROTOCOL, "divvy_alloc_batch: asked for \(count) blocks, the daemon granted \(allocated.count)")
        }
        for (index, handle) in allocated.enumerated() {
            // Safe: `handles` has `count` elements (the caller's contract) and index < count.
            handles[index] = handle.c
        }
        return ok
    }
}

/// `divvy_free_batch`: see divvy.h.
@_cdecl("divvy_free_batch")
public func divvyFreeBatch(
    _ pointer: OpaquePointer?, _ handles: UnsafePointer<divvy_handle_t>?, _ count: UInt,
    _ results: UnsafeMutablePointer<Int32>?, _ released: UnsafeMutablePointer<Int32>?
) -> Int32 {
    withClient(pointer, "divvy_free_batch") { client in
        guard let handles else { return fail(DIVVY_EINVAL, "divvy_free_batch: handles is NULL") }
        guard let count = checkedBatchCount(count, "divvy_free_batch") else {
            return Int32(DIVVY_EBATCH_TOO_LARGE.rawValue)
        }
        // Safe: `handles` has `count` elements (the caller's contract).
        let request = UnsafeBufferPointer(start: handles, count: count).map(SharedHandle.init(_:))
        let statuses: [FreedStatus]
        do throws(DivvyClientError) {
            statuses = try client.freeBatch(request)
        } catch {
            let code = fail(error)
            for index in 0..<count {
                results?[index] = code
                released?[index] = 0
            }
            return code
        }
        guard statuses.count == count else {
            let code = fail(
                DIVVY_EPROTOCOL, "divvy_free_batch: sent \(count) handles, the daemon answered \(statuses.count)")
            for index in 0..<count {
                results?[index] = code
                released?[index] = 0
            }
            return code
        }
        var first = ok
        for (index, status) in statuses.enumerated() {
            let code = status.error.map { Int32($0.rawValue) } ?? ok
            results?[index] = code
            released?[index] = status == .released ? 1 : 0
            if code != ok, first == ok {
                first = fail(
                    divvy_error(rawValue: UInt32(code)),
                    "divvy_free_batch: handle #\(index) (\(request[index])): \(status)")
            }
        }
        return first
    }
}

// MARK: Passing blocks

/// `divvy_share`: see divvy.h.
@_cdecl("divvy_share")
public func divvyShare(
    _ pointer: OpaquePointer?, _ handle: divvy_handle_t, _ token: UnsafeMutablePointer<UInt64>?,
    _ info: UnsafeMutablePointer<divvy_share_info>?
) -> Int32 {
    // Checked before the client: a NULL token is a caller bug, refused before a token is issued for nobody.
    guard let token else { return fail(DIVVY_EINVAL, "divvy_share: token is NULL (the adopter needs it)") }
    return withClient(pointer, "divvy_share") { client throws(DivvyClientError) in
        let shared = try client.share(SharedHandle(handle))
        token.pointee = shared.token
        info?.pointee = divvy_share_info(
            handle: divvy_handle_t(low: shared.handle.low, high: shared.handle.high), offset: shared.offset,
            block_size: shared.blockSize, holders: shared.holders)
        return ok
    }
}

/// `divvy_adopt`: see divvy.h.
@_cdecl("divvy_adopt")
public func divvyAdopt(
    _ pointer: OpaquePointer?, _ handle: divvy_handle_t, _ token: UInt64,
    _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ size: UnsafeMutablePointer<UInt>?
) -> Int32 {
    withClient(pointer, "divvy_adopt") { client throws(DivvyClientError) in
        let adopted = SharedHandle(handle)
        let blockSize = try client.adoptHandle(adopted, token: token)
        if let address {
            do throws(DivvyClientError) {
                address.pointee = try client.pointer(for: adopted)
            } catch {
                _ = try? client.free(adopted)
                throw error
            }
        }
        size?.pointee = UInt(clamping: blockSize)
        return ok
    }
}

// MARK: Translation

/// `divvy_pointer`: see divvy.h.
@_cdecl("divvy_pointer")
public func divvyPointer(
    _ pointer: OpaquePointer?, _ handle: divvy_handle_t,
    _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    withClient(pointer, "divvy_pointer") { client throws(DivvyClientError) in
        guard let address else { return fail(DIVVY_EINVAL, "divvy_pointer: pointer is NULL") }
        address.pointee = try client.pointer(for: SharedHandle(handle))
        return ok
    }
}

/// `divvy_handle_for_pointer`: see divvy.h.
@_cdecl("divvy_handle_for_pointer")
public func divvyHandleForPointer(
    _ pointer: OpaquePointer?, _ address: UnsafeRawPointer?, _ handle: UnsafeMutablePointer<divvy_handle_t>?
) -> Int32 {
    withClient(pointer, "divvy_handle_for_pointer") { client throws(DivvyClientError) in
        guard let address else { return fail(DIVVY_EINVAL, "divvy_handle_for_pointer: pointer is NULL") }
        guard let handle else { return fail(DIVVY_EINVAL, "divvy_handle_for_pointer: handle is NULL") }
        handle.pointee = try client.handle(for: address).c
        return ok
    }
}

// MARK: The daemon

/// `divvy_stats`: see divvy.h.
@_cdecl("divvy_stats")
public func divvyStats(_ pointer: OpaquePointer?, _ stats: UnsafeMutablePointer<divvy_stats>?) -> Int32 {
    withClient(pointer, "divvy_stats") { client throws(DivvyClientError) in
        guard let stats else { return fail(DIVVY_EINVAL, "divvy_stats: stats is NULL") }
        let reply = try client.stats()
        stats.pointee = divvy_stats(
            bytes_held: reply.bytesHeld, blocks_held: reply.blocksHeld, quota_bytes: reply.quotaBytes,
            heap_bytes_used: reply.heapBytesUsed, heap_bytes_free: reply.heapBytesFree,
            page_allowance: reply.pageAllowance, clients: reply.clients)
        return ok
    }
}

/// `divvy_ping`: see divvy.h.
@_cdecl("divvy_ping")
public func divvyPing(_ pointer: OpaquePointer?) -> Int32 {
    withClient(pointer, "divvy_ping") { client throws(DivvyClientError) in
        try client.ping()
        return ok
    }
}

// MARK: Version

/// `divvy_version()`'s string: `DivvyVersion.string` copied once into C storage that lives as long as the library
/// (globals are initialised once, thread-safely, on first use).
// Safe: written once by the global's initialiser, then only read (C callers must not write through it).
nonisolated(unsafe) private let versionCString: UnsafeMutablePointer<CChar> = {
    // Safe: strdup copies the string's UTF-8 and its terminator; the copy is never freed (static storage).
    guard let copy = strdup(DivvyVersion.string) else { fatalError("divvy_version: out of memory at first call") }
    return copy
}()

/// `const char *divvy_version(void)`: the library's release, "MAJOR.MINOR.PATCH".
@_cdecl("divvy_version")
public func divvyVersion() -> UnsafePointer<CChar> {
    UnsafePointer(versionCString)
}

/// `unsigned divvy_version_number(void)`: MAJOR * 10000 + MINOR * 100 + PATCH.
@_cdecl("divvy_version_number")
public func divvyVersionNumber() -> UInt32 {
    UInt32(DivvyVersion.number)
}
