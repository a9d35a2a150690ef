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
/// (SIGTERM/SIGINT in divvyd) or the task running the service is cancelled (the group cancels its services when
/// one of them fails, or when it is itself cancelled).
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
        // Both paths end in the same graceful shutdown, with a reason that says which one it was. (This is what
        // `withTaskCancellationOrGracefulShutdownHandler` does, with the two handlers kept apart.) The loop runs on
        // its own thread, not in this task, so cancellation reaches it only through `shutdown(reason:)`.
        try await withTaskCancellationHandler {
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
        } onCancel: {
            server.shutdown(reason: "the divvyd service's task was cancelled")
        }
    }
}
