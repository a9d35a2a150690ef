// divvy-demo: composes Divvy's allocators the way an application would, runs a small workload through each
// composition and prints what the allocators report. This target is compiled with strict memory safety as an
// error: nothing below is an `Unsafe…` type or an `unsafe` call, which is the point.
import Divvy

/// Prints a heading and the lines under it.
func report(_ title: String, _ lines: [String]) {
    print("\n== \(title)")
    for line in lines { print("   \(line)") }
}

/// Formats a byte count for people.
func bytes(_ count: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(count) B" : "\(Double(Int(value * 10)) / 10) \(units[unit])"
}

/// A deterministic generator (SplitMix64), so every run does the same work.
struct Rng: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// --- 1. The seed's example: half a gigabyte of capacity straight from the OS, in one line -------------------------
var big = try BlockArray<UInt8, OSAllocator>(capacity: 1 << 29, allocator: OSAllocator())
for i in 0..<4096 { try big.append(UInt8(truncatingIfNeeded: i)) }
report(
    "BlockArray<UInt8, OSAllocator>(capacity: 1 << 29)",
    [
        "capacity \(bytes(big.capacity)) reserved with mmap; \(big.count) elements written, last = \(big[big.count - 1])",
        "pages are committed by the kernel only when touched",
    ])

// --- 2. A general-purpose heap: small sizes from size-class slabs, large ones from the OS, with a quota and stats -
let os = OSAllocator()
let heap = StatsAllocator(
    LimitAllocator(
        Segregator(threshold: 32 * 1024, small: try Pool(os), large: os),
        limit: 256 << 20))
var rng = Rng(state: 2026)
var checksum = 0
for round in 0..<20_000 {
    // Mostly small blocks, now and then a large one.
    let size = round % 100 == 0 ? Int.random(in: 40_000...400_000, using: &rng) : Int.random(in: 1...2048, using: &rng)
    var block = try OwnedBlock(byteCount: size, in: heap)
    var view = block.mutableBytes
    view.storeBytes(of: UInt8(truncatingIfNeeded: round), toByteOffset: size - 1, as: UInt8.self)
    checksum &+= block.bytes.byteCount
    if round % 3 == 0 { try block.resize(to: size * 2) }
    block.free()
}
let atPeak: AllocationStats
var grownTo = 0
do {
    var samples = BlockArray<Double, StatsAllocator<LimitAllocator<Segregator<Pool<OSAllocator>, OSAllocator>>>>(
        allocator: heap)
    for i in 0..<100_000 { try samples.append(Double(i) * 0.5) }
    atPeak = heap.stats  // before the array's last use: a ~Copyable value is destroyed right after it
    grownTo = samples.capacity
}  // the array's storage goes back to the heap here
report(
    "StatsAllocator(LimitAllocator(Segregator(threshold: 32 KiB, small: Pool(OSAllocator), large: OSAllocator)))",
    [
        "20,000 random blocks (1 B–2 KiB, every 100th 40–400 KiB) written, a third resized, all freed",
        "a BlockArray<Double> grown to \(grownTo) elements through reallocate",
        "while the array was live: \(atPeak)",
        "after it went away:      \(heap.stats)",
        "quota used now \(bytes(heap.base.usedBytes)) of \(bytes(heap.base.limit))",
    ])

// A quota is a clean failure, not a crash: ask for more than is left.
do {
    _ = try OwnedBlock(byteCount: 300 << 20, in: heap)
    print("   unexpected: a 300 MiB block fit in a 256 MiB quota")
} catch {
    print("   asking for 300 MiB: \(error)")
}

// --- 3. A slab for one type, with a byte limit and power-of-two growth ---------------------------------------------
struct Particle {
    var x: Double, y: Double, vx: Double, vy: Double
}
let particles = try SlabBuilder(Layout.of(Particle.self))
    .limit(1 << 20)
    .growthPolicy(.pow2(initial: 64 * 1024, maximum: 256 * 1024))
    .finishUnsynchronized(OSAllocator())
var energy = 0.0
for step in 0..<50_000 {
    let p = try OwnedValue(Particle(x: 0, y: 0, vx: Double(step % 7), vy: Double(step % 5)), in: particles)
    energy += p.value.vx * p.value.vx + p.value.vy * p.value.vy
}

// Past its limit a slab throws; what it already handed out stays valid. Hold 4 KiB buffers (each owner lives in
// its own stack frame) until the 256 KiB limit stops the slab, then check every buffer is still intact.
let buffers = try SlabBuilder(size: 4096).limit(256 * 1024).growthPolicy(.fixed(64 * 1024))
    .finishUnsynchronized(OSAllocator())
func holdBuffers(_ slab: Slab<OSAllocator>, _ depth: Int) -> (held: Int, error: String) {
    var buffer: OwnedBlock<Slab<OSAllocator>>
    do {
        buffer = try OwnedBlock(byteCount: 4096, in: slab)
    } catch {
        return (depth, "\(error)")
    }
    var view = buffer.mutableBytes
    view.storeBytes(of: UInt64(depth), toByteOffset: 4088, as: UInt64.self)
    let result = holdBuffers(slab, depth + 1)
    // Still ours and intact after the slab refused later requests.
    precondition(buffer.bytes.byteCount == 4096)
    return result
}
let (held, limitError) = holdBuffers(buffers, 0)
report(
    "SlabBuilder(Layout.of(Particle.self)).limit(1 MiB).growthPolicy(.pow2(...)).finishUnsynchronized(OSAllocator())",
    [
        "50,000 OwnedValue<Particle> allocated and freed; energy \(energy)",
        "stride \(particles.configuration.stride) B, \(particles.refillCount) refill(s), footprint \(bytes(particles.footprint)), live \(particles.liveBlocks)",
    ])
report(
    "SlabBuilder(size: 4096).limit(256 KiB).growthPolicy(.fixed(64 KiB)).finishUnsynchronized(OSAllocator())",
    [
        "held \(held) buffers at once, then: \(limitError)",
        "after the owners went away: live \(buffers.liveBlocks), footprint \(bytes(buffers.footprint)) kept for reuse",
    ])

// --- 4. An arena: bump allocation for work that ends together, with a scoped rewind --------------------------------
let arena = try Arena(OSAllocator(), growth: .pow2(initial: 64 * 1024, maximum: 1 << 20))
var words = 0
for request in 0..<1000 {
    // Everything a "request" allocates is released at once when its scope ends.
    try arena.withScope { () throws(AllocationError) in
        var tokens = BlockArray<Int, Arena<OSAllocator>>(allocator: arena)
        for t in 0..<(request % 50 + 1) { try tokens.append(t * request) }
        words += tokens.count
    }
}
let afterScopes = arena.footprint
var kept = BlockArray<UInt64, Arena<OSAllocator>>(allocator: arena)
for i in 0..<200_000 { try kept.append(UInt64(i)) }
report(
    "Arena(OSAllocator(), growth: .pow2(initial: 64 KiB, maximum: 1 MiB))",
    [
        "1000 scoped requests tokenized \(words) words; footprint after them \(bytes(afterScopes))",
        "then a 200,000-element array grown in it: \(arena.chunkCount) chunk(s), footprint \(bytes(arena.footprint))",
    ])
arena.deallocateAll()
print("   after deallocateAll(): footprint \(bytes(arena.footprint)) (the first chunk is kept for reuse)")

// --- 5. A lock-free slab shared by several threads --------------------------------------------------------------------
let messages = try SlabBuilder(size: 256).finishLockFree(OSAllocator(), capacity: 4096)
let served = try await withThrowingTaskGroup(of: Int.self) { group in
    for worker in 0..<4 {
        group.addTask {
            var total = 0
            for round in 0..<25_000 {
                var message = try OwnedBlock(byteCount: 256, in: messages)
                var view = message.mutableBytes
                view.storeBytes(of: UInt64(worker << 32 | round), toByteOffset: 0, as: UInt64.self)
                total += message.count
            }
            return total
        }
    }
    var sum = 0
    for try await total in group { sum += total }
    return sum
}
report(
    "SlabBuilder(size: 256).finishLockFree(OSAllocator(), capacity: 4096), 4 tasks",
    [
        "100,000 messages allocated, written and freed concurrently (\(bytes(served)) in all)",
        "capacity \(messages.capacity) blocks, free now \(messages.approximateFreeCount)",
    ])
