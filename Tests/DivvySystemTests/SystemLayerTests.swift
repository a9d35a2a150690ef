import Atomics
import DivvySystem
import DivvyTestSupport
import Foundation
import SystemPackage
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// How many SIGUSR2s the test handler has seen (a global: a signal handler cannot capture).
private let signalsHandled = UnsafeAtomic<Int>.create(0)

/// The errno of a failed result, nil on success.
private func errno<T>(of result: Result<T, Errno>) -> Errno? {
    if case .failure(let error) = result { return error }
    return nil
}

final class SystemLayerTests: XCTestCase {
    // MARK: - Error mapping

    /// A real failing call comes back as swift-system's `Errno`, and the failed call changed nothing.
    func testFtruncateOnAReadOnlyDescriptorIsInvalidArgument() throws {
        let path = NSTemporaryDirectory() + "divvy-system-\(UUID().uuidString)"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3])))
        defer { _ = systemUnlink(path) }
        let fd = OwnedDescriptor(taking: try systemOpen(path, flags: O_RDONLY | O_CLOEXEC).get())
        // Linux answers EINVAL for a descriptor not open for writing (ftruncate(2)).
        XCTAssertEqual(errno(of: systemFtruncate(fd.rawValue, length: 0)), .invalidArgument)
        XCTAssertEqual(try systemFstat(fd.rawValue).get().st_size, 3, "the failed ftruncate changed nothing")
        fd.close()
    }

    func testMissingObjectsAreNoSuchFile() {
        let name = "/divvy-system-missing-\(UUID().uuidString)"
        XCTAssertEqual(systemShmOpen(name, flags: O_RDONLY, mode: 0).map { _ in 0 }, .failure(.noSuchFileOrDirectory))
        XCTAssertEqual(errno(of: systemShmUnlink(name)), .noSuchFileOrDirectory)
        XCTAssertEqual(systemStat("/nonexistent/divvy").map { _ in 0 }, .failure(.noSuchFileOrDirectory))
        XCTAssertEqual(systemReadSmallFile("/nonexistent/divvy"), .failure(.noSuchFileOrDirectory))
        XCTAssertNil(systemReadSmallTextFile("/nonexistent/divvy"))
    }

    func testMmapFailureIsErrnoAndSmallFilesRead() throws {
        // A zero-length mapping is EINVAL (mmap(2)).
        let result = systemMmapAnonymous(
            at: nil, length: 0, protection: MapFlags.readWrite, flags: MapFlags.privateAnonymous)
        XCTAssertEqual(result.map { _ in 0 }, .failure(.invalidArgument))
        let text = try XCTUnwrap(systemReadSmallTextFile("/proc/self/stat"))
        XCTAssertTrue(text.hasPrefix("\(systemGetpid()) "), text)
    }

    func testProgrammerErrorsAreEBADFAndEFAULTOnly() {
        XCTAssertTrue(Errno.badFileDescriptor.isProgrammerError)
        XCTAssertTrue(Errno.badAddress.isProgrammerError)
        for errno in [Errno.interrupted, .noMemory, .invalidArgument, .noSuchFileOrDirectory, .wouldBlock] {
            XCTAssertFalse(errno.isProgrammerError, "\(errno)")
        }
    }

    /// A probe of a descriptor we do not own reports EBADF instead of trapping.
    func testProbingAClosedDescriptorDoesNotTrap() {
        XCTAssertFalse(systemDescriptorIsOpen(-1))
        XCTAssertEqual(
            systemGetSocketOption(-1, SO_TYPE, trapOnProgrammerError: false).map { _ in 0 },
            .failure(.badFileDescriptor))
    }

    // MARK: - EINTR

    /// A read blocked in the kernel when a signal arrives (handler installed without `SA_RESTART`) fails with EINTR;
    /// the wrapper retries it and returns the data. Without the retry the same sequence reports `.interrupted`,
    /// which shows the signal really interrupted the call.
    func testInterruptedCallIsRetried() throws {
        var action = sigaction()
        var previous = sigaction()
        action.__sigaction_handler.sa_handler = { _ in signalsHandled.wrappingIncrement(ordering: .relaxed) }
        action.sa_flags = 0  // No SA_RESTART: the kernel returns EINTR instead of restarting read(2).
        sigemptyset(&action.sa_mask)
        XCTAssertEqual(sigaction(SIGUSR2, &action, &previous), 0)
        defer { sigaction(SIGUSR2, &previous, nil) }

        XCTAssertEqual(try readAcrossSignal(retry: true), .success(1))
        XCTAssertEqual(try readAcrossSignal(retry: false), .failure(.interrupted))
    }

    /// Starts a thread blocked in read(2) on a pipe, signals it while it sleeps in the kernel, then writes a byte.
    private func readAcrossSignal(retry: Bool) throws -> Result<Int, Errno> {
        var ends: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&ends), 0)
        let reader = OwnedDescriptor(taking: ends[0])
        let writer = OwnedDescriptor(taking: ends[1])
        final class Box: @unchecked Sendable {
            var tid: pid_t = 0
            var thread = pthread_t()
            var result: Result<Int, Errno> = .success(-1)
        }
        let box = Box()
        let started = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        let fd = reader.rawValue
        let thread = Thread {
            // This thread's kernel id: /proc/thread-self links to "PID/task/TID".
            let link = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self")) ?? ""
            box.tid = pid_t(link.split(separator: "/").last.flatMap { Int32($0) } ?? 0)
            box.thread = pthread_self()
            started.signal()
            var byte: UInt8 = 0
            box.result = withUnsafeMutableBytes(of: &byte) { buffer in
                valueOrErrno("read", retryOnInterrupt: retry) { read(fd, buffer.baseAddress, 1) }
            }
            finished.signal()
        }
        thread.start()
        started.wait()
        // Wait (bounded) until the reader sleeps in the kernel's pipe read (wchan `pipe_read` / `anon_pipe_read`),
        // so that the signal interrupts the call rather than arriving before it.
        var blocked = false
        for _ in 0..<10_000 {
            let wchan = (try? String(contentsOfFile: "/proc/self/task/\(box.tid)/wchan", encoding: .utf8)) ?? ""
            if wchan.contains("pipe") {
                blocked = true
                break
            }
            usleep(1000)
        }
        XCTAssertTrue(blocked, "the reader never blocked in read(2)")
        let before = signalsHandled.load(ordering: .relaxed)
        XCTAssertEqual(pthread_kill(box.thread, SIGUSR2), 0)
        for _ in 0..<10_000 where signalsHandled.load(ordering: .relaxed) == before { usleep(1000) }
        XCTAssertGreaterThan(signalsHandled.load(ordering: .relaxed), before, "the signal was handled")
        XCTAssertEqual(withUnsafeBytes(of: UInt8(7)) { systemWrite(writer.rawValue, from: $0) }, .success(1))
        finished.wait()
        reader.close()
        writer.close()
        return box.result
    }

    // MARK: - Owned descriptors

    func testOwnedDescriptorClosesWhenItsOwnerEnds() throws {
        let raw = try systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()
        func own(_ fd: Int32) {
            let owner = OwnedDescriptor(taking: fd)
            XCTAssertTrue(systemDescriptorIsOpen(owner.rawValue))
        }
        own(raw)
        XCTAssertFalse(systemDescriptorIsOpen(raw), "closed when the owner went away")
    }

    func testConsumingCloseAndTake() throws {
        let first = try systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()
        OwnedDescriptor(taking: first).close()
        XCTAssertFalse(systemDescriptorIsOpen(first), "close() closes")

        let second = try systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC).get()
        let taken = OwnedDescriptor(taking: second).take()
        XCTAssertEqual(taken, second)
        XCTAssertTrue(systemDescriptorIsOpen(second), "take() hands the descriptor over without closing it")
        systemClose(second)
        XCTAssertFalse(systemDescriptorIsOpen(second))
    }

    /// Closing a descriptor twice is a bug that may close someone else's file: it traps, naming it.
    func testClosingTwiceTraps() throws {
        try assertTraps("close-twice", message: "closed twice")
    }

    /// Using a closed descriptor traps (EBADF is a programmer error), naming the call.
    func testUsingAClosedDescriptorTraps() throws {
        try assertTraps("ftruncate-closed", message: "ftruncate failed with")
    }

    private func assertTraps(_ operation: String, message: String) throws {
        let child = try ChildProcess("divvy-shm-helper", ["system", operation])
        let exit = child.wait()
        XCTAssertNotNil(exit.signal, "\(operation): \(exit); stderr: \(child.standardError)")
        XCTAssertTrue(child.standardError.contains(message), "\(operation): stderr: \(child.standardError)")
    }

    // MARK: - Layering

    /// Only the system layer imports the C shim `CDivvy`: every other target goes through DivvySystem's wrappers.
    func testNoTargetAboveTheSystemLayerImportsTheCShim() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let sources = root.appendingPathComponent("Sources")
        let allowed: Set<String> = ["DivvySystem", "CDivvy"]
        let pattern = try NSRegularExpression(pattern: #"^\s*(@_implementationOnly\s+|\w+\s+)?import\s+CDivvy\s*$"#,
                                              options: [.anchorsMatchLines])
        var offenders: [String] = []
        var scanned = 0
        let targets = try FileManager.default.contentsOfDirectory(atPath: sources.path)
        for target in targets where !allowed.contains(target) {
            guard let files = FileManager.default.enumerator(atPath: sources.appendingPathComponent(target).path)
            else { continue }
            for case let file as String in files where file.hasSuffix(".swift") {
                let path = sources.appendingPathComponent(target).appendingPathComponent(file).path
                let text = try String(contentsOfFile: path, encoding: .utf8)
                scanned += 1
                if pattern.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil {
                    offenders.append("\(target)/\(file)")
                }
            }
        }
        XCTAssertGreaterThan(scanned, 50, "the scan found the sources")
        XCTAssertEqual(offenders, [], "import CDivvy outside the system layer")

        // And no target but DivvySystem depends on CDivvy in Package.swift.
        let manifest = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        let dependents = manifest.components(separatedBy: ".target(").dropFirst().filter { target in
            target.contains("\"CDivvy\"") && !target.contains("name: \"DivvySystem\"")
                && !target.hasPrefix("name: \"CDivvy\")")
        }
        XCTAssertEqual(dependents.count, 0, "targets depending on CDivvy: \(dependents.map { $0.prefix(40) })")
    }
}
