import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

// libDivvyMalloc's hardened mode, guard pages and statistics (docs/malloc.md, "Hardened mode" and "Statistics").
//
// The misuse tests run `DivvyMallocStress misuse KIND` under the preload: one deliberate heap error, after which the
// program says "survived" if nothing stopped it. They are extensions of the preload and heap test classes, so the
// usual filter runs them against whichever library is under test:
//
//     swift test --filter 'DivvyMallocPreloadTests|DivvyMallocHeapTests'
//     deploy/build-libdivvymalloc.sh .build/malloc-embedded
//     DIVVY_MALLOC_LIBRARY=$PWD/.build/malloc-embedded/libDivvyMalloc.so DIVVY_MALLOC_NO_RUNTIME=1 \
//         swift test --skip-build --filter 'DivvyMallocPreloadTests|DivvyMallocHeapTests'

extension DivvyMallocPreloadTests {
    /// The stress program's misuse mode under the preload, with `switches` set (and the Swift backtracer, which a
    /// crashing child would otherwise run, off).
    func misuse(_ kind: String, _ switches: [String: String]) throws -> Run {
        var environment = switches
        environment["SWIFT_BACKTRACE"] = "enable=no"
        return try run([try stressProgram, "misuse", kind], preload: try library(), environment: environment)
    }

    /// The lines of stderr that libDivvyMalloc wrote.
    func divvyLines(_ run: Run) -> [Substring] {
        run.stderr.split(separator: "\n").filter { $0.hasPrefix("divvy-malloc:") }
    }

    /// A run that the hardened mode stopped: SIGABRT before "survived", and exactly one line from the library, which
    /// starts with `prefix` and contains `detail`.
    func assertStopped(
        _ kind: String, _ switches: [String: String], _ prefix: String, _ detail: String, line: UInt = #line
    ) throws {
        let result = try misuse(kind, switches)
        XCTAssertEqual(result.status, -SIGABRT, "\(kind): \(result)", line: line)
        XCTAssertEqual(result.stdout, "ready\n", kind, line: line)
        let lines = divvyLines(result)
        XCTAssertEqual(lines.count, 1, "\(kind): \(result.stderr)", line: line)
        XCTAssertTrue(lines.first?.hasPrefix(prefix) ?? false, "\(kind): \(result.stderr)", line: line)
        XCTAssertTrue(lines.first?.contains(detail) ?? false, "\(kind): \(result.stderr)", line: line)
    }

    static let hardened = ["DIVVY_MALLOC_HARDENED": "1"]

    /// A second free of the same block aborts with one line naming it: a small block freed twice by its owner, a
    /// block freed by another thread (onto the page's remote-free stack) and then by its owner, a block with a page
    /// of its own (over 16 KiB), a huge block (over 1 MiB, kept in the cache of freed runs), and realloc of a freed
    /// block.
    func testHardenedModeDetectsDoubleFrees() throws {
        let small = "(64-byte block, size class 4)"
        try assertStopped("double-free", Self.hardened, "divvy-malloc: double free of 0x", small)
        try assertStopped("double-free-remote", Self.hardened, "divvy-malloc: double free of 0x", small)
        try assertStopped("double-free-large", Self.hardened, "divvy-malloc: double free of 0x", "-byte block")
        try assertStopped("double-free-huge", Self.hardened, "divvy-malloc: double free of 0x", "huge block")
        try assertStopped("realloc-freed", Self.hardened, "divvy-malloc: realloc of freed block 0x", small)
    }

    /// Pointers the heap never returned: an interior pointer, a pointer into a free block, a block boundary the page
    /// has not handed out yet, and an address in a segment's metadata.
    func testHardenedModeDetectsInvalidFrees() throws {
        let prefix = "divvy-malloc: invalid free of 0x"
        try assertStopped("interior", Self.hardened, prefix, "(interior pointer: 16 bytes into a 64-byte block")
        try assertStopped("into-free-block", Self.hardened, prefix, "(interior pointer: 32 bytes into a 64-byte")
        try assertStopped("never-allocated", Self.hardened, prefix, "(never handed out: a 64-byte block")
        try assertStopped("metadata", Self.hardened, prefix, "(not a block of this heap)")
    }

    /// A write into a freed block corrupts its (encoded) free-list link; allocating until that block is popped
    /// aborts with a message instead of handing out the address written there.
    func testHardenedModeDetectsACorruptedFreeListLink() throws {
        try assertStopped(
            "corrupt-link", Self.hardened, "divvy-malloc: corrupted free list: the free block 0x",
            "(64-byte block, size class 4) links to 0x")
    }

    /// DIVVY_MALLOC_GUARD=1: the page after a 40 000-byte block's usable size is PROT_NONE, so writing one byte past
    /// `malloc_usable_size` faults; without the switch the write lands in the page's unused room.
    func testGuardPagesMakeAnOverflowFault() throws {
        let guarded = try misuse("guard-overflow", ["DIVVY_MALLOC_GUARD": "1"])
        XCTAssertEqual(guarded.status, -SIGSEGV, "\(guarded)")
        XCTAssertEqual(guarded.stdout, "ready\nwriting past the usable size\n")
        let plain = try misuse("guard-overflow", [:])
        XCTAssertEqual(plain.status, 0, "\(plain)")
        XCTAssertEqual(plain.stdout, "ready\nwriting past the usable size\nsurvived\n")
    }

    /// Without the switches none of the machinery runs: links are stored as plain addresses (the C fast paths' own
    /// format), a double free goes unnoticed, a corrupted link is followed (the program crashes on it, or gets it
    /// back as a block), and nothing is printed. With DIVVY_MALLOC_HARDENED=1 the same probe finds encoded links.
    func testWithoutTheSwitchesNoneOfTheHardeningRuns() throws {
        XCTAssertEqual(try misuse("probe-links", [:]).stdout, "ready\nlinks plain\nsurvived\n")
        XCTAssertEqual(try misuse("probe-links", Self.hardened).stdout, "ready\nlinks encoded\nsurvived\n")
        let off = try misuse("probe-links", ["DIVVY_MALLOC_HARDENED": "0"])
        XCTAssertEqual(off.stdout, "ready\nlinks plain\nsurvived\n")
        for kind in ["double-free", "double-free-large", "interior", "never-allocated"] {
            let result = try misuse(kind, [:])
            XCTAssertEqual(result.status, 0, "\(kind): \(result)")
            XCTAssertEqual(result.stdout, "ready\nsurvived\n", kind)
            XCTAssertEqual(divvyLines(result), [], kind)
        }
        let corrupted = try misuse("corrupt-link", [:])
        XCTAssertNotEqual(corrupted.status, -SIGABRT, "\(corrupted)")
        XCTAssertEqual(divvyLines(corrupted), [])
    }

    /// Correct programs run unchanged under the hardened mode and guard pages: the stress program (four threads,
    /// cross-thread frees, realloc chains, aligned allocations, contents checked), its thread-exit mode (abandoned
    /// and adopted pages), and Python.
    func testHardenedModeAndGuardPagesRunCorrectPrograms() throws {
        let lib = try library()
        let both = ["DIVVY_MALLOC_HARDENED": "1", "DIVVY_MALLOC_GUARD": "1"]
        for switches in [Self.hardened, ["DIVVY_MALLOC_GUARD": "1"], both] {
            let stress = try run([try stressProgram], preload: lib, environment: switches)
            XCTAssertEqual(stress.status, 0, "\(switches): \(stress.stdout) \(stress.stderr)")
            XCTAssertTrue(stress.stdout.hasPrefix("corner cases ok\nerrors 0\n"), "\(switches): \(stress.stdout)")
            let exits = try run([try stressProgram, "thread-exit"], preload: lib, environment: switches)
            XCTAssertEqual(exits.status, 0, "\(switches): \(exits.stderr)")
            XCTAssertEqual(exits.stdout, "thread exits 40 handed over 12000 errors 0\n", "\(switches)")
            if FileManager.default.isExecutableFile(atPath: python) {
                let script =
                    "d = {str(i): [i] * (i % 50) for i in range(200000)}; print(sum(len(v) for v in d.values()))"
                let result = try run([python, "-c", script], preload: lib, environment: switches)
                XCTAssertEqual(result.stdout, "4900000\n", "\(switches): \(result.stderr)")
            }
        }
    }

    /// DIVVY_MALLOC_STATS=1 prints `malloc_stats()` to stderr when the program exits; without it, nothing.
    func testStatisticsArePrintedAtExitWhenAsked() throws {
        let lib = try library()
        // sort closes stderr before it exits (coreutils' close_stdout): the library keeps a copy for this.
        let printed = try run(
            ["/usr/bin/sort"], preload: lib, input: Data("b\na\n".utf8), environment: ["DIVVY_MALLOC_STATS": "1"])
        XCTAssertEqual(printed.stdout, "a\nb\n")
        let lines = printed.stderr.split(separator: "\n")
        XCTAssertTrue(lines.first?.hasPrefix("divvy-malloc statistics (pid ") ?? false, printed.stderr)
        for label in ["reserved", "mapped", "in use", "thread heaps", "class  block size"] {
            XCTAssertTrue(lines.contains { $0.hasPrefix(label) }, "\(label) missing: \(printed.stderr)")
        }
        let quiet = try run(["/usr/bin/sort"], preload: lib, input: Data("b\na\n".utf8))
        XCTAssertEqual(quiet.stderr, "")
    }

    /// `malloc_info(0, stream)` writes XML that parses, whose figures follow a known allocation pattern (1000
    /// blocks of 48 bytes: class 3), and `malloc_stats()` and the statistics make no nested malloc.
    func testMallocInfoWritesXMLThatParses() throws {
        let lib = try library()
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let script = """
            import ctypes, os, tempfile, xml.etree.ElementTree as ET
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            libc.fopen.restype = ctypes.c_void_p
            libc.divvy_malloc_reentries.restype = ctypes.c_ulong
            def info():
                path = tempfile.mktemp()
                f = libc.fopen(path.encode(), b"w")
                assert libc.malloc_info(0, ctypes.c_void_p(f)) == 0
                libc.fclose(ctypes.c_void_p(f))
                root = ET.parse(path).getroot()
                os.unlink(path)
                return root
            def class3(root):
                for size in root.find("sizes"):
                    if size.get("class") == "3": return int(size.get("count"))
                return 0
            before = info()
            blocks = [libc.malloc(48) for _ in range(1000)]
            after = info()
            for b in blocks: libc.free(ctypes.c_void_p(b))
            freed = info()
            libc.malloc_stats()
            assert libc.malloc_info(1, None) == -1
            print(after.tag, after.get("version"), after.find("options").get("hardened"))
            print(class3(after) - class3(before), class3(freed) - class3(before))
            used = lambda r: int(r.find("total[@type='in-use']").get("size"))
            mapped = int(after.find("system[@type='mapped']").get("size"))
            print(used(after) - used(before) >= 48000, mapped >= used(after), len(after.find("heaps")) >= 1)
            print(libc.divvy_malloc_reentries())
            """
        let result = try run([python, "-c", script], preload: lib)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, "malloc divvy-1 0\n1000 0\nTrue True True\n0\n", result.stderr)
        XCTAssertTrue(result.stderr.contains("divvy-malloc statistics (pid "), result.stderr)
    }
}

extension DivvyMallocHeapTests {
    /// `divvy_malloc_statistics_t` as CDivvyMalloc.h lays it out: 19 `size_t` fields, then 61 classes of 5, then 64
    /// heaps of 6 (the tests do not link the shim, whose malloc would replace this process's).
    struct Statistics {
        var words: [Int]
        static let fields = 19
        static let classes = 61
        static let heaps = 64
        static let size = (fields + classes * 5 + heaps * 6) * 8

        subscript(field: Int) -> Int { words[field] }
        var structSize: Int { words[0] }
        var bytesReserved: Int { words[1] }
        var bytesMapped: Int { words[2] }
        var bytesInUse: Int { words[3] }
        var hugeBlocks: Int { words[9] }
        var hugeBytesInUse: Int { words[10] }
        var hugeBytesCached: Int { words[11] }
        var threadHeaps: Int { words[12] }
        var heapsListed: Int { words[14] }
        var hardened: Int { words[16] }
        /// (block size, pages, blocks in use, capacity, bytes in use) of a class.
        func sizeClass(_ cls: Int) -> [Int] {
            let base = Statistics.fields + cls * 5
            return Array(words[base..<(base + 5)])
        }
        /// (heap, pages, bytes in use, refills, pages acquired, pages retired) of a listed heap.
        func heap(_ i: Int) -> [Int] {
            let base = Statistics.fields + Statistics.classes * 5 + i * 6
            return Array(words[base..<(base + 6)])
        }
    }

    func statistics() throws -> Statistics {
        typealias Call = @convention(c) (UnsafeMutableRawPointer?, Int) -> Int32
        let call = try librarySymbol("divvy_malloc_statistics", as: Call.self)
        var words = [Int](repeating: -1, count: Statistics.size / 8 + 8)
        let result = words.withUnsafeMutableBytes { call($0.baseAddress, Statistics.size) }
        XCTAssertEqual(result, 0)
        // Only `size` bytes are written: the words past them keep their -1.
        XCTAssertEqual(words[Statistics.size / 8], -1, "divvy_malloc_statistics wrote past the size it was given")
        return Statistics(words: words)
    }

    /// Bytes in use rise and fall with allocations, and per-class counts follow a known pattern: 1000 blocks of 48
    /// bytes (class 3), 10 of 5000 (class 29: 5120-byte blocks), 3 of 100 000 (a page each, class 47: 114 688
    /// bytes) and one of 3 MiB (a huge run). Freeing them all brings every count back.
    func testStatisticsFollowAKnownAllocationPattern() throws {
        let heap = try heap()
        let before = try statistics()
        XCTAssertEqual(before.structSize, Statistics.size)
        XCTAssertEqual(before.hardened, 0)
        XCTAssertEqual(before.sizeClass(3)[0], 48)
        XCTAssertEqual(before.sizeClass(29)[0], 5120)
        XCTAssertEqual(before.sizeClass(47)[0], 114_688)
        var blocks: [UnsafeMutableRawPointer] = []
        for (count, size) in [(1000, 48), (10, 5000), (3, 100_000), (1, 3 << 20)] {
            for _ in 0..<count { blocks.append(try XCTUnwrap(heap.malloc(size))) }
        }
        let during = try statistics()
        for (cls, blocksInUse, bytes) in [(3, 1000, 48_000), (29, 10, 51_200), (47, 3, 344_064)] {
            XCTAssertEqual(during.sizeClass(cls)[2] - before.sizeClass(cls)[2], blocksInUse, "class \(cls) blocks")
            XCTAssertEqual(during.sizeClass(cls)[4] - before.sizeClass(cls)[4], bytes, "class \(cls) bytes")
            XCTAssertGreaterThanOrEqual(during.sizeClass(cls)[3], during.sizeClass(cls)[2], "class \(cls) capacity")
        }
        XCTAssertEqual(during.hugeBlocks - before.hugeBlocks, 1)
        XCTAssertGreaterThanOrEqual(during.hugeBytesInUse - before.hugeBytesInUse, 3 << 20)
        let smallBytes = 48_000 + 51_200 + 344_064
        XCTAssertEqual(
            during.bytesInUse - before.bytesInUse, smallBytes + during.hugeBytesInUse - before.hugeBytesInUse)
        XCTAssertGreaterThanOrEqual(during.bytesMapped, during.bytesInUse)
        XCTAssertGreaterThanOrEqual(during.bytesReserved, during.bytesMapped)
        XCTAssertGreaterThanOrEqual(during.threadHeaps, 1)
        // Every page in use belongs to one listed heap entry: their bytes add up to the classes' bytes.
        let classBytes = (0..<Statistics.classes).reduce(0) { $0 + during.sizeClass($1)[4] }
        let heapBytes = (0..<during.heapsListed).reduce(0) { $0 + during.heap($1)[2] }
        XCTAssertEqual(heapBytes, classBytes)
        XCTAssertTrue((0..<during.heapsListed).contains { during.heap($0)[3] > 0 && during.heap($0)[4] > 0 })

        for block in blocks { heap.free(block) }
        let after = try statistics()
        for cls in [3, 29, 47] {
            XCTAssertEqual(after.sizeClass(cls)[2], before.sizeClass(cls)[2], "class \(cls) after the frees")
        }
        XCTAssertEqual(after.hugeBlocks, before.hugeBlocks)
        XCTAssertEqual(after.bytesInUse, before.bytesInUse)
        XCTAssertGreaterThan(after.hugeBytesCached + after[4], 0, "the freed pages and run are kept for reuse")
    }
}
