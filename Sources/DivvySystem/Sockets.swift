// Unix-socket, epoll, eventfd and pidfd system calls. One thin wrapper per call; failures are swift-system's
// `Errno`, EINTR is retried, programmer errors (EBADF, EFAULT) trap (see Errno.swift). The CMSG_* macros, the
// packed `struct epoll_event` and `struct ucred` live in the C shim.
import CDivvy
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// socket(2). The descriptor is the caller's to own.
package func systemSocket(domain: Int32, type: Int32, protocol: Int32 = 0) -> Result<Int32, Errno> {
    valueOrErrno("socket") { socket(domain, type, `protocol`) }
}

/// socketpair(2). The descriptors are the caller's to own.
package func systemSocketpair(domain: Int32, type: Int32) -> Result<(Int32, Int32), Errno> {
    var fds: [Int32] = [-1, -1]
    return valueOrErrno("socketpair") { socketpair(domain, type, 0, &fds) }.map { _ in (fds[0], fds[1]) }
}

/// connect(2).
package func systemConnect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Result<Void, Errno>
{
    nothingOrErrno("connect") { connect(fd, address, length) }
}

/// bind(2).
package func systemBind(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Result<Void, Errno> {
    nothingOrErrno("bind") { bind(fd, address, length) }
}

/// listen(2).
package func systemListen(_ fd: Int32, backlog: Int32) -> Result<Void, Errno> {
    nothingOrErrno("listen") { listen(fd, backlog) }
}

/// accept(2) of a blocking connection, then `FD_CLOEXEC` on it. The descriptor is the caller's to own.
package func systemAccept(_ fd: Int32) -> Result<Int32, Errno> {
    valueOrErrno("accept") { accept(fd, nil, nil) }.map { client in
        _ = systemFcntl(client, F_SETFD, FD_CLOEXEC)
        return client
    }
}

/// shutdown(2). On a listening socket it also stops listening: a thread blocked in accept(2) wakes with `EINVAL`.
package func systemShutdown(_ fd: Int32, _ how: Int32) -> Result<Void, Errno> {
    nothingOrErrno("shutdown") { shutdown(fd, how) }
}

/// getsockname(2) into `address` (`length` bytes at most); returns the address's length.
package func systemGetsockname(
    _ fd: Int32, _ address: UnsafeMutablePointer<sockaddr>, length: socklen_t
) -> Result<socklen_t, Errno> {
    var length = length
    return valueOrErrno("getsockname") { getsockname(fd, address, &length) }.map { _ in length }
}

/// setsockopt(2) of an `Int32` option at `SOL_SOCKET` (`SO_REUSEADDR`, …).
package func systemSetSocketOption(_ fd: Int32, _ name: Int32, _ value: Int32) -> Result<Void, Errno> {
    var value = value
    return nothingOrErrno("setsockopt") {
        setsockopt(fd, SOL_SOCKET, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }
}

/// recv(2) into `buffer`: how many bytes came (0 at end of stream).
package func systemReceive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0)
    -> Result<Int, Errno>
{
    valueOrErrno("recv") { recv(fd, buffer.baseAddress, buffer.count, flags) }
}

/// accept4(2) with `SOCK_CLOEXEC | SOCK_NONBLOCK` (through the C shim: `_GNU_SOURCE`). The descriptor is the
/// caller's to own.
package func systemAcceptNonblocking(_ fd: Int32) -> Result<Int32, Errno> {
    valueOrErrno("accept4") { divvy_accept_nonblocking(fd) }
}

/// send(2).
package func systemSend(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, flags: Int32) -> Result<Int, Errno> {
    valueOrErrno("send") { send(fd, bytes.baseAddress, bytes.count, flags) }
}

/// sendmsg(2) of one datagram carrying `descriptors` (at most 8) as one `SCM_RIGHTS` message (C shim: CMSG_*).
package func systemSendWithDescriptors(
    _ fd: Int32, _ bytes: UnsafeRawBufferPointer, descriptors: UnsafeBufferPointer<Int32>, flags: Int32
) -> Result<Int, Errno> {
    valueOrErrno("sendmsg") {
        divvy_send_with_fds(
            fd, bytes.baseAddress, bytes.count, descriptors.baseAddress, Int32(descriptors.count), flags)
    }
}

/// What `systemReceiveWithDescriptors` got besides the byte count.
package struct ReceivedAncillary {
    /// The descriptors received (close-on-exec; the caller owns them).
    package var descriptors: [Int32]
    /// The datagram did not fit the buffer (`MSG_TRUNC`).
    package var dataTruncated: Bool
    /// The control data did not fit (`MSG_CTRUNC`): the kernel closed the descriptors that did not fit.
    package var controlTruncated: Bool
}

/// recvmsg(2) of one datagram with room for `capacity` (at most 8) `SCM_RIGHTS` descriptors (C shim: CMSG_*);
/// descriptors beyond `capacity` are closed. Returns the byte count (0 at end of file) and what came with it.
package func systemReceiveWithDescriptors(
    _ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, capacity: Int, flags: Int32 = 0
) -> (Result<Int, Errno>, ReceivedAncillary) {
    var fds = [Int32](repeating: -1, count: max(1, min(8, capacity)))
    var count: Int32 = 0
    var truncated: Int32 = 0
    let result = fds.withUnsafeMutableBufferPointer { fds in
        valueOrErrno("recvmsg") {
            divvy_recv_with_fds(
                fd, buffer.baseAddress, buffer.count, fds.baseAddress, Int32(min(8, max(0, capacity))), &count,
                &truncated, flags)
        }
    }
    let ancillary = ReceivedAncillary(
        descriptors: Array(fds.prefix(Int(count))), dataTruncated: truncated & 1 != 0,
        controlTruncated: truncated & 2 != 0)
    return (result, ancillary)
}

/// getsockopt(2) of an `Int32` option at `SOL_SOCKET`.
///
/// - Parameter trapOnProgrammerError: false to probe a descriptor the program did not open (an inherited one).
package func systemGetSocketOption(
    _ fd: Int32, _ name: Int32, trapOnProgrammerError: Bool = true
) -> Result<Int32, Errno> {
    var value: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return valueOrErrno("getsockopt", trapOnProgrammerError: trapOnProgrammerError) {
        getsockopt(fd, SOL_SOCKET, name, &value, &length)
    }.map { _ in value }
}

/// setsockopt(SO_RCVTIMEO); 0 milliseconds blocks forever.
package func systemSetReceiveTimeout(_ fd: Int32, milliseconds: Int) -> Result<Void, Errno> {
    systemSetTimeout(fd, SO_RCVTIMEO, milliseconds: milliseconds)
}

/// setsockopt(SO_SNDTIMEO); 0 milliseconds blocks forever.
package func systemSetSendTimeout(_ fd: Int32, milliseconds: Int) -> Result<Void, Errno> {
    systemSetTimeout(fd, SO_SNDTIMEO, milliseconds: milliseconds)
}

/// setsockopt(2) of a `timeval` option at `SOL_SOCKET`.
private func systemSetTimeout(_ fd: Int32, _ option: Int32, milliseconds: Int) -> Result<Void, Errno> {
    var value = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    return nothingOrErrno("setsockopt") {
        setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// sendto(2) of one datagram to `address`.
package func systemSendTo(
    _ fd: Int32, _ bytes: UnsafeRawBufferPointer, flags: Int32, to address: UnsafePointer<sockaddr>,
    length: socklen_t
) -> Result<Int, Errno> {
    valueOrErrno("sendto") { sendto(fd, bytes.baseAddress, bytes.count, flags, address, length) }
}

/// getsockopt(SO_PEERCRED) (C shim: `struct ucred`): the peer's pid, uid and gid.
package func systemPeerCredentials(_ fd: Int32) -> Result<(pid: Int32, uid: UInt32, gid: UInt32), Errno> {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    return valueOrErrno("getsockopt(SO_PEERCRED)") { divvy_peer_credentials(fd, &pid, &uid, &gid) }
        .map { _ in (pid, uid, gid) }
}

/// getsockopt(SO_PEERGROUPS) (Linux 4.13): the peer's supplementary groups.
package func systemPeerGroups(_ fd: Int32) -> Result<[UInt32], Errno> {
    var groups = [UInt32](repeating: 0, count: 64)
    var result = valueOrErrno("getsockopt(SO_PEERGROUPS)") { divvy_peer_groups(fd, &groups, Int32(groups.count)) }
    if case .success(let count) = result, count > Int32(groups.count) {
        groups = [UInt32](repeating: 0, count: Int(count))
        result = valueOrErrno("getsockopt(SO_PEERGROUPS)") { divvy_peer_groups(fd, &groups, Int32(groups.count)) }
    }
    return result.map { Array(groups.prefix(max(0, Int($0)))) }
}

/// getsockopt(SO_PEERPIDFD) (Linux 6.5): a pidfd for the process that connected. The descriptor is the caller's.
/// Fails with `ENOPROTOOPT`/`EINVAL` on older kernels, `ESRCH` when the peer has exited.
package func systemPeerPidfd(_ fd: Int32) -> Result<Int32, Errno> {
    valueOrErrno("getsockopt(SO_PEERPIDFD)") { divvy_peer_pidfd(fd) }
}

// MARK: - epoll, eventfd

/// epoll(7) event bits and `epoll_ctl` operations, read once from the C headers.
package enum EpollFlags {
    /// `EPOLLIN`.
    package static let readable = divvy_epollin()
    /// `EPOLLOUT`.
    package static let writable = divvy_epollout()
    /// `EPOLLRDHUP`.
    package static let peerClosed = divvy_epollrdhup()
    /// `EPOLLHUP`.
    package static let hangUp = divvy_epollhup()
    /// `EPOLLERR`.
    package static let error = divvy_epollerr()
    /// `EPOLL_CTL_ADD`.
    package static let add = divvy_epoll_ctl_add()
    /// `EPOLL_CTL_MOD`.
    package static let modify = divvy_epoll_ctl_mod()
    /// `EPOLL_CTL_DEL`.
    package static let delete = divvy_epoll_ctl_del()
}

/// epoll_create1(EPOLL_CLOEXEC). The descriptor is the caller's to own.
package func systemEpollCreate() -> Result<Int32, Errno> {
    valueOrErrno("epoll_create1") { divvy_epoll_create() }
}

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK). The descriptor is the caller's to own.
package func systemEventfd() -> Result<Int32, Errno> {
    valueOrErrno("eventfd") { divvy_eventfd() }
}

/// epoll_ctl(2) (C shim: the packed `struct epoll_event`).
///
/// - Parameter trapOnProgrammerError: false for `EPOLL_CTL_DEL` of a descriptor that may already be closed (closing
///   removes it from the set, so EBADF there is harmless).
package func systemEpollCtl(
    _ epoll: Int32, _ operation: Int32, _ fd: Int32, events: UInt32, data: UInt64, trapOnProgrammerError: Bool = true
) -> Result<Void, Errno> {
    nothingOrErrno("epoll_ctl", trapOnProgrammerError: trapOnProgrammerError) {
        divvy_epoll_ctl(epoll, operation, fd, events, data)
    }
}

/// epoll_wait(2) into two parallel arrays of event data and masks (at most 64). Not retried on `EINTR`: a signal
/// must reach the loop that waits (the caller treats `EINTR` as "no events").
package func systemEpollWait(
    _ epoll: Int32, data: UnsafeMutableBufferPointer<UInt64>, events: UnsafeMutableBufferPointer<UInt32>,
    timeoutMilliseconds: Int32
) -> Result<Int, Errno> {
    valueOrErrno("epoll_wait", retryOnInterrupt: false) {
        divvy_epoll_wait(
            epoll, data.baseAddress, events.baseAddress, Int32(min(data.count, events.count)), timeoutMilliseconds)
    }.map { Int($0) }
}

// MARK: - Processes and threads

/// pidfd_open(2) (Linux 5.3): a descriptor that becomes readable when the process exits. The descriptor is the
/// caller's to own. `ESRCH`: no such process; `ENOSYS`: kernel too old.
package func systemPidfdOpen(_ pid: Int32) -> Result<Int32, Errno> {
    valueOrErrno("pidfd_open") { divvy_pidfd_open(pid) }
}

/// pidfd_send_signal(2) (Linux 5.1): signals exactly the process the pidfd names. `ESRCH` once it has exited.
package func systemPidfdSendSignal(_ pidfd: Int32, _ signal: Int32) -> Result<Void, Errno> {
    nothingOrErrno("pidfd_send_signal") { divvy_pidfd_send_signal(pidfd, signal) }
}

/// kill(2). `ESRCH`: no such process (or it was reaped).
package func systemKill(_ pid: Int32, _ signal: Int32) -> Result<Void, Errno> {
    nothingOrErrno("kill") { kill(pid, signal) }
}

/// pthread_setname_np(3) on the calling thread; `name` is cut to 15 bytes (the kernel's limit).
package func systemSetThreadName(_ name: String) {
    _ = divvy_set_thread_name(String(name.utf8.prefix(15)) ?? "divvy")
}
