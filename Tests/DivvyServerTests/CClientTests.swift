import Divvy
import DivvyClient
import DivvyProtocol
import DivvyTestSupport
import Foundation
import XCTest

/// The C client ABI (`libdivvy.so`, `divvy.h`) end to end: the example C program (`Examples/c-client/main.c`) is
/// compiled with the system C compiler against the header and the built library, and run against the real `divvyd`.
///
/// Needs `libdivvy.so` in the build's products directory: `swift build --build-tests` (or `swift test`) builds it.
final class CClientTests: XCTestCase {
    /// The package's root directory (this file is `Tests/DivvyServerTests/CClientTests.swift`).
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static var includeDirectory: String { packageRoot + "/Sources/CDivvyC/include" }
    /// Where SwiftPM put this build's products (libdivvy.so, divvyd, the test bundle).
    static var productsDirectory: String {
        (ChildProcess.executablePath("divvyd") as NSString).deletingLastPathComponent
    }

    /// The C compiler: `$CC`, else `cc`, else the toolchain's `clang`.
    static func compiler(_ names: [String]) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for name in names {
            if name.hasPrefix("/") {
                if FileManager.default.isExecutableFile(atPath: name) { return name }
                continue
            }
            for directory in path.split(separator: ":") {
                let candidate = "\(directory)/\(name)"
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            }
        }
        return nil
    }

    /// Runs a command to completion; returns its exit and its stdout lines plus stderr.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws
        -> (exit: ChildProcess.ChildExit, output: String)
    {
        let process = try ChildProcess(executable, arguments, environment: environment)
        let lines = process.remainingOutput()
        let exit = process.wait()
        return (exit, (lines + [process.standardError]).joined(separator: "\n"))
    }

    /// The built library under the names an installed one has: `libdivvy.so.1` (its SONAME, which programs record
    /// and the loader looks for) and `libdivvy.so` (what `-ldivvy` finds), as symbolic links in a fresh directory.
    static func libraryDirectory() throws -> String {
        let library = productsDirectory + "/libdivvy.so"
        guard FileManager.default.fileExists(atPath: library) else {
            throw NSError(domain: "\(library) is missing: build with `swift build --build-tests`", code: 1)
        }
        let directory = try temporarySocketDirectory() + "/lib"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        for name in ["libdivvy.so.1", "libdivvy.so"] {
            try FileManager.default.createSymbolicLink(atPath: directory + "/" + name, withDestinationPath: library)
        }
        return directory
    }

    /// The example program, compiled once per test run (warnings are errors: the header must be clean).
    static let program: Result<String, Error> = Result {
        let libraries = try libraryDirectory()
        let cc = try XCTUnwrap(
            compiler([ProcessInfo.processInfo.environment["CC"] ?? "cc", "cc", "gcc", "clang"]), "no C compiler")
        let directory = try temporarySocketDirectory()
        let output = directory + "/divvy-c-example"
        let (exit, log) = try run(
            cc,
            [
                "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-I", includeDirectory,
                packageRoot + "/Examples/c-client/main.c", "-L", libraries, "-ldivvy",
                "-Wl,-rpath," + libraries, "-lpthread", "-o", output,
            ])
        guard exit.status == 0 else { throw NSError(domain: "cc failed (\(exit)): \(log)", code: 1) }
        return output
    }

    func testCProgramPassesBlocksToASecondProcessInEveryModePair() throws {
        let program = try Self.program.get()
        let daemon = try DaemonProcessTests.Daemon()
        for parent in ["direct", "mediated"] {
            for child in ["direct", "mediated"] {
                let (exit, output) = try Self.run(
                    program, ["--socket", daemon.socketPath, "--mode", parent, "--child-mode", child])
                XCTAssertEqual(exit, .init(status: 0, signal: nil), "\(parent) → \(child):\n\(output)")
                XCTAssertTrue(output.contains("\nOK\n"), "\(parent) → \(child):\n\(output)")
                XCTAssertTrue(output.contains("CHILD OK"), "\(parent) → \(child):\n\(output)")
                XCTAssertTrue(output.contains("connected: client") && output.contains(", \(parent)\n"), output)
                XCTAssertTrue(output.contains("child: connected (\(child))"), output)
                XCTAssertFalse(output.contains("FAIL"), output)
                // Every block the program and its child allocated went back: the daemon's audit agrees.
                let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
                XCTAssertEqual(verify["clean"] as? Bool, true, "\(parent) → \(child): \(verify)")
                XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(parent) → \(child): \(verify)")
            }
        }
        daemon.process.signal(SIGTERM)
        XCTAssertEqual(daemon.process.wait(timeout: 20), .init(status: 0, signal: nil), daemon.process.standardError)
    }

    func testDefaultModeAndTheDivvySocketVariable() throws {
        let program = try Self.program.get()
        let daemon = try DaemonProcessTests.Daemon()
        // No --socket: the program (and divvy_connect with a NULL path in its child) use $DIVVY_SOCKET.
        let (exit, output) = try Self.run(program, [], environment: ["DIVVY_SOCKET": daemon.socketPath])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("\nOK\n"), output)
    }

    func testNoDaemonGivesENoDaemonWithThePath() throws {
        let program = try Self.program.get()
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (exit, output) = try Self.run(program, ["no-daemon", directory + "/nobody.sock"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("no daemon: no daemon at \(directory)/nobody.sock"), output)
    }

    func testADaemonThatStopsGivesEDaemonGoneThenReconnectGivesENoDaemon() throws {
        let program = try Self.program.get()
        for mode in ["direct", "mediated"] {
            let daemon = try DaemonProcessTests.Daemon()
            let client = try ChildProcess(program, ["daemon-gone", "--socket", daemon.socketPath, "--mode", mode])
            var skipped: [String] = []
            XCTAssertEqual(client.readLine(startingWith: "READY", skipped: &skipped), "READY", "\(skipped)")
            daemon.process.signal(SIGTERM)
            XCTAssertEqual(daemon.process.wait(timeout: 20)?.status, 0, daemon.process.standardError)
            client.writeLine("go")
            let output = client.remainingOutput()
            XCTAssertEqual(client.wait(), .init(status: 0, signal: nil), "\(mode): \(output) \(client.standardError)")
            XCTAssertEqual(output.last, "OK", "\(mode): \(output)")
        }
    }

    func testQuotaExceededIsReportedAndChangesNothingInBothModes() throws {
        let program = try Self.program.get()
        let daemon = try DaemonProcessTests.Daemon(["--quota", "64K"])
        for mode in ["direct", "mediated"] {
            let (exit, output) = try Self.run(program, ["quota", "--socket", daemon.socketPath, "--mode", mode])
            XCTAssertEqual(exit.status, 0, "\(mode):\n\(output)")
            // 64 KiB of 1000-byte blocks (1024-byte class): 64, whichever side enforces the quota.
            XCTAssertTrue(output.contains("fill: 64 blocks of 1000 bytes fit (\(mode)), then quotaExceeded"), output)
            let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
            XCTAssertEqual(verify["clean"] as? Bool, true, "\(mode): \(verify)")
            XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(mode): \(verify)")
        }
    }

    func testHeapFullIsReportedAndChangesNothingInBothModes() throws {
        let program = try Self.program.get()
        // 1 MiB of data and a quota above it: the heap runs out first.
        let daemon = try DaemonProcessTests.Daemon(["--data-size", "1M", "--quota", "1G"])
        for mode in ["direct", "mediated"] {
            let (exit, output) = try Self.run(program, ["heap-full", "--socket", daemon.socketPath, "--mode", mode])
            XCTAssertEqual(exit.status, 0, "\(mode):\n\(output)")
            XCTAssertTrue(output.contains("fit (\(mode)), then heapFull"), output)
            let (verify, _) = try daemon.quiescentAudit(expectedClients: 0)
            XCTAssertEqual(verify["clean"] as? Bool, true, "\(mode): \(verify)")
            XCTAssertEqual(verify["allocatedBlocks"] as? Int, 0, "\(mode): \(verify)")
        }
    }

    /// A divvyd with `extra` flags, started without the probing client (a policy may refuse it): waits for the log
    /// line divvyd writes once its socket listens.
    private func startDaemon(_ extra: [String]) throws -> (ChildProcess, socketPath: String, directory: String) {
        let directory = try temporarySocketDirectory()
        let socketPath = directory + "/divvyd.sock"
        let process = try ChildProcess(
            "divvyd", ["--socket", socketPath, "--data-size", "8M", "--page-size", "16K"] + extra)
        let deadline = Date().addingTimeInterval(20)
        while !process.standardError.contains("divvyd ready") {
            if let exit = process.wait(timeout: 0.05) {
                throw NSError(domain: "divvyd exited (\(exit)): \(process.standardError)", code: 1)
            }
            if Date() > deadline { throw NSError(domain: "divvyd did not start: \(process.standardError)", code: 1) }
        }
        return (process, socketPath, directory)
    }

    func testPolicyRefusalsGiveTheirCodes() throws {
        let program = try Self.program.get()
        let other = String(getuid() &+ 1)
        // Direct access for another uid only: DIRECT is refused with DIVVY_EWRONG_MODE, ANY is granted mediated.
        let (mediatedOnly, socket, directory) = try startDaemon(["--set", "direct-uids=\(other)"])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var (exit, output) = try Self.run(program, ["expect-connect", "7", "--socket", socket, "--mode", "direct"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("direct-uids"), "the message says what to do: \(output)")
        (exit, output) = try Self.run(program, ["expect-connect", "0", "--socket", socket, "--mode", "any"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("connected: mediated"), output)
        mediatedOnly.signal(SIGTERM)
        XCTAssertEqual(mediatedOnly.wait(timeout: 20)?.status, 0)
        // Another uid only (and no admins: an admin rule admits too): every connection is refused with
        // DIVVY_ENOT_AUTHORIZED.
        let (closed, closedSocket, closedDirectory) = try startDaemon(
            ["--set", "allow-uids=\(other)", "--set", "admin-uids="])
        defer { try? FileManager.default.removeItem(atPath: closedDirectory) }
        for mode in ["any", "mediated"] {
            (exit, output) = try Self.run(program, ["expect-connect", "5", "--socket", closedSocket, "--mode", mode])
            XCTAssertEqual(exit.status, 0, "\(mode): \(output)")
            XCTAssertTrue(output.contains("notAuthorized: uid \(getuid())"), output)
        }
        closed.signal(SIGTERM)
        XCTAssertEqual(closed.wait(timeout: 20)?.status, 0)
    }

    /// Every participant slot taken (capacity 2: the daemon's and one direct client's): DIVVY_MODE_DIRECT is refused
    /// with DIVVY_EDIRECT_UNAVAILABLE and a message saying what to do, DIVVY_MODE_ANY is connected mediated (it used
    /// to fail with DIVVY_EINTERNAL_ERROR once the heap's participants were all taken).
    func testFullParticipantSlotsGiveDirectUnavailableAndAnyFallsBackToMediated() throws {
        let program = try Self.program.get()
        let (daemon, socket, directory) = try startDaemon(["--set", "participant-capacity=2"])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let holder = try DivvyClient(.init(socketPath: socket, name: "slot-holder", mode: .direct))
        XCTAssertEqual(holder.mode, .direct)
        var (exit, output) = try Self.run(program, ["expect-connect", "23", "--socket", socket, "--mode", "direct"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("participant-capacity"), "the message says what to do: \(output)")
        (exit, output) = try Self.run(program, ["expect-connect", "0", "--socket", socket, "--mode", "any"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("connected: mediated"), output)
        holder.close()
        (exit, output) = try Self.run(program, ["expect-connect", "0", "--socket", socket, "--mode", "direct"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("connected: direct"), "the slot came free with the goodbye: \(output)")
        daemon.signal(SIGTERM)
        XCTAssertEqual(daemon.wait(timeout: 20)?.status, 0)
    }

    /// The header's codes 1…99 are the protocol's, by name and number: a code added to `ErrorCode` must be added to
    /// divvy.h (and divvy_strerror) too.
    func testErrorCodesMirrorTheProtocol() throws {
        let header = try String(contentsOfFile: Self.includeDirectory + "/divvy.h", encoding: .utf8)
        var constants: [String: Int] = [:]
        for line in header.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix("DIVVY_E"), let equals = trimmed.firstIndex(of: "=") else { continue }
            let name = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
            let value = trimmed[trimmed.index(after: equals)...]
                .trimmingCharacters(in: CharacterSet(charactersIn: " ,"))
            constants[name] = Int(value)
        }
        for code in ErrorCode.allKnown {
            let spec = try XCTUnwrap(code.name)
            // staleHandle → DIVVY_ESTALE_HANDLE
            var snake = ""
            for character in spec {
                if character.isUppercase { snake += "_" }
                snake += character.uppercased()
            }
            XCTAssertEqual(
                constants["DIVVY_E" + snake], Int(code.rawValue), "divvy.h lacks DIVVY_E\(snake) = \(code.rawValue)")
        }
        let protocolCodes = constants.values.filter { $0 < 100 }
        XCTAssertEqual(protocolCodes.count, ErrorCode.allKnown.count, "divvy.h has protocol codes the protocol lacks")
        let clientCodes = constants.filter { $0.value >= 100 }
        XCTAssertEqual(
            Set(clientCodes.keys),
            [
                "DIVVY_ENO_DAEMON", "DIVVY_EDAEMON_GONE", "DIVVY_ETIMED_OUT", "DIVVY_ESYSTEM", "DIVVY_EINVAL",
                "DIVVY_EPROTOCOL",
            ])
        XCTAssertEqual(Set(clientCodes.values).count, clientCodes.count, "client-side codes are distinct")
    }

    func testHeaderIsCleanC99AndCxx() throws {
        let directory = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = directory + "/check.c"
        // Uses every type and constant a C user needs, so a change to the header that breaks them fails here.
        try """
            #include <divvy.h>
            #include <stddef.h>
            _Static_assert(sizeof(struct divvy_stats) == 48, "divvy_stats layout");
            _Static_assert(offsetof(struct divvy_stats, clients) == 44, "divvy_stats layout");
            _Static_assert(sizeof(divvy_share_info) == 40, "divvy_share_info layout");
            _Static_assert(offsetof(divvy_share_info, offset) == 16, "divvy_share_info layout");
            _Static_assert(sizeof(divvy_handle_t) == 16, "a handle is two 64-bit words");
            _Static_assert(offsetof(divvy_handle_t, high) == 8, "low, then high");
            _Static_assert(DIVVY_ABI_VERSION == 2, "ABI 2: 128-bit handles");
            _Static_assert(DIVVY_OK == 0 && DIVVY_ESTALE_HANDLE == 13 && DIVVY_EINVAL == 104, "codes");
            _Static_assert(DIVVY_MAX_BATCH == 4093, "the protocol's batch limit");
            int use(divvy_client *client) {
                struct divvy_stats stats;
                return divvy_stats(client, &stats) + (int)stats.clients;
            }
            """.write(toFile: source, atomically: true, encoding: .utf8)
        let cc = try XCTUnwrap(Self.compiler(["cc", "gcc", "clang"]))
        for standard in ["-std=c99", "-std=c11"] {
            let (exit, log) = try Self.run(
                cc,
                [
                    standard, "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only", "-I", Self.includeDirectory,
                    source,
                ])
            XCTAssertEqual(exit.status, 0, "\(standard): \(log)")
        }
        // C++: extern "C" linkage and no C-only constructs in the header.
        let cxx = try XCTUnwrap(Self.compiler(["c++", "g++", "clang++"]))
        let cxxSource = directory + "/check.cpp"
        try """
            #include <divvy.h>
            static_assert(sizeof(struct divvy_stats) == 48, "divvy_stats layout");
            int use(divvy_client *client) { struct divvy_stats stats; return divvy_stats(client, &stats); }
            """.write(toFile: cxxSource, atomically: true, encoding: .utf8)
        let (exit, log) = try Self.run(
            cxx, ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I", Self.includeDirectory, cxxSource])
        XCTAssertEqual(exit.status, 0, log)
    }

    func testLibraryExportsExactlyTheHeaderFunctions() throws {
        let library = Self.productsDirectory + "/libdivvy.so"
        let header = try String(contentsOfFile: Self.includeDirectory + "/divvy.h", encoding: .utf8)
        // Every `name(` declared at the start of a line after a return type, in the header.
        let declared = Set(
            header.split(separator: "\n").compactMap { line -> String? in
                guard ["int divvy_", "const char *divvy_", "unsigned divvy_"].contains(where: line.hasPrefix) else {
                    return nil
                }
                guard let start = line.range(of: "divvy_")?.lowerBound else { return nil }
                return String(line[start...].prefix(while: { $0 != "(" }))
            })
        XCTAssertGreaterThanOrEqual(declared.count, 18, "\(declared)")
        // The library's dynamic symbol table (what a C program's dynamic linker resolves against).
        let nm = try XCTUnwrap(Self.compiler(["nm", "llvm-nm", "/opt/swift/usr/bin/llvm-nm"]), "no nm")
        let (exit, symbols) = try Self.run(nm, ["-D", "--defined-only", library])
        XCTAssertEqual(exit.status, 0, symbols)
        // Global symbols (upper-case kinds); local ones (lower-case) are invisible to programs. Each carries the
        // default symbol version (`name@@DIVVY_1`); the version node itself is an absolute symbol (kind A).
        var versions = Set<String>()
        let exported = Set(
            symbols.split(separator: "\n").compactMap { line -> String? in
                let fields = line.split(separator: " ")
                guard fields.count == 3, let kind = fields[1].first, kind.isUppercase, kind != "A" else { return nil }
                let parts = fields[2].split(separator: "@", omittingEmptySubsequences: true)
                versions.insert(parts.count == 2 ? String(parts[1]) : "(none)")
                return String(parts[0])
            })
        XCTAssertEqual(versions, ["DIVVY_1"], "every exported function carries the symbol version DIVVY_1")
        // Exactly the header's functions (Sources/DivvyC/libdivvy.map): nothing of the Swift library or the C shims
        // below it can clash with a program's own symbols.
        XCTAssertEqual(exported.sorted(), declared.sorted(), "libdivvy.so's exports vs divvy.h (update libdivvy.map)")
    }

    /// Programs record `libdivvy.so.1` (the SONAME), and `divvy_version()` reports the release from the one place it
    /// is written (`DivvyVersion`).
    func testSonameAndVersionCalls() throws {
        let readelf = try XCTUnwrap(Self.compiler(["readelf", "llvm-readelf", "/opt/swift/usr/bin/llvm-readelf"]))
        let (readExit, dynamic) = try Self.run(readelf, ["-d", Self.productsDirectory + "/libdivvy.so"])
        XCTAssertEqual(readExit.status, 0, dynamic)
        XCTAssertTrue(dynamic.contains("Library soname: [libdivvy.so.1]"), dynamic)

        let libraries = try Self.libraryDirectory()
        let directory = try temporarySocketDirectory()
        let source = directory + "/version.c"
        try """
            #include <divvy.h>
            #include <stdio.h>
            int main(void) { printf("%s %u\\n", divvy_version(), divvy_version_number()); return 0; }
            """.write(toFile: source, atomically: true, encoding: .utf8)
        let cc = try XCTUnwrap(Self.compiler(["cc", "gcc", "clang"]), "no C compiler")
        let program = directory + "/version"
        let (built, log) = try Self.run(
            cc,
            [
                "-std=c11", "-Wall", "-Werror", "-I", Self.includeDirectory, source, "-L", libraries, "-ldivvy",
                "-Wl,-rpath," + libraries, "-o", program,
            ])
        XCTAssertEqual(built.status, 0, log)
        let (needed, neededLog) = try Self.run(readelf, ["-d", program])
        XCTAssertEqual(needed.status, 0)
        XCTAssertTrue(neededLog.contains("Shared library: [libdivvy.so.1]"), neededLog)
        let (exit, output) = try Self.run(program, [])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertEqual(
            output.split(separator: "\n").first.map(String.init), "\(DivvyVersion.string) \(DivvyVersion.number)")
    }

    func testRunScriptBuildsAndRunsTheExample() throws {
        let (exit, output) = try Self.run(
            "/bin/sh", [Self.packageRoot + "/Examples/c-client/run.sh"],
            environment: ["DIVVY_BUILD_DIR": Self.productsDirectory])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("c-client: all runs passed"), output)
    }

    func testInstallGivesAWorkingPkgConfigFile() throws {
        guard Self.compiler(["pkg-config"]) != nil else {
            throw XCTSkip("pkg-config is not installed (apt-get install pkg-config)")
        }
        let prefix = try temporarySocketDirectory()
        defer { try? FileManager.default.removeItem(atPath: prefix) }
        let (installed, log) = try Self.run(
            "/bin/sh", [Self.packageRoot + "/deploy/install-libdivvy.sh", prefix, Self.productsDirectory])
        XCTAssertEqual(installed.status, 0, log)
        for file in [
            "lib/libdivvy.so.\(DivvyVersion.string)", "lib/libdivvy.so.1", "lib/libdivvy.so", "include/divvy.h",
            "lib/pkgconfig/divvy.pc",
        ] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: prefix + "/" + file), "\(file) installed")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: prefix + "/include/divvy_c_internal.h"))
        let environment = ["PKG_CONFIG_PATH": prefix + "/lib/pkgconfig"]
        let (flagsExit, flags) = try Self.run(
            "/bin/sh", ["-c", "pkg-config --cflags --libs divvy"], environment: environment)
        XCTAssertEqual(flagsExit.status, 0, flags)
        XCTAssertTrue(flags.contains("-I\(prefix)/include"), flags)
        XCTAssertTrue(flags.contains("-L\(prefix)/lib") && flags.contains("-ldivvy"), flags)
        // A program built with only the installed files and pkg-config's flags runs against a real daemon.
        let program = prefix + "/divvy-c-example"
        let cc = try XCTUnwrap(Self.compiler(["cc", "gcc", "clang"]), "no C compiler")
        let (built, buildLog) = try Self.run(
            "/bin/sh",
            [
                "-c", "\"$1\" -std=c11 \"$2\" $(pkg-config --cflags --libs divvy) -lpthread -o \"$3\"", "sh", cc,
                Self.packageRoot + "/Examples/c-client/main.c", program,
            ], environment: environment)
        XCTAssertEqual(built.status, 0, buildLog)
        let (linked, ldd) = try Self.run("/usr/bin/ldd", [program])
        XCTAssertEqual(linked.status, 0)
        XCTAssertTrue(
            ldd.contains("libdivvy.so.1 => \(prefix)/lib/libdivvy.so.1"), "the installed library is the one used: \(ldd)")
        let (versionExit, version) = try Self.run(
            "/bin/sh", ["-c", "pkg-config --modversion divvy"], environment: environment)
        XCTAssertEqual(versionExit.status, 0, version)
        XCTAssertEqual(version.split(separator: "\n").first.map(String.init), DivvyVersion.string)
        let daemon = try DaemonProcessTests.Daemon()
        let (exit, output) = try Self.run(program, ["--socket", daemon.socketPath, "--mode", "mediated"])
        XCTAssertEqual(exit.status, 0, output)
        XCTAssertTrue(output.contains("\nOK\n"), output)
    }
}
