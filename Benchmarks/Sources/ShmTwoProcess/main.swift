// shm-two-process: throughput of a SharedHeap used by two processes that hand blocks over, with cross-process
// (remote) frees. Prints operations per second for each process.
//
//   swift run -c release shm-two-process [blocks] [64|mixed]     (default 2,000,000 blocks, both workloads)
//
// Process A creates a named region and a heap, and spawns itself as process B (`peer`). A ring of handles lives in
// a heap block (so in the region); four counters on separate cache lines drive it:
//   A: allocate a block, put its handle in the ring (`produced`);   B: adopt it (`adopted`);
//   A: drop its holding once B has adopted (`dropped`);              B: free it — the last holder's free, on a
//                                                                       page A owns: a remote free (`freed`).
// So per block each process does two heap operations: A allocate + free (drop), B adopt + free (remote release);
// A's allocations collect B's remote frees from its pages' remote-free stacks when a page runs out. A writes
// slot i only after B freed block i − capacity. Each process times itself from a shared start flag to its last
// operation; ops/s = 2 × blocks / time. A side with nothing to do yields its core (sched_yield), so on a busy machine
// the figures include scheduling: they are a floor.
import Atomics
import DivvyShm

#if canImport(Glibc)
import Glibc
#endif

let capacity = 512  // ring slots (a power of two)
// Ring block layout (bytes): counters at 0, 64, 128, 192; flags at 256 (B ready), 320 (start), 384 (B's elapsed
// nanoseconds), 448 (B done); slots from 512.
let ringBytes = 512 + 8 * capacity

func fail(_ message: String) -> Never {
    print("shm-two-process[\(getpid())]: \(message)")
    exit(1)
}

func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// The ring's words in this process's mapping.
struct Ring {
    let base: UnsafeMutableRawPointer
    func word(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic<UInt64>(at: (base + offset).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }
    // Ordering: acquiring loads and releasing stores: a counter published after the slots it covers (and after
    // the heap operations on them) is seen with them.
    func load(_ offset: Int) -> UInt64 { word(offset).load(ordering: .acquiring) }
    func store(_ offset: Int, _ value: UInt64) { word(offset).store(value, ordering: .releasing) }
    func slot(_ index: Int) -> Int { 512 + 8 * (index & (capacity - 1)) }
}

let mixedSizes = (0..<1000).map { i in 16 + (i &* 7919) % 1008 }

var arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "peer" {
    // Process B: peer <regionName> <ringHandle> <blocks>
    let (name, ringRaw, blocks) = (arguments[1], UInt64(arguments[2])!, Int(arguments[3])!)
    do {
        let heap = try SharedHeap.attach(to: SharedRegion.open(name: name))
        let me = try heap.join(name: "B")
        let ring = Ring(base: try heap.pointer(for: handle64(heap, ringRaw)))
        ring.store(256, 1)
        while ring.load(320) == 0 {}
        let start = now()
        var adopted = 0, freed = 0
        while freed < blocks {
            let before = freed + adopted
            let produced = Int(ring.load(0))
            while adopted < produced {
                try me.adopt(handle64(heap, ring.load(ring.slot(adopted))))
                adopted += 1
            }
            ring.store(64, UInt64(adopted))
            let dropped = Int(ring.load(128))
            while freed < dropped {
                try me.free(handle64(heap, ring.load(ring.slot(freed))))
                freed += 1
            }
            ring.store(192, UInt64(freed))
            if freed + adopted == before { sched_yield() }  // Nothing to do: let A run (2 cores, shared).
        }
        ring.store(384, now() - start)
        me.leave()
        ring.store(448, 1)
        exit(0)
    } catch {
        fail("peer: \(error)")
    }
}

func run(blocks: Int, sizes: [Int], label: String) throws {
    let name = "bench-two-process-\(getpid())"
    let dataSize = 64 << 20
    let configuration = SharedHeapConfiguration()
    let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
    let region = try SharedRegion.create(
        name: name, .init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096, ifExists: .replace))
    defer { try? region.remove() }
    let heap = try SharedHeap.create(in: region, configuration: configuration)
    let me = try heap.join(name: "A")
    let ringHandle = try me.allocate(ringBytes)
    let ring = Ring(base: try heap.pointer(for: ringHandle))
    ring.base.initializeMemory(as: UInt8.self, repeating: 0, count: ringBytes)

    var pid: pid_t = 0
    let argv = ["shm-two-process", "peer", name, "\(raw64(ringHandle))", "\(blocks)"]
    var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for argument in cArguments { free(argument) } }
    guard posix_spawn(&pid, "/proc/self/exe", nil, nil, &cArguments, environ) == 0 else { fail("posix_spawn") }
    while ring.load(256) == 0 {}
    ring.store(320, 1)
    let start = now()
    var produced = 0, dropped = 0
    var sizeIndex = 0
    while dropped < blocks {
        let before = produced + dropped
        let freed = Int(ring.load(192))
        while produced < blocks, produced - freed < capacity {
            let handle = try me.allocate(sizes[sizeIndex])
            sizeIndex = sizeIndex == sizes.count - 1 ? 0 : sizeIndex + 1
            ring.store(ring.slot(produced), raw64(handle))
            produced += 1
        }
        ring.store(0, UInt64(produced))
        let adopted = Int(ring.load(64))
        while dropped < adopted {
            try me.free(handle64(heap, ring.load(ring.slot(dropped))))
            dropped += 1
        }
        ring.store(128, UInt64(dropped))
        if produced + dropped == before { sched_yield() }  // Nothing to do: let B run.
    }
    let elapsedA = now() - start
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    guard status == 0, ring.load(448) == 1 else { fail("peer exited with status \(status)") }
    let elapsedB = ring.load(384)
    try me.free(ringHandle)
    me.collectRemoteFrees()
    let report = heap.verify()
    guard report.isClean, report.allocatedBlocks == 0 else { fail("heap not clean afterwards: \(report)") }
    func rate(_ nanoseconds: UInt64) -> String {
        let ops = Double(2 * blocks) / (Double(nanoseconds) / 1e9)
        return String(Int(ops / 1000)) + " k ops/s (" + String(Int(Double(nanoseconds) / Double(2 * blocks))) + " ns/op)"
    }
    print("two processes, \(label), \(blocks) blocks: A allocate+drop \(rate(elapsedA)); "
        + "B adopt+free (remote) \(rate(elapsedB))")
}

if arguments.first == "single" {
    // One process, allocate+free pairs of 64 B (for profiling: perf record .build/release/shm-two-process single).
    let count = arguments.count > 1 ? Int(arguments[1])! : 50_000_000
    do {
        let dataSize = 64 << 20
        let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize)
        let region = try SharedRegion.createAnonymous(.init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
        let me = try SharedHeap.create(in: region).join(name: "single")
        let start = now()
        for _ in 0..<count { try me.free(try me.allocate(64)) }
        print("one process, 64 B pairs: \(Double(now() - start) / Double(count)) ns/pair")
    } catch {
        fail("\(error)")
    }
    exit(0)
}

let blocks = arguments.first.flatMap { Int($0) } ?? 2_000_000
let which = arguments.count > 1 ? arguments[1] : "both"
do {
    if which == "64" || which == "both" { try run(blocks: blocks, sizes: [64], label: "64 B") }
    if which == "mixed" || which == "both" { try run(blocks: blocks, sizes: mixedSizes, label: "mixed 16 B–1 KiB") }
} catch {
    fail("\(error)")
}

/// The 64-bit form the ring passes handles in: generation (high 32 bits) | offset / 16 (low 32 bits); the
/// benchmark heap is small, so both fit, and the heap id is the heap's own.
func raw64(_ handle: SharedHeapHandle) -> UInt64 {
    (handle.generation & 0xFFFF_FFFF) << 32 | UInt64(handle.dataOffset >> 4)
}

/// The handle of `heap` a 64-bit form names (see `raw64`).
func handle64(_ heap: SharedHeap, _ raw: UInt64) -> SharedHeapHandle {
    SharedHeapHandle(heapID: heap.heapID, dataOffset: Int(raw & 0xFFFF_FFFF) << 4, generation: raw >> 32)
}
