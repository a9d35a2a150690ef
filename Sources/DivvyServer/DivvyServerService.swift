#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif
import ServiceLifecycle

/// Runs a `DivvyServer` as a swift-service-lifecycle `Service`: its event loop on a dedicated thread, and a
/// graceful shutdown (stop accepting, tell clients, reclaim, return) when the service group shuts down
/// (SIGTERM/SIGINT in divvyd).
public struct DivvyServerService: Service {
    /// The server this service runs.
    public let server: DivvyServer

    /// Wraps a server (already listening: see `DivvyServer.init`).
    public init(server: DivvyServer) {
        self.server = server
    }

    /// Runs the event loop until graceful shutdown completes.
    ///
    /// - Throws: `ServerError` when the loop fails.
    public func run() async throws {
        let server = self.server
        try await withGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                DetachedThread.start(name: "divvyd-loop") {
                    do {
                        try server.run()
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
            }
        } onGracefulShutdown: {
            server.shutdown(reason: "divvyd received a shutdown signal")
        }
    }
}
