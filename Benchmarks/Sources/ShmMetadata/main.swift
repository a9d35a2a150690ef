// shm-metadata: the shared heap's metadata, committed, per data byte and per block (issue 11: target ≤ 1/16).
//
//   swift run -c release shm-metadata [--data MiB,MiB,…] [--boost FILE]     (from Benchmarks/; prints Markdown)
//
// For each data area (default 256 MiB and 1 GiB) and each block size (16 B, 64 B, 4 KiB, 1 MiB), a SharedHeap in
// a fresh memfd region (commit = full, so every metadata byte is committed) is filled with blocks of that size,
// allocating until the heap says `heapFull`, and the row shows:
// - *metadata / data area*: `requiredMetadataSize` over the data area, for divvyd's default configuration (64 KiB
//   pages, 30 participants × 65,536 held entries); the v1 layout fixes it at format time, whatever the block size;
// - *filled*: the same heap with held lists large enough to hold every block it can serve (v1 records each holding
//   in its holder's held list: at most 2^24 per participant, so several participants join when one is not enough);
//   its committed metadata over the bytes of the blocks served (`metadata / (blocks × size)`, the figure the
//   target is judged on) and per block (`metadata / blocks`);
// - with `--boost FILE` (boost/run.sh metadata): Boost.Interprocess's overhead per block measured the same way,
//   (free memory before − after) / N − size, for managed_shared_memory's default allocator and
//   cached_node_allocator, over the same segment size.
// A size the heap cannot serve in its default configuration says so; 1 MiB is then also measured with span pages
// of 1 MiB (`spanPageSize = 1 MiB`, the span tier still 1/4 of the data area).
import DivvyShm
import Foundation

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("shm-metadata: \(message)\n".utf8))
    exit(1)
}

var dataSizes = [256 << 20, 1 << 30]
var boostFile: String?
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--data":
        dataSizes = (arguments.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }.map { $0 << 20 }
        if dataSizes.isEmpty { fail("--data wants MiB values, e.g. --data 256,1024") }
    case "--boost": boostFile = arguments.popFirst()
    default: fail("unknown argument \(argument); usage: shm-metadata [--data MiB,MiB,…] [--boost FILE]")
    }
}
let blockSizes = [16, 64, 4096, 1 << 20]
let sixteenth = 1.0 / 16

func bytes(_ value: Int) -> String {
    if value >= 1 << 30, value % (1 << 30) == 0 { return "\(value >> 30) GiB" }
    if value >= 1 << 20, value % (1 << 20) == 0 { return "\(value >> 20) MiB" }
    if value >= 1 << 10, value % (1 << 10) == 0 { return "\(value >> 10) KiB" }
    return "\(value) B"
}
func mib(_ value: Int) -> String { String(format: "%.1f MiB", Double(value) / Double(1 << 20)) }
func ratio(_ value: Double) -> String {
    if value >= 10 { return String(format: "%.0f", value) }
    if value > 0, value < 0.001 { return String(format: "%.1e", value) }
    return String(format: "%.3f", value)
}

/// divvyd's heap configuration (DivvyServer: `SharedHeapConfiguration(pageSize:)` with the server's held capacity).
func daemonConfiguration() -> SharedHeapConfiguration {
    SharedHeapConfiguration(pageSize: 64 << 10, participantCapacity: 30, heldCapacity: 65536)
}

struct Fill {
    var metadata: Int
    var blocks: Int
    var participants: Int
    var heldCapacity: Int
    var stop: String
}

/// A heap on `dataSize` bytes whose held lists can hold every block of `size` it can serve, filled until heapFull.
func fill(dataSize: Int, size: Int, base: SharedHeapConfiguration) throws -> Fill {
    // The tier that serves `size` holds at most this many blocks (span pages: the share rounded down, as v1 does).
    let spanBytes = Int(Double(dataSize) * base.spanFraction) / base.spanPageSize * base.spanPageSize
    let extentBytes = Int(Double(dataSize) * base.extentFraction) / base.pageSize * base.pageSize
    let largestClass = base.largeSizeClasses.last ?? base.sizeClasses.last!
    let tierBytes = size > largestClass ? extentBytes
        : size <= base.sizeClasses.last! ? dataSize - spanBytes - extentBytes : spanBytes
    // One entry to spare, so the held lists never fill before the heap does.
    let most = max(1, tierBytes / size) + 1
    let participants = (most + (1 << 24) - 1) >> 24
    var configuration = base
    configuration.participantCapacity = participants
    configuration.heldCapacity = min(1 << 24, max(4096, (most + participants - 1) / participants))
    let metadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration)
    let region = try SharedRegion.createAnonymous(
        .init(dataSize: dataSize, metadataSize: (metadata + 4095) / 4096 * 4096, commitment: .full))
    let heap = try SharedHeap.create(in: region, configuration: configuration)
    var joined: [SharedHeap.Participant] = []
    var blocks = 0
    var stop = ""
    joining: while true {
        let me: SharedHeap.Participant
        do { me = try heap.join(name: "fill\(joined.count)") } catch {
            stop = "participant table full after \(blocks) blocks"
            break
        }
        joined.append(me)
        while true {
            do {
                _ = try me.allocate(size)
                blocks += 1
            } catch {
                if error.code == .heldListFull { continue joining }
                stop = error.code == .heapFull ? "heapFull" : "\(error.code): \(error.message)"
                break joining
            }
        }
    }
    let result = Fill(
        metadata: region.geometry.metadataSize, blocks: blocks, participants: participants,
        heldCapacity: configuration.heldCapacity, stop: stop)
    for me in joined { me.leave() }
    return result
}

/// boost/run.sh metadata lines: "metadata<TAB>segment bytes<TAB>block size<TAB>allocator<TAB>N<TAB>overhead/block".
var boost: [String: Double] = [:]
if let boostFile {
    guard let text = try? String(contentsOfFile: boostFile, encoding: .utf8) else { fail("cannot read \(boostFile)") }
    for line in text.split(separator: "\n") {
        let fields = line.split(separator: "\t").map(String.init)
        if fields.count == 6, fields[0] == "metadata", let overhead = Double(fields[5]) {
            boost["\(fields[1]) \(fields[2]) \(fields[3])"] = overhead
        }
    }
}

print("| data area | block | metadata / data area (divvyd default) | blocks served (filled) | held lists | "
    + "metadata committed (filled) | metadata per data byte | metadata per block | "
    + "Boost default: per block (per data byte) | Boost cached_node_allocator: per block (per data byte) | "
    + "≤ 1/16 |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|")
for dataSize in dataSizes {
    let daemon = daemonConfiguration()
    let daemonMetadata = SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: daemon)
    let largest = daemon.largeSizeClasses.last ?? daemon.sizeClasses.last!
    var cases: [(size: Int, configuration: SharedHeapConfiguration?, note: String)] = []
    for size in blockSizes {
        if size <= largest {
            cases.append((size, daemon, ""))
        } else if daemon.extentFraction > 0 {
            // Above the largest class: extents of the extent area (layout version 10).
            cases.append((size, daemon, " (extents)"))
        } else {
            cases.append((size, nil, ""))
            var wide = daemon
            wide.spanPageSize = max(size, daemon.spanPageSize)
            wide.largeSizeClasses = SharedHeapConfiguration.defaultLargeSizeClasses(
                pageSize: wide.pageSize, spanPageSize: wide.spanPageSize)
            cases.append((size, wide, " (span pages of \(bytes(wide.spanPageSize)))"))
        }
    }
    for (size, configuration, note) in cases {
        guard let configuration else {
            print("| \(bytes(dataSize)) | \(bytes(size)) | \(ratio(Double(daemonMetadata) / Double(dataSize))) | "
                + "not served: the largest block is \(bytes(largest)) (`unsupportedSize`) | | | | | | | **not met** |")
            continue
        }
        let daemonRatio = Double(SharedHeap.requiredMetadataSize(dataSize: dataSize, configuration: configuration))
            / Double(dataSize)
        let filled = try fill(dataSize: dataSize, size: size, base: configuration)
        let perByte = Double(filled.metadata) / Double(filled.blocks * size)
        let perBlock = Double(filled.metadata) / Double(filled.blocks)
        func boostCell(_ allocator: String) -> String {
            guard let overhead = boost["\(dataSize) \(size) \(allocator)"] else { return "—" }
            return String(format: overhead < 1 ? "%.2f B" : "%.1f B", overhead) + " (\(ratio(overhead / Double(size))))"
        }
        let stop = filled.stop == "heapFull" ? "" : " (stopped: \(filled.stop))"
        print("| \(bytes(dataSize)) | \(bytes(size))\(note) | \(ratio(daemonRatio)) | \(filled.blocks)\(stop) | "
            + "\(filled.participants) × \(filled.heldCapacity) | \(mib(filled.metadata)) | \(ratio(perByte)) | "
            + String(format: perBlock >= 1000 ? "%.0f B" : "%.1f B", perBlock) + " | \(boostCell("default")) | \(boostCell("cached")) | "
            + (perByte <= sixteenth && daemonRatio <= sixteenth ? "met" : "**not met**") + " |")
    }
}
