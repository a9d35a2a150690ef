import DivvyServer
import Foundation
import Logging
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `WatchdogService`: systemd's watchdog pinged from a `Service` while the event loop ticks (a fake NOTIFY_SOCKET).
final class WatchdogServiceTests: XCTestCase {
    private static let quiet = Logger(label: "divvyd-test", factory: { _ in SwiftLogNoOpLogHandler() })

    func testPingsOnlyWhileTheLoopTicksAndStopsWhenCancelled() async throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(
            SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"]))
        let heartbeat = LoopHeartbeat()
        let service = WatchdogService(notifier: notifier, heartbeat: heartbeat, logger: Self.quiet)
        let task = Task { await service.run() }

        // No tick yet: no ping (given the service several wake-ups to send one).
        try await Task.sleep(for: .milliseconds(600))
        XCTAssertEqual(listener.lines, [], "no ping before the loop's first tick")

        // Ticking: pings.
        let ticking = Task {
            while !Task.isCancelled {
                heartbeat.beat()
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        XCTAssertTrue(listener.wait(upTo: 20) { $0.count >= 2 }, "\(listener.lines)")
        ticking.cancel()
        await ticking.value

        // A stalled loop: at most the one ping already due when it stopped, then none (over several intervals).
        let atStall = listener.lines.count
        try await Task.sleep(for: .milliseconds(1800))
        XCTAssertLessThanOrEqual(listener.lines.count, atStall + 1, "\(listener.lines)")
        let afterStall = listener.lines.count

        // Ticking again: pings resume.
        heartbeat.beat()
        XCTAssertTrue(listener.wait(upTo: 20) { $0.count > afterStall }, "\(listener.lines)")
        XCTAssertEqual(Set(listener.lines), ["WATCHDOG=1"])

        task.cancel()
        await task.value  // Returns: cancellation ends the service.
    }

    func testReturnsAtOnceWithoutAWatchdog() async throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address]))
        await WatchdogService(notifier: notifier, heartbeat: LoopHeartbeat(), logger: Self.quiet).run()
        XCTAssertEqual(listener.lines, [])
    }
}
