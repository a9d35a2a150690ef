// divvy-client-helper: a client process for DivvyServerTests. Each command connects to a daemon, does scripted
// work, and reports on stdout one line per fact ("HANDLE <raw>", "OK <n>", "ERROR <code>"), so the tests can
// check what happened in another process. Exit status 0 = the command's checks passed.
//
//   divvy-client-helper SOCKET MODE COMMAND ARGS…      (MODE: direct | mediated | any)
//   hold SIZE COUNT SEED     allocate COUNT blocks, fill each with a pattern, share each and print it as
//                            HANDLE LOW:HIGH:TOKEN (the handle's words and a share token), then wait for a line on
//                            stdin: "release" frees them (prints RELEASED <n>), EOF exits holding them.
//   check SIZE SEED HANDLE…  adopt each LOW:HIGH:TOKEN, check its first SIZE bytes' pattern (block i of the
//                            writer's sequence), free it; OK <n>.
//   survive SIZE COUNT SEED  (direct) allocate COUNT blocks and fill them, print READY; then for each "check" line on
//                            stdin check every pattern, allocate/fill/free 8 more in shared memory, print CHECKED <n>;
//                            on any other line or EOF exit without leaving (restart tests: no daemon is needed).
//   churn OPS SEED           random allocate / write / check / free (and batch calls in mediated mode), printing
//                            PROGRESS every 100 ops; for SIGKILL tests.
//   cycle SECONDS            for SECONDS, connect a new client (in MODE), allocate and free a block, close it; print
//                            CYCLED <cycles> <failures> and the failures' codes (slot churn tests).
//   fill SIZE                allocate until refused; print FILLED <n> <error code>, then wait for EOF.
//   stats                    print STATS <bytesHeld> <blocksHeld> <quota>.
//   drop SIZE COUNT SEED     allocate COUNT blocks, then close every socket of the process without a goodbye (as a
//                            client whose connection breaks while it keeps running), print DROPPED <n sockets>,
//                            and keep running until EOF on stdin; then exit without leaving the heap.
//   silent COUNT             (no hello: MODE is ignored) open COUNT connections and never send anything; print
//                            SILENT <opened> <first refusal or "none">, then CLOSED <n> as the daemon closes them,
//                            until all are closed or stdin reaches EOF. Run under another uid (setpriv) to act as
//                            an ordinary peer flooding the daemon.
import DivvyClient
import DivvyProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Prints a line and flushes at once (the tests read lines while the process runs).
func say(_ line: String) {
    print(line)
    fflush(nil)
}

func fail(_ message: String) -> Never {
    say("FAIL \(message)")
    exit(1)
}

/// The byte pattern of block `index` under `seed`.
func pattern(_ seed: UInt64, _ index: Int, _ offset: Int) -> UInt8 {
    var x = seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(offset)
    x ^= x >> 29
    x = x &* 0xBF58_476D_1CE4_E5B9
    return UInt8(truncatingIfNeeded: x >> 32)
}

func fill(_ client: DivvyClient, _ handle: SharedHandle, _ size: Int, _ seed: UInt64, _ index: Int) throws {
    let p = try client.pointer(for: handle)
    for offset in 0..<size { p.storeBytes(of: pattern(seed, index, offset), toByteOffset: offset, as: UInt8.self) }
}

func check(_ client: DivvyClient, _ handle: SharedHandle, _ size: Int, _ seed: UInt64, _ index: Int) throws -> Bool {
    let p = try client.pointer(for: handle)
    for offset in 0..<size where p.load(fromByteOffset: offset, as: UInt8.self) != pattern(seed, index, offset) {
        return false
    }
    return true
}

let arguments = CommandLine.arguments
guard arguments.count >= 4 else { fail("usage: divvy-client-helper SOCKET MODE COMMAND ARGS…") }
let mode: ClientMode =
    switch arguments[2] {
    case "direct": .direct
    case "mediated": .mediated
    default: .any
    }
let command = arguments[3]
let rest = Array(arguments.dropFirst(4))

func run(_ client: DivvyClient, _ command: String, _ rest: [String]) throws {
    switch command {
    case "hold":
        guard rest.count == 3, let size = Int(rest[0]), let count = Int(rest[1]), let seed = UInt64(rest[2]) else {
            fail("hold SIZE COUNT SEED")
        }
        var handles: [SharedHandle] = []
        for index in 0..<count {
            let (handle, _) = try client.allocateHandle(size)
            try fill(client, handle, size, seed, index)
            handles.append(handle)
            // Both words (a handle is 128 bits) and a share token, which a mediated adopter needs.
            let token = try client.share(handle).token
            say("HANDLE \(handle.low):\(handle.high):\(token)")
        }
        say("READY")
        if let line = readLine(), line == "release" {
            var released = 0
            for handle in handles {
                if try client.free(handle) { released += 1 }
            }
            say("RELEASED \(released)")
        }
        client.close()
    case "survive":
        // Direct mode: blocks that must outlive daemon restarts (docs/restart.md).
        guard rest.count == 3, let size = Int(rest[0]), let count = Int(rest[1]), let seed = UInt64(rest[2]) else {
            fail("survive SIZE COUNT SEED")
        }
        var handles: [SharedHandle] = []
        for index in 0..<count {
            let (handle, _) = try client.allocateHandle(size)
            try fill(client, handle, size, seed, index)
            handles.append(handle)
        }
        say("READY")
        var rounds = 0
        while let line = readLine(), line == "check" {
            rounds += 1
            for (index, handle) in handles.enumerated() where !(try check(client, handle, size, seed, index)) {
                fail("block \(index) (\(handle)) lost its pattern after \(rounds) checks")
            }
            // Allocating and freeing in shared memory needs no daemon (within the pages already leased).
            for round in 0..<8 {
                let (handle, _) = try client.allocateHandle(size)
                try fill(client, handle, size, seed &+ UInt64(rounds), round)
                guard try check(client, handle, size, seed &+ UInt64(rounds), round) else { fail("fresh block") }
                try client.free(handle)
            }
            say("CHECKED \(handles.count)")
        }
        // Exits holding its blocks, without leaving: the daemon recovers the participant once the process is gone.
        exit(0)
    case "check":
        guard rest.count >= 2, let size = Int(rest[0]), let seed = UInt64(rest[1]) else {
            fail("check SIZE SEED HANDLE…")
        }
        var good = 0
        for (index, text) in rest.dropFirst(2).enumerated() {
            let words = text.split(separator: ":")
            guard words.count == 3, let low = UInt64(words[0]), let high = UInt64(words[1]),
                let token = UInt64(words[2])
            else {
                fail("bad handle \(text) (LOW:HIGH:TOKEN)")
            }
            let handle = SharedHandle(low: low, high: high)
            let blockSize = try client.adoptHandle(handle, token: token)
            guard blockSize >= size else { fail("block \(index) has \(blockSize) bytes, fewer than \(size)") }
            guard try check(client, handle, size, seed, index) else {
                fail("block \(index) (\(handle)) does not hold the writer's pattern")
            }
            try client.free(handle)
            good += 1
        }
        say("OK \(good)")
        client.close()
    case "churn":
        guard rest.count == 2, let ops = Int(rest[0]), let seed = UInt64(rest[1]) else { fail("churn OPS SEED") }
        var state = seed | 1
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        var live: [(SharedHandle, Int, Int)] = []
        for op in 0..<ops {
            if op % 100 == 0 { say("PROGRESS \(op)") }
            let choice = next() % 10
            if choice < 5 || live.isEmpty {
                let size = Int(next() % 2000) + 1
                let (handle, _) = try client.allocateHandle(size)
                try fill(client, handle, min(size, 64), seed, op)
                live.append((handle, min(size, 64), op))
            } else if choice < 9 {
                let victim = Int(next() % UInt64(live.count))
                let (handle, size, index) = live.remove(at: victim)
                guard try check(client, handle, size, seed, index) else { fail("block \(handle) was corrupted") }
                try client.free(handle)
            } else if client.mode == .mediated {
                let handles = try client.allocateBatch(size: 48, count: 20)
                let statuses = try client.freeBatch(handles)
                guard statuses.allSatisfy({ $0 == .released }) else { fail("batch free: \(statuses)") }
            }
        }
        say("OK \(ops)")
        client.close()
    case "cycle":
        guard let seconds = Double(rest.first ?? "") else { fail("cycle SECONDS") }
        client.close()
        func now() -> Double {
            var time = timespec()
            clock_gettime(CLOCK_MONOTONIC, &time)
            return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
        }
        let end = now() + seconds
        var cycles = 0
        var failures: [String: Int] = [:]
        while now() < end {
            do throws(DivvyClientError) {
                let next = try DivvyClient(.init(socketPath: arguments[1], name: "helper-cycle", mode: mode))
                if mode == .direct, next.mode != .direct { fail("asked for direct, got \(next.mode)") }
                let (handle, _) = try next.allocateHandle(64)
                try next.free(handle)
                next.close()
            } catch {
                failures["\(error.protocolCode.map { "\($0)" } ?? "\(error.code)")", default: 0] += 1
            }
            cycles += 1
        }
        let total = failures.values.reduce(0, +)
        say("CYCLED \(cycles) \(total)" + failures.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined())
    case "fill":
        guard let size = Int(rest.first ?? "") else { fail("fill SIZE") }
        var count = 0
        while true {
            do throws(DivvyClientError) {
                _ = try client.allocateHandle(size)
                count += 1
            } catch {
                say("FILLED \(count) \(error.protocolCode.map { "\($0)" } ?? "\(error.code)")")
                break
            }
        }
        while readLine() != nil {}
        client.close()
    case "drop":
        guard rest.count == 3, let size = Int(rest[0]), let count = Int(rest[1]), let seed = UInt64(rest[2]) else {
            fail("drop SIZE COUNT SEED")
        }
        for index in 0..<count {
            let (handle, _) = try client.allocateHandle(size)
            try fill(client, handle, size, seed, index)
        }
        // The client's socket: the descriptor connected to the daemon's socket path (a test runner's own sockets may
        // have been inherited too; they stay open).
        var closed = 0
        for fd in Int32(3)..<256 {
            var address = sockaddr_un()
            var length = socklen_t(MemoryLayout<sockaddr_un>.size)
            let status = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
            }
            let peer = withUnsafeBytes(of: address.sun_path) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if status == 0, peer == arguments[1] {
                Glibc.close(fd)
                closed += 1
            }
        }
        say("DROPPED \(closed)")
        while readLine() != nil {}
        // No close(): the client never leaves the heap; the daemon must recover it once this process is gone.
        exit(0)
    case "stats":
        let stats = try client.stats()
        say("STATS \(stats.bytesHeld) \(stats.blocksHeld) \(stats.quotaBytes)")
        client.close()
    default:
        fail("unknown command \(command)")
    }
}

/// Opens a raw SOCK_SEQPACKET connection to `path` (no protocol), or returns -1.
func rawConnection(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    if connected != 0 {
        close(fd)
        return -1
    }
    return fd
}

if command == "silent" {
    guard let count = rest.first.flatMap({ Int($0) }) else { fail("usage: silent COUNT") }
    var open: [Int32] = []
    var refusal = "none"
    for _ in 0..<count {
        let fd = rawConnection(arguments[1])
        guard fd >= 0 else { fail("connect failed: errno \(errno)") }
        // A refused connection gets an error frame and EOF at once; an admitted one has nothing to read.
        var pollfd = Glibc.pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&pollfd, 1, 100) > 0 {
            var buffer = [UInt8](repeating: 0, count: 65537)
            let n = recv(fd, &buffer, buffer.count, 0)
            if n >= 26, refusal == "none" { refusal = String(UInt16(buffer[24]) | UInt16(buffer[25]) << 8) }
            close(fd)
            continue
        }
        open.append(fd)
    }
    say("SILENT \(open.count) \(refusal)")
    // Wait for the daemon to close each (handshake timeout): readable with EOF (after its error frame).
    var closed = 0
    var pending = open
    while !pending.isEmpty {
        var fds = pending.map { Glibc.pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        fds.append(Glibc.pollfd(fd: 0, events: Int16(POLLIN), revents: 0))
        guard poll(&fds, nfds_t(fds.count), -1) > 0 else { continue }
        if fds.last!.revents != 0 { exit(0) }  // stdin: EOF or a line, the test is done
        var still: [Int32] = []
        for entry in fds.dropLast() {
            var buffer = [UInt8](repeating: 0, count: 65537)
            if entry.revents != 0, recv(entry.fd, &buffer, buffer.count, 0) <= 0 {
                close(entry.fd)
                closed += 1
                say("CLOSED \(closed)")
            } else {
                still.append(entry.fd)
            }
        }
        pending = still
    }
    while readLine() != nil {}
    exit(0)
}

do {
    let client = try DivvyClient(.init(socketPath: arguments[1], name: "helper-\(command)", mode: mode))
    say("CONNECTED \(client.clientID) \(client.mode)")
    try run(client, command, rest)
} catch let error as DivvyClientError {
    say("ERROR \(error.protocolCode.map { "\($0)" } ?? "\(error.code)") \(error.message)")
    exit(3)
} catch {
    say("ERROR \(error)")
    exit(3)
}
