import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// Real programs under `LD_PRELOAD=libDivvyMalloc.so` produce the same output as without it.
///
/// The library is built next to this test binary by `swift build --build-tests` (what CI runs first), so these tests
/// exercise the *debug* library by default. The release library is a different binary (the C shim is compiled at
/// -O2, the Swift at -O) and has failed on its own before; to run the whole suite against it:
///
///     swift build -c release --product DivvyMalloc
///     DIVVY_MALLOC_LIBRARY=$PWD/.build/release/libDivvyMalloc.so swift test --filter DivvyMallocPreloadTests
///
/// Without that, `testEveryBuiltLibraryStartsPrograms` still runs a few programs with every configuration's library
/// that exists in `.build`, and `testTheConstructorSurvivesOptimization` checks the optimizer hazard directly.
///
/// The no-runtime library (Embedded Swift, `deploy/build-libdivvymalloc.sh`; docs/malloc-no-runtime.md) is tested
/// the same way, with `DIVVY_MALLOC_NO_RUNTIME=1` added so that `testTheNoRuntimeLibraryNeedsOnlyLibc` checks it
/// really loads no Swift runtime:
///
///     deploy/build-libdivvymalloc.sh .build/malloc-embedded
///     DIVVY_MALLOC_LIBRARY=$PWD/.build/malloc-embedded/libDivvyMalloc.so DIVVY_MALLOC_NO_RUNTIME=1 \
///         swift test --filter 'DivvyMallocPreloadTests|DivvyMallocHeapTests'
final class DivvyMallocPreloadTests: XCTestCase {
    /// This build's products directory (`.build/<triple>/<configuration>`).
    var productsDirectory: URL {
        get throws {
            let binary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            return URL(fileURLWithPath: binary).deletingLastPathComponent()
        }
    }

    /// `$DIVVY_MALLOC_LIBRARY` if set, otherwise `libDivvyMalloc.so` in this build's products directory.
    func library() throws -> String {
        let path = try ProcessInfo.processInfo.environment["DIVVY_MALLOC_LIBRARY"]
            ?? productsDirectory.appendingPathComponent("libDivvyMalloc.so").path
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
        // A child that dies early (a crashing preload) closes its stdin: the write must fail, not kill the tests with
        // SIGPIPE, so the exit status gets reported.
        signal(SIGPIPE, SIG_IGN)
        if let input { try? stdin.fileHandleForWriting.write(contentsOf: input) }
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

    /// Regression test for the release library crashing every program at startup (SIGSEGV building the heap inside
    /// libstdc++'s initialiser): runs a few programs with the library of every configuration built in `.build`
    /// (debug, release, …), not only the one next to this test binary. A library left over from an older commit is
    /// run too: rebuild it (or remove it) if this fails on a configuration you did not build.
    func testEveryBuiltLibraryStartsPrograms() throws {
        _ = try library()  // the sanitizer skip
        let configurations = try productsDirectory.deletingLastPathComponent()
        let libraries = try FileManager.default.contentsOfDirectory(atPath: configurations.path).sorted()
            .map { configurations.appendingPathComponent($0).appendingPathComponent("libDivvyMalloc.so").path }
            .filter { FileManager.default.fileExists(atPath: $0) }
        XCTAssertFalse(libraries.isEmpty)
        let hasPython = FileManager.default.isExecutableFile(atPath: python)
        for lib in libraries {
            XCTAssertEqual(try run(["/bin/true"], preload: lib).status, 0, "/bin/true under \(lib)")
            let input = Data((0..<20_000).map { "\(($0 * 7919) % 20_000)\n" }.joined().utf8)
            let plain = try run(["/usr/bin/sort", "-n"], preload: nil, input: input)
            let divvy = try run(["/usr/bin/sort", "-n"], preload: lib, input: input)
            XCTAssertEqual(divvy, plain, "sort under \(lib)")
            if hasPython {
                let result = try run([python, "-c", "print(sorted(range(10**6))[-1])"], preload: lib)
                XCTAssertEqual(result.stdout, "999999\n", "python3 under \(lib): \(result.stderr)")
            }
        }
    }

    /// The shim's readiness flag must survive optimization. At -O2, LLVM's GlobalOpt evaluates a constructor that only
    /// stores constants at compile time (it assumes a module's constructors run before its other code), deletes it
    /// and folds the flag to "ready" from the start. For a preloaded malloc that is wrong (ld.so and the
    /// dependencies' initialisers call malloc first), and the release library built the Swift heap before the Swift
    /// runtime was initialised. Debug builds (-O0) never showed it, so this compiles the shim the way release does
    /// and checks the constructor and the flag's load are still there, whichever configuration runs the tests.
    func testTheConstructorSurvivesOptimization() throws {
        let clang = ["/opt/swift/usr/bin/clang", "/usr/bin/clang"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/clang" }
        guard let compiler = clang.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("no clang to compile the shim with")
        }
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/CDivvyMalloc")
        let result = try run(
            [
                compiler, "-O2", "-fPIC", "-I", sources.appendingPathComponent("include").path, "-S", "-emit-llvm",
                "-o", "-", sources.appendingPathComponent("shim.c").path,
            ], preload: nil)
        XCTAssertEqual(result.status, 0, result.stderr)
        let ir = result.stdout
        let ctors = ir.split(separator: "\n").first { $0.hasPrefix("@llvm.global_ctors") }.map(String.init) ?? ""
        XCTAssertTrue(ctors.contains("@divvy_malloc_constructor"), "the constructor was optimized away: \(ctors)")
        XCTAssertTrue(
            ir.split(separator: "\n").contains { $0.contains("load") && $0.contains("@divvy_ready") },
            "the readiness check was optimized away")
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
    /// started allocating would show up as arena growth: after a warm-up, none is allowed. The arena may be unused
    /// until then (the no-runtime library has no dependency that allocates before its constructor runs), so one
    /// deliberate nested call (`divvy_malloc_test_reenter`) shows that the measure moves.
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
            after = libc.divvy_malloc_bootstrap_bytes()
            libc.divvy_malloc_test_reenter()
            print(after - before, libc.divvy_malloc_bootstrap_bytes() > after)
            """
        let result = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(result.stdout, "0 True\n", result.stderr)
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
        // It is a dependency of this test target, so it sits next to the test binary (not necessarily next to
        // `$DIVVY_MALLOC_LIBRARY`).
        let stress = try productsDirectory.appendingPathComponent("DivvyMallocStress").path
        let plain = try run([stress], preload: nil)
        let divvy = try run([stress], preload: lib)
        XCTAssertEqual(plain.status, 0, plain.stdout + plain.stderr)
        XCTAssertEqual(divvy.status, 0, divvy.stdout + divvy.stderr)
        XCTAssertTrue(divvy.stdout.hasPrefix("corner cases ok\nerrors 0\n"), divvy.stdout)
        // The checksum line depends on which thread sees which mailbox item when (it varies between plain runs
        // too); the verdict lines (corner cases, content errors) are what must be identical.
        func verdict(_ output: String) -> [Substring] {
            output.split(separator: "\n").filter { !$0.hasPrefix("checksum") }
        }
        XCTAssertEqual(verdict(divvy.stdout), verdict(plain.stdout))
    }

    func testGitCommitOfThreeThousandFilesIsIdentical() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/git") else { throw XCTSkip("no git") }
        func commitTree(preload: String?) throws -> String {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("divvy-git-\(UUID())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            // A few thousand files in 30 directories (git builds its index and trees with many small allocations).
            for d in 0..<30 {
                try FileManager.default.createDirectory(atPath: directory + "/d\(d)", withIntermediateDirectories: true)
            }
            for i in 0..<3000 {
                try Data("file \(i)\n\(String(repeating: "y", count: i % 500))\n".utf8)
                    .write(to: URL(fileURLWithPath: directory + "/d\(i % 30)/f\(i).txt"))
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

    /// gcc (cc1's parser and optimiser allocate heavily) compiles a generated C file to the same object file, byte
    /// for byte, with and without the preload; the program it links runs with the same output.
    func testGccCompilesToTheSameObjectFile() throws {
        let lib = try library()
        guard let gcc = ["/usr/bin/gcc", "/usr/bin/cc"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("no gcc")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("divvy-gcc-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Many functions with string tables and switch statements: enough work for gcc's own allocator use at -O2.
        var source = "#include <stdio.h>\n#include <string.h>\n"
        for f in 0..<400 {
            source += "static const char *t\(f)[] = {\"a\(f)\", \"bb\(f)\", \"ccc\(f)\"};\n"
            source += "unsigned f\(f)(unsigned x) { switch (x % 5) {"
            source += " case 0: return x * \(f + 1) + strlen(t\(f)[x % 3]);"
            source += " case 1: return x ^ \(f); case 2: return x << (\(f) % 7); default: return x + \(f); } }\n"
        }
        source += "int main(void) { unsigned s = 0;"
        for f in 0..<400 { source += " s += f\(f)(\(f));" }
        source += " printf(\"%u\\n\", s); return 0; }\n"
        try source.write(toFile: directory + "/program.c", atomically: true, encoding: .utf8)
        var objects: [Data] = []
        var outputs: [String] = []
        for (name, preload) in [("plain", nil), ("divvy", lib)] as [(String, String?)] {
            let object = directory + "/\(name).o"
            let compiled = try run(
                [gcc, "-O2", "-c", "program.c", "-o", object], preload: preload, directory: directory)
            XCTAssertEqual(compiled.status, 0, "\(name): \(compiled.stderr)")
            objects.append(try Data(contentsOf: URL(fileURLWithPath: object)))
            let linked = try run([gcc, object, "-o", directory + "/\(name)"], preload: preload, directory: directory)
            XCTAssertEqual(linked.status, 0, "\(name): \(linked.stderr)")
            outputs.append(try run([directory + "/\(name)"], preload: nil).stdout)
        }
        XCTAssertGreaterThan(objects[0].count, 10_000)
        XCTAssertTrue(objects[0] == objects[1], "gcc's object file differs under the preload")
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertFalse(outputs[0].isEmpty)
    }

    /// tar archives a tree of a few thousand files (deterministic options: sorted names, fixed times and owners) to
    /// the same bytes with and without the preload, and extracts it back to the same contents under it.
    func testTarArchivesAreIdentical() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tar") else { throw XCTSkip("no tar") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("divvy-tar-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory + "/tree", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for d in 0..<20 {
            try FileManager.default.createDirectory(
                atPath: directory + "/tree/d\(d)", withIntermediateDirectories: true)
        }
        for i in 0..<2000 {
            try Data("entry \(i)\n\(String(repeating: "z", count: (i * 37) % 3000))\n".utf8)
                .write(to: URL(fileURLWithPath: directory + "/tree/d\(i % 20)/f\(i).txt"))
        }
        let options = ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf"]
        var archives: [Data] = []
        for (name, preload) in [("plain", nil), ("divvy", lib)] as [(String, String?)] {
            let archive = directory + "/\(name).tar"
            let result = try run(["/usr/bin/tar"] + options + [archive, "tree"], preload: preload, directory: directory)
            XCTAssertEqual(result.status, 0, "\(name): \(result.stderr)")
            archives.append(try Data(contentsOf: URL(fileURLWithPath: archive)))
        }
        XCTAssertGreaterThan(archives[0].count, 1_000_000)
        XCTAssertTrue(archives[0] == archives[1], "tar's archive differs under the preload")
        try FileManager.default.createDirectory(atPath: directory + "/out", withIntermediateDirectories: true)
        let extracted = try run(
            ["/usr/bin/tar", "-xf", directory + "/divvy.tar", "-C", directory + "/out"], preload: lib)
        XCTAssertEqual(extracted.status, 0, extracted.stderr)
        let sample = "/tree/d7/f1987.txt"
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: directory + "/out" + sample)),
            try Data(contentsOf: URL(fileURLWithPath: directory + sample)))
    }

    /// The stress program's path, built next to this test binary (a dependency of the test target).
    var stressProgram: String {
        get throws { try productsDirectory.appendingPathComponent("DivvyMallocStress").path }
    }

    /// `fork()` while four threads allocate and free (with cross-thread frees): each of 12 children frees blocks
    /// the parent's other threads allocated, starts threads of its own that allocate and free heavily, and must
    /// exit 0 within 30 s. A lock inherited in the locked state would hang the child (SIGALRM), a heap left
    /// inconsistent would crash it or corrupt contents.
    func testForkWhileThreadsAllocateLeavesTheChildAWorkingAllocator() throws {
        let lib = try library()
        let plain = try run([try stressProgram, "fork"], preload: nil)
        let divvy = try run([try stressProgram, "fork"], preload: lib)
        XCTAssertEqual(plain.status, 0, plain.stdout + plain.stderr)
        XCTAssertEqual(divvy.status, 0, divvy.stdout + divvy.stderr)
        XCTAssertEqual(divvy.stdout, "forks 12 failed children 0 errors 0\n", divvy.stderr)
        XCTAssertEqual(divvy.stdout, plain.stdout)
    }

    /// Forty short-lived threads allocate, hand blocks to a consumer and exit while it still holds them: their
    /// pages are handed back at thread exit (empty ones pooled, the others abandoned), the consumer's frees into
    /// abandoned pages stay correct, and later threads adopt the abandoned pages.
    func testThreadExitHandsPagesBackAndOtherThreadsAdoptThem() throws {
        let lib = try library()
        let plain = try run([try stressProgram, "thread-exit"], preload: nil)
        let divvy = try run([try stressProgram, "thread-exit"], preload: lib)
        XCTAssertEqual(plain.status, 0, plain.stdout + plain.stderr)
        XCTAssertEqual(divvy.status, 0, divvy.stdout + divvy.stderr)
        XCTAssertEqual(divvy.stdout, "thread exits 40 handed over 12000 errors 0\n", divvy.stderr)
        XCTAssertEqual(divvy.stdout, plain.stdout)
        // "divvy: abandoned A adopted B segments S heaps H exits E" (the library's statistics, printed only when
        // the program finds `divvy_malloc_stat`).
        let line = divvy.stderr.split(separator: "\n").first { $0.hasPrefix("divvy: abandoned") } ?? ""
        let numbers = line.split(separator: " ").compactMap { Int($0) }
        XCTAssertEqual(numbers.count, 5, divvy.stderr)
        guard numbers.count == 5 else { return }
        XCTAssertGreaterThanOrEqual(numbers[4], 40, "every allocating thread's exit handed its heap back: \(line)")
        XCTAssertEqual(numbers[3], 1, "only the main thread still has a heap: \(line)")
        XCTAssertGreaterThan(numbers[1], 0, "later threads adopted abandoned pages: \(line)")
        XCTAssertFalse(plain.stderr.contains("divvy:"))
    }

    /// The re-entry guard counts every malloc-family call made while the calling thread is already inside one
    /// (`divvy_malloc_reentries()`): a hot path that started allocating (a class instance, an array, a string, an
    /// existential box, a lazy global) would move the count. After a warm-up (a debug build's Swift runtime may
    /// instantiate generic metadata once), a workload of every function, sizes from 0 to 8 MiB, threads and
    /// cross-thread frees must leave it unchanged. `divvy_malloc_test_reenter()` makes one nested call on purpose,
    /// so the test also proves the counter counts.
    func testTheHotPathNeverReentersMalloc() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let script = """
            import ctypes, threading
            libc = ctypes.CDLL(None)
            for name in ("malloc", "calloc", "realloc", "memalign", "aligned_alloc"):
                getattr(libc, name).restype = ctypes.c_void_p
            libc.divvy_malloc_reentries.restype = ctypes.c_ulong
            sizes = [0, 1, 24, 100, 500, 3000, 20000, 40000, 200000, 900000, 3000000, 8000000]
            handed = []
            lock = threading.Lock()
            def work(rounds):
                for r in range(rounds):
                    for s in sizes:
                        p = libc.malloc(s)
                        p = libc.realloc(ctypes.c_void_p(p), s * 2 + 1)
                        libc.malloc_usable_size(ctypes.c_void_p(p))
                        with lock: handed.append(p)
                        q = libc.calloc(3, s)
                        libc.free(ctypes.c_void_p(q))
                        for a in (64, 4096, 1 << 20):
                            m = libc.memalign(a, s)
                            libc.free(ctypes.c_void_p(m))
                        out = ctypes.c_void_p()
                        libc.posix_memalign(ctypes.byref(out), 256, s)
                        libc.free(out)
                    with lock:
                        for p in handed: libc.free(ctypes.c_void_p(p))
                        handed.clear()
            work(3)
            before = libc.divvy_malloc_reentries()
            threads = [threading.Thread(target=work, args=(40,)) for _ in range(3)]
            for t in threads: t.start()
            work(40)
            for t in threads: t.join()
            after = libc.divvy_malloc_reentries()
            libc.divvy_malloc_test_reenter()
            print(after - before, libc.divvy_malloc_reentries() - after)
            """
        let result = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(result.stdout, "0 1\n", result.stderr)
    }

    /// No call re-enters malloc at all, from the process's first allocation on: the library runs its Swift entry
    /// points once as set-up code when the first heap is created, so even a debug build (whose unspecialized
    /// `CAllocationAdapter` asks the Swift runtime for generic metadata on first use, which allocates) makes no nested
    /// call inside a malloc-family function. The count is read before the program's first explicit call and again
    /// after every function has run once on two threads, with no warm-up excluded.
    func testNoCallReentersMallocFromTheFirstOne() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let script = """
            import ctypes, threading
            libc = ctypes.CDLL(None)
            for name in ("malloc", "calloc", "realloc", "reallocarray", "memalign", "aligned_alloc", "valloc",
                         "pvalloc"):
                getattr(libc, name).restype = ctypes.c_void_p
            libc.divvy_malloc_reentries.restype = ctypes.c_ulong
            start = libc.divvy_malloc_reentries()
            def work():
                for s in [0, 1, 24, 100, 3000, 40000, 200000, 3000000]:
                    p = libc.malloc(s)
                    p = libc.realloc(ctypes.c_void_p(p), s * 2 + 1)
                    p = libc.reallocarray(ctypes.c_void_p(p), 3, s + 1)
                    libc.malloc_usable_size(ctypes.c_void_p(p))
                    libc.free(ctypes.c_void_p(p))
                    libc.free(ctypes.c_void_p(libc.calloc(3, s)))
                    for a in (64, 4096, 1 << 20):
                        libc.free(ctypes.c_void_p(libc.memalign(a, s)))
                        libc.free(ctypes.c_void_p(libc.aligned_alloc(a, s)))
                    libc.free(ctypes.c_void_p(libc.valloc(s)))
                    libc.free(ctypes.c_void_p(libc.pvalloc(s)))
                    out = ctypes.c_void_p()
                    libc.posix_memalign(ctypes.byref(out), 256, s)
                    libc.free(out)
                    libc.aligned_alloc(24, s)
                    libc.calloc(1 << 62, 8)
            work()
            t = threading.Thread(target=work)
            t.start()
            t.join()
            print(start, libc.divvy_malloc_reentries())
            """
        let result = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(result.stdout, "0 0\n", result.stderr)
    }

    /// The exported `malloc` and `free` run their fast paths (CDivvyMallocFastPath.h) at re-entry depth 0, which is
    /// safe only because those paths call nothing: a call added there could re-enter malloc unnoticed by the depth
    /// counter. So the machine code of both symbols, in the library under test, may call (or tail-jump to) only
    /// their full paths, which raise the depth before doing anything else.
    func testTheFastPathsCallNothingButTheFullPaths() throws {
        let lib = try library()
        let objdump = ["/usr/bin/objdump", "/bin/objdump"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let objdump else { return XCTFail("objdump is missing (Debian package binutils)") }
        let listing = try run([objdump, "-d", "--no-show-raw-insn", lib], preload: nil)
        XCTAssertEqual(listing.status, 0, listing.stderr)
        for (symbol, fullPath) in [("malloc", "divvy_malloc_full"), ("free", "divvy_free_full")] {
            let lines = listing.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            guard let start = lines.firstIndex(where: { $0.hasSuffix("<\(symbol)>:") }) else {
                XCTFail("\(symbol) not found in the disassembly of \(lib)")
                continue
            }
            let body = lines[(start + 1)...].prefix { !$0.isEmpty }
            XCTAssertFalse(body.isEmpty, symbol)
            var reachesFullPath = false
            for line in body {
                // "  addr:\tmnemonic operands": every call, and every jump (conditional or not) that leaves the
                // function, must go to the full path.
                let fields = line.split(separator: "\t")
                guard fields.count >= 2, let mnemonic = fields[1].split(separator: " ").first,
                    mnemonic.hasPrefix("j") || mnemonic.hasPrefix("call")
                else { continue }
                if line.contains("<\(symbol)+") { continue }
                XCTAssertTrue(line.contains("<\(fullPath)>"), "\(symbol) leaves its fast path through: \(line)")
                reachesFullPath = true
            }
            XCTAssertTrue(reachesFullPath, "\(symbol) never reaches \(fullPath): did the disassembly change shape?")
        }
    }

    /// The library exports the malloc family and its diagnostics, nothing else (`libDivvyMalloc.map`): a preloaded
    /// library exporting its Swift modules or C shims would interpose on a program carrying its own copy of them.
    func testTheLibraryExportsOnlyTheMallocFamilyAndItsDiagnostics() throws {
        let lib = try library()
        let nm = ["/usr/bin/nm", "/bin/nm", "/opt/swift/usr/bin/llvm-nm"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        guard let nm else { return XCTFail("nm is missing (Debian package binutils)") }
        let listing = try run([nm, "-D", "--defined-only", lib], preload: nil)
        XCTAssertEqual(listing.status, 0, listing.stderr)
        // "address type name": an upper-case type is a global symbol (lower-case ones are local, not interposable).
        let exported = listing.stdout.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count == 3, let type = fields[1].first, type.isUppercase else { return nil }
            return String(fields[2])
        }
        let expected = [
            "aligned_alloc", "calloc", "free", "malloc", "malloc_usable_size", "memalign", "posix_memalign", "pvalloc",
            "realloc", "reallocarray", "valloc", "malloc_stats", "malloc_info", "divvy_malloc_bootstrap_bytes",
            "divvy_malloc_reentries", "divvy_malloc_stat", "divvy_malloc_statistics", "divvy_malloc_test_reenter",
        ]
        XCTAssertEqual(exported.sorted(), expected.sorted(), "\(lib)'s exports (update libDivvyMalloc.map)")
    }

    /// The no-runtime build (`DIVVY_MALLOC_NO_RUNTIME=1`, with `DIVVY_MALLOC_LIBRARY` naming the library that
    /// `deploy/build-libdivvymalloc.sh` built) depends on libc alone: its dynamic section needs no Swift library (nor
    /// libstdc++) and carries no RUNPATH into a toolchain, it imports no Swift runtime function and contains none of
    /// the Swift heap's allocation entry points (Embedded Swift emits one only when something allocates), and a
    /// program started under it maps no `libswift*`.
    func testTheNoRuntimeLibraryNeedsOnlyLibc() throws {
        guard ProcessInfo.processInfo.environment["DIVVY_MALLOC_NO_RUNTIME"] == "1" else {
            throw XCTSkip(
                "set DIVVY_MALLOC_NO_RUNTIME=1 and DIVVY_MALLOC_LIBRARY to the library deploy/build-libdivvymalloc.sh "
                    + "built")
        }
        let lib = try library()
        let tools = ["/usr/bin/readelf", "/usr/bin/nm"]
        for tool in tools where !FileManager.default.isExecutableFile(atPath: tool) {
            return XCTFail("\(tool) is missing (Debian package binutils)")
        }
        let dynamic = try run(["/usr/bin/readelf", "-d", "-W", lib], preload: nil)
        XCTAssertEqual(dynamic.status, 0, dynamic.stderr)
        // "0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]"
        let needed = dynamic.stdout.split(separator: "\n").filter { $0.contains("(NEEDED)") }.compactMap { line in
            line.split(separator: "[").last.map { String($0.dropLast()) }
        }
        let allowed: Set = ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "ld-linux-x86-64.so.2"]
        XCTAssertTrue(needed.contains("libc.so.6"), "\(lib) needs \(needed)")
        XCTAssertEqual(needed.filter { !allowed.contains($0) }, [], "\(lib) needs more than libc")
        XCTAssertFalse(
            dynamic.stdout.contains("(RUNPATH)") || dynamic.stdout.contains("(RPATH)"),
            "\(lib) has a library search path: \(dynamic.stdout)")

        let undefined = try run(["/usr/bin/nm", "-D", "--undefined-only", lib], preload: nil)
        XCTAssertEqual(undefined.status, 0, undefined.stderr)
        let swiftImports = undefined.stdout.split(separator: "\n").filter { $0.contains("swift") }
        XCTAssertEqual(swiftImports, [], "\(lib) imports Swift runtime functions")
        let symbols = try run(["/usr/bin/nm", lib], preload: nil)
        XCTAssertEqual(symbols.status, 0, symbols.stderr)
        for allocator in ["swift_allocObject", "swift_slowAlloc", "swift_allocBox"] {
            XCTAssertFalse(
                symbols.stdout.split(separator: "\n").contains { $0.hasSuffix(" \(allocator)") },
                "\(lib) contains \(allocator): something in it allocates from the Swift heap")
        }

        let maps = try run(["/bin/cat", "/proc/self/maps"], preload: lib)
        XCTAssertEqual(maps.status, 0, maps.stderr)
        XCTAssertTrue(maps.stdout.contains("libDivvyMalloc.so"), "the preload did not load")
        XCTAssertFalse(maps.stdout.contains("libswift"), "a Swift runtime library was mapped: \(maps.stdout)")
        XCTAssertFalse(maps.stdout.contains("libstdc++"), "libstdc++ was mapped: \(maps.stdout)")
    }
}
