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
// Exit status: 0 all good, 1 a check failed, 2 a region error (printed on stderr), 3 timeout, 4 the name was taken,
// 64 usage.
import Atomics
import DivvyShm
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
