// shm-fragmentation: mixed sizes with long churn on the shared heap: bytes requested (live) against the data-area
// bytes the heap has taken for them (pages owned), over time (issue 11).
//
//   swift run -c release shm-fragmentation [--data MiB] [--slots N] [--steps N] [--seed N] [--max BYTES]
//                                          [--snapshots N] [--boost FILE] [--large N] [--large-max BYTES]
//
// The sequence (boost/shm_boost.cpp's `fragmentation` mode replays the same one on managed_shared_memory):
// splitmix64 seeded with --seed; a size is log-uniform by octave: an octave e in 4 … log2(max) − 1 drawn uniformly,
// then a size uniform in [2^e, 2^(e+1)), so 16 B … max − 1 (max: --max, a power of two, default the heap's largest
// block). `slots` live-block slots (default 512) are first all filled; then each step picks a slot at random, frees
// its block if it has one, and with probability 3/4 allocates a new block of a random size into it, so the live set
// stays near 3/4 of the slots in steady state, of every size at once. A failed allocation (heapFull) leaves the
// slot empty and is counted.
// --large N (default 0: off, the sequence Boost replays): one allocation in N is instead a MiB-scale block, log-
// uniform by octave from 1 MiB to --large-max − 1 (default 16 MiB), served from the extent area (layout version 10).
// Reported at `snapshots` points: live blocks, bytes requested, bytes in the blocks served (size classes, whole
// extent units: the bytes usable), and data-area bytes taken by the participant (its pages × page size plus the
// units of its extents: what no one else can use), with usable / requested and taken / requested, and the failures
// (all, and those of MiB-scale blocks).
// The heap: a `--data` MiB (default 256) memfd region, divvyd's default configuration (64 KiB pages, 512 KiB span
// pages, 1/4 of the data area in span pages).
import DivvyShm
import Foundation

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("shm-fragmentation: \(message)\n".utf8))
    exit(1)
}

var dataSize = 256 << 20
var slots = 512
var steps = 1_000_000
var seed: UInt64 = 42
var maxBlock: Int?
var snapshots = 10
var boostFile: String?
var largeEvery = 0
var largeMax = 16 << 20
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    let value = arguments.popFirst() ?? ""
    switch argument {
    case "--data": dataSize = (Int(value) ?? 0) << 20
    case "--slots": slots = Int(value) ?? 0
    case "--steps": steps = Int(value) ?? 0
    case "--seed": seed = UInt64(value) ?? 0
    case "--max": maxBlock = Int(value)
    case "--snapshots": snapshots = Int(value) ?? 0
    case "--boost": boostFile = value
    case "--large": largeEvery = Int(value) ?? -1
    case "--large-max": largeMax = Int(value) ?? 0
    default: fail("unknown argument \(argument)")
    }
}
guard dataSize > 0, slots > 0, steps > 0, snapshots > 0 else { fail("--data, --slots, --steps, --snapshots > 0") }
guard largeEvery >= 0, largeMax.nonzeroBitCount == 1, largeMax > 1 << 20 else {
    fail("--large N >= 0, --large-max a power of two above 1 MiB")
}

/// splitmix64, as in shm_boost.cpp.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

let configuration = SharedHeapConfiguration(pageSize: 64 << 10, participantCapacity: 30, heldCapacity: 65536)
let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
let region = try SharedRegion.createAnonymous(
    .init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096))
let heap = try SharedHeap.create(in: region, configuration: configuration)
let me = try heap.join(name: "fragmentation")
// The base mix: up to the largest class (the extent area serves everything above; --large adds MiB-scale blocks).
let largest = heap.largestClassBlockSize
let top = maxBlock ?? (1 << (Int.bitWidth - 1 - largest.leadingZeroBitCount))
guard top.nonzeroBitCount == 1, top >= 32, top <= largest else {
    fail("--max \(top) must be a power of two, 32 … the heap's largest block (\(largest))")
}
let octaves = UInt64(top.trailingZeroBitCount - 4)

var random = SplitMix(state: seed)
let largeOctaves = UInt64(largeMax.trailingZeroBitCount - 20)
@MainActor func randomSize() -> Int {
    if largeEvery > 0, random.next() % UInt64(largeEvery) == 0 {
        let octave = 20 + Int(random.next() % largeOctaves)
        return (1 << octave) + Int(random.next() & ((1 << UInt64(octave)) - 1))
    }
    let octave = 4 + Int(random.next() % octaves)
    return (1 << octave) + Int(random.next() & ((1 << UInt64(octave)) - 1))
}

var live: [(handle: SharedHeapHandle, size: Int, blockSize: Int)?] = Array(repeating: nil, count: slots)
var requested = 0, inBlocks = 0, liveBlocks = 0, failures = 0, largeFailures = 0, extentFailures = 0
var extentAllocations = 0
@MainActor func place(_ slot: Int, _ size: Int) throws {
    do {
        let handle = try me.allocate(size)
        let blockSize = try heap.blockSize(of: handle)
        live[slot] = (handle, size, blockSize)
        if size > largest { extentAllocations += 1 }
        requested += size
        inBlocks += blockSize
        liveBlocks += 1
    } catch {
        guard error.code == .heapFull || error.code == .pageAllowanceExhausted else { throw error }
        failures += 1
        if size > heap.largestSmallBlockSize { largeFailures += 1 }
        if size > largest { extentFailures += 1 }
    }
}
/// Data-area bytes taken: pages owned, and the units of the extents (only this participant allocates).
@MainActor func owned() -> Int {
    (heap.participantStatus(me.index)?.ownedPages ?? 0) * heap.pageSize
        + heap.usage().extentUnitsInUse * heap.extentUnitSize
}

struct Snapshot { var step, live, requested, inBlocks, owned, failures: Int }
var taken: [Snapshot] = []
@MainActor func snapshot(_ step: Int) {
    taken.append(Snapshot(
        step: step, live: liveBlocks, requested: requested, inBlocks: inBlocks, owned: owned(), failures: failures))
}

let start = Date()
for slot in 0..<slots { try place(slot, randomSize()) }
snapshot(0)
var peakOwned = owned(), peakRequested = requested
for step in 1...steps {
    let slot = Int(random.next() % UInt64(slots))
    if let block = live[slot] {
        _ = try me.free(block.handle)
        requested -= block.size
        inBlocks -= block.blockSize
        liveBlocks -= 1
        live[slot] = nil
    }
    if random.next() % 4 != 0 { try place(slot, randomSize()) }
    if step % 1024 == 0 {
        peakOwned = max(peakOwned, owned())
        peakRequested = max(peakRequested, requested)
    }
    if step % max(1, steps / snapshots) == 0 || step == steps { snapshot(step) }
}
let seconds = Date().timeIntervalSince(start)

struct BoostSnapshot { var requested, inUse, extent, failures: Int }
var boost: [Int: BoostSnapshot] = [:]
if let boostFile {
    // boost/run.sh fragmentation: "frag<TAB>step<TAB>live blocks<TAB>requested<TAB>in use<TAB>extent<TAB>failures".
    guard let text = try? String(contentsOfFile: boostFile, encoding: .utf8) else { fail("cannot read \(boostFile)") }
    for line in text.split(separator: "\n") {
        let f = line.split(separator: "\t").compactMap { Int($0) }
        if line.hasPrefix("frag\t"), f.count == 6 {
            boost[f[0]] = BoostSnapshot(requested: f[2], inUse: f[3], extent: f[4], failures: f[5])
        }
    }
}

func mib(_ value: Int) -> String { String(format: "%.1f", Double(value) / Double(1 << 20)) }
func times(_ a: Int, _ b: Int) -> String { b == 0 ? "—" : String(format: "%.2f×", Double(a) / Double(b)) }
let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3)
    .joined(separator: " ") ?? "?"
print("Data area \(dataSize >> 20) MiB (SharedHeap: \(heap.smallPageCount) pages of \(heap.pageSize >> 10) KiB, "
    + "\(heap.spanPageCount) span pages of \(heap.spanPageSize >> 10) KiB and an extent area of "
    + "\(heap.extentUnitCount) units of \(heap.extentUnitSize >> 10) KiB; Boost: a managed_shared_memory segment of "
    + "the same size); \(slots) slots, \(steps) steps, seed \(seed), sizes 16 B … \(top - 1) B log-uniform by octave"
    + (largeEvery > 0 ? ", one in \(largeEvery) instead 1 MiB … \(mib(largeMax - 1)) MiB (extents)" : "") + "; "
    + String(format: "SharedHeap run %.1f s", seconds) + "; load average \(load). MiB throughout.")
print("")
print("| step | SharedHeap live blocks | requested | usable (in blocks) | usable / requested | "
    + "data taken (pages, extents) | taken / requested | "
    + "failed allocations | Boost requested | Boost in use (segment − free) | in use / requested | "
    + "Boost extent (highest live byte) | extent / requested | Boost failed |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for s in taken {
    let b = boost[s.step]
    print("| \(s.step) | \(s.live) | \(mib(s.requested)) | \(mib(s.inBlocks)) | \(times(s.inBlocks, s.requested)) | "
        + "\(mib(s.owned)) | "
        + "\(times(s.owned, s.requested)) | \(s.failures) | \(b.map { mib($0.requested) } ?? "—") | "
        + "\(b.map { mib($0.inUse) } ?? "—") | \(b.map { times($0.inUse, $0.requested) } ?? "—") | "
        + "\(b.map { mib($0.extent) } ?? "—") | \(b.map { times($0.extent, $0.requested) } ?? "—") | "
        + "\(b.map { String($0.failures) } ?? "—") |")
}
print("")
let usage = heap.usage()
print("SharedHeap peak (sampled every 1024 steps): requested \(mib(peakRequested)) MiB, data taken "
    + "\(mib(peakOwned)) MiB. Failed allocations (heapFull): \(failures), of which \(largeFailures) above "
    + "\(heap.largestSmallBlockSize >> 10) KiB (span tier: \(heap.spanPageCount) × \(heap.spanPageSize >> 10) KiB) "
    + "and "
    + "\(extentFailures) extents (\(extentAllocations) extents served); "
    + "at the end, free: \(usage.freePages - usage.freeSpanPages) of \(heap.smallPageCount) small pages, "
    + "\(usage.freeSpanPages) of \(heap.spanPageCount) span pages, \(usage.extentUnitsFree) of \(heap.extentUnitCount) "
    + "extent units (longest free run \(usage.largestFreeExtentUnits)).")
me.leave()
