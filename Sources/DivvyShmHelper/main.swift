// divvy-shm-helper: the second process in DivvyShmTests. It opens a region (by name, or by an inherited
// descriptor), then runs the operations on its command line in order, and exits with a status the test checks.
//
//   divvy-shm-helper name <name> <prefix> OPS...     open /<prefix><name>
//   divvy-shm-helper fd <n> OPS...                   open the region behind inherited descriptor n
//   divvy-shm-helper create <name> <prefix> <dataSize> OPS...
//                                                    create it (base pages, full commitment); exit 4 if it exists
//   divvy-shm-helper create-lazy <name> <prefix> <dataSize> OPS...      the same with lazy commitment
//   divvy-shm-helper open-retry <name> <prefix> OPS...
//                                                    open it, retrying while it is missing or being initialized
//
// OPS (offsets are region offsets, decimal):
//   fill <offset> <length> <byte>      write `length` copies of `byte`
//   expect <offset> <length> <byte>    every byte must equal `byte` (else exit 1)
//   signal <offset> <value>            store a UInt64 with release ordering (a flag the parent waits for)
//   await <offset> <value>             wait until the UInt64 there reads `value` (acquire); exit 3 after 60 s
//   data-area <rw|ro>                  from now on use a mapping of the data area alone
//   out-of-bounds <offset>             translating `offset` through the current mapping must throw .outOfBounds
//   write-raw <offset>                 write one byte through the raw pointer, bypassing the access check (a
//                                      read-only mapping must kill the process with SIGSEGV)
//   increment <offset> <count>         add 1 to the UInt64 there `count` times (relaxed atomic adds)
//   print-header                       print the header's nonce and page kind on stdout
//
// With DIVVY_HELPER_ADDRESS_SPACE_LIMIT=<bytes> in the environment, RLIMIT_AS is set to that first (so that a test
// can make mmap fail half-way through creating a region).
//
// Heap subcommands (SharedHeapTests):
//   divvy-shm-helper heap <name> <prefix> HEAPOPS...   open the region, attach to its heap, join as one participant
// HEAPOPS:
//   alloc <count> <seed> <outFile>     allocate `count` blocks of random sizes, fill each with its handle's pattern
//                                      byte, write "rawHandle size" lines to outFile (atomically, by rename)
//   adopt <inFile>                     adopt every handle listed in inFile and check its pattern (else exit 1)
//   free-file <inFile>                 free every handle listed in inFile (this participant's holding)
//   free-all                           free every block this participant holds
//   free-expect <inFile> <code>        freeing each listed handle must throw SharedHeapError `code` (e.g. notHeld)
//   touch <file> / wait-file <file>    create a file / wait until it exists (exit 3 after 60 s)
//   verify-clean                       exit 1 unless verify() reports no violation
//   exit-without-leave                 print the counts and exit at once: the participant stays registered with
//                                      its holdings and pages (what a crash leaves for recovery)
//   stress <threads> <iterations> <seed> <mailboxHandle> <mailboxSlots>
//                                      threads, one participant each, allocate, exchange handles through the
//                                      mailbox block (UInt64 slots swapped atomically), adopt, check and free
// At the end it leaves and prints "allocated=A released=R adopted=D stale=S" on stdout.
//
// Crash torture (SharedHeapRecoveryTests):
//   divvy-shm-helper torture <name> <prefix> <mailboxHandle> <seed> [<readySlot> <stopSlot> [<participants>]]
//                                      join, store index + 1 into mailbox slot readySlot (default 0), then loop
//                                      (until SIGKILLed, or until slot stopSlot reads non-zero: then free all,
//                                      leave, exit 0): allocate and fill blocks, publish some in slots 3…15 (CAS
//                                      from 0), free random holdings, adopt handles the parent put in slots 16…31
//                                      (with a stop slot also those in 3…15) and check their pattern (exit 1)
//
// Page-move crash test (SharedHeapRecoveryTests):
//   divvy-shm-helper page-churn <name> <prefix> <mailboxHandle> <seed>
//                                      join, store index + 1 into mailbox slot 0, then loop until SIGKILLed:
//                                      allocate 1…40 blocks of random classes (both tiers), free them in random
//                                      order; a page whose last block goes back to the pool, so nearly every
//                                      round claims and releases pages
//
// Lazy commit (SharedHeapLazyTests):
//   divvy-shm-helper lazy-fill <name> <prefix> <dataSize> <sizes>
//                                      create a named lazily committed region of <dataSize> data bytes with a heap
//                                      (SharedHeap.initialMetadataSize committed), join, and for each size in the
//                                      comma-separated <sizes> allocate blocks and write every byte of each until
//                                      heapFull; then free them all, check verify() is clean, allocate and write
//                                      one block of each size that got any again (the first size must get some).
//                                      Prints "heapFull size=S blocks=N" per size and
//                                      "committed=B" (st_blocks of the object) on stdout. Run it with a small tmpfs
//                                      on /dev/shm (a private mount namespace): it must end with heapFull, never
//                                      SIGBUS. Exit 1 when any other error happens or no heapFull was seen.
//
// Owner lock (SharedRegionTests):
//   divvy-shm-helper hold-lock <name> <prefix>      take the region's owner lock, print "LOCKED", sleep until killed
//                                                    (exit 4 when another process holds it)
//
// System layer (DivvySystemTests): programmer errors must trap, with a message naming the call.
//   divvy-shm-helper system close-twice      close a descriptor, then close it again (must trap: EBADF)
//   divvy-shm-helper system ftruncate-closed ftruncate a closed descriptor (must trap: EBADF)
//
// Exit status: 0 all good, 1 a check failed, 2 a region error (printed on stderr), 3 timeout, 4 the name was taken,
// 64 usage.
import Atomics
import DivvyShm
import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

func fail(_ status: Int32, _ message: String) -> Never {
    var text = "divvy-shm-helper[\(getpid())]: \(message)\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(status)
}

nonisolated(unsafe) var arguments = Array(CommandLine.arguments.dropFirst())
func next() -> String {
    guard !arguments.isEmpty else { fail(64, "missing argument") }
    return arguments.removeFirst()
}
func nextInt() -> Int {
    let word = next()
    guard let value = Int(word) else { fail(64, "not a number: \(word)") }
    return value
}

if let limit = getenv("DIVVY_HELPER_ADDRESS_SPACE_LIMIT").flatMap({ rlim_t(String(cString: $0)) }) {
    var rlimit = rlimit(rlim_cur: limit, rlim_max: limit)
    guard setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &rlimit) == 0 else { fail(64, "setrlimit(RLIMIT_AS, \(limit)) failed") }
}

if arguments.first == "system" {
    arguments.removeFirst()
    guard case .success(let fd) = systemOpen("/dev/null", flags: O_RDONLY | O_CLOEXEC) else { fail(1, "open") }
    systemClose(fd)
    switch next() {
    case "close-twice": systemClose(fd)
    case "ftruncate-closed": _ = systemFtruncate(fd, length: 0)
    case let other: fail(64, "unknown system operation \(other)")
    }
    fail(1, "the programmer error did not trap")
}
if arguments.first == "hold-lock" {
    arguments.removeFirst()
    let name = next()
    let prefix = next()
    do {
        let lock = try SharedRegionOwnerLock.acquire(name: name, namePrefix: prefix)
        // write(2), not print: stdout is a pipe, and print's buffer would only be flushed at exit.
        _ = "LOCKED\n".withCString { write(1, $0, 7) }
        withExtendedLifetime(lock) {
            while true { sleep(60) }
        }
    } catch {
        fail(error.code == .inUse ? 4 : 2, "\(error)")
    }
}
if arguments.first == "heap" {
    arguments.removeFirst()
    runHeapHelper()
}
if arguments.first == "torture" {
    arguments.removeFirst()
    runTortureWorker()
}
if arguments.first == "page-churn" {
    arguments.removeFirst()
    runPageChurnWorker()
}
if arguments.first == "lazy-fill" {
    arguments.removeFirst()
    runLazyFill()
}

do {
    let region: SharedRegion
    switch next() {
    case "name":
        let name = next()
        region = try SharedRegion.open(name: name, namePrefix: next())
    case "fd":
        region = try SharedRegion.open(fileDescriptor: FileDescriptor(rawValue: Int32(nextInt())))
    case let source where source == "create" || source == "create-lazy":
        let (name, prefix, size) = (next(), next(), nextInt())
        do {
            region = try SharedRegion.create(
                name: name,
                .init(
                    dataSize: size, namePrefix: prefix, hugePages: .none,
                    commitment: source == "create" ? .full : .lazy))
        } catch where error.code == .alreadyExists {
            exit(4)
        }
    case "open-retry":
        let (name, prefix) = (next(), next())
        var attempts = 0
        while true {
            do {
                region = try SharedRegion.open(name: name, namePrefix: prefix)
                break
            } catch where error.code == .notFound || error.code == .notInitialized {
                attempts += 1
                if attempts > 600_000 { fail(3, "timed out opening \(name): \(error)") }
                usleep(100)
            }
        }
    case let other:
        fail(64, "unknown source \(other)")
    }
    var mapping = region.mapping
    while !arguments.isEmpty {
        switch next() {
        case "fill":
            let (offset, length, byte) = (nextInt(), nextInt(), UInt8(nextInt()))
            try mapping.withUnsafeMutableBytes(atOffset: offset, length: length) {
                $0.initializeMemory(as: UInt8.self, repeating: byte)
            }
        case "expect":
            let (offset, length, byte) = (nextInt(), nextInt(), UInt8(nextInt()))
            let bad = try mapping.withUnsafeBytes(atOffset: offset, length: length) { bytes in
                bytes.firstIndex { $0 != byte }
            }
            if let bad { fail(1, "byte at offset \(offset + bad) is not \(byte)") }
        case "signal":
            let (offset, value) = (nextInt(), UInt64(nextInt()))
            let word = try mapping.unsafePointer(forOffset: offset, length: 8)
            // Release: the parent's acquiring load of this flag then sees every write made before it.
            UnsafeAtomic<UInt64>(at: word.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
                .store(value, ordering: .releasing)
        case "await":
            let (offset, value) = (nextInt(), UInt64(nextInt()))
            let word = try mapping.unsafePointer(forOffset: offset, length: 8)
            let flag = UnsafeAtomic<UInt64>(at: word.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            var waited = 0
            // Acquire: pairs with the parent's releasing store of the flag.
            while flag.load(ordering: .acquiring) != value {
                usleep(1000)
                waited += 1
                if waited > 60_000 { fail(3, "timed out waiting for \(value) at offset \(offset)") }
            }
        case "data-area":
            mapping = try region.mapDataArea(access: next() == "rw" ? .readWrite : .readOnly)
        case "out-of-bounds":
            let offset = nextInt()
            do {
                _ = try mapping.unsafePointer(forOffset: offset)
                fail(1, "offset \(offset) was translated, expected .outOfBounds")
            } catch where error.code == .outOfBounds {
                // Expected.
            }
        case "write-raw":
            let pointer = try mapping.unsafePointer(forOffset: nextInt())
            pointer.storeBytes(of: 0xEE, as: UInt8.self)
        case "increment":
            let (offset, count) = (nextInt(), nextInt())
            let word = try mapping.unsafePointer(forOffset: offset, length: 8)
            let counter = UnsafeAtomic<UInt64>(at: word.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            // Relaxed: only the total matters, and the parent reads it after reaping this process.
            for _ in 0..<count { counter.wrappingIncrement(ordering: .relaxed) }
        case "print-header":
            print("nonce=\(region.header.nonce) kind=\(region.pageKind) pid=\(region.header.creatorPID)")
        case let other:
            fail(64, "unknown operation \(other)")
        }
    }
    withExtendedLifetime(region) {}
    exit(0)
} catch {
    fail(2, "\(error)")
}

// MARK: Heap subcommands

/// The byte a block is filled with: derived from its handle, so a reader can check it saw the right block.
func heapPattern(_ raw: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: (raw &* 0x9E37_79B9_7F4A_7C15) >> 56) }

/// Totals of one participant (or thread), printed at the end.
struct HeapCounts {
    var allocated = 0, released = 0, adopted = 0, stale = 0
    mutating func add(_ other: HeapCounts) {
        allocated += other.allocated; released += other.released; adopted += other.adopted; stale += other.stale
    }
}

func heapReadHandles(_ path: String, _ heap: SharedHeap) -> [SharedHeapHandle] {
    guard let file = fopen(path, "r") else { fail(64, "cannot read \(path)") }
    defer { fclose(file) }
    var handles: [SharedHeapHandle] = []
    var line: UnsafeMutablePointer<CChar>? = nil
    var capacity = 0
    while getline(&line, &capacity, file) > 0 {
        let text = String(cString: line!)
        if let word = text.split(separator: " ").first, let raw = UInt64(word.trimmingSuffix()) {
            handles.append(handle64(heap, raw))
        }
    }
    Glibc.free(line)
    return handles
}

extension Substring {
    func trimmingSuffix() -> Substring {
        var s = self
        while let last = s.last, last == "\n" || last == " " { s.removeLast() }
        return s
    }
}

func heapWriteFile(_ path: String, _ text: String) {
    let temporary = path + ".tmp"
    guard let file = fopen(temporary, "w") else { fail(64, "cannot write \(temporary)") }
    fputs(text, file)
    fclose(file)
    guard rename(temporary, path) == 0 else { fail(64, "cannot rename \(temporary)") }
}

/// A small deterministic generator (SplitMix64).
/// A random request size: mostly small (1…largest small class), one in eight large (above it, up to the second
/// smallest large class: test heaps have few span pages).
/// With `helperExtentShare` > 0 (the torture worker) and an extent area, one in `helperExtentShare` is instead an
/// extent of one to four units.
func randomBlockSize(_ heap: SharedHeap, _ random: inout HelperRandom) -> Int {
    if helperExtentShare > 0, heap.extentUnitCount > 0, random.below(helperExtentShare) == 0 {
        return heap.largestClassBlockSize + 1 + random.below(4 * heap.extentUnitSize)
    }
    let small = heap.largestSmallBlockSize
    if let cap = heap.largeSizeClasses.prefix(2).last, random.below(8) == 0 {
        return small + 1 + random.below(cap - small)
    }
    return 1 + random.below(small)
}

/// One in this many of `randomBlockSize`'s sizes is an extent (0: none). Set by the torture worker only.
nonisolated(unsafe) var helperExtentShare = 0

struct HelperRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Fills the block with its pattern.
func heapFill(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws(SharedHeapError) {
    let size = try heap.blockSize(of: handle)
    try heap.pointer(for: handle).initializeMemory(as: UInt8.self, repeating: heapPattern(raw64(handle)), count: size)
}

/// True when the whole block holds its pattern.
func heapCheck(_ heap: SharedHeap, _ handle: SharedHeapHandle) throws(SharedHeapError) -> Bool {
    let size = try heap.blockSize(of: handle)
    let bytes = UnsafeRawBufferPointer(start: try heap.pointer(for: handle), count: size)
    return bytes.allSatisfy { $0 == heapPattern(raw64(handle)) }
}

/// Takes a handle someone deposited: adopt, check, free. Counts stale handles (the depositor freed it first).
func heapTakeOver(_ me: SharedHeap.Participant, _ raw: UInt64, _ counts: inout HeapCounts) {
    let handle = handle64(me.heap, raw)
    do {
        try me.adopt(handle)
    } catch where error.code == .staleHandle || error.code == .alreadyHeld {
        counts.stale += 1
        return
    } catch {
        fail(1, "adopt \(handle): \(error)")
    }
    counts.adopted += 1
    do {
        guard try heapCheck(me.heap, handle) else { fail(1, "block \(handle) does not hold its pattern") }
        if try me.free(handle) { counts.released += 1 }
    } catch {
        fail(1, "check/free \(handle): \(error)")
    }
}

/// One stress thread: see the usage at the top of the file.
func heapStressWorker(
    heap: SharedHeap, iterations: Int, seed: UInt64, mailbox: UnsafeMutableRawPointer, slots: Int
) -> HeapCounts {
    var counts = HeapCounts()
    var random = HelperRandom(state: seed)
    let me: SharedHeap.Participant
    do { me = try heap.join(name: "stress") } catch { fail(2, "join: \(error)") }
    var mine: [SharedHeapHandle] = []
    func slot(_ index: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic<UInt64>(at: (mailbox + 8 * index).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }
    let sizes = [16, 40, 64, 100, 200, 512, 1000, 2000].filter { $0 <= heap.largestSmallBlockSize }
        + heap.largeSizeClasses.prefix(1).map { $0 - 8 }
    for _ in 0..<iterations {
        let choice = random.below(10)
        do {
            if choice < 4 {
                let handle: SharedHeapHandle
                do { handle = try me.allocate(sizes[random.below(sizes.count)]) } catch where error.code == .heapFull {
                    continue
                }
                counts.allocated += 1
                try heapFill(heap, handle)
                mine.append(handle)
                if random.below(2) == 0 {
                    // Ordering: acquiring and releasing: publishes the block's contents to the taker, and
                    // acquires the contents of the block we take out.
                    let previous = slot(random.below(slots)).exchange(raw64(handle), ordering: .acquiringAndReleasing)
                    if previous != 0 { heapTakeOver(me, previous, &counts) }
                }
            } else if choice < 7 {
                if mine.count > 8 || (!mine.isEmpty && random.below(4) == 0) {
                    let handle = mine.removeFirst()
                    if try me.free(handle) { counts.released += 1 }
                }
            } else {
                let previous = slot(random.below(slots)).exchange(0, ordering: .acquiringAndReleasing)
                if previous != 0 { heapTakeOver(me, previous, &counts) }
            }
        } catch {
            fail(1, "stress step: \(error)")
        }
    }
    for handle in mine {
        do { if try me.free(handle) { counts.released += 1 } } catch { fail(1, "final free \(handle): \(error)") }
    }
    me.leave()
    return counts
}

final class HelperThreadBox {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

func heapStartThread(_ body: @escaping () -> Void) -> pthread_t {
    var thread = pthread_t()
    let box = Unmanaged.passRetained(HelperThreadBox(body)).toOpaque()
    let result = pthread_create(&thread, nil, { argument in
        Unmanaged<HelperThreadBox>.fromOpaque(argument!).takeRetainedValue().body()
        return nil
    }, box)
    guard result == 0 else { fail(2, "pthread_create failed: \(result)") }
    return thread
}

/// One result slot per thread. Not a Swift array: concurrent writes to different elements of one array are
/// still a race on the array (ThreadSanitizer reports it); distinct slots of raw memory are not, and
/// `pthread_join` orders every write before the main thread reads.
final class HelperCountsBox: @unchecked Sendable {
    let counts: UnsafeMutableBufferPointer<HeapCounts>
    init(_ count: Int) {
        counts = .allocate(capacity: count)
        counts.initialize(repeating: HeapCounts())
    }
    deinit { counts.deallocate() }
}

func runHeapHelper() -> Never {
    let (name, prefix) = (next(), next())
    do {
        let region = try SharedRegion.open(name: name, namePrefix: prefix)
        let heap = try SharedHeap.attach(to: region)
        let me = try heap.join(name: "helper")
        var counts = HeapCounts()
        while !arguments.isEmpty {
            switch next() {
            case "alloc":
                let (count, seed, path) = (nextInt(), UInt64(nextInt()), next())
                var random = HelperRandom(state: seed)
                var text = ""
                for _ in 0..<count {
                    let handle = try me.allocate(randomBlockSize(heap, &random))
                    counts.allocated += 1
                    try heapFill(heap, handle)
                    text += "\(raw64(handle)) \(try heap.blockSize(of: handle))\n"
                }
                heapWriteFile(path, text)
            case "adopt":
                for handle in heapReadHandles(next(), heap) {
                    try me.adopt(handle)
                    counts.adopted += 1
                    guard try heapCheck(heap, handle) else { fail(1, "block \(handle) does not hold its pattern") }
                }
            case "free-file":
                for handle in heapReadHandles(next(), heap) where try me.free(handle) { counts.released += 1 }
            case "free-expect":
                let (path, code) = (next(), next())
                for handle in heapReadHandles(path, heap) {
                    do {
                        try me.free(handle)
                        fail(1, "free of \(handle) succeeded, expected \(code)")
                    } catch where "\(error.code)" == code {
                        // Expected.
                    } catch {
                        fail(1, "free of \(handle): \(error), expected \(code)")
                    }
                }
            case "free-all":
                for handle in me.heldHandles where try me.free(handle) { counts.released += 1 }
            case "touch":
                heapWriteFile(next(), "")
            case "wait-file":
                let path = next()
                var waited = 0
                while access(path, F_OK) != 0 {
                    usleep(1000)
                    waited += 1
                    if waited > 60_000 { fail(3, "timed out waiting for \(path)") }
                }
            case "exit-without-leave":
                print("allocated=\(counts.allocated) released=\(counts.released) adopted=\(counts.adopted) stale=\(counts.stale)")
                exit(0)
            case "verify-clean":
                let report = heap.verify()
                if !report.isClean { fail(1, "verify: \(report)") }
            case "stress":
                let (threads, iterations, seed) = (nextInt(), nextInt(), UInt64(nextInt()))
                let mailboxHandle = handle64(heap, UInt64(next())!)
                let slots = nextInt()
                let mailbox = try heap.pointer(for: mailboxHandle)
                let results = HelperCountsBox(threads)
                let mailboxAddress = UInt(bitPattern: mailbox)
                let pid = UInt64(getpid())
                let started = (0..<threads).map { thread in
                    heapStartThread {
                        let counts = heapStressWorker(
                            heap: heap, iterations: iterations, seed: seed ^ (pid << 20) ^ UInt64(thread),
                            mailbox: UnsafeMutableRawPointer(bitPattern: mailboxAddress)!, slots: slots)
                        results.counts[thread] = counts
                    }
                }
                for thread in started { pthread_join(thread, nil) }
                for result in results.counts { counts.add(result) }
            case let other:
                fail(64, "unknown heap operation \(other)")
            }
        }
        me.leave()
        print("allocated=\(counts.allocated) released=\(counts.released) adopted=\(counts.adopted) stale=\(counts.stale)")
        withExtendedLifetime(region) {}
        exit(0)
    } catch {
        fail(2, "\(error)")
    }
}

// MARK: Page-move crash worker

func runPageChurnWorker() -> Never {
    let (name, prefix) = (next(), next())
    guard let mailboxRaw = UInt64(next()), let seed = UInt64(next()) else { fail(64, "page-churn: bad arguments") }
    do {
        let region = try SharedRegion.open(name: name, namePrefix: prefix)
        let heap = try SharedHeap.attach(to: region)
        let me = try heap.join(name: "page-churn")
        let mailbox = try heap.pointer(for: handle64(heap, mailboxRaw))
        let ready = UnsafeAtomic<UInt64>(at: mailbox.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
        var random = HelperRandom(state: seed)
        // Ordering: releasing; the parent waits for it (acquiring) before it starts the kill timer.
        ready.store(UInt64(me.index) + 1, ordering: .releasing)
        var mine: [SharedHeapHandle] = []
        while true {
            for _ in 0...random.below(40) {
                let result = Result { () throws(SharedHeapError) in try me.allocate(randomBlockSize(heap, &random)) }
                switch result {
                case .success(let handle): mine.append(handle)
                case .failure(let error) where error.code == .heapFull: break
                case .failure(let error): fail(1, "allocate: \(error)")
                }
            }
            while !mine.isEmpty { try me.free(mine.remove(at: random.below(mine.count))) }
        }
    } catch {
        fail(2, "\(error)")
    }
}

// MARK: Crash torture worker

func runTortureWorker() -> Never {
    let (name, prefix) = (next(), next())
    guard let mailboxRaw = UInt64(next()), let seed = UInt64(next()) else { fail(64, "torture: bad arguments") }
    // Optional: the slot to store the ready flag into (default 0), and a stop slot (the worker frees everything,
    // leaves and exits 0 once it reads non-zero there; default none: run until killed).
    let readySlot = arguments.isEmpty ? 0 : nextInt()
    let stopSlot = arguments.isEmpty ? -1 : nextInt()
    // Optional: how many participants this process joins (default 1); each step uses one picked at random, so
    // a SIGKILL leaves all of them dead at once, each at its own point.
    let count = arguments.isEmpty ? 1 : max(1, nextInt())
    helperExtentShare = 16
    do {
        let region = try SharedRegion.open(name: name, namePrefix: prefix)
        let heap = try SharedHeap.attach(to: region)
        let participants = try (0..<count).map { _ in try heap.join(name: "torture") }
        let mailbox = try heap.pointer(for: handle64(heap, mailboxRaw))
        func slot(_ index: Int) -> UnsafeAtomic<UInt64> {
            UnsafeAtomic<UInt64>(at: (mailbox + 8 * index).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
        }
        var random = HelperRandom(state: seed)
        var held: [[SharedHeapHandle]] = Array(repeating: [], count: count)
        // Ordering: releasing; the parent waits for it (acquiring) before it starts the kill timer.
        slot(readySlot).store(UInt64(participants[0].index) + 1, ordering: .releasing)
        while true {
            // Ordering: acquiring, pairs with the parent's releasing stop flag.
            if stopSlot >= 0, slot(stopSlot).load(ordering: .acquiring) != 0 {
                for (me, mine) in zip(participants, held) {
                    for handle in mine { try me.free(handle) }
                    me.leave()
                }
                withExtendedLifetime(region) {}
                exit(0)
            }
            let who = count == 1 ? 0 : random.below(count)
            let me = participants[who]
            let choice = random.below(11)
            if choice < 4 {
                guard held[who].count < 40 else { continue }
                let result = Result { () throws(SharedHeapError) in try me.allocate(randomBlockSize(heap, &random)) }
                guard case .success(let handle) = result else {
                    if case .failure(let error) = result, error.code != .heapFull { fail(1, "allocate: \(error)") }
                    continue
                }
                try heapFill(heap, handle)
                held[who].append(handle)
                if random.below(2) == 0 {
                    // Ordering: releasing, so the parent's acquiring exchange sees the block's contents.
                    _ = slot(3 + random.below(13)).compareExchange(
                        expected: 0, desired: raw64(handle), successOrdering: .releasing,
                        failureOrdering: .relaxed)
                }
            } else if choice < 7 || (choice == 10 && stopSlot < 0) {
                guard !held[who].isEmpty else { continue }
                let handle = held[who].remove(at: random.below(held[who].count))
                try me.free(handle)
            } else {
                guard held[who].count < 40 else { continue }
                // Ordering: acquiring, pairs with the parent's (or the other worker's) releasing publication.
                // A worker with a stop slot (the survivor) also takes what the other worker published (3…15).
                // With several participants, a block one of them published may come back to another: a second
                // holding in the same process, as a real sharer would have.
                let from = choice == 10 || (count > 1 && random.below(3) == 0) ? 3 + random.below(13)
                    : 16 + random.below(16)
                let raw = slot(from).exchange(0, ordering: .acquiringAndReleasing)
                guard raw != 0 else { continue }
                let handle = handle64(heap, raw)
                let adoption = Result { () throws(SharedHeapError) in try me.adopt(handle) }
                if case .failure(let error) = adoption {
                    if error.code != .staleHandle && error.code != .alreadyHeld { fail(1, "adopt: \(error)") }
                    continue
                }
                held[who].append(handle)
                guard try heapCheck(heap, handle) else { fail(1, "adopted block \(handle) lost its pattern") }
            }
        }
    } catch {
        fail(2, "torture: \(error)")
    }
}

/// The 64-bit form the tests pass handles in (mailbox words in shared memory, files, arguments): generation (high
/// 32 bits) | offset / 16 (low 32 bits). The test heaps are small and short-lived, so both fit; the heap id is the
/// heap's own.
func raw64(_ handle: SharedHeapHandle) -> UInt64 {
    (handle.generation & 0xFFFF_FFFF) << 32 | UInt64(handle.dataOffset >> 4)
}

/// The handle of `heap` a 64-bit form names (see `raw64`).
func handle64(_ heap: SharedHeap, _ raw: UInt64) -> SharedHeapHandle {
    SharedHeapHandle(heapID: heap.heapID, dataOffset: Int(raw & 0xFFFF_FFFF) << 4, generation: raw >> 32)
}

// MARK: Lazy commit

/// `lazy-fill`: allocate and write until heapFull in a lazy heap (see the header comment).
func runLazyFill() -> Never {
    let (name, prefix, dataSize) = (next(), next(), nextInt())
    let sizes = next().split(separator: ",").compactMap { Int($0) }
    func say(_ line: String) { (line + "\n").withCString { _ = write(1, $0, strlen($0)) } }
    let configuration = SharedHeapConfiguration(heldCapacity: 1 << 16)
    let region: SharedRegion
    let heap: SharedHeap
    do {
        region = try SharedRegion.create(
            name: name,
            .init(
                dataSize: dataSize,
                metadataSize: SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration),
                namePrefix: prefix, hugePages: .none, commitment: .lazy, ifExists: .replace,
                lazyCommittedMetadataSize: SharedHeap.initialMetadataSize(
                    dataSize: dataSize, configuration: configuration)))
        heap = try SharedHeap.create(in: region, configuration: configuration)
    } catch {
        fail(2, "\(error)")
    }
    defer { try? region.remove() }
    do {
        let me = try heap.join(name: "lazy-fill")
        var handles: [SharedHeapHandle] = []
        var served: [Int] = []  // Sizes that got at least one block (their pages stay committed once freed).
        for size in sizes {
            var blocks = 0
            while true {
                var allocated: SharedHeapHandle?
                do {
                    allocated = try me.allocate(size)
                } catch {
                    guard error.code == .heapFull else { fail(1, "allocate(\(size)): \(error)") }
                    say("heapFull size=\(size) blocks=\(blocks) message=\(error.message)")
                }
                guard let handle = allocated else { break }
                // Every byte: a page the heap did not back would raise SIGBUS here.
                try heap.pointer(for: handle).initializeMemory(
                    as: UInt8.self, repeating: heapPattern(raw64(handle)), count: heap.blockSize(of: handle))
                handles.append(handle)
                blocks += 1
            }
            if blocks > 0 { served.append(size) }
        }
        guard !handles.isEmpty else { fail(1, "no block could be allocated at all") }
        say("committed=\(try region.allocatedBytes())")
        for handle in handles {
            guard try heapCheck(heap, handle) else { fail(1, "block \(handle) lost its contents") }
            try me.free(handle)
        }
        let report = heap.verify()
        guard report.isClean else { fail(1, "verify after freeing everything: \(report)") }
        for size in served {
            let handle = try me.allocate(size)
            try heap.pointer(for: handle).initializeMemory(
                as: UInt8.self, repeating: 1, count: heap.blockSize(of: handle))
            try me.free(handle)
        }
        me.leave()
        say("done")
        exit(0)
    } catch {
        fail(1, "\(error)")
    }
}
