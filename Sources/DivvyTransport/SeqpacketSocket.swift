import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The credentials of the process at the other end of a Unix socket, as the kernel recorded them (`SO_PEERCRED`):
/// they cannot be forged by the peer.
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    /// The peer's process id (at connect time).
    public var pid: Int32
    /// The peer's effective user id.
    public var uid: UInt32
    /// The peer's effective group id.
    public var gid: UInt32
    /// The peer's supplementary groups (`SO_PEERGROUPS`), as recorded at connect time.
    public var groups: [UInt32]

    /// Creates credentials.
    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    /// `pid 12 uid 1000 gid 1000` (supplementary groups not shown).
    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// An `AF_UNIX` `SOCK_SEQPACKET` socket: reliable, ordered datagrams (message boundaries kept) with descriptor
/// passing. Owns its descriptor and closes it exactly once: on `close()`, or when the socket is destroyed.
///
/// Not `Sendable`: one thread uses a socket at a time (the daemon's event loop, or one client).
public final class SeqpacketSocket {
    /// The descriptor (valid until `close()` or `releaseDescriptor()`; -1 after).
    public private(set) var fileDescriptor: Int32
    /// The owner of `fileDescriptor`: nil once closed or released. Setting it to nil closes the descriptor.
    private var owner: OwnedDescriptor?

    /// Adopts an open descriptor; the socket now owns it.
    ///
    /// - Precondition: `fileDescriptor` is not negative.
    public init(adopting fileDescriptor: Int32) {
        self.owner = OwnedDescriptor(taking: fileDescriptor)
        self.fileDescriptor = fileDescriptor
    }

    /// Closes the descriptor (`close(2)`; idempotent).
    public func close() {
        owner = nil
        fileDescriptor = -1
    }

    /// Gives up ownership of the descriptor without closing it (for handing a listener to a child process).
    /// Returns -1 when the socket was already closed or released.
    public func releaseDescriptor() -> Int32 {
        fileDescriptor = -1
        guard let released = owner.take() else { return -1 }
        return released.take()
    }

    /// The largest path a `sockaddr_un` holds (excluding the terminating NUL).
    public static let maximumPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    private static func withAddress<R>(
        _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R
    ) throws(TransportError) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumPathLength else {
            throw TransportError(
                .pathTooLong,
                "socket path '\(path)' is \(bytes.count) bytes; a Unix socket path must be 1…\(maximumPathLength) "
                    + "bytes: choose a shorter path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    private static func makeSocket(nonBlocking: Bool) throws(TransportError) -> SeqpacketSocket {
        var type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        switch systemSocket(domain: AF_UNIX, type: type) {
        case .success(let fd): return SeqpacketSocket(adopting: fd)
        case .failure(let error):
            throw TransportError(.systemCallFailed, "socket(AF_UNIX, SOCK_SEQPACKET) failed", cause: error)
        }
    }

    /// Connects to the listener at `path` (`socket(2)` + `connect(2)`), blocking.
    ///
    /// - Throws: `.noListener` when nothing listens there (no file, or a stale file: `ECONNREFUSED`),
    ///   `.permissionDenied`, `.pathTooLong`, `.systemCallFailed`.
    public static func connect(path: String) throws(TransportError) -> SeqpacketSocket {
        let socket = try makeSocket(nonBlocking: false)
        let result = try withAddress(path) { address, length in
            systemConnect(socket.fileDescriptor, address, length)
        }
        if case .failure(let error) = result {
            switch error {
            case .noSuchFileOrDirectory, .connectionRefused, .notDirectory:
                throw TransportError(.noListener, "no daemon listens at \(path)", cause: error)
            case .permissionDenied, .notPermitted:
                throw TransportError(.permissionDenied, "not allowed to connect to \(path)", cause: error)
            default:
                throw TransportError(.systemCallFailed, "connect(\(path)) failed", cause: error)
            }
        }
        return socket
    }

    /// Binds a non-blocking listener at `path` and listens (`socket(2)`, `bind(2)`, `chmod(2)`, `listen(2)`).
    ///
    /// A stale socket file (left by a process that died: connecting to it is refused) is replaced. A live one is
    /// not: another process listens there.
    ///
    /// - Parameters:
    ///   - path: the socket path; its directory must exist.
    ///   - mode: permission bits for the socket file (connecting needs write permission on it).
    ///   - backlog: `listen(2)`'s backlog.
    /// - Throws: `.addressInUse` when a live listener owns the path, `.pathTooLong`, `.permissionDenied`,
    ///   `.systemCallFailed`.
    public static func listen(path: String, mode: mode_t = 0o600, backlog: Int32 = 512) throws(TransportError)
        -> SeqpacketSocket
    {
        if let probe = try? connect(path: path) {
            probe.close()
            throw TransportError(
                .addressInUse,
                "another process (a running divvyd?) already listens at \(path); stop it, or pass another --socket")
        }
        if case .success(let status) = systemLstat(path) {
            guard status.st_mode & S_IFMT == S_IFSOCK else {
                throw TransportError(
                    .addressInUse, "\(path) exists and is not a socket; remove it or pass another --socket")
            }
            _ = systemUnlink(path)  // Stale: nobody accepts on it (the probe above was refused).
        }
        let socket = try makeSocket(nonBlocking: true)
        let bound = try withAddress(path) { address, length in systemBind(socket.fileDescriptor, address, length) }
        if case .failure(let error) = bound {
            switch error {
            case .addressInUse:
                throw TransportError(.addressInUse, "\(path) is in use", cause: error)
            case .permissionDenied, .notPermitted:
                throw TransportError(.permissionDenied, "not allowed to create \(path)", cause: error)
            default:
                throw TransportError(.systemCallFailed, "bind(\(path)) failed", cause: error)
            }
        }
        // Safe: the file was just created by bind(2); chmod sets exactly `mode` (bind applies the umask).
        _ = systemChmod(path, mode: mode)
        if case .failure(let error) = systemListen(socket.fileDescriptor, backlog: backlog) {
            throw TransportError(.systemCallFailed, "listen(\(path)) failed", cause: error)
        }
        return socket
    }

    /// Takes over an inherited listening socket (socket activation): checks that it is an `AF_UNIX`
    /// `SOCK_SEQPACKET` socket that listens (`getsockopt(SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN)`), makes it
    /// non-blocking and close-on-exec.
    ///
    /// - Throws: `.systemCallFailed` when the descriptor is not such a socket (the message says what it is).
    public static func adoptListener(_ descriptor: Int32) throws(TransportError) -> SeqpacketSocket {
        // The descriptor is inherited, not ours yet: EBADF here is the environment's mistake, reported, not trapped.
        var failure: Errno?
        func option(_ name: Int32) -> Int32? {
            switch systemGetSocketOption(descriptor, name, trapOnProgrammerError: false) {
            case .success(let value): return value
            case .failure(let error):
                failure = error
                return nil
            }
        }
        guard let domain = option(SO_DOMAIN), let type = option(SO_TYPE), let listening = option(SO_ACCEPTCONN)
        else {
            throw TransportError(
                .systemCallFailed, "inherited fd \(descriptor) is not a socket", errno: failure?.rawValue ?? 0)
        }
        guard domain == AF_UNIX, type == Int32(SOCK_SEQPACKET.rawValue), listening != 0 else {
            throw TransportError(
                .systemCallFailed,
                "inherited fd \(descriptor) must be a listening AF_UNIX SOCK_SEQPACKET socket (domain \(domain), "
                    + "type \(type), listening \(listening != 0)); set ListenSequentialPacket= in the .socket unit")
        }
        let socket = SeqpacketSocket(adopting: descriptor)
        if case .success(let flags) = systemFcntl(descriptor, F_GETFL) {
            _ = systemFcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        }
        _ = systemFcntl(descriptor, F_SETFD, FD_CLOEXEC)
        return socket
    }

    /// A connected pair (`socketpair(2)`), blocking; for tests and for in-process baselines.
    public static func pair() throws(TransportError) -> (SeqpacketSocket, SeqpacketSocket) {
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        switch systemSocketpair(domain: AF_UNIX, type: type) {
        case .success(let (first, second)): return (SeqpacketSocket(adopting: first), SeqpacketSocket(adopting: second))
        case .failure(let error):
            throw TransportError(.systemCallFailed, "socketpair(AF_UNIX, SOCK_SEQPACKET) failed", cause: error)
        }
    }

    /// Accepts one pending connection (non-blocking, close-on-exec), or nil when none is pending.
    ///
    /// - Throws: `.systemCallFailed` (e.g. `EMFILE`: out of descriptors).
    public func accept() throws(TransportError) -> SeqpacketSocket? {
        switch systemAcceptNonblocking(fileDescriptor) {
        case .success(let fd): return SeqpacketSocket(adopting: fd)
        case .failure(.wouldBlock), .failure(.resourceTemporarilyUnavailable): return nil
        case .failure(.connectionAbort): return nil
        case .failure(let error): throw TransportError(.systemCallFailed, "accept4 failed", cause: error)
        }
    }

    /// The peer's kernel-recorded credentials (`getsockopt(SO_PEERCRED)`).
    public func peerCredentials() throws(TransportError) -> PeerCredentials {
        let credentials: (pid: Int32, uid: UInt32, gid: UInt32)
        switch systemPeerCredentials(fileDescriptor) {
        case .success(let peer): credentials = peer
        case .failure(let error):
            throw TransportError(.systemCallFailed, "getsockopt(SO_PEERCRED) failed", cause: error)
        }
        // Supplementary groups: a member of the daemon's group through a secondary membership must match a gid rule.
        // A kernel without SO_PEERGROUPS (before 4.13) gives none.
        let groups = (try? systemPeerGroups(fileDescriptor).get()) ?? []
        return PeerCredentials(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid, groups: groups)
    }

    /// Sets a receive timeout (`SO_RCVTIMEO`); nil blocks forever.
    public func setReceiveTimeout(milliseconds: Int?) throws(TransportError) {
        if case .failure(let error) = systemSetReceiveTimeout(fileDescriptor, milliseconds: milliseconds ?? 0) {
            throw TransportError(.systemCallFailed, "setsockopt(SO_RCVTIMEO) failed", cause: error)
        }
    }

    /// The outcome of a send on a non-blocking socket.
    public enum SendResult: Hashable, Sendable {
        /// The whole datagram was queued.
        case sent
        /// The socket's send buffer is full: try again when it is writable.
        case wouldBlock
    }

    /// Sends one datagram, with a descriptor attached as `SCM_RIGHTS` when `descriptor` is given
    /// (`send(2)` / `sendmsg(2)`, `MSG_NOSIGNAL`).
    ///
    /// - Throws: `.closed` when the peer is gone (`EPIPE`, `ECONNRESET`), `.systemCallFailed`.
    public func send(_ bytes: UnsafeRawBufferPointer, descriptor: Int32? = nil) throws(TransportError) -> SendResult {
        let result: Result<Int, Errno>
        if let descriptor {
            result = withUnsafePointer(to: descriptor) { one in
                systemSendWithDescriptors(
                    fileDescriptor, bytes, descriptors: UnsafeBufferPointer(start: one, count: 1),
                    flags: Int32(MSG_NOSIGNAL))
            }
        } else {
            result = systemSend(fileDescriptor, bytes, flags: Int32(MSG_NOSIGNAL))
        }
        return try Self.sendOutcome(result)
    }

    /// A send's result as the caller sees it (shared by the send variants).
    private static func sendOutcome(_ result: Result<Int, Errno>) throws(TransportError) -> SendResult {
        switch result {
        case .success: return .sent
        case .failure(.wouldBlock), .failure(.resourceTemporarilyUnavailable): return .wouldBlock
        case .failure(let error) where error == .brokenPipe || error == .connectionReset:
            throw TransportError(.closed, "the peer closed the connection", cause: error)
        case .failure(let error):
            throw TransportError(.systemCallFailed, "send failed", cause: error)
        }
    }

    /// Sends one datagram carrying several descriptors (at most 8) in one `SCM_RIGHTS` message.
    ///
    /// - Throws: as `send(_:descriptor:)`.
    public func send(_ bytes: [UInt8], descriptors: [Int32]) throws(TransportError) -> SendResult {
        let result = bytes.withUnsafeBytes { raw in
            descriptors.withUnsafeBufferPointer { fds in
                systemSendWithDescriptors(fileDescriptor, raw, descriptors: fds, flags: Int32(MSG_NOSIGNAL))
            }
        }
        return try Self.sendOutcome(result)
    }

    /// Receives one datagram with up to `capacity` (≤ 8) passed descriptors (the caller owns them; any beyond
    /// `capacity` are closed). The result's `descriptor` is the first of them.
    ///
    /// - Throws: as `receive(into:)`.
    public func receive(
        into buffer: UnsafeMutableRawBufferPointer, descriptors: inout [Int32], capacity: Int = 8
    ) throws(TransportError) -> ReceiveResult {
        let (result, ancillary) = systemReceiveWithDescriptors(
            fileDescriptor, into: buffer, capacity: min(8, max(0, capacity)))
        descriptors = ancillary.descriptors
        return try receiveOutcome(
            result, descriptor: descriptors.first,
            truncated: ancillary.dataTruncated || ancillary.controlTruncated, wanted: buffer.count)
    }

    /// Sends one datagram from an array (see `send(_:descriptor:)`).
    public func send(_ bytes: [UInt8], descriptor: Int32? = nil) throws(TransportError) -> SendResult {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(TransportError) -> SendResult in try send(raw, descriptor: descriptor) }
        }
        return try result.get()
    }

    /// The outcome of a receive.
    public enum ReceiveResult: Hashable, Sendable {
        /// One datagram of `count` bytes (cut at the buffer's size when `truncated`), with the descriptor it
        /// carried, if any (the caller owns it).
        case datagram(count: Int, descriptor: Int32?, truncated: Bool)
        /// Nothing to read now (non-blocking socket).
        case wouldBlock
        /// The peer closed the connection.
        case endOfFile
    }

    /// Receives one datagram into `buffer` (`recvmsg(2)`), taking a passed descriptor if one came.
    ///
    /// - Throws: `.timedOut` after `setReceiveTimeout`, `.closed` on `ECONNRESET`, `.systemCallFailed`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) -> ReceiveResult {
        let (result, ancillary) = systemReceiveWithDescriptors(fileDescriptor, into: buffer, capacity: 1)
        return try receiveOutcome(
            result, descriptor: ancillary.descriptors.first,
            truncated: ancillary.dataTruncated || ancillary.controlTruncated, wanted: buffer.count)
    }

    /// The outcome of `receiveRequest(into:)`.
    public enum RequestReceipt: Hashable, Sendable {
        /// One datagram of `count` bytes (cut at the buffer's size when `dataTruncated`: `MSG_TRUNC`).
        /// `carriedDescriptors` is true when descriptors came with it (all were closed) or its control data was
        /// cut (`MSG_CTRUNC`: the kernel closed the descriptors that did not fit).
        case datagram(count: Int, dataTruncated: Bool, carriedDescriptors: Bool)
        /// Nothing to read now (non-blocking socket).
        case wouldBlock
        /// The peer closed the connection, or sent a 0-byte datagram (`SOCK_SEQPACKET` cannot tell them apart).
        case endOfFile
    }

    /// Receives one datagram from a peer that must not pass descriptors (`recvmsg(2)`): every descriptor that
    /// came with it is closed here, and the receipt says whether any came and which truncation the kernel
    /// reported, so the caller can apply the protocol's checks in their order.
    ///
    /// - Throws: `.closed` on `ECONNRESET`, `.systemCallFailed`.
    public func receiveRequest(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) -> RequestReceipt {
        let (result, ancillary) = systemReceiveWithDescriptors(fileDescriptor, into: buffer, capacity: 8)
        for fd in ancillary.descriptors { OwnedDescriptor(taking: fd).close() }
        let carried = !ancillary.descriptors.isEmpty || ancillary.controlTruncated
        switch result {
        case .success(0) where buffer.count > 0 && !carried: return .endOfFile
        case .success(let received):
            return .datagram(count: received, dataTruncated: ancillary.dataTruncated, carriedDescriptors: carried)
        case .failure(.wouldBlock), .failure(.resourceTemporarilyUnavailable): return .wouldBlock
        case .failure(.connectionReset):
            throw TransportError(.closed, "the peer reset the connection", cause: .connectionReset)
        case .failure(let error):
            throw TransportError(.systemCallFailed, "recvmsg failed", cause: error)
        }
    }

    /// A receive's result as the caller sees it (shared by the receive variants).
    private func receiveOutcome(
        _ result: Result<Int, Errno>, descriptor: Int32?, truncated: Bool, wanted: Int
    ) throws(TransportError) -> ReceiveResult {
        switch result {
        case .success(0) where wanted > 0 && descriptor == nil: return .endOfFile
        case .success(let count): return .datagram(count: count, descriptor: descriptor, truncated: truncated)
        case .failure(let error) where error == .wouldBlock || error == .resourceTemporarilyUnavailable:
            if isBlocking {
                throw TransportError(.timedOut, "no reply from the peer in time", cause: error)
            }
            return .wouldBlock
        case .failure(.connectionReset):
            throw TransportError(.closed, "the peer reset the connection", cause: .connectionReset)
        case .failure(let error):
            throw TransportError(.systemCallFailed, "recvmsg failed", cause: error)
        }
    }

    private var isBlocking: Bool {
        guard case .success(let flags) = systemFcntl(fileDescriptor, F_GETFL) else { return true }
        return flags & O_NONBLOCK == 0
    }
}
