import DivvyTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// libDivvyMalloc's heap tested in-process: the library is `dlopen`ed (not preloaded) and its malloc family is called
/// through `dlsym`, so the test process keeps glibc's malloc for itself and the checks see exactly what the heap
/// returns. A randomized model (seeded: set `DIVVY_TEST_SEED` to replay) drives every function over sizes from 0 to
/// 3 MiB (small, medium, large classes and huge runs) and alignments up to 2 MiB, and checks alignment, usable sizes,
/// zeroing, contents across `realloc`, and (through fill patterns checked at every free) that no two live blocks
/// overlap. A multi-threaded test hands blocks between threads so most frees are remote, and accounts every block.
///
/// The library is the one next to this test binary, or `$DIVVY_MALLOC_LIBRARY` (the release build, or the no-runtime
/// build from `deploy/build-libdivvymalloc.sh`), as for `DivvyMallocPreloadTests`.
///
/// Skipped under sanitizers (they own malloc; the preload tests skip then too).
final class DivvyMallocHeapTests: XCTestCase {
    typealias Malloc = @convention(c) (Int) -> UnsafeMutableRawPointer?
    typealias Free = @convention(c) (UnsafeMutableRawPointer?) -> Void
    typealias Calloc = @convention(c) (Int, Int) -> UnsafeMutableRawPointer?
    typealias Realloc = @convention(c) (UnsafeMutableRawPointer?, Int) -> UnsafeMutableRawPointer?
    typealias PosixMemalign = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, Int) -> Int32
    typealias Memalign = @convention(c) (Int, Int) -> UnsafeMutableRawPointer?
    typealias UsableSize = @convention(c) (UnsafeMutableRawPointer?) -> Int
    typealias Stat = @convention(c) (Int32) -> Int

    struct Heap: @unchecked Sendable {
        let malloc: Malloc
        let free: Free
        let calloc: Calloc
        let realloc: Realloc
        let posixMemalign: PosixMemalign
        let memalign: Memalign
        let usableSize: UsableSize
        let stat: Stat
    }

    /// The library under test, opened once for the whole process.
    nonisolated(unsafe) static var loaded: Heap?

    /// `$DIVVY_MALLOC_LIBRARY` if set (as for `DivvyMallocPreloadTests`: the release or the no-runtime library),
    /// otherwise `libDivvyMalloc.so` next to this test binary.
    static func libraryPath() throws -> String {
        if let path = ProcessInfo.processInfo.environment["DIVVY_MALLOC_LIBRARY"] { return path }
        let binary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("libDivvyMalloc.so")
            .path
    }

    func heap() throws -> Heap {
        if dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil
            || dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
        {
            throw XCTSkip("a sanitizer owns malloc in this build")
        }
        if let heap = DivvyMallocHeapTests.loaded { return heap }
        let path = try DivvyMallocHeapTests.libraryPath()
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            XCTFail("cannot open \(path): build it with `swift build --build-tests` first")
            throw XCTSkip("libDivvyMalloc.so not built")
        }
        func symbol<T>(_ name: String, as type: T.Type) throws -> T {
            guard let address = dlsym(handle, name) else { throw XCTSkip("\(name) missing from \(path)") }
            return unsafeBitCast(address, to: type)
        }
        let heap = Heap(
            malloc: try symbol("malloc", as: Malloc.self), free: try symbol("free", as: Free.self),
            calloc: try symbol("calloc", as: Calloc.self), realloc: try symbol("realloc", as: Realloc.self),
            posixMemalign: try symbol("posix_memalign", as: PosixMemalign.self),
            memalign: try symbol("memalign", as: Memalign.self),
            usableSize: try symbol("malloc_usable_size", as: UsableSize.self),
            stat: try symbol("divvy_malloc_stat", as: Stat.self))
        DivvyMallocHeapTests.loaded = heap
        return heap
    }

    struct Live {
        var pointer: UnsafeMutableRawPointer
        var size: Int
        var alignment: Int
        var tag: UInt8
    }

    static func fill(_ block: Live, from start: Int = 0) {
        for i in start..<block.size {
            block.pointer.storeBytes(of: block.tag &+ UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self)
        }
    }

    /// The first offset whose byte is wrong, or nil.
    static func firstMismatch(_ block: Live, count: Int) -> Int? {
        for i in 0..<count
        where block.pointer.load(fromByteOffset: i, as: UInt8.self) != block.tag &+ UInt8(truncatingIfNeeded: i) {
            return i
        }
        return nil
    }

    static func randomSize(_ random: inout SeededGenerator) -> Int {
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<60: return Int.random(in: 0...1024, using: &random)
        case 60..<85: return Int.random(in: 1025...(128 << 10), using: &random)
        case 85..<97: return Int.random(in: (128 << 10)...(1 << 20), using: &random)
        default: return Int.random(in: (1 << 20)...(3 << 20), using: &random)
        }
    }

    func testRandomizedModelOfEveryFunction() throws {
        let heap = try heap()
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        var live: [Live] = []
        let context = "seed \(seed) (DIVVY_TEST_SEED=\(seed) replays it)"
        for step in 0..<6000 {
            let roll = Int.random(in: 0..<100, using: &random)
            if roll < 45 || live.isEmpty {
                let size = DivvyMallocHeapTests.randomSize(&random)
                var alignment = 16
                var pointer: UnsafeMutableRawPointer?
                var zeroed = false
                switch Int.random(in: 0..<4, using: &random) {
                case 0: pointer = heap.malloc(size)
                case 1:
                    pointer = heap.calloc(1, size)
                    zeroed = true
                case 2:
                    alignment = 1 << Int.random(in: 3...21, using: &random)
                    var out: UnsafeMutableRawPointer?
                    XCTAssertEqual(heap.posixMemalign(&out, alignment, size), 0, "step \(step), \(context)")
                    pointer = out
                default:
                    alignment = 1 << Int.random(in: 0...16, using: &random)
                    pointer = heap.memalign(alignment, size)
                }
                guard let pointer else {
                    XCTFail("allocation of \(size) bytes aligned to \(alignment) failed at step \(step), \(context)")
                    return
                }
                XCTAssertEqual(Int(bitPattern: pointer) % max(alignment, 16), 0, "step \(step), \(context)")
                XCTAssertGreaterThanOrEqual(heap.usableSize(pointer), size, "step \(step), \(context)")
                if zeroed {
                    for i in 0..<size where pointer.load(fromByteOffset: i, as: UInt8.self) != 0 {
                        XCTFail("calloc byte \(i) of \(size) is not zero at step \(step), \(context)")
                        break
                    }
                }
                let block = Live(
                    pointer: pointer, size: size, alignment: alignment, tag: UInt8.random(in: 0...255, using: &random))
                DivvyMallocHeapTests.fill(block)
                live.append(block)
            } else if roll < 75 {
                let index = Int.random(in: 0..<live.count, using: &random)
                let block = live.remove(at: index)
                if let offset = DivvyMallocHeapTests.firstMismatch(block, count: block.size) {
                    XCTFail("block of \(block.size) bytes changed at offset \(offset) before step \(step), \(context)")
                    return
                }
                heap.free(block.pointer)
            } else {
                let index = Int.random(in: 0..<live.count, using: &random)
                var block = live[index]
                let size = Int.random(in: 0..<4, using: &random) == 0
                    ? DivvyMallocHeapTests.randomSize(&random) : block.size + Int.random(in: 1...300, using: &random)
                guard size > 0, let moved = heap.realloc(block.pointer, size) else {
                    XCTAssertTrue(size == 0, "realloc to \(size) failed at step \(step), \(context)")
                    if size == 0 { live.remove(at: index) }  // realloc(p, 0) freed it
                    continue
                }
                block.pointer = moved
                block.alignment = 16
                XCTAssertEqual(Int(bitPattern: moved) % 16, 0, "step \(step), \(context)")
                XCTAssertGreaterThanOrEqual(heap.usableSize(moved), size, "step \(step), \(context)")
                if let offset = DivvyMallocHeapTests.firstMismatch(block, count: min(size, block.size)) {
                    XCTFail("realloc lost byte \(offset) (\(block.size) → \(size) bytes) at step \(step), \(context)")
                    return
                }
                let old = block.size
                block.size = size
                if size > old { DivvyMallocHeapTests.fill(block, from: old) }
                live[index] = block
            }
        }
        for block in live {
            XCTAssertNil(DivvyMallocHeapTests.firstMismatch(block, count: block.size), context)
            heap.free(block.pointer)
        }
    }

    /// A buffer grown by appending (a string builder, a dynamic array) must move O(log n) times, not once per size
    /// class: each move gives it room to double, and the next small growth must stay in place rather than "shrink"
    /// it back to a tight block. From 100 bytes to 1 MiB by 100-byte steps: at most 2 moves per doubling.
    func testReallocGrowthByAppendingMovesLogarithmicallyOften() throws {
        let heap = try heap()
        var pointer = try XCTUnwrap(heap.malloc(100))
        pointer.storeBytes(of: 0, as: UInt8.self)
        var size = 100
        var moves = 0
        while size < 1 << 20 {
            let grown = try XCTUnwrap(heap.realloc(pointer, size + 100))
            grown.storeBytes(of: UInt8(truncatingIfNeeded: size / 100), toByteOffset: size, as: UInt8.self)
            if grown != pointer { moves += 1 }
            pointer = grown
            size += 100
        }
        // log2(1 MiB / 100) ≈ 13.4 doublings.
        XCTAssertLessThanOrEqual(moves, 28, "a growth chain to 1 MiB moved \(moves) times")
        for offset in stride(from: 0, to: size, by: 100) {
            XCTAssertEqual(
                pointer.load(fromByteOffset: offset, as: UInt8.self), UInt8(truncatingIfNeeded: offset / 100))
        }
        // A block that really shrinks (below a quarter of its room) moves to a tighter class.
        let small = try XCTUnwrap(heap.realloc(pointer, 1000))
        XCTAssertLessThan(heap.usableSize(small), 4096)
        XCTAssertEqual(small.load(fromByteOffset: 900, as: UInt8.self), 9)
        heap.free(small)
    }

    /// A block over 16 KiB has a page to itself and grows in place to the page's end (as glibc grows a chunk into
    /// its free top): from 20 KiB to 900 KiB it never moves, its usable size follows, and its contents stay.
    func testBlocksOver16KiBGrowInPlace() throws {
        let heap = try heap()
        let block = try XCTUnwrap(heap.malloc(20_000))
        block.storeBytes(of: 0xAB, toByteOffset: 19_999, as: UInt8.self)
        for size in stride(from: 24_000, through: 900_000, by: 4000) {
            let grown = try XCTUnwrap(heap.realloc(block, size))
            XCTAssertEqual(grown, block, "a single-block page's block moved when grown to \(size) bytes")
            XCTAssertGreaterThanOrEqual(heap.usableSize(grown), size)
            grown.storeBytes(of: UInt8(truncatingIfNeeded: size / 4000), toByteOffset: size - 1, as: UInt8.self)
        }
        XCTAssertEqual(block.load(fromByteOffset: 19_999, as: UInt8.self), 0xAB)
        XCTAssertEqual(block.load(fromByteOffset: 899_999, as: UInt8.self), UInt8(truncatingIfNeeded: 225))
        // Shrinking a little stays in place; growing past the page moves it (here to a huge run) with its bytes.
        XCTAssertEqual(heap.realloc(block, 800_000), block)
        let moved = try XCTUnwrap(heap.realloc(block, 5 << 20))
        XCTAssertNotEqual(moved, block)
        XCTAssertEqual(moved.load(fromByteOffset: 19_999, as: UInt8.self), 0xAB)
        heap.free(moved)
    }

    /// Blocks over 16 KiB freed by another thread give their whole page back at once (there is no owner queue to
    /// collect them from): rounds of 64 such blocks allocated by one thread and freed by another must reuse the
    /// same pages, so the heap's segment count stays flat instead of growing every round.
    func testSingleBlockPagesFreedByOtherThreadsAreReused() throws {
        let heap = try heap()
        let seed = SeededGenerator.testSeed()
        var random = SeededGenerator(seed: seed)
        var segmentsAfterFirstRound = 0
        for round in 0..<40 {
            let sizes = (0..<64).map { _ in Int.random(in: (16 << 10 + 1)...(600 << 10), using: &random) }
            var blocks: [(UnsafeMutableRawPointer, Int)] = []
            for size in sizes {
                let pointer = try XCTUnwrap(heap.malloc(size))
                pointer.storeBytes(of: UInt8(truncatingIfNeeded: size), as: UInt8.self)
                pointer.storeBytes(of: UInt8(truncatingIfNeeded: size &>> 8), toByteOffset: size - 1, as: UInt8.self)
                blocks.append((pointer, size))
            }
            let handOff = blocks.map { (UInt(bitPattern: $0.0), $0.1) }
            let failures = Locked<[String]>([])
            let done = DispatchSemaphore(value: 0)
            // A fresh thread each round: it has no heap of its own yet, so every free is a foreign one.
            Thread {
                for (address, size) in handOff {
                    let pointer = UnsafeMutableRawPointer(bitPattern: address)!
                    let last = pointer.load(fromByteOffset: size - 1, as: UInt8.self)
                    if pointer.load(as: UInt8.self) != UInt8(truncatingIfNeeded: size)
                        || last != UInt8(truncatingIfNeeded: size &>> 8)
                    {
                        failures.withLock { $0.append("block of \(size) bytes changed (seed \(seed))") }
                    }
                    heap.free(pointer)
                }
                done.signal()
            }.start()
            done.wait()
            XCTAssertEqual(failures.withLock { $0 }, [])
            if round == 0 { segmentsAfterFirstRound = heap.stat(2) }
        }
        // Every round needs at most 64 pages; leaked pages would add about 16 segments a round (40 rounds: 600+).
        XCTAssertLessThanOrEqual(heap.stat(2), segmentsAfterFirstRound + 20, "seed \(seed)")
    }

    /// The process's resident bytes (`/proc/self/statm`).
    static func residentBytes() throws -> Int {
        let statm = try String(contentsOfFile: "/proc/self/statm", encoding: .utf8).split(separator: " ")
        return try XCTUnwrap(Int(statm[1])) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Minor page faults of the process so far.
    static func minorFaults() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_minflt
    }

    /// The default retention budget (`DIVVY_MALLOC_RETAIN`, docs/malloc.md): what may stay resident after frees.
    static var defaultBudget: Int { 128 << 20 }

    /// Freed big blocks do not stay resident beyond the retention budget. 200 blocks of 900 KiB (single-block pages:
    /// the page pools) and 40 huge blocks of 6 MiB (retained segments) are written through and freed: the process's
    /// resident size falls by all but the budget (and a thread's few cached pages), and the heap's retained total
    /// stays within the budget.
    func testFreedLargeBlocksBeyondTheBudgetAreGivenBackToTheKernel() throws {
        let heap = try heap()
        for size in [900 << 10, 6 << 20] {
            let count = size < 1 << 20 ? 200 : 40
            var blocks: [UnsafeMutableRawPointer] = []
            for _ in 0..<count {
                let block = try XCTUnwrap(heap.malloc(size))
                memset(block, 1, size)
                blocks.append(block)
            }
            let before = try DivvyMallocHeapTests.residentBytes()
            for block in blocks { heap.free(block) }
            let after = try DivvyMallocHeapTests.residentBytes()
            let written = count * size
            XCTAssertGreaterThan(
                before - after, written - DivvyMallocHeapTests.defaultBudget - (24 << 20),
                "\(count) blocks of \(size) bytes: resident \(before >> 20) MiB before the frees, \(after >> 20) after")
            XCTAssertLessThanOrEqual(heap.stat(5), DivvyMallocHeapTests.defaultBudget, "retained bytes")
            // The retained and purged pages serve again (zero-filled where calloc needs it).
            let again = try XCTUnwrap(heap.calloc(1, size))
            XCTAssertEqual(again.load(fromByteOffset: size - 8, as: UInt64.self), 0)
            XCTAssertEqual(again.load(fromByteOffset: size / 2, as: UInt64.self), 0)
            heap.free(again)
        }
    }

    /// A freed huge block under the budget stays committed: freeing a 16 MiB block and allocating it again costs
    /// (almost) no page faults. Trimming it on free would cost 4096 (one per 4 KiB page written again).
    func testAFreedHugeBlockUnderTheBudgetIsReusedWithoutPageFaults() throws {
        let heap = try heap()
        let size = 16 << 20
        let first = try XCTUnwrap(heap.malloc(size))
        memset(first, 7, size)
        let retainedBefore = heap.stat(5)
        heap.free(first)
        XCTAssertGreaterThanOrEqual(heap.stat(5) - retainedBefore, size, "the freed block is retained")
        let faults = DivvyMallocHeapTests.minorFaults()
        let second = try XCTUnwrap(heap.malloc(size))
        memset(second, 8, size)
        let taken = DivvyMallocHeapTests.minorFaults() - faults
        XCTAssertLessThan(taken, 512, "reusing a freed 16 MiB block took \(taken) page faults")
        // calloc of retained memory is zeroed.
        heap.free(second)
        let zeroed = try XCTUnwrap(heap.calloc(1, size))
        XCTAssertTrue(UnsafeRawBufferPointer(start: zeroed, count: size).allSatisfy { $0 == 0 })
        heap.free(zeroed)
    }

    /// Retained memory that nobody reuses goes back to the kernel after one to two epochs of
    /// `DIVVY_MALLOC_DECAY_MS` (1 s), at the next slow path (here a huge malloc and free).
    func testRetainedMemoryDecays() throws {
        let heap = try heap()
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<12 {
            let block = try XCTUnwrap(heap.malloc(5 << 20))
            memset(block, 3, 5 << 20)
            blocks.append(block)
        }
        for block in blocks { heap.free(block) }
        let retained = heap.stat(5)
        XCTAssertGreaterThanOrEqual(retained, 60 << 20, "twelve freed 5 MiB blocks are retained (budget 128 MiB)")
        let before = try DivvyMallocHeapTests.residentBytes()
        // Two full epochs, with a slow path in each, so the first one's low-water mark covers all of it.
        for _ in 0..<3 {
            usleep(1_100_000)
            heap.free(try XCTUnwrap(heap.malloc(2 << 20)))
        }
        let after = try DivvyMallocHeapTests.residentBytes()
        XCTAssertLessThan(heap.stat(5), 16 << 20, "retained \(heap.stat(5) >> 20) MiB after two idle epochs")
        XCTAssertGreaterThan(before - after, 40 << 20, "resident \(before >> 20) MiB, then \(after >> 20) MiB")
    }

    /// A huge block that cannot grow in place (another block follows it) moves with mremap: its pages are moved,
    /// not copied (the heap counts the moves), its contents stay, and the old run is free and clean again. A huge
    /// block shrunk to under half of its run gives the tail back in place.
    func testHugeBlocksGrowWithMremapAndShrinkInPlace() throws {
        let heap = try heap()
        let size = 16 << 20
        let block = try XCTUnwrap(heap.malloc(size))
        for offset in stride(from: 0, to: size, by: 4096) {
            block.storeBytes(of: UInt32(truncatingIfNeeded: offset), toByteOffset: offset, as: UInt32.self)
        }
        // Whatever follows the run (a block allocated after it, or the next free run) must not be enough: take the
        // segments after it until growing in place fails, by allocating blockers until one lands right after it.
        var blockers: [UnsafeMutableRawPointer] = []
        for _ in 0..<64 {
            let blocker = try XCTUnwrap(heap.malloc(2 << 20))
            blockers.append(blocker)
            let end = Int(bitPattern: block) + heap.usableSize(block)
            if Int(bitPattern: blocker) > Int(bitPattern: block), Int(bitPattern: blocker) < end + (8 << 20) { break }
        }
        let moves = heap.stat(7)
        let grown = try XCTUnwrap(heap.realloc(block, 4 * size))
        XCTAssertNotEqual(grown, block, "the block grew in place: nothing was in its way")
        XCTAssertEqual(heap.stat(7), moves + 1, "a 16 MiB huge block was copied, not moved with mremap")
        for offset in stride(from: 0, to: size, by: 4096)
        where grown.load(fromByteOffset: offset, as: UInt32.self) != UInt32(truncatingIfNeeded: offset) {
            XCTFail("byte \(offset) changed when the block moved")
            break
        }
        memset(grown + size, 9, 3 * size)
        XCTAssertGreaterThanOrEqual(heap.usableSize(grown), 4 * size)
        // Shrinking to an eighth stays in place and frees the run's tail (retained, or purged past the budget).
        let segments = heap.stat(2)
        XCTAssertEqual(heap.realloc(grown, size / 2), grown)
        XCTAssertLessThan(heap.usableSize(grown), size)
        XCTAssertLessThanOrEqual(heap.stat(2), segments - 12, "segments in use after shrinking 64 MiB to 8 MiB")
        XCTAssertEqual(grown.load(fromByteOffset: size / 2 - 4096, as: UInt32.self), UInt32(size / 2 - 4096))
        heap.free(grown)
        for blocker in blockers { heap.free(blocker) }
    }

    func testZeroSizesAndLimits() throws {
        let heap = try heap()
        // malloc(0) is a unique, freeable pointer with usable room.
        let a = try XCTUnwrap(heap.malloc(0))
        let b = try XCTUnwrap(heap.malloc(0))
        XCTAssertNotEqual(a, b)
        XCTAssertGreaterThanOrEqual(heap.usableSize(a), 1)
        heap.free(a)
        heap.free(b)
        heap.free(nil)
        XCTAssertEqual(heap.usableSize(nil), 0)
        // Failures set errno and return nil; nothing else changes.
        errno = 0
        XCTAssertNil(heap.malloc(-1))  // a size_t above Int.max
        XCTAssertEqual(errno, ENOMEM)
        errno = 0
        XCTAssertNil(heap.calloc(Int.max / 2, 3))
        XCTAssertEqual(errno, ENOMEM)
        var out: UnsafeMutableRawPointer? = UnsafeMutableRawPointer(bitPattern: 0x10)
        XCTAssertEqual(heap.posixMemalign(&out, 24, 8), EINVAL)
        XCTAssertEqual(out, UnsafeMutableRawPointer(bitPattern: 0x10))
        // Alignments past 2 MiB are refused (ENOMEM), not mis-served.
        XCTAssertEqual(heap.posixMemalign(&out, 4 << 20, 8), ENOMEM)
        XCTAssertEqual(out, UnsafeMutableRawPointer(bitPattern: 0x10))
        // A huge block grows in place or moves with its contents; shrinking it to a small size moves it to a class.
        let huge = try XCTUnwrap(heap.malloc(3 << 20))
        huge.storeBytes(of: 0xABCD, toByteOffset: (3 << 20) - 8, as: UInt64.self)
        let bigger = try XCTUnwrap(heap.realloc(huge, 9 << 20))
        XCTAssertEqual(bigger.load(fromByteOffset: (3 << 20) - 8, as: UInt64.self), 0xABCD)
        let small = try XCTUnwrap(heap.realloc(bigger, 100))
        XCTAssertLessThan(heap.usableSize(small), 4096)
        heap.free(small)
    }

    /// Four threads allocate; most blocks are freed by another thread (remote frees onto the owner's pages). Every
    /// block is checked and freed exactly once; threads exit with live blocks handed to others (abandoned pages).
    func testCrossThreadFreesAccountEveryBlockOnce() throws {
        let heap = try heap()
        let seed = SeededGenerator.testSeed()
        let threads = 4
        let perThread = 20_000
        let mailboxes = (0..<threads).map { _ in Locked<[Live]>([]) }
        let freed = Locked<Int>(0)
        let failures = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { id in
            var random = SeededGenerator(seed: seed &+ UInt64(id))
            var own: [Live] = []
            var count = 0
            for step in 0..<perThread {
                let size = Int.random(in: 0...2048, using: &random)
                guard let pointer = heap.malloc(size) else {
                    failures.withLock { $0.append("malloc(\(size)) failed in thread \(id) at step \(step)") }
                    return
                }
                let block = Live(pointer: pointer, size: size, alignment: 16, tag: UInt8(truncatingIfNeeded: step))
                DivvyMallocHeapTests.fill(block)
                if step % 4 == 0 {
                    own.append(block)
                } else {
                    mailboxes[(id + 1) % threads].withLock { $0.append(block) }
                }
                if step % 64 == 0 {
                    let mail = mailboxes[id].withLock { box -> [Live] in
                        defer { box.removeAll() }
                        return box
                    }
                    for block in mail + own {
                        if let offset = DivvyMallocHeapTests.firstMismatch(block, count: block.size) {
                            failures.withLock { $0.append("block changed at \(offset) (thread \(id))") }
                        }
                        heap.free(block.pointer)
                        count += 1
                    }
                    own.removeAll()
                }
            }
            for block in own {
                heap.free(block.pointer)
                count += 1
            }
            freed.withLock { $0 += count }
        }
        for box in mailboxes {
            for block in box.withLock({ $0 }) {
                XCTAssertNil(DivvyMallocHeapTests.firstMismatch(block, count: block.size))
                heap.free(block.pointer)
                freed.withLock { $0 += 1 }
            }
        }
        XCTAssertEqual(failures.withLock { $0 }, [], "seed \(seed)")
        XCTAssertEqual(freed.withLock { $0 }, threads * perThread, "seed \(seed)")
    }
}

// MARK: - The C rules are CAllocationAdapter's

extension DivvyMallocHeapTests {
    /// A function of the library `heap()` opened (for the ones `Heap` does not hold).
    func librarySymbol<T>(_ name: String, as type: T.Type) throws -> T {
        _ = try heap()
        let path = try DivvyMallocHeapTests.libraryPath()
        // RTLD_NOLOAD: the handle of the copy already open (it stays open: `heap()` keeps its reference).
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD) else { throw XCTSkip("\(path) not open") }
        defer { dlclose(handle) }
        guard let address = dlsym(handle, name) else { throw XCTSkip("\(name) missing from \(path)") }
        return unsafeBitCast(address, to: type)
    }

    /// libDivvyMalloc's functions are `CAllocationAdapter`'s over the per-thread heap: the C shim only gates and the
    /// heap knows none of these rules (it takes valid alignments and sizes), so every rule observed here comes from
    /// the adapter. A library whose entry points stopped going through it (or a shim that lost a rule it used to
    /// duplicate) fails here.
    func testTheCRulesComeFromTheAdapter() throws {
        typealias Aligned = @convention(c) (Int, Int) -> UnsafeMutableRawPointer?
        typealias Sized = @convention(c) (Int) -> UnsafeMutableRawPointer?
        typealias Reallocarray = @convention(c) (UnsafeMutableRawPointer?, Int, Int) -> UnsafeMutableRawPointer?
        let heap = try heap()
        let alignedAlloc = try librarySymbol("aligned_alloc", as: Aligned.self)
        let valloc = try librarySymbol("valloc", as: Sized.self)
        let pvalloc = try librarySymbol("pvalloc", as: Sized.self)
        let reallocarray = try librarySymbol("reallocarray", as: Reallocarray.self)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))

        // aligned_alloc: a power of two or EINVAL (C17); stricter than 2 MiB is ENOMEM; below 16 is served at 16.
        for alignment in [0, 3, 24, 48, 100, -64] {
            errno = 0
            XCTAssertNil(alignedAlloc(alignment, 10), "aligned_alloc(\(alignment))")
            XCTAssertEqual(errno, EINVAL, "aligned_alloc(\(alignment))")
        }
        errno = 0
        XCTAssertNil(alignedAlloc(4 << 20, 10))
        XCTAssertEqual(errno, ENOMEM)
        for alignment in [1, 8, 16, 4096, 1 << 20] {
            let p = try XCTUnwrap(alignedAlloc(alignment, 10))
            XCTAssertEqual(Int(bitPattern: p) % max(alignment, 16), 0, "aligned_alloc(\(alignment))")
            heap.free(p)
        }
        // memalign rounds a non-power-of-two up (glibc); only alignments above 2^63 are EINVAL.
        for (alignment, rounded) in [(0, 16), (3, 16), (24, 32), (100, 128), (5000, 8192), (40_000, 65_536)] {
            let p = try XCTUnwrap(heap.memalign(alignment, 10))
            XCTAssertEqual(Int(bitPattern: p) % rounded, 0, "memalign(\(alignment)) aligns to \(rounded)")
            heap.free(p)
        }
        errno = 0
        XCTAssertNil(heap.memalign(Int.min + 1, 10))
        XCTAssertEqual(errno, EINVAL)
        // valloc aligns to the page; pvalloc also rounds the size to whole pages, and pvalloc(0) is one page.
        for size in [0, 1, page - 1, page + 1] {
            let v = try XCTUnwrap(valloc(size))
            let p = try XCTUnwrap(pvalloc(size))
            let pages = max(1, (size + page - 1) / page) * page
            XCTAssertEqual(Int(bitPattern: v) % page, 0)
            XCTAssertEqual(Int(bitPattern: p) % page, 0)
            XCTAssertGreaterThanOrEqual(heap.usableSize(p), pages, "pvalloc(\(size))")
            memset(p, 0x5A, pages)
            heap.free(v)
            heap.free(p)
        }
        errno = 0
        XCTAssertNil(pvalloc(Int.max))
        XCTAssertEqual(errno, ENOMEM, "pvalloc's rounding overflows")
        // posix_memalign returns its codes and never touches errno (success or failure).
        var out: UnsafeMutableRawPointer? = nil
        errno = 777
        XCTAssertEqual(heap.posixMemalign(&out, 64, 100), 0)
        XCTAssertEqual(errno, 777)
        XCTAssertEqual(Int(bitPattern: out) % 64, 0)
        heap.free(out)
        let sentinel = UnsafeMutableRawPointer(bitPattern: 0x40)
        for (alignment, code) in [(0, EINVAL), (4, EINVAL), (48, EINVAL), (8 << 20, ENOMEM)] {
            out = sentinel
            XCTAssertEqual(heap.posixMemalign(&out, alignment, 100), code, "posix_memalign(\(alignment))")
            XCTAssertEqual(out, sentinel)
            XCTAssertEqual(errno, 777)
        }
        // realloc(NULL, n) is malloc; realloc(p, 0) frees and returns NULL, errno untouched.
        let r = try XCTUnwrap(heap.realloc(nil, 100))
        memset(r, 0x11, 100)
        XCTAssertNil(heap.realloc(r, 0))
        XCTAssertEqual(errno, 777)
        // reallocarray: overflow is ENOMEM with the block intact; a zero product frees.
        let a = try XCTUnwrap(reallocarray(nil, 10, 8))
        memset(a, 0x22, 80)
        for (count, size) in [(Int.max, 2), (1 << 40, 1 << 40), (-1, 8)] {
            errno = 0
            XCTAssertNil(reallocarray(a, count, size), "reallocarray(p, \(count), \(size))")
            XCTAssertEqual(errno, ENOMEM)
        }
        XCTAssertTrue(UnsafeRawBufferPointer(start: a, count: 80).allSatisfy { $0 == 0x22 })
        let grown = try XCTUnwrap(reallocarray(a, 100, 8))
        XCTAssertTrue(UnsafeRawBufferPointer(start: grown, count: 80).allSatisfy { $0 == 0x22 })
        errno = 0
        XCTAssertNil(reallocarray(grown, 0, 8))
        XCTAssertEqual(errno, 0)
        // calloc: a zero product is a unique pointer; overflow either way round is ENOMEM; a reused block is zeroed.
        let z1 = try XCTUnwrap(heap.calloc(0, 8))
        let z2 = try XCTUnwrap(heap.calloc(8, 0))
        XCTAssertNotEqual(z1, z2)
        heap.free(z1)
        heap.free(z2)
        for (count, size) in [(Int.max, 2), (2, Int.max), (1 << 32, 1 << 32), (-1, 1)] {
            errno = 0
            XCTAssertNil(heap.calloc(count, size), "calloc(\(count), \(size))")
            XCTAssertEqual(errno, ENOMEM)
        }
        let dirty = try XCTUnwrap(heap.malloc(200))
        memset(dirty, 0xEE, 200)
        heap.free(dirty)
        let clean = try XCTUnwrap(heap.calloc(1, 200))
        XCTAssertTrue(UnsafeRawBufferPointer(start: clean, count: 200).allSatisfy { $0 == 0 })
        heap.free(clean)
        // Sizes above SIZE_MAX / 2 (negative Ints) fail before the heap is asked.
        for size in [-1, Int.min] {
            errno = 0
            XCTAssertNil(heap.malloc(size))
            XCTAssertEqual(errno, ENOMEM)
            errno = 0
            XCTAssertNil(alignedAlloc(64, size))
            XCTAssertEqual(errno, ENOMEM)
        }
        XCTAssertEqual(heap.usableSize(nil), 0)
    }
}
