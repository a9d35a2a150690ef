import DivvyServer
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The optional HTTP metrics listener (`metrics-listen`).
final class MetricsListenerTests: XCTestCase {
    /// One HTTP request to 127.0.0.1:port; the whole response.
    private func get(_ path: String, port: UInt16) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw NSError(domain: "connect failed", code: Int(errno)) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            response += buffer[..<count]
        }
        return String(decoding: response, as: UTF8.self)
    }

    func testOffByDefault() throws {
        XCTAssertNil(ServerConfiguration().metricsListen)
        let daemon = try DaemonProcessTests.Daemon()
        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20), .init(status: 0, signal: nil), daemon.process.standardError)
        XCTAssertFalse(daemon.process.standardError.contains("serving metrics"), daemon.process.standardError)
    }

    func testServesThePrometheusExpositionOnLoopbackUntilTheServiceEnds() async throws {
        let daemon = try TestDaemon()
        let service = try MetricsListenerService(listen: "127.0.0.1:0")
        service.serve(daemon.server)
        let port = service.port
        XCTAssertNotEqual(port, 0)
        let task = Task { await service.run() }
        let client = try daemon.client(.mediated)
        _ = try client.allocateBatch(size: 64, count: 3)
        try client.ping()
        // Gauges refresh on the loop's tick (≈ 200 ms); counters at once.
        var response = ""
        for _ in 0..<50 {
            response = try get("/metrics", port: port)
            if response.contains("divvy_clients 1.0") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("Content-Type: text/plain; version=0.0.4"), response)
        XCTAssertTrue(response.contains("divvy_alloc_total 3\n"), response)
        XCTAssertTrue(response.contains("divvy_clients 1.0"), response)
        let missing = try get("/other", port: port)
        XCTAssertTrue(missing.hasPrefix("HTTP/1.1 404"), missing)
        client.close()
        task.cancel()
        await task.value
        XCTAssertThrowsError(try get("/metrics", port: port), "the listener closes when its service ends")
        daemon.stop()
    }

    func testBadAddressesAndPortsInUseAreRefused() throws {
        var configuration = ServerConfiguration()
        XCTAssertThrowsError(try configuration.set("metrics-listen", "9464"))
        XCTAssertThrowsError(try configuration.set("metrics-listen", "localhost:99999"))
        XCTAssertNoThrow(try configuration.set("metrics-listen", "off"))
        XCTAssertThrowsError(try MetricsListenerService(listen: "not-an-ip:9464")) { error in
            XCTAssertTrue("\(error)".contains("not an IPv4 address"), "\(error)")
        }
        let first = try MetricsListenerService(listen: "127.0.0.1:0")
        XCTAssertThrowsError(try MetricsListenerService(listen: "127.0.0.1:\(first.port)")) { error in
            XCTAssertTrue("\(error)".contains("cannot listen on 127.0.0.1:\(first.port)"), "\(error)")
        }
    }

    /// The listening socket is closed exactly once, by whoever owns it then: the listener itself when it never
    /// served, the serving thread once it has been stopped. Either way the port can be bound again.
    func testTheListenersSocketIsClosedWhetherItServedOrNot() async throws {
        var idle: MetricsListenerService? = try MetricsListenerService(listen: "127.0.0.1:0")
        let idlePort = idle!.port
        idle = nil
        _ = try MetricsListenerService(listen: "127.0.0.1:\(idlePort)")

        let daemon = try TestDaemon()
        let served = try MetricsListenerService(listen: "127.0.0.1:0")
        served.serve(daemon.server)
        let task = Task { await served.run() }
        XCTAssertTrue(try get("/metrics", port: served.port).hasPrefix("HTTP/1.1 200 OK\r\n"))
        task.cancel()
        await task.value
        // The serving thread closes the socket after its accept(2) wakes: bounded wait for the port to be free.
        var rebound: MetricsListenerService?
        for _ in 0..<200 where rebound == nil {
            rebound = try? MetricsListenerService(listen: "127.0.0.1:\(served.port)")
            if rebound == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        XCTAssertNotNil(rebound, "port \(served.port) is free once the service has ended")
        daemon.stop()
    }

    /// divvyd with `metrics-listen`: the listener is a service of its group, serving while the daemon runs; a port
    /// in use stops divvyd before it starts.
    func testDivvydServesMetricsFromItsServiceGroup() throws {
        let daemon = try DaemonProcessTests.Daemon(["--set", "metrics-listen=127.0.0.1:0"])
        let log = daemon.process.standardError
        let url = try XCTUnwrap(log.range(of: "url=http://127.0.0.1:").map { log[$0.upperBound...] }, log)
        let port = try XCTUnwrap(UInt16(url.prefix { $0.isNumber }), log)
        let response = try get("/metrics", port: port)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("divvy_"), response)

        let busy = try ChildProcess(
            "divvyd", ["--socket", daemon.directory + "/second.sock", "--data-size", "8M", "--set",
            "metrics-listen=127.0.0.1:\(port)"])
        XCTAssertEqual(busy.wait(timeout: 20)?.status, 1, busy.standardError)
        XCTAssertTrue(busy.standardError.contains("cannot listen on 127.0.0.1:\(port)"), busy.standardError)

        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20), .init(status: 0, signal: nil), daemon.process.standardError)
    }
}
