import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// Real programs under `LD_PRELOAD=libDivvyMalloc.so` produce the same output as without it.
///
/// The library is built next to this test binary by `swift build --build-tests` (what CI runs first).
final class DivvyMallocPreloadTests: XCTestCase {
    /// `libDivvyMalloc.so` in this build's products directory.
    func library() throws -> String {
        let binary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("libDivvyMalloc.so")
            .path
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail(
                "\(path) is missing: build it with `swift build --build-tests` (or `swift build`) before `swift test`")
            throw XCTSkip("libDivvyMalloc.so not built")
        }
        if dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil
            || dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
        {
            throw XCTSkip("a sanitizer owns malloc in this build")
        }
        return path
    }

    struct Run: Equatable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `arguments` with `environment` added, in `directory`, with `input` on stdin.
    func run(
        _ arguments: [String], preload: String?, directory: String? = nil, input: Data? = nil,
        environment: [String: String] = [:]
    ) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        var env = ProcessInfo.processInfo.environment
        env["LD_PRELOAD"] = preload
        for (key, value) in environment { env[key] = value }
        process.environment = env
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe()
        let err = Pipe()
        let stdin = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = stdin
        try process.run()
        // Read both pipes concurrently with writing the input, so no side blocks on a full pipe.
        let group = DispatchGroup()
        nonisolated(unsafe) var outData = Data()
        nonisolated(unsafe) var errData = Data()
        DispatchQueue.global().async(group: group) { outData = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
        if let input { stdin.fileHandleForWriting.write(input) }
        try stdin.fileHandleForWriting.close()
        group.wait()
        process.waitUntilExit()
        return Run(
            status: process.terminationReason == .exit ? process.terminationStatus : -process.terminationStatus,
            stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    var python: String {
        ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
            ?? "/usr/bin/python3"
    }

    func testTrueAndShellRunUnderThePreload() throws {
        let lib = try library()
        XCTAssertEqual(try run(["/bin/true"], preload: lib).status, 0)
        // A shell forks and execs; every child inherits the preload.
        let script = "for i in 1 2 3; do echo $i | cat; done; x=$(echo sub); echo $x"
        let plain = try run(["/bin/sh", "-c", script], preload: nil)
        let divvy = try run(["/bin/sh", "-c", script], preload: lib)
        XCTAssertEqual(divvy, plain)
        XCTAssertEqual(divvy.stdout, "1\n2\n3\nsub\n")
    }

    func testTheLibraryReallyServesMalloc() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        // malloc(1) gets 16 usable bytes from Divvy (17 bytes with the header: the 32-byte class); glibc gives 24.
        let script = """
            import ctypes
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            p = libc.malloc(1)
            print(libc.malloc_usable_size(ctypes.c_void_p(p)))
            """
        XCTAssertEqual(try run([python, "-c", script], preload: lib).stdout, "16\n")
        XCTAssertNotEqual(try run([python, "-c", script], preload: nil).stdout, "16\n")
    }

    /// Allocations the heap makes while serving a call (re-entry) land in the bootstrap arena, so a hot path that
    /// started allocating would show up as arena growth: after a warm-up, none is allowed.
    func testTheHeapDoesNotReenterMallocOnTheHotPath() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let script = """
            import ctypes
            libc = ctypes.CDLL(None)
            for name in ("malloc", "calloc", "realloc", "memalign"):
                getattr(libc, name).restype = ctypes.c_void_p
            libc.divvy_malloc_bootstrap_bytes.restype = ctypes.c_size_t
            sizes = [0, 1, 24, 100, 500, 3000, 20000, 40000, 200000]
            def work(rounds):
                for r in range(rounds):
                    for s in sizes:
                        p = libc.malloc(s)
                        p = libc.realloc(ctypes.c_void_p(p), s * 2 + 1)
                        libc.malloc_usable_size(ctypes.c_void_p(p))
                        libc.free(ctypes.c_void_p(p))
                        q = libc.calloc(3, s)
                        libc.free(ctypes.c_void_p(q))
                        for a in (64, 4096):
                            m = libc.memalign(a, s)
                            libc.free(ctypes.c_void_p(m))
                        out = ctypes.c_void_p()
                        libc.posix_memalign(ctypes.byref(out), 256, s)
                        libc.free(out)
            work(3)
            before = libc.divvy_malloc_bootstrap_bytes()
            work(300)
            print(before > 0, libc.divvy_malloc_bootstrap_bytes() - before)
            """
        let result = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(result.stdout, "True 0\n", result.stderr)
    }

    func testSortOfALargeFileIsIdentical() throws {
        let lib = try library()
        var random = SystemRandomNumberGenerator()
        var text = ""
        for _ in 0..<200_000 {
            text +=
                String(random.next() as UInt32, radix: 16) + " " + String(repeating: "x", count: Int.random(in: 0..<60))
                + "\n"
        }
        let input = Data(text.utf8)
        let plain = try run(["/usr/bin/sort", "--parallel=2", "-S", "20M"], preload: nil, input: input)
        let divvy = try run(["/usr/bin/sort", "--parallel=2", "-S", "20M"], preload: lib, input: input)
        XCTAssertEqual(divvy.status, 0, divvy.stderr)
        XCTAssertEqual(divvy.stdout.count, plain.stdout.count)
        XCTAssertTrue(divvy.stdout == plain.stdout, "sort output differs under the preload")
    }

    func testPythonWorkloadWithThreadsAndForkIsIdentical() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let script = """
            import os, threading, random
            r = random.Random(7)
            d = {}
            for i in range(100000):
                d[str(r.random())] = [r.randrange(1000) for _ in range(r.randrange(0, 20))]
            big = sorted(d.items(), key=lambda kv: (len(kv[1]), kv[0]))
            print(len(big), sum(len(v) for _, v in big), big[0][0], big[-1][0])
            out = []
            def work(n):
                s = []
                for i in range(20000):
                    s.append(bytearray(i % 300))
                    if len(s) > 100: s = s[50:]
                out.append(n)
            ts = [threading.Thread(target=work, args=(n,)) for n in range(4)]
            for t in ts: t.start()
            pid = os.fork()  # while the threads allocate
            if pid == 0:
                x = [str(i) * 10 for i in range(50000)]
                os._exit(0 if len(x) == 50000 else 1)
            _, status = os.waitpid(pid, 0)
            for t in ts: t.join()
            print("child", status, "threads", sorted(out))
            """
        let plain = try run([python, "-c", script], preload: nil)
        let divvy = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertEqual(divvy, plain)
    }

    func testMultiThreadedCStressIsIdentical() throws {
        let lib = try library()
        // Built by this package (`Sources/DivvyMallocStress/main.c`): four threads, cross-thread frees through
        // mailboxes, realloc chains, posix_memalign/aligned_alloc/memalign at alignments up to 64 KiB, contents
        // checked everywhere; it exits 1 on any mismatch.
        let stress = URL(fileURLWithPath: lib).deletingLastPathComponent().appendingPathComponent("DivvyMallocStress")
            .path
        let plain = try run([stress], preload: nil)
        let divvy = try run([stress], preload: lib)
        XCTAssertEqual(plain.status, 0, plain.stdout + plain.stderr)
        XCTAssertEqual(divvy.status, 0, divvy.stdout + divvy.stderr)
        XCTAssertTrue(divvy.stdout.hasPrefix("corner cases ok\nerrors 0\n"), divvy.stdout)
        XCTAssertEqual(divvy.stdout, plain.stdout)
    }

    func testGitCommitOfAThousandFilesIsIdentical() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/git") else { throw XCTSkip("no git") }
        func commitTree(preload: String?) throws -> String {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("divvy-git-\(UUID())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            for i in 0..<1000 {
                try Data("file \(i)\n\(String(repeating: "y", count: i % 500))\n".utf8)
                    .write(to: URL(fileURLWithPath: directory + "/f\(i).txt"))
            }
            let env = ["GIT_CONFIG_NOSYSTEM": "1", "HOME": directory]
            for command in [
                ["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
            ] {
                let result = try run(
                    ["/usr/bin/git"] + command, preload: preload, directory: directory, environment: env)
                XCTAssertEqual(result.status, 0, "git \(command): \(result.stderr)")
            }
            return try run(["/usr/bin/git", "rev-parse", "HEAD^{tree}"], preload: preload, directory: directory).stdout
        }
        let divvy = try commitTree(preload: lib)
        XCTAssertEqual(divvy.count, 41)
        XCTAssertEqual(divvy, try commitTree(preload: nil))
    }
}
