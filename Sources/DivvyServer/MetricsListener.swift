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
    private let fd: Int32
    private let stopped = ProcessLock()
    private var isStopped = false
    private var isStarted = false

    /// Binds `host:port` (an IPv4 address); `start(exposition:)` serves it.
    init(host: String, port: UInt16) throws(ServerError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError(.socket, "metrics listener: socket failed (errno \(errno))") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            close(fd)
            throw ServerError(.invalidConfiguration, "metrics-listen: '\(host)' is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let error = errno
            close(fd)
            throw ServerError(
                .socket, "metrics listener: cannot listen on \(host):\(port): \(String(cString: strerror(error)))")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.port = UInt16(bigEndian: actual.sin_port)
        self.fd = fd
    }

    deinit {
        stop()
    }

    /// Serves `GET /metrics` with `exposition` on a thread of its own until `stop()` (once; not after `stop()`).
    func start(exposition: @escaping @Sendable () -> String) {
        stopped.lock()
        defer { stopped.unlock() }
        guard !isStopped, !isStarted else { return }
        isStarted = true
        let listener = fd
        DetachedThread.start(name: "divvyd-metrics") {
            MetricsListener.serve(listener, exposition)
        }
    }

    /// Stops accepting (the serving thread ends at its next accept).
    func stop() {
        stopped.lock()
        defer { stopped.unlock() }
        guard !isStopped else { return }
        isStopped = true
        // shutdown(2) wakes the thread blocked in accept(2).
        _ = shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private static func serve(_ listener: Int32, _ exposition: @Sendable () -> String) {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // Closed by stop().
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            _ = setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var request: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1024)
            while request.count < 8192, !request.containsHeaderEnd {
                let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                if count <= 0 { break }
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
                let count = bytes[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count <= 0 { break }
                sent += count
            }
            close(client)
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
