import DivvyClient
import DivvyProtocol
import DivvyServer
import DivvyShm
import DivvySystem
import DivvyTestSupport
import DivvyTransport
import Foundation
import SystemPackage
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for systemd's notification socket: an `AF_UNIX` `SOCK_DGRAM` socket (a file or an abstract name)
/// whose datagrams a thread collects as they arrive (the kernel queues only `net.unix.max_dgram_qlen` = 10 of
/// them, so they must be drained continuously, as systemd does).
final class NotifyListener: @unchecked Sendable {
    /// The `$NOTIFY_SOCKET` value that reaches this listener.
    let address: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private var stored: [String: [Int32]] = [:]
    private var stopRequested = false
    private let finished = DispatchSemaphore(value: 0)
    private var closed = false

    /// Binds a socket file at `path`, or the abstract name `@name` when `path` starts with `@`.
    init(_ address: String) throws {
        self.address = address
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NSError(domain: "socket(AF_UNIX, SOCK_DGRAM) failed", code: Int(errno)) }
        let bound = withUnixAddress(address) { bind(fd, $0, $1) }
        guard bound == 0 else {
            Glibc.close(fd)
            throw NSError(domain: "bind(\(address)) failed", code: Int(errno))
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in drain() }
        thread.name = "notify-listener"
        thread.start()
    }

    deinit {
        close()
    }

    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            lock.lock()
            let stop = stopRequested
            lock.unlock()
            if stop { break }
            let (result, ancillary) = buffer.withUnsafeMutableBytes {
                systemReceiveWithDescriptors(fd, into: $0, capacity: 8)
            }
            if case .success(let count) = result {
                let message = String(decoding: buffer[..<count], as: UTF8.self)
                lock.lock()
                received.append(message)
                keepStored(message, ancillary.descriptors)
                lock.unlock()
            }
        }
        finished.signal()
    }

    /// The file-descriptor store, as systemd keeps it: `FDSTORE=1` with `FDNAME=` replaces what the name held,
    /// `FDSTOREREMOVE=1` drops it. Descriptors that came with any other message are closed. Called under `lock`.
    private func keepStored(_ message: String, _ descriptors: [Int32]) {
        let lines = message.split(separator: "\n").map(String.init)
        let name = lines.first { $0.hasPrefix("FDNAME=") }.map { String($0.dropFirst(7)) } ?? "stored"
        if lines.contains("FDSTORE=1"), !descriptors.isEmpty {
            for old in stored[name] ?? [] { Glibc.close(old) }
            stored[name] = descriptors
        } else {
            for descriptor in descriptors { Glibc.close(descriptor) }
            if lines.contains("FDSTOREREMOVE=1") {
                for old in stored.removeValue(forKey: name) ?? [] { Glibc.close(old) }
            }
        }
    }

    /// The descriptors stored under `name` now (the listener owns them; they are closed with it).
    func storedDescriptors(_ name: String) -> [Int32] {
        lock.lock()
        defer { lock.unlock() }
        return stored[name] ?? []
    }

    /// Stops collecting and closes the socket (idempotent).
    func close() {
        guard !closed else { return }
        closed = true
        lock.lock()
        stopRequested = true
        lock.unlock()
        finished.wait()
        Glibc.close(fd)
        for descriptors in stored.values { for descriptor in descriptors { Glibc.close(descriptor) } }
        stored = [:]
        if address.hasPrefix("/") { unlink(address) }
    }

    /// Every datagram so far, in arrival order.
    var messages: [String] {
        lock.lock()
        defer { lock.unlock() }
        return received
    }

    /// Every `KEY=value` line of every datagram so far, in order.
    var lines: [String] {
        messages.flatMap { $0.split(separator: "\n").map(String.init) }
    }

    /// Waits (up to `seconds`, a guard against hanging, not a timing assertion) until `condition` holds for the
    /// lines received so far; returns whether it did.
    @discardableResult
    func wait(upTo seconds: Double = 60, until condition: ([String]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if condition(lines) { return true }
            if Date() > deadline { return false }
            usleep(5_000)
        }
    }
}

/// Calls `body` with a `sockaddr_un` for a path, or an abstract name when `address` starts with `@`.
private func withUnixAddress<R>(_ address: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var storage = sockaddr_un()
    storage.sun_family = sa_family_t(AF_UNIX)
    let name = address.hasPrefix("@") ? [0] + Array(address.utf8.dropFirst()) : Array(address.utf8) + [0]
    withUnsafeMutableBytes(of: &storage.sun_path) { $0.copyBytes(from: name) }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + name.count)
    return withUnsafePointer(to: &storage) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
    }
}

/// A listening `AF_UNIX` socket of `type` at `path` (blocking, as systemd leaves it), for passing to divvyd.
private func listeningSocket(_ path: String, type: Int32 = Int32(SOCK_SEQPACKET.rawValue)) throws -> Int32 {
    let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw NSError(domain: "socket failed", code: Int(errno)) }
    guard withUnixAddress(path, { bind(fd, $0, $1) }) == 0, listen(fd, 64) == 0 else {
        Glibc.close(fd)
        throw NSError(domain: "bind/listen \(path) failed", code: Int(errno))
    }
    return fd
}

/// systemd's integration points of divvyd: `sd_notify` (`SystemdNotifier`), socket activation
/// (`SocketActivation`), and the real `divvyd` started as systemd starts it.
final class SystemdTests: XCTestCase {
    // MARK: sd_notify settings

    func testNotifySettingsAreReadAsSdNotifyReadsThem() {
        typealias Settings = SystemdNotifier.Settings
        XCTAssertNil(Settings(environment: [:]), "no NOTIFY_SOCKET: not under a service manager")
        for bad in ["", "/", "@", "run/notify", "notify", "vsock:2:1234", "/" + String(repeating: "x", count: 107)] {
            XCTAssertNil(Settings(environment: ["NOTIFY_SOCKET": bad]), "'\(bad)' is not a usable NOTIFY_SOCKET")
        }
        XCTAssertEqual(
            Settings(environment: ["NOTIFY_SOCKET": "/run/systemd/notify"])?.destination, .path("/run/systemd/notify"))
        XCTAssertEqual(Settings(environment: ["NOTIFY_SOCKET": "@sd-notify/1"])?.destination, .abstract("sd-notify/1"))
        XCTAssertEqual(Settings(environment: ["NOTIFY_SOCKET": "@sd-notify/1"])?.destination.description, "@sd-notify/1")
        let longest = "/" + String(repeating: "x", count: 106)  // 107 bytes and the NUL fill sun_path.
        XCTAssertEqual(Settings(environment: ["NOTIFY_SOCKET": longest])?.destination, .path(longest))
        let longestAbstract = "@" + String(repeating: "x", count: 107)  // The leading NUL and 107 bytes.
        XCTAssertNotNil(Settings(environment: ["NOTIFY_SOCKET": longestAbstract]))
        XCTAssertNil(Settings(environment: ["NOTIFY_SOCKET": longestAbstract + "x"]))

        let base = ["NOTIFY_SOCKET": "/run/notify"]
        XCTAssertNil(Settings(environment: base)?.watchdogInterval, "no WATCHDOG_USEC: no watchdog")
        func watchdog(_ extra: [String: String], pid: pid_t = 4242) -> Duration? {
            Settings(environment: base.merging(extra) { $1 }, processID: pid)?.watchdogInterval
        }
        XCTAssertEqual(watchdog(["WATCHDOG_USEC": "400000"]), .milliseconds(400))
        XCTAssertEqual(watchdog(["WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4242"]), .milliseconds(400))
        XCTAssertEqual(watchdog(["WATCHDOG_USEC": "400000", "WATCHDOG_PID": ""]), .milliseconds(400))
        XCTAssertNil(watchdog(["WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4243"]), "the watchdog of another process")
        XCTAssertNil(watchdog(["WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"]))
        for bad in ["0", "", "-5", "4s", "18446744073709551615"] {
            XCTAssertNil(watchdog(["WATCHDOG_USEC": bad]), "WATCHDOG_USEC='\(bad)'")
        }
    }

    func testNotifierSendsEachNotificationAsOneDatagram() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address]))
        XCTAssertNil(notifier.watchdogInterval)
        XCTAssertNil(notifier.pingInterval)
        XCTAssertTrue(notifier.ready())
        XCTAssertTrue(notifier.status("serving 2 clients\nline two"))
        XCTAssertTrue(notifier.watchdog())
        XCTAssertTrue(notifier.mainPID(1234))
        XCTAssertTrue(notifier.stopping())
        XCTAssertTrue(notifier.stopping(), "a second call is a no-op, not a failure")
        XCTAssertTrue(notifier.status("0 clients"))
        XCTAssertTrue(notifier.notify("EXTEND_TIMEOUT_USEC=5000000"))
        XCTAssertFalse(notifier.pingWatchdogIfDue(), "no watchdog: no pings")
        let expected = [
            "READY=1", "STATUS=serving 2 clients line two", "WATCHDOG=1", "MAINPID=1234",
            "STOPPING=1\nSTATUS=shutting down", "STATUS=stopping: 0 clients", "EXTEND_TIMEOUT_USEC=5000000",
        ]
        XCTAssertTrue(listener.wait { _ in listener.messages.count >= expected.count }, "\(listener.messages)")
        XCTAssertEqual(listener.messages, expected)
        XCTAssertEqual(notifier.failedSends, 0)
    }

    func testNotifierReachesAnAbstractSocket() throws {
        let name = "@divvy-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let listener = try NotifyListener(name)
        let notifier = try XCTUnwrap(SystemdNotifier(environment: ["NOTIFY_SOCKET": name]))
        XCTAssertEqual(notifier.destination, .abstract(String(name.dropFirst())))
        XCTAssertTrue(notifier.ready())
        XCTAssertTrue(listener.wait { $0 == ["READY=1"] }, "\(listener.messages)")
    }

    func testNotifierWithNoListenerCountsFailuresAndNeverThrows() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let notifier = try XCTUnwrap(
            SystemdNotifier(environment: ["NOTIFY_SOCKET": directory + "/nobody", "WATCHDOG_USEC": "1000000"]))
        XCTAssertFalse(notifier.ready())
        XCTAssertFalse(notifier.status("x"))
        XCTAssertEqual(notifier.failedSends, 2)
        let start = ContinuousClock.now
        XCTAssertFalse(notifier.pingWatchdogIfDue(at: start))
        XCTAssertFalse(
            notifier.pingWatchdogIfDue(at: start + .milliseconds(1)), "a failed ping is retried at the next tick")
        XCTAssertEqual(notifier.failedSends, 4)
        // The listener appears (systemd re-executed, say): the very next tick pings, and later ones are paced again.
        let listener = try NotifyListener(directory + "/nobody")
        XCTAssertTrue(notifier.pingWatchdogIfDue(at: start + .milliseconds(2)))
        XCTAssertFalse(notifier.pingWatchdogIfDue(at: start + .milliseconds(3)))
        XCTAssertTrue(listener.wait { $0 == ["WATCHDOG=1"] }, "\(listener.messages)")
        XCTAssertEqual(notifier.failedSends, 4)
    }

    func testWatchdogPingsAtHalfTheInterval() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(
            SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"]))
        XCTAssertEqual(notifier.watchdogInterval, .milliseconds(400))
        XCTAssertEqual(notifier.pingInterval, .milliseconds(200))
        let start = ContinuousClock.now
        // (offset in ms, whether a ping is due): the first tick pings, then one every ≥ 200 ms after the last.
        let schedule: [(Int, Bool)] = [
            (0, true), (100, false), (199, false), (200, true), (250, false), (399, false), (400, true), (401, false),
            (900, true), (1000, false), (1100, true),
        ]
        for (offset, due) in schedule {
            XCTAssertEqual(notifier.pingWatchdogIfDue(at: start + .milliseconds(offset)), due, "at +\(offset) ms")
        }
        let pings = schedule.filter(\.1).count
        XCTAssertTrue(listener.wait { $0.count >= pings }, "\(listener.messages)")
        XCTAssertEqual(listener.messages, Array(repeating: "WATCHDOG=1", count: pings))
    }

    func testServerHooksMapToNotifications() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(
            SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"]))
        let hooks = notifier.serverHooks()
        hooks.ready()
        hooks.status("serving 0 client(s)")
        hooks.tick()  // The first tick always pings.
        hooks.stopping()
        let expected = ["READY=1", "STATUS=serving 0 client(s)", "WATCHDOG=1", "STOPPING=1", "STATUS=shutting down"]
        XCTAssertTrue(listener.wait { $0.count >= expected.count }, "\(listener.lines)")
        XCTAssertEqual(listener.lines, expected)
    }

    /// Several threads report at once (status and pings from "the loop", STOPPING from "signal handlers"):
    /// every send that reported success arrives exactly once, STOPPING=1 exactly once.
    func testNotifierIsThreadSafe() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        let notifier = try XCTUnwrap(
            SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1"]))
        let threads = 4
        let iterations = 300
        // Per kind: calls and successful sends. Status and ping calls always send (success or counted failure);
        // `pingWatchdogIfDue` may also decide a ping is not due (another thread just pinged).
        struct Tally {
            var sends = 0, sent = 0, dueChecks = 0, duePings = 0, stoppingFailed = false
        }
        let tally = Locked(Tally())
        let group = DispatchGroup()
        for thread in 0..<threads {
            group.enter()
            Thread {
                var mine = Tally()
                for iteration in 0..<iterations {
                    switch (thread + iteration) % 4 {
                    case 0:
                        mine.sends += 1
                        if notifier.status("thread \(thread) iteration \(iteration)") { mine.sent += 1 }
                    case 1:
                        mine.sends += 1
                        if notifier.watchdog() { mine.sent += 1 }
                    case 2:
                        mine.dueChecks += 1
                        if notifier.pingWatchdogIfDue() { mine.duePings += 1 }
                    default:
                        // Only the first call sends (and can fail); later ones return true.
                        if !notifier.stopping() { mine.stoppingFailed = true }
                    }
                }
                tally.withLock {
                    $0.sends += mine.sends
                    $0.sent += mine.sent
                    $0.dueChecks += mine.dueChecks
                    $0.duePings += mine.duePings
                    $0.stoppingFailed = $0.stoppingFailed || mine.stoppingFailed
                }
                group.leave()
            }.start()
        }
        group.wait()
        let total = tally.withLock { $0 }
        // The one STOPPING datagram arrived unless its (bounded, blocking) send failed.
        let stoppings = total.stoppingFailed ? 0 : 1
        let expected = total.sent + total.duePings + stoppings
        XCTAssertTrue(listener.wait { _ in listener.messages.count >= expected }, "\(listener.messages.count)")
        let messages = listener.messages
        XCTAssertEqual(messages.count, expected, "every successful send arrived exactly once")
        XCTAssertEqual(messages.filter { $0.hasPrefix("STOPPING=1") }.count, stoppings)
        XCTAssertTrue(
            messages.allSatisfy { $0.hasPrefix("STATUS=thread ") || $0.hasPrefix("STATUS=stopping: thread ")
                || $0 == "WATCHDOG=1" || $0 == "STOPPING=1\nSTATUS=shutting down" },
            "whole datagrams only, never interleaved: \(messages.prefix(5))")
        // Every unconditional send either arrived or was counted as failed; due checks add at most one each.
        XCTAssertGreaterThanOrEqual(notifier.failedSends, total.sends - total.sent + (1 - stoppings))
        XCTAssertLessThanOrEqual(
            notifier.failedSends, total.sends - total.sent + (1 - stoppings) + total.dueChecks - total.duePings)
    }

    // MARK: Socket activation

    func testListenVariablesAreReadAsSdListenFdsReadsThem() throws {
        let me: pid_t = 4242
        func parse(_ environment: [String: String]) throws -> SocketActivation? {
            try SocketActivation.parse(environment: environment, processID: me)
        }
        XCTAssertNil(try parse([:]), "no LISTEN_PID: not socket-activated")
        XCTAssertNil(try parse(["LISTEN_FDS": "1"]))
        XCTAssertNil(try parse(["LISTEN_PID": "", "LISTEN_FDS": "1"]))
        XCTAssertNil(try parse(["LISTEN_PID": "4243", "LISTEN_FDS": "1"]), "meant for another process")
        XCTAssertNil(try parse(["LISTEN_PID": "4243", "LISTEN_FDS": "junk"]), "another process's: not even parsed")
        XCTAssertNil(try parse(["LISTEN_PID": "4242"]))
        XCTAssertNil(try parse(["LISTEN_PID": "4242", "LISTEN_FDS": "0"]))

        XCTAssertEqual(
            try parse(["LISTEN_PID": "4242", "LISTEN_FDS": "1"]),
            SocketActivation(sockets: [.init(descriptor: 3, name: "unknown")]))
        XCTAssertEqual(
            try parse(["LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "divvyd.socket::admin"]),
            SocketActivation(sockets: [
                .init(descriptor: 3, name: "divvyd.socket"), .init(descriptor: 4, name: ""),
                .init(descriptor: 5, name: "admin"),
            ]))

        for (environment, fragment) in [
            (["LISTEN_PID": "abc", "LISTEN_FDS": "1"], "LISTEN_PID='abc'"),
            (["LISTEN_PID": "-4242", "LISTEN_FDS": "1"], "LISTEN_PID='-4242'"),
            (["LISTEN_PID": "0", "LISTEN_FDS": "1"], "LISTEN_PID='0'"),
            (["LISTEN_PID": "4242", "LISTEN_FDS": "one"], "LISTEN_FDS='one'"),
            (["LISTEN_PID": "4242", "LISTEN_FDS": "-1"], "LISTEN_FDS='-1'"),
            (["LISTEN_PID": "4242", "LISTEN_FDS": "2147483645"], "LISTEN_FDS='2147483645'"),
            (["LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"], "names 1 sockets but LISTEN_FDS=2"),
            (["LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"], "names 2 sockets but LISTEN_FDS=1"),
        ] {
            XCTAssertThrowsError(try parse(environment), "\(environment)") { error in
                let error = error as? SystemdError
                XCTAssertEqual(error?.code, .invalidEnvironment, "\(environment)")
                XCTAssertTrue(error?.message.contains(fragment) ?? false, "\(error?.message ?? "")")
            }
        }
    }

    func testOnlyListenerWantsExactlyOneSocket() throws {
        let one = SocketActivation(sockets: [.init(descriptor: 3, name: "divvyd.socket")])
        XCTAssertEqual(try one.onlyListener(), .init(descriptor: 3, name: "divvyd.socket"))
        // Stored descriptors are not listeners.
        let stored = SocketActivation(sockets: [
            .init(descriptor: 3, name: "divvy-region"), .init(descriptor: 4, name: "divvyd.socket"),
            .init(descriptor: 5, name: "divvy-region-data"),
        ])
        XCTAssertEqual(try stored.onlyListener(), .init(descriptor: 4, name: "divvyd.socket"))
        XCTAssertEqual(stored.listeners.map(\.descriptor), [4])
        let storedOnly = SocketActivation(sockets: [
            .init(descriptor: 3, name: "divvy-region"), .init(descriptor: 4, name: "divvy-region-data"),
        ])
        XCTAssertNil(try storedOnly.onlyListener(), "only stored descriptors: not socket-activated")
        let two = SocketActivation(sockets: [.init(descriptor: 3, name: "a"), .init(descriptor: 4, name: "b")])
        XCTAssertThrowsError(try two.onlyListener()) { error in
            let error = error as? SystemdError
            XCTAssertEqual(error?.code, .unexpectedSocketCount)
            XCTAssertTrue(error?.message.contains("passed 2 (fd 3 'a', fd 4 'b')") ?? false, "\(String(describing: error))")
        }
    }

    func testStoredRegionNeedsBothDescriptors() throws {
        let both = SocketActivation(sockets: [
            .init(descriptor: 3, name: "divvyd.socket"), .init(descriptor: 4, name: "divvy-region-data"),
            .init(descriptor: 5, name: "divvy-region"),
        ])
        let region = try both.storedRegion()
        XCTAssertEqual(region?.region, 5)
        XCTAssertEqual(region?.data, 4)
        XCTAssertNil(try SocketActivation(sockets: [.init(descriptor: 3, name: "divvyd.socket")]).storedRegion())
        for sockets in [
            [SocketActivation.Socket(descriptor: 3, name: "divvy-region")],
            [.init(descriptor: 3, name: "divvy-region-data")],
            [.init(descriptor: 3, name: "divvy-region"), .init(descriptor: 4, name: "divvy-region"),
             .init(descriptor: 5, name: "divvy-region-data")],
        ] {
            XCTAssertThrowsError(try SocketActivation(sockets: sockets).storedRegion(), "\(sockets)") { error in
                let error = error as? SystemdError
                XCTAssertEqual(error?.code, .badDescriptor)
                XCTAssertTrue(error?.message.contains("a stored region needs one of each") ?? false, "\(String(describing: error))")
            }
        }
    }

    /// `FDSTORE=1`: the region's two memfds reach the store as duplicates under their names, outlive every
    /// descriptor and mapping of their creator, and re-open as the same region with its contents;
    /// `FDSTOREREMOVE=1` drops them.
    func testRegionDescriptorsSurviveTheirCreatorInTheStore() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try NotifyListener(directory + "/notify")
        defer { listener.close() }
        let notifier = try XCTUnwrap(SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address]))
        var nonce: UInt64 = 0
        do {
            let region = try SharedRegion.createAnonymous(
                SharedRegion.Configuration(dataSize: 1 << 20, metadataSize: 4096, separateDataObject: true))
            nonce = region.header.nonce
            let dataOffset = region.geometry.dataOffset
            try region.mapping.withUnsafeMutableBytes(atOffset: dataOffset + 4096, length: 8) {
                $0.storeBytes(of: 0x5EED_CAFE, as: UInt64.self)
            }
            XCTAssertTrue(notifier.storeDescriptors([region.fileDescriptor.rawValue], name: SystemdNotifier.StoredName.region))
            XCTAssertTrue(notifier.storeDescriptors(
                [try XCTUnwrap(region.dataFileDescriptor).rawValue], name: SystemdNotifier.StoredName.regionData))
            XCTAssertTrue(listener.wait { $0.filter { $0 == "FDSTORE=1" }.count == 2 })
        }  // The region and its mapping are gone: only the store holds the memfds now.
        XCTAssertTrue(listener.lines.contains("FDNAME=divvy-region") && listener.lines.contains("FDPOLL=0"))
        let stored = listener.storedDescriptors(SystemdNotifier.StoredName.region)
        let storedData = listener.storedDescriptors(SystemdNotifier.StoredName.regionData)
        XCTAssertEqual(stored.count, 1)
        XCTAssertEqual(storedData.count, 1)
        let reopened = try SharedRegion.open(
            fileDescriptor: FileDescriptor(rawValue: stored[0]), dataFileDescriptor: FileDescriptor(rawValue: storedData[0]))
        XCTAssertEqual(reopened.header.nonce, nonce, "the same region")
        let value = try reopened.mapping.withUnsafeBytes(atOffset: reopened.geometry.dataOffset + 4096, length: 8) {
            $0.load(as: UInt64.self)
        }
        XCTAssertEqual(value, 0x5EED_CAFE)
        XCTAssertTrue(notifier.removeStoredDescriptors(name: SystemdNotifier.StoredName.region))
        XCTAssertTrue(listener.wait { $0.contains("FDSTOREREMOVE=1") })
        XCTAssertTrue(listener.storedDescriptors(SystemdNotifier.StoredName.region).isEmpty)
        XCTAssertEqual(listener.storedDescriptors(SystemdNotifier.StoredName.regionData).count, 1)
        XCTAssertEqual(notifier.failedSends, 0)
        // No store listening: the send fails, is counted, and nothing throws.
        listener.close()
        XCTAssertFalse(notifier.storeDescriptors([0], name: "x"))
        XCTAssertEqual(notifier.failedSends, 1)
    }

    func testProcessEnvironmentIsUnsetAfterReadingWhateverTheOutcome() throws {
        func set(_ values: [String: String]) {
            for (key, value) in values { setenv(key, value, 1) }
        }
        func current() -> [String] {
            (SocketActivation.environmentVariables + SystemdNotifier.environmentVariables).filter { getenv($0) != nil }
        }
        // Meant for another process: not activated, and the variables are gone (a child would not see them).
        set(["LISTEN_PID": "\(getpid() + 1)", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"])
        XCTAssertNil(try SocketActivation.fromProcessEnvironment())
        XCTAssertEqual(current(), [])
        // Malformed: an error, and still unset.
        set(["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "many"])
        XCTAssertThrowsError(try SocketActivation.fromProcessEnvironment())
        XCTAssertEqual(current(), [])
        // Kept when asked.
        set(["LISTEN_PID": "\(getpid() + 1)", "LISTEN_FDS": "1"])
        XCTAssertNil(try SocketActivation.fromProcessEnvironment(unsetEnvironment: false))
        XCTAssertEqual(current(), ["LISTEN_PID", "LISTEN_FDS"])
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")

        set(["NOTIFY_SOCKET": "/run/divvy-test-notify", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "\(getpid())"])
        let notifier = try XCTUnwrap(SystemdNotifier.fromProcessEnvironment())
        XCTAssertEqual(notifier.destination, .path("/run/divvy-test-notify"))
        XCTAssertEqual(notifier.watchdogInterval, .seconds(1))
        XCTAssertEqual(current(), [])
        XCTAssertNil(SystemdNotifier.fromProcessEnvironment(), "gone after the first read")
    }

    func testBoundPathOfASocket() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fd = try listeningSocket(directory + "/bound.sock")
        defer { Glibc.close(fd) }
        XCTAssertEqual(SocketActivation.boundPath(of: fd), directory + "/bound.sock")
        let unbound = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0)
        defer { Glibc.close(unbound) }
        XCTAssertNil(SocketActivation.boundPath(of: unbound))
        XCTAssertNil(SocketActivation.boundPath(of: -1))
    }

    // MARK: The real divvyd, started as systemd starts it

    /// Starts `divvyd` as systemd's socket activation does: in the child process, after fork and before exec,
    /// `LISTEN_PID` is set to the child's own pid. Here `/bin/sh` is that child: it sets `LISTEN_PID=$$` (its own
    /// pid) and `exec`s divvyd, which keeps the pid.
    private func spawnActivated(_ arguments: [String], environment: [String: String], inheriting: [Int32]) throws
        -> ChildProcess
    {
        let script = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""
        return try ChildProcess(
            "/bin/sh", ["-c", script, ChildProcess.executablePath("divvyd")] + arguments, environment: environment,
            inheriting: inheriting)
    }

    private func daemonArguments(_ directory: String) -> [String] {
        ["--socket", directory + "/configured.sock", "--data-size", "32M", "--page-size", "16K",
         "--set", "shutdown-grace-ms=500"]
    }

    /// The issue's scenario: a pre-bound socket as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID`, and a notification
    /// socket the test reads. READY=1 arrives when a client can connect and allocate; STATUS= lines follow the
    /// daemon's state; WATCHDOG=1 pings keep coming; SIGTERM brings STOPPING=1 and exit 0. The socket outlives the
    /// daemon (it is the manager's), and a client that connects while no daemon runs is served by the next one.
    func testSocketActivatedDaemonNotifiesReadyStatusWatchdogAndStopping() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/activated.sock"
        let listenerFD = try listeningSocket(socketPath)
        defer { Glibc.close(listenerFD) }
        let notify = try NotifyListener(directory + "/notify")
        let environment = [
            "LISTEN_FDS": "1", "LISTEN_FDNAMES": "divvyd.socket", "NOTIFY_SOCKET": notify.address,
            "WATCHDOG_USEC": "400000",
        ]
        let daemon = try spawnActivated(daemonArguments(directory), environment: environment, inheriting: [listenerFD])

        XCTAssertTrue(notify.wait { $0.contains("READY=1") }, "no READY=1: \(daemon.standardError)")
        // READY=1 means serving: connect and allocate right now, no retry loop.
        let client = try DivvyClient(.init(socketPath: socketPath, name: "activated", mode: .mediated))
        var block = try client.allocate(100)
        var bytes = block.mutableBytes
        bytes.storeBytes(of: 0xD1CE, toByteOffset: 0, as: UInt64.self)
        XCTAssertTrue(notify.wait { $0.contains { $0.hasPrefix("STATUS=serving 1 client(s)") } }, "\(notify.lines)")
        let released = try block.free()
        XCTAssertTrue(released)
        client.close()
        XCTAssertTrue(
            notify.wait { $0.last { $0.hasPrefix("STATUS=") }?.hasPrefix("STATUS=serving 0 client(s)") ?? false },
            "\(notify.lines)")
        XCTAssertTrue(notify.wait { $0.filter { $0 == "WATCHDOG=1" }.count >= 3 }, "\(notify.lines)")
        XCTAssertFalse(
            FileManager.default.fileExists(atPath: directory + "/configured.sock"), "the configured path is not bound")
        XCTAssertTrue(daemon.standardError.contains("socket_activated=\"fd 3 'divvyd.socket'\""), daemon.standardError)

        daemon.signal(SIGTERM)
        XCTAssertTrue(notify.wait { $0.contains("STOPPING=1") }, "\(notify.lines)")
        XCTAssertEqual(daemon.wait(timeout: 60), .init(status: 0, signal: nil), daemon.standardError)
        let lines = notify.lines
        let ready = try XCTUnwrap(lines.firstIndex(of: "READY=1"))
        let stopping = try XCTUnwrap(lines.firstIndex(of: "STOPPING=1"))
        XCTAssertLessThan(ready, stopping)
        XCTAssertFalse(lines[..<ready].contains("WATCHDOG=1"), "pings start with the loop, after READY=1: \(lines)")
        XCTAssertEqual(lines.filter { $0 == "READY=1" }.count, 1)
        XCTAssertEqual(lines.filter { $0 == "STOPPING=1" }.count, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: socketPath), "the manager's socket file stays")

        // Between daemons the socket still accepts (the kernel queues the connection); the next daemon serves it.
        let early = try RawConnection(socketPath)
        try early.socket.setReceiveTimeout(milliseconds: 120_000)
        try early.send(.hello(Hello(minVersion: 2, maxVersion: 2, mode: .mediated, capabilities: 0, name: "early")))
        let next = try spawnActivated(daemonArguments(directory), environment: environment, inheriting: [listenerFD])
        let reply = try XCTUnwrap(try early.receive(), "the queued client gets an answer")
        guard case .welcome = reply.message else { return XCTFail("expected a welcome, got \(reply.message)") }
        next.signal(SIGTERM)
        XCTAssertEqual(next.wait(timeout: 60), .init(status: 0, signal: nil), next.standardError)
    }

    /// `LISTEN_PID` naming another process (a variable inherited from a parent): divvyd is not socket-activated,
    /// leaves fd 3 alone, binds its configured socket, and reports to NOTIFY_SOCKET as usual (no watchdog asked).
    func testListenVariablesForAnotherProcessAreIgnored() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listenerFD = try listeningSocket(directory + "/activated.sock")
        defer { Glibc.close(listenerFD) }
        let notify = try NotifyListener(directory + "/notify")
        let daemon = try ChildProcess(
            "divvyd", daemonArguments(directory),
            environment: ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "1", "NOTIFY_SOCKET": notify.address],
            inheriting: [listenerFD])
        XCTAssertTrue(notify.wait { $0.contains("READY=1") }, "no READY=1: \(daemon.standardError)")
        let client = try DivvyClient(.init(socketPath: directory + "/configured.sock", name: "c", mode: .mediated))
        _ = try client.ping()
        client.close()
        XCTAssertTrue(notify.wait { $0.contains { $0.hasPrefix("STATUS=") } })
        XCTAssertFalse(daemon.standardError.contains("socket_activated=\"fd"), daemon.standardError)
        daemon.signal(SIGTERM)
        XCTAssertEqual(daemon.wait(timeout: 60), .init(status: 0, signal: nil), daemon.standardError)
        XCTAssertFalse(notify.lines.contains("WATCHDOG=1"), "no WATCHDOG_USEC, no pings: \(notify.lines)")
        XCTAssertTrue(notify.lines.contains("STOPPING=1"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/configured.sock"), "its own: unlinked")
    }

    /// What a misconfigured unit gets: a clear message on stderr (the journal), a STATUS= line for
    /// `systemctl status`, exit status 1, and no READY=1.
    func testMisconfiguredActivationFailsClearly() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try listeningSocket(directory + "/a.sock")
        defer { Glibc.close(first) }
        let second = try listeningSocket(directory + "/b.sock")
        defer { Glibc.close(second) }
        let stream = try listeningSocket(directory + "/stream.sock", type: Int32(SOCK_STREAM.rawValue))
        defer { Glibc.close(stream) }
        let file = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { Glibc.close(file) }
        let cases: [(String, [String: String], [Int32], String)] = [
            ("two sockets", ["LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"], [first, second],
             "divvyd serves one socket but was passed 2 (fd 3 'a', fd 4 'b')"),
            ("a stream socket", ["LISTEN_FDS": "1"], [stream],
             "must be a listening AF_UNIX SOCK_SEQPACKET socket"),
            // (A closed fd 3 cannot be shown: the runtime's first open(2) in divvyd takes the lowest free number.)
            ("a file, not a socket", ["LISTEN_FDS": "1"], [file], "inherited fd 3 is not a socket"),
            ("descriptors that are not open", ["LISTEN_FDS": "1000"], [first], "is not open"),
            ("a malformed count", ["LISTEN_FDS": "x"], [first], "LISTEN_FDS='x' is not a count"),
        ]
        for (label, variables, inherited, message) in cases {
            let notify = try NotifyListener(directory + "/notify-\(label.filter(\.isLetter))")
            let daemon = try spawnActivated(
                daemonArguments(directory), environment: variables.merging(["NOTIFY_SOCKET": notify.address]) { $1 },
                inheriting: inherited)
            XCTAssertEqual(daemon.wait(timeout: 60), .init(status: 1, signal: nil), "\(label): \(daemon.standardError)")
            XCTAssertTrue(daemon.standardError.contains(message), "\(label): \(daemon.standardError)")
            XCTAssertTrue(
                notify.wait { $0.contains { $0.hasPrefix("STATUS=divvyd failed:") && $0.contains(message) } },
                "\(label): \(notify.lines)")
            XCTAssertFalse(notify.lines.contains("READY=1"), label)
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/configured.sock"), label)
        }
    }

    /// The same with systemd's own tool, when installed: `systemd-socket-activate` binds the socket, waits for the
    /// first connection, and execs divvyd with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` set by systemd's
    /// code rather than ours.
    func testSystemdSocketActivateStartsDivvydOnTheFirstConnection() throws {
        let tool = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        guard let tool else { throw XCTSkip("systemd-socket-activate is not installed (Debian package systemd)") }
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/divvyd.sock"
        let notify = try NotifyListener(directory + "/notify")
        let process = try ChildProcess(
            tool,
            ["--seqpacket", "--listen=" + socketPath, "--fdname=divvyd", "-E", "NOTIFY_SOCKET",
             ChildProcess.executablePath("divvyd")] + daemonArguments(directory),
            environment: ["NOTIFY_SOCKET": notify.address])
        // The tool binds and listens, then waits for a connection: connect as soon as it listens.
        let deadline = Date().addingTimeInterval(60)
        var connection: RawConnection?
        while connection == nil {
            connection = try? RawConnection(socketPath)
            if connection == nil {
                guard Date() < deadline, process.wait(timeout: 0.01) == nil else {
                    return XCTFail("systemd-socket-activate never listened: \(process.standardError)")
                }
            }
        }
        let client = try XCTUnwrap(connection)
        try client.socket.setReceiveTimeout(milliseconds: 120_000)
        XCTAssertEqual(try client.hello().clientID > 0, true, "the first connection starts divvyd, which serves it")
        XCTAssertTrue(notify.wait { $0.contains("READY=1") }, process.standardError)
        XCTAssertTrue(process.standardError.contains("socket_activated=\"fd 3 'divvyd'\""), process.standardError)
        process.signal(SIGTERM)  // divvyd has the tool's pid: it exec'd in place.
        XCTAssertTrue(notify.wait { $0.contains("STOPPING=1") }, "\(notify.lines)")
        XCTAssertEqual(process.wait(timeout: 60), .init(status: 0, signal: nil), process.standardError)
        XCTAssertFalse(notify.lines.contains("WATCHDOG=1"), "no WATCHDOG_USEC, no pings")
    }
}
