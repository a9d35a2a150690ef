import CDivvy

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
        public static let readable = Events(rawValue: divvy_epollin())
        /// Writable (`EPOLLOUT`).
        public static let writable = Events(rawValue: divvy_epollout())
        /// The peer shut down its writing side (`EPOLLRDHUP`).
        public static let peerClosed = Events(rawValue: divvy_epollrdhup())
        /// Hang-up (`EPOLLHUP`), always reported.
        public static let hangUp = Events(rawValue: divvy_epollhup())
        /// Error (`EPOLLERR`), always reported.
        public static let error = Events(rawValue: divvy_epollerr())
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
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
    }

    /// The token `wait` reports when `Waker.wake()` was called.
    public static let wakeToken = UInt64.max

    private var epollFD: Int32
    private let eventFD: Int32
    private var tokens = [UInt64](repeating: 0, count: 64)
    private var masks = [UInt32](repeating: 0, count: 64)

    /// Creates an epoll instance and its wake-up eventfd (`epoll_create1(2)`, `eventfd(2)`).
    public init() throws(TransportError) {
        let epollFD = divvy_epoll_create()
        guard epollFD >= 0 else {
            throw TransportError(.systemCallFailed, "epoll_create1 failed", errno: divvy_errno())
        }
        let eventFD = divvy_eventfd()
        guard eventFD >= 0 else {
            let error = divvy_errno()
            systemClose(epollFD)
            throw TransportError(.systemCallFailed, "eventfd failed", errno: error)
        }
        self.epollFD = epollFD
        self.eventFD = eventFD
        if divvy_epoll_ctl(epollFD, divvy_epoll_ctl_add(), eventFD, Events.readable.rawValue, Self.wakeToken) != 0 {
            let error = divvy_errno()
            systemClose(eventFD)
            systemClose(epollFD)
            throw TransportError(.systemCallFailed, "epoll_ctl(ADD eventfd) failed", errno: error)
        }
    }

    deinit {
        systemClose(eventFD)
        systemClose(epollFD)
    }

    /// A waker for this poller, for other threads.
    public var waker: Waker { Waker(fd: eventFD) }

    /// Watches `descriptor` for `events`, reporting `token` (`EPOLL_CTL_ADD`).
    public func add(_ descriptor: Int32, events: Events, token: UInt64) throws(TransportError) {
        try control(divvy_epoll_ctl_add(), descriptor, events, token, "ADD")
    }

    /// Changes what `descriptor` is watched for (`EPOLL_CTL_MOD`).
    public func modify(_ descriptor: Int32, events: Events, token: UInt64) throws(TransportError) {
        try control(divvy_epoll_ctl_mod(), descriptor, events, token, "MOD")
    }

    /// Stops watching `descriptor` (`EPOLL_CTL_DEL`); closing a descriptor also removes it.
    public func remove(_ descriptor: Int32) {
        _ = divvy_epoll_ctl(epollFD, divvy_epoll_ctl_del(), descriptor, 0, 0)
    }

    private func control(
        _ operation: Int32, _ descriptor: Int32, _ events: Events, _ token: UInt64, _ name: String
    ) throws(TransportError) {
        if divvy_epoll_ctl(epollFD, operation, descriptor, events.rawValue, token) != 0 {
            throw TransportError(.systemCallFailed, "epoll_ctl(\(name), fd \(descriptor)) failed", errno: divvy_errno())
        }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for readiness and calls `body` for each ready descriptor
    /// (`epoll_wait(2)`); a wake-up is reported with `wakeToken` after draining the eventfd.
    ///
    /// - Returns: how many events were reported.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ body: (Event) -> Void) throws(TransportError) -> Int {
        let count = tokens.withUnsafeMutableBufferPointer { tokens in
            masks.withUnsafeMutableBufferPointer { masks in
                divvy_epoll_wait(epollFD, tokens.baseAddress, masks.baseAddress, 64, timeoutMilliseconds)
            }
        }
        if count < 0 {
            let error = divvy_errno()
            if error == EINTR { return 0 }
            throw TransportError(.systemCallFailed, "epoll_wait failed", errno: error)
        }
        for i in 0..<Int(count) {
            if tokens[i] == Self.wakeToken {
                var drained: UInt64 = 0
                _ = read(eventFD, &drained, 8)
            }
            body(Event(token: tokens[i], events: Events(rawValue: masks[i])))
        }
        return Int(count)
    }
}
