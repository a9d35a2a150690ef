import DivvySystem

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// An optional HTTP listener serving the daemon's Prometheus exposition at `GET /metrics`, for a Prometheus
/// server to scrape (off by default: `metrics-listen = 127.0.0.1:9464` turns it on; `divvyctl metrics` needs no
/// listener). Deliberately minimal: HTTP/1.0-style, one request per connection, one thread, short timeouts; it
/// serves nothing else and never touches the heap (the exposition comes from the thread-safe registry).
final class MetricsListener: @unchecked Sendable {
    /// The port actually bound (useful with port 0).
    let port: UInt16
    /// The listening socket's number. Open until closed by its owner: `stop()` before `start`, else the serving
    /// thread once it has seen `isStopped` (so `stop()`'s shutdown(2) never meets a closed, or reused, number).
    private let fd: Int32
    /// The listener's owner until `start` hands the descriptor to the serving thread.
    private var owner: OwnedDescriptor?
    private let state = State()
    private var isStarted = false

    /// What `stop()` tells the serving thread (shared with it: the thread must not keep the listener alive).
    private final class State: @unchecked Sendable {
        let lock = ProcessLock()
        /// `stop()` has run. Guarded by `lock`.
        var isStopped = false

        /// Whether `stop()` has run.
        var stopRequested: Bool {
            lock.lock()
            defer { lock.unlock() }
            return isStopped
        }
    }

    /// Binds `host:port` (an IPv4 address); `start(exposition:)` serves it.
    init(host: String, port: UInt16) throws(ServerError) {
        let socket: OwnedDescriptor
        switch systemSocket(domain: AF_INET, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)) {
        case .success(let opened): socket = OwnedDescriptor(taking: opened)
        case .failure(let error):
            throw ServerError(.socket, "metrics listener: socket failed (errno \(error.rawValue))")
        }
        let fd = socket.rawValue
        _ = systemSetSocketOption(fd, SO_REUSEADDR, 1)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw ServerError(.invalidConfiguration, "metrics-listen: '\(host)' is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                systemBind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }.flatMap { systemListen(fd, backlog: 16) }
        if case .failure(let error) = bound {
            throw ServerError(
                .socket,
                "metrics listener: cannot listen on \(host):\(port): \(systemErrorDescription(error.rawValue))")
        }
        var actual = sockaddr_in()
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                systemGetsockname(fd, $0, length: socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        self.port = UInt16(bigEndian: actual.sin_port)
        self.fd = fd
        self.owner = .some(socket)
    }

    deinit {
        stop()
    }

    /// Serves `GET /metrics` with `exposition` on a thread of its own until `stop()` (once; not after `stop()`).
    func start(exposition: @escaping @Sendable () -> String) {
        state.lock.lock()
        defer { state.lock.unlock() }
        guard !state.isStopped, !isStarted, let listener = owner.take() else { return }
        isStarted = true
        // The serving thread owns the listener from here (an escaping closure cannot take a ~Copyable value: the
        // number crosses and is owned again on the other side).
        let handedOver = listener.take()
        let state = self.state
        DetachedThread.start(name: "divvyd-metrics") {
            MetricsListener.serve(OwnedDescriptor(taking: handedOver), state, exposition)
        }
    }

    /// Stops accepting (the serving thread ends at its next accept, and closes the listener).
    func stop() {
        state.lock.lock()
        defer { state.lock.unlock() }
        guard !state.isStopped else { return }
        state.isStopped = true
        if isStarted {
            // shutdown(2) wakes the thread blocked in accept(2); it closes the descriptor once it sees isStopped,
            // which it reads under this lock, so the number is still ours here.
            _ = systemShutdown(fd, Int32(SHUT_RDWR))
        } else {
            owner = nil  // Never served: close it now.
        }
    }

    private static func serve(
        _ listener: consuming OwnedDescriptor, _ state: State, _ exposition: @Sendable () -> String
    ) {
        let listenerFD = listener.rawValue
        while true {
            let client: OwnedDescriptor
            switch systemAccept(listenerFD) {
            case .success(let accepted): client = OwnedDescriptor(taking: accepted)
            case .failure(.connectionAbort): continue
            case .failure:
                if state.stopRequested {
                    listener.close()
                    return
                }
                // Not stopped: out of descriptors or buffers for a moment. Try again soon rather than spin.
                usleep(100_000)
                continue
            }
            answer(client.rawValue, exposition)
            client.close()
        }
    }

    /// Reads one request from `client` and writes the response.
    private static func answer(_ client: Int32, _ exposition: @Sendable () -> String) {
        _ = systemSetReceiveTimeout(client, milliseconds: 2000)
        _ = systemSetSendTimeout(client, milliseconds: 2000)
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while request.count < 8192, !request.containsHeaderEnd {
            guard case .success(let count) = buffer.withUnsafeMutableBytes({ systemReceive(client, into: $0) }),
                count > 0
            else { break }
            request += buffer[..<count]
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let response: String
        if line.hasPrefix("GET /metrics ") || line == "GET /metrics" {
            let body = exposition()
            response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        } else {
            let body = "divvyd serves only GET /metrics\n"
            response = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)"
                + "\r\nConnection: close\r\n\r\n" + body
        }
        let bytes = Array(response.utf8)
        var sent = 0
        while sent < bytes.count {
            guard case .success(let count) = bytes[sent...].withUnsafeBytes({
                systemSend(client, $0, flags: Int32(MSG_NOSIGNAL))
            }), count > 0
            else { break }
            sent += count
        }
    }
}

extension [UInt8] {
    fileprivate var containsHeaderEnd: Bool {
        guard count >= 4 else { return false }
        for index in 0...(count - 4)
        where self[index] == 13 && self[index + 1] == 10 && self[index + 2] == 13 && self[index + 3] == 10 {
            return true
        }
        return false
    }
}
