@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A unique name prefix per test, so that runs in parallel (and leftovers from a crashed run) never collide.
/// `tearDown` unlinks every object that starts with it, even when the test failed half-way.
class ShmTestCase: XCTestCase {
    private(set) var prefix = ""

    override func setUp() {
        super.setUp()
        prefix = "divvy-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-"
    }

    override func tearDown() {
        for name in shmObjects() {
            _ = shm_unlink("/" + name)
        }
        super.tearDown()
    }

    /// The objects in /dev/shm created under this test's prefix.
    func shmObjects() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.hasPrefix(prefix) }
    }

    /// True when /dev/shm holds `/<prefix><name>`.
    func exists(_ name: String) -> Bool {
        access("/dev/shm/" + prefix + name, F_OK) == 0
    }

    func configuration(
        dataSize: Int = 1 << 20, metadataSize: Int = 60 << 10,
        _ edit: (inout SharedRegion.Configuration) -> Void = { _ in }
    ) -> SharedRegion.Configuration {
        var configuration = SharedRegion.Configuration(
            dataSize: dataSize, metadataSize: metadataSize, namePrefix: prefix, hugePages: .none)
        edit(&configuration)
        return configuration
    }

    /// Asserts that `body` throws a `SharedRegionError` with `code`; returns it.
    @discardableResult
    func assertRegionError(
        _ code: SharedRegionError.Code, _ message: @autoclosure () -> String = "", file: StaticString = #filePath,
        line: UInt = #line, _ body: () throws -> Void
    ) -> SharedRegionError? {
        do {
            try body()
            XCTFail("expected SharedRegionError \(code), nothing was thrown. \(message())", file: file, line: line)
            return nil
        } catch let error as SharedRegionError {
            XCTAssertEqual(error.code, code, "wrong code in \(error). \(message())", file: file, line: line)
            return error
        } catch {
            XCTFail("expected SharedRegionError \(code), got \(error). \(message())", file: file, line: line)
            return nil
        }
    }
}

/// How a helper process ended.
struct HelperExit: Equatable, CustomStringConvertible {
    var status: Int32?
    var signal: Int32?
    var output: String

    static func == (lhs: HelperExit, rhs: HelperExit) -> Bool { lhs.status == rhs.status && lhs.signal == rhs.signal }
    var description: String {
        if let signal { return "killed by signal \(signal)" }
        return "exit status \(status ?? -1), output '\(output)'"
    }
}

/// A running `divvy-shm-helper`.
struct HelperProcess {
    let pid: pid_t
    let outputFD: Int32

    /// The helper executable: built by SwiftPM next to the test bundle (the test target depends on it).
    static var executablePath: String {
        let candidates = [
            URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent(),
            Bundle.main.bundleURL.deletingLastPathComponent(), Bundle.main.bundleURL,
        ]
        for directory in candidates {
            let path = directory.appendingPathComponent("divvy-shm-helper").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return candidates[0].appendingPathComponent("divvy-shm-helper").path
    }

    /// Spawns the helper with `arguments` (posix_spawn). When `inheriting` is given, that descriptor becomes the
    /// child's fd 3 (dup2 in the spawn file actions, which also clears close-on-exec); stdout is captured.
    static func spawn(
        _ arguments: [String], inheriting fd: Int32? = nil, environment extra: [String: String] = [:]
    ) throws -> HelperProcess {
        let path = executablePath
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw NSError(domain: "divvy-shm-helper not found at \(path)", code: 1)
        }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw NSError(domain: "pipe failed", code: Int(errno)) }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        // Move the descriptor out of the way first: dup2(3, 3) would keep close-on-exec set.
        var temporary: Int32 = -1
        if let fd {
            temporary = fcntl(fd, F_DUPFD_CLOEXEC, 100)
            guard temporary >= 0 else { throw NSError(domain: "dup failed", code: Int(errno)) }
            posix_spawn_file_actions_adddup2(&actions, temporary, 3)
        }
        defer { if temporary >= 0 { close(temporary) } }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        // No crash report from the Swift runtime when a test expects the helper to die (SIGSEGV by design).
        var variables: [String] = ProcessInfo.processInfo.environment.filter { $0.key != "SWIFT_BACKTRACE" }
            .map { "\($0.key)=\($0.value)" }
        variables.append("SWIFT_BACKTRACE=enable=no")
        variables += extra.map { "\($0.key)=\($0.value)" }
        let environment: [UnsafeMutablePointer<CChar>?] = variables.map { strdup($0) } + [nil]
        defer { environment.forEach { free($0) } }
        let result = posix_spawn(&pid, path, &actions, nil, argv, environment)
        close(pipeFDs[1])
        guard result == 0 else {
            close(pipeFDs[0])
            throw NSError(domain: "posix_spawn \(path) failed", code: Int(result))
        }
        return HelperProcess(pid: pid, outputFD: pipeFDs[0])
    }

    /// Reads the child's stdout to the end and reaps it.
    func wait() -> HelperExit {
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(outputFD, $0.baseAddress, $0.count) }
            if count > 0 { output += buffer[..<count] } else if count == 0 || errno != EINTR { break }
        }
        close(outputFD)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        let text = String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
        if status & 0x7f == 0 { return HelperExit(status: (status >> 8) & 0xff, signal: nil, output: text) }
        return HelperExit(status: nil, signal: status & 0x7f, output: text)
    }

    /// Spawns, waits, returns how it ended.
    static func run(_ arguments: [String], inheriting fd: Int32? = nil) throws -> HelperExit {
        try spawn(arguments, inheriting: fd).wait()
    }
}


/// Whether the kernel gives transparent huge pages to shared memory (`shmem_enabled`).
var shmemTransparentHugePages: Bool {
    let text = readText("/sys/kernel/mm/transparent_hugepage/shmem_enabled") ?? "[never]"
    return ["[always]", "[within_size]", "[advise]", "[force]"].contains { text.contains($0) }
}

/// The bytes of an object in /dev/shm (pread of the whole file).
func objectBytes(_ objectName: String) -> [UInt8]? {
    FileManager.default.contents(atPath: "/dev/shm" + objectName).map { [UInt8]($0) }
}

/// Whether /dev/shm is mounted with a `huge=` option that allows transparent huge pages.
var devShmHugeOption: Bool {
    let entry = (readText("/proc/self/mounts") ?? "").split(separator: "\n").last { $0.contains(" /dev/shm ") }
    return ["huge=always", "huge=within_size", "huge=advise"].contains { entry?.contains($0) ?? false }
}

/// The sum of a /proc/self/smaps field (kB) over the mappings that overlap `[start, start + length)`.
func smapsField(_ field: String, from start: UInt, length: Int) -> Int {
    var total = 0
    var inside = false
    for line in (readText("/proc/self/smaps") ?? "").split(separator: "\n") {
        let words = line.split(separator: " ")
        if let range = words.first, range.contains("-"), !range.hasSuffix(":") {
            let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
            inside = bounds.count == 2 && bounds[0] < start + UInt(length) && start < bounds[1]
        } else if inside, line.hasPrefix(field + ":"), words.count >= 2 {
            total += Int(words[1]) ?? 0
        }
    }
    return total
}

/// Fills a heap block (all of its usable bytes) with `byte`.
func fillBlock(_ heap: SharedHeap, _ handle: SharedHeapHandle, with byte: UInt8) throws {
    let size = try heap.blockSize(of: handle)
    try heap.pointer(for: handle).initializeMemory(as: UInt8.self, repeating: byte, count: size)
}

/// Whether every usable byte of a heap block is `byte`.
func blockHolds(_ heap: SharedHeap, _ handle: SharedHeapHandle, only byte: UInt8) throws -> Bool {
    let size = try heap.blockSize(of: handle)
    return UnsafeRawBufferPointer(start: try heap.pointer(for: handle), count: size).allSatisfy { $0 == byte }
}

/// A random request size: mostly small (1…largest small class), one in eight large (above it, up to the second
/// smallest large class: test heaps have few span pages). The helper executable picks sizes the same way.
func randomBlockSize(_ heap: SharedHeap, _ random: inout SeededGenerator) -> Int {
    let small = heap.largestSmallBlockSize
    if let cap = heap.largeSizeClasses.prefix(2).last, random.below(8) == 0 {
        return small + 1 + random.below(cap - small)
    }
    return 1 + random.below(small)
}

extension SharedHeapHandle {
    /// The handle of `heap` whose 64-bit test form is `compact64` (see `SharedHeapHandle.compact64`).
    init(_ heap: SharedHeap, compact64: UInt64) { self.init(compact64: compact64, heapID: heap.heapID) }
}
