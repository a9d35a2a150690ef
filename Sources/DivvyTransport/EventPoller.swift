import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An `epoll(7)` instance: level-triggered readiness for many descriptors, plus an `eventfd(2)` to wake the
/// waiting thread from another thread.
///
/// Not `Sendable` except for `wake()`, which any thread may call (see `Waker`).
public final class EventPoller {
    /// Readiness bits of one event.
    public struct Events: OptionSet, Hashable, Sendable {
        /// The raw `EPOLL*` bits.
        public let rawValue: UInt32
        /// Creates events from raw bits.
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Readable (`EPOLLIN`).
        public static let readable = Events(rawValue: EpollFlags.readable)
        /// Writable (`EPOLLOUT`).
        public static let writable = Events(rawValue: EpollFlags.writable)
        /// The peer shut down its writing side (`EPOLLRDHUP`).
        public static let peerClosed = Events(rawValue: EpollFlags.peerClosed)
        /// Hang-up (`EPOLLHUP`), always reported.
        public static let hangUp = Events(rawValue: EpollFlags.hangUp)
        /// Error (`EPOLLERR`), always reported.
        public static let error = Events(rawValue: EpollFlags.error)
    }

    /// One ready descriptor: the token registered with it and what it is ready for.
    public struct Event: Hashable, Sendable {
        /// The caller's token (registered with `add`).
        public var token: UInt64
        /// What is ready.
        public var events: Events
    }

    /// Wakes a thread blocked in `wait` from any thread (writes to an `eventfd`).
    public struct Waker: Sendable {
        fileprivate let fd: Int32
        /// Makes the poller's next (or current) `wait` return; its events include `EventPoller.wakeToken`.
        public func wake() {
            // EAGAIN (the counter is at its maximum) still leaves the poller readable: nothing to do.
            _ = withUnsafeBytes(of: UInt64(1)) { systemWrite(fd, from: $0) }
        }
    }

    /// The token `wait` reports when `Waker.wake()` was called.
    public static let wakeToken = UInt64.max

    private let epoll: OwnedDescriptor
    private let event: OwnedDescriptor
    private var epollFD: Int32 { epoll.rawValue }
    private var eventFD: Int32 { event.rawValue }
    private var tokens = [UInt64](repeating: 0, count: 64)
    private var masks = [UInt32](repeating: 0, count: 64)

    /// Creates an epoll instance and its wake-up eventfd (`epoll_create1(2)`, `eventfd(2)`).
    public init() throws(TransportError) {
        let epoll: OwnedDescriptor
        switch systemEpollCreate() {
        case .success(let fd): epoll = OwnedDescriptor(taking: fd)
        case .failure(let error): throw TransportError(.systemCallFailed, "epoll_create1 failed", cause: error)
        }
        let event: OwnedDescriptor
        switch systemEventfd() {
        case .success(let fd): event = OwnedDescriptor(taking: fd)
        case .failure(let error): throw TransportError(.systemCallFailed, "eventfd failed", cause: error)
        }
        if case .failure(let error) = systemEpollCtl(
            epoll.rawValue, EpollFlags.add, event.rawValue, events: Events.readable.rawValue, data: Self.wakeToken)
        {
            throw TransportError(.systemCallFailed, "epoll_ctl(ADD eventfd) failed", cause: error)
        }
        self.epoll = epoll
        self.event = event
    }

    /// A waker for this poller, for other threads.
    public var waker: Waker { Waker(fd: eventFD) }

    /// Watches `descriptor` for `events`, reporting `token` (`EPOLL_CTL_ADD`).
    public func add(_ descriptor: Int32, events: Events, token: UInt64) throws(TransportError) {
        try control(EpollFlags.add, descriptor, events, token, "ADD")
    }

    /// Changes what `descriptor` is watched for (`EPOLL_CTL_MOD`).
    public func modify(_ descriptor: Int32, events: Events, token: UInt64) throws(TransportError) {
        try control(EpollFlags.modify, descriptor, events, token, "MOD")
    }

    /// Stops watching `descriptor` (`EPOLL_CTL_DEL`); closing a descriptor also removes it, so removing one that
    /// was already closed (`EBADF`) or never added (`ENOENT`) does nothing.
    public func remove(_ descriptor: Int32) {
        _ = systemEpollCtl(epollFD, EpollFlags.delete, descriptor, events: 0, data: 0, trapOnProgrammerError: false)
    }

    private func control(
        _ operation: Int32, _ descriptor: Int32, _ events: Events, _ token: UInt64, _ name: String
    ) throws(TransportError) {
        if case .failure(let error) = systemEpollCtl(
            epollFD, operation, descriptor, events: events.rawValue, data: token)
        {
            throw TransportError(.systemCallFailed, "epoll_ctl(\(name), fd \(descriptor)) failed", cause: error)
        }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for readiness and calls `body` for each ready descriptor
    /// (`epoll_wait(2)`); a wake-up is reported with `wakeToken` after draining the eventfd.
    ///
    /// - Returns: how many events were reported.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ body: (Event) -> Void) throws(TransportError) -> Int {
        let result = tokens.withUnsafeMutableBufferPointer { tokens in
            masks.withUnsafeMutableBufferPointer { masks in
                systemEpollWait(epollFD, data: tokens, events: masks, timeoutMilliseconds: timeoutMilliseconds)
            }
        }
        let count: Int
        switch result {
        case .success(let ready): count = ready
        case .failure(.interrupted): return 0  // A signal: let the caller look at its flags.
        case .failure(let error): throw TransportError(.systemCallFailed, "epoll_wait failed", cause: error)
        }
        for i in 0..<count {
            if tokens[i] == Self.wakeToken {
                // Non-blocking eventfd: EAGAIN when another wait drained it first.
                var drained: UInt64 = 0
                _ = withUnsafeMutableBytes(of: &drained) { systemRead(eventFD, into: $0) }
            }
            body(Event(token: tokens[i], events: Events(rawValue: masks[i])))
        }
        return count
    }
}
