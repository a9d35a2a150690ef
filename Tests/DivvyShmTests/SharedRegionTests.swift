import Atomics
import Divvy
import Foundation
import SystemPackage
import XCTest

@testable import DivvyShm
import DivvySystem
import DivvyTestSupport

#if canImport(Glibc)
import Glibc
#endif

final class SharedRegionTests: ShmTestCase {
    let page = OSAllocator.pageSize

    // MARK: - Create, open, remove by name

    func testCreateOpenRemoveByName() throws {
        let region = try SharedRegion.create(name: "a", configuration())
        XCTAssertEqual(region.objectName, "/\(prefix)a")
        XCTAssertTrue(exists("a"))
        let geometry = region.geometry
        XCTAssertEqual(geometry.headerSize, 4096)
        XCTAssertEqual(geometry.metadataOffset, 4096)
        XCTAssertEqual(geometry.metadataSize, 60 << 10)
        XCTAssertEqual(geometry.dataOffset, 64 << 10)
        XCTAssertEqual(geometry.dataSize, 1 << 20)
        XCTAssertEqual(geometry.totalSize, (64 << 10) + (1 << 20))
        XCTAssertEqual(geometry.pageSize, page)
        XCTAssertEqual(region.pageKind, .base)
        XCTAssertEqual(region.header.creatorPID, getpid())
        XCTAssertFalse(region.header.isLazy)
        XCTAssertFalse(region.header.isAnonymous)
        XCTAssertEqual(region.mapping.offsets, 0..<geometry.totalSize)
        XCTAssertGreaterThanOrEqual(try region.allocatedBytes(), geometry.totalSize, "full commitment allocates all")
        let info = try XCTUnwrap(try? FileManager.default.attributesOfItem(atPath: "/dev/shm/\(prefix)a"))
        XCTAssertEqual((info[.size] as? NSNumber)?.intValue, geometry.totalSize)

        try region.mapping.withUnsafeMutableBytes(atOffset: geometry.dataOffset + 100, length: 3) {
            $0.copyBytes(from: [1, 2, 3])
        }
        let second = try SharedRegion.open(name: "a", namePrefix: prefix)
        XCTAssertEqual(second.header, region.header, "the opener reads what the creator wrote")
        XCTAssertEqual(
            try second.mapping.withUnsafeBytes(atOffset: geometry.dataOffset + 100, length: 3) { Array($0) }, [1, 2, 3])
        XCTAssertNotEqual(second.mapping.base, region.mapping.base, "two mappings, one region")

        // Removing is explicit; the mappings stay usable afterwards, new opens fail.
        try region.remove()
        XCTAssertFalse(exists("a"))
        assertRegionError(.notFound) { _ = try SharedRegion.open(name: "a", namePrefix: prefix) }
        assertRegionError(.notFound, "removing twice") { try SharedRegion.remove(name: "a", namePrefix: prefix) }
        try second.mapping.withUnsafeMutableBytes(atOffset: geometry.dataOffset, length: 1) { $0[0] = 42 }
        XCTAssertEqual(try region.mapping.withUnsafeBytes(atOffset: geometry.dataOffset, length: 1) { $0[0] }, 42)
    }

    func testClosingDoesNotRemoveAndStaticRemoveDoes() throws {
        var nonce: UInt64 = 0
        do {
            let region = try SharedRegion.create(name: "keep", configuration())
            nonce = region.header.nonce
        }
        XCTAssertTrue(exists("keep"), "dropping the region unmaps and closes, but does not remove")
        XCTAssertEqual(try SharedRegion.open(name: "keep", namePrefix: prefix).header.nonce, nonce)
        try SharedRegion.remove(name: "keep", namePrefix: prefix)
        XCTAssertFalse(exists("keep"))
    }

    func testModeBitsAreExactlyWhatWasAskedFor() throws {
        let region = try SharedRegion.create(name: "default-mode", configuration())
        XCTAssertEqual(try mode(of: region), 0o600, "default 0600")

        // The umask does not apply: 0640 stays 0640 even under umask 077.
        let old = umask(0o077)
        defer { umask(old) }
        let shared = try SharedRegion.create(
            name: "group", configuration { $0.mode = FilePermissions(rawValue: 0o640) })
        XCTAssertEqual(try mode(of: shared), 0o640)
        let info = try FileManager.default.attributesOfItem(atPath: "/dev/shm/\(prefix)group")
        XCTAssertEqual((info[.posixPermissions] as? NSNumber)?.intValue, 0o640)
    }

    private func mode(of region: SharedRegion) throws -> mode_t {
        var info = stat()
        XCTAssertEqual(fstat(region.fileDescriptor.rawValue, &info), 0)
        return info.st_mode & 0o7777
    }

    func testOpeningAMissingNameFailsClearly() throws {
        let error = assertRegionError(.notFound) { _ = try SharedRegion.open(name: "missing", namePrefix: prefix) }
        XCTAssertEqual(error?.cause, .noSuchFileOrDirectory)
        XCTAssertTrue(error?.message.contains("'/\(prefix)missing'") ?? false, "\(String(describing: error))")
        XCTAssertTrue(error?.message.contains("create it") ?? false, "says what to do: \(String(describing: error))")
        XCTAssertTrue(shmObjects().isEmpty, "opening never creates")
    }

    /// The owner lock tells a live holder (another process, or another open in this one) from a dead one: the
    /// kernel drops it when its holder is SIGKILLed, and a clean release removes the lock object.
    func testOwnerLockIsExclusiveAndDiesWithItsHolder() throws {
        XCTAssertFalse(try SharedRegionOwnerLock.isHeld(name: "owned", namePrefix: prefix), "no lock object yet")
        let holder = try HelperProcess.spawn(["hold-lock", "owned", prefix])
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while byte != UInt8(ascii: "\n"), read(holder.outputFD, &byte, 1) == 1 { line.append(byte) }
        XCTAssertEqual(String(decoding: line, as: UTF8.self), "LOCKED\n")

        XCTAssertTrue(try SharedRegionOwnerLock.isHeld(name: "owned", namePrefix: prefix))
        let refused = assertRegionError(.inUse) { _ = try SharedRegionOwnerLock.acquire(name: "owned", namePrefix: prefix) }
        XCTAssertTrue(refused?.message.contains("/dev/shm/\(prefix)owned.lock") ?? false, "names the lock: \(String(describing: refused))")
        XCTAssertTrue(refused?.message.contains("choose another region name") ?? false, "says what to do")

        kill(holder.pid, SIGKILL)
        XCTAssertEqual(holder.wait().signal, SIGKILL)
        XCTAssertTrue(exists("owned.lock"), "a killed holder leaves the lock object, but not the lock")
        XCTAssertFalse(try SharedRegionOwnerLock.isHeld(name: "owned", namePrefix: prefix))

        let lock = try SharedRegionOwnerLock.acquire(name: "owned", namePrefix: prefix)
        XCTAssertTrue(try SharedRegionOwnerLock.isHeld(name: "owned", namePrefix: prefix))
        assertRegionError(.inUse) { _ = try SharedRegionOwnerLock.acquire(name: "owned", namePrefix: prefix) }
        lock.release(removingName: true)
        lock.release(removingName: true)  // Idempotent.
        XCTAssertFalse(exists("owned.lock"), "a clean release leaves nothing in /dev/shm")
        XCTAssertFalse(try SharedRegionOwnerLock.isHeld(name: "owned", namePrefix: prefix))
        withExtendedLifetime(try SharedRegionOwnerLock.acquire(name: "owned", namePrefix: prefix)) {}
        assertRegionError(.invalidName) { _ = try SharedRegionOwnerLock.acquire(name: "a/b", namePrefix: prefix) }
    }

    func testCreatingAnExistingNameFailsUnlessReplaceIsAsked() throws {
        let first = try SharedRegion.create(name: "taken", configuration())
        try first.mapping.withUnsafeMutableBytes(atOffset: first.geometry.dataOffset, length: 1) { $0[0] = 7 }
        let before = try XCTUnwrap(objectBytes(first.objectName!))

        let error = assertRegionError(.alreadyExists) { _ = try SharedRegion.create(name: "taken", configuration()) }
        XCTAssertTrue(error?.message.contains("already exists") ?? false)
        XCTAssertTrue(error?.message.contains("ifExists: .replace") ?? false, "says what to do")
        XCTAssertEqual(objectBytes(first.objectName!), before, "a refused create changes nothing")
        XCTAssertEqual(try SharedRegion.open(name: "taken", namePrefix: prefix).header.nonce, first.header.nonce)

        let replacement = try SharedRegion.create(name: "taken", configuration { $0.ifExists = .replace })
        XCTAssertNotEqual(replacement.header.nonce, first.header.nonce)
        XCTAssertEqual(try SharedRegion.open(name: "taken", namePrefix: prefix).header.nonce, replacement.header.nonce)
        XCTAssertEqual(
            try replacement.mapping.withUnsafeBytes(atOffset: replacement.geometry.dataOffset, length: 1) { $0[0] }, 0)
        XCTAssertEqual(
            try first.mapping.withUnsafeBytes(atOffset: first.geometry.dataOffset, length: 1) { $0[0] }, 7,
            "the old mapping keeps the old (now unlinked) object")
    }

    func testInvalidNamesAndConfigurationsAreRefusedAndLeaveNothing() throws {
        for name in ["", "a/b"] {
            assertRegionError(.invalidName, "name '\(name)'") {
                _ = try SharedRegion.create(name: name, configuration())
            }
            assertRegionError(.invalidName) { _ = try SharedRegion.open(name: name, namePrefix: prefix) }
        }
        assertRegionError(.invalidName) {
            _ = try SharedRegion.create(name: String(repeating: "x", count: 300), configuration())
        }
        assertRegionError(.invalidConfiguration) {
            _ = try SharedRegion.create(name: "zero", configuration(dataSize: 0))
        }
        assertRegionError(.invalidConfiguration) {
            _ = try SharedRegion.create(name: "neg", configuration(metadataSize: -1))
        }
        assertRegionError(.invalidConfiguration) {
            _ = try SharedRegion.create(name: "setuid", configuration { $0.mode = FilePermissions(rawValue: 0o4600) })
        }
        assertRegionError(.invalidConfiguration) {
            _ = try SharedRegion.create(name: "huge", configuration(dataSize: Int.max - 4096))
        }
        assertRegionError(.invalidConfiguration) { _ = try SharedRegion.createAnonymous(configuration(dataSize: -1)) }
        XCTAssertTrue(shmObjects().isEmpty, "\(shmObjects())")
    }

    func testReadOnlyOpen() throws {
        let region = try SharedRegion.create(name: "ro", configuration())
        try region.mapping.withUnsafeMutableBytes(atOffset: region.geometry.dataOffset, length: 1) { $0[0] = 5 }
        let reader = try SharedRegion.open(name: "ro", namePrefix: prefix, access: .readOnly, prefault: true)
        XCTAssertEqual(reader.access, .readOnly)
        XCTAssertEqual(try reader.mapping.withUnsafeBytes(atOffset: region.geometry.dataOffset, length: 1) { $0[0] }, 5)
        assertRegionError(.permissionDenied) {
            try reader.mapping.withUnsafeMutableBytes(atOffset: region.geometry.dataOffset, length: 1) { $0[0] = 1 }
        }
        assertRegionError(.permissionDenied) { _ = try reader.mapDataArea(access: .readWrite) }
        assertRegionError(.permissionDenied) { try reader.commit(offset: 0, length: 4096) }
        XCTAssertEqual(try reader.mapDataArea(access: .readOnly).offsets, region.geometry.dataRange)
    }

    func testPrefaultedRegionIsCommittedAndUsable() throws {
        let region = try SharedRegion.create(name: "prefault", configuration { $0.prefault = true })
        XCTAssertGreaterThanOrEqual(try region.allocatedBytes(), region.geometry.totalSize)
        let lazy = try SharedRegion.createAnonymous(
            configuration {
                $0.prefault = true
                $0.commitment = .lazy
            })
        XCTAssertLessThan(try lazy.allocatedBytes(), lazy.geometry.totalSize, "prefault covers only the committed part")
    }

    // MARK: - Two processes

    func testAnonymousRegionIsSharedWithAChildThroughItsDescriptor() throws {
        let region = try SharedRegion.createAnonymous(configuration())
        XCTAssertNil(region.objectName)
        XCTAssertTrue(region.header.isAnonymous)
        let d = region.geometry.dataOffset
        try region.mapping.withUnsafeMutableBytes(atOffset: d, length: 4096) {
            $0.initializeMemory(as: UInt8.self, repeating: 0x11)
        }
        let childDone = d + 65536
        let parentDone = d + 65544
        let child = try HelperProcess.spawn(
            [
                "fd", "3", "print-header",
                "expect", "\(d)", "4096", "\(0x11)",  // sees the parent's write
                "fill", "\(d + 8192)", "4096", "\(0x22)",  // writes for the parent
                "signal", "\(childDone)", "1",
                "await", "\(parentDone)", "1",
                "expect", "\(d + 16384)", "100", "\(0x33)",  // sees the parent's second write
            ], inheriting: region.fileDescriptor.rawValue)

        try awaitFlag(region.mapping, at: childDone, child: child)
        XCTAssertEqual(
            try region.mapping.withUnsafeBytes(atOffset: d + 8192, length: 4096) { $0.allSatisfy { $0 == 0x22 } }, true,
            "the parent sees the child's writes")
        try region.mapping.withUnsafeMutableBytes(atOffset: d + 16384, length: 100) {
            $0.initializeMemory(as: UInt8.self, repeating: 0x33)
        }
        flag(region.mapping, at: parentDone).store(1, ordering: .releasing)
        let exit = child.wait()
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(exit.output, "nonce=\(region.header.nonce) kind=base pid=\(getpid())")

        // An anonymous region has no name to remove, and its size is sealed: nobody can truncate it under a mapping.
        assertRegionError(.invalidConfiguration) { try region.remove() }
        XCTAssertEqual(ftruncate(region.fileDescriptor.rawValue, 4096), -1)
        XCTAssertEqual(errno, EPERM, "F_SEAL_SHRINK")
        XCTAssertEqual(ftruncate(region.fileDescriptor.rawValue, off_t(region.geometry.totalSize * 2)), -1)
        XCTAssertEqual(errno, EPERM, "F_SEAL_GROW")
        XCTAssertTrue(shmObjects().isEmpty, "memfd regions have no name in /dev/shm")
    }

    /// A region owns its descriptors (the region's and its data object's): both close when the region is destroyed,
    /// once (a second close would trap on EBADF).
    func testARegionClosesItsDescriptorsWhenDestroyed() throws {
        var region: SharedRegion? = try SharedRegion.createAnonymous(
            .init(dataSize: 1 << 20, separateDataObject: true))
        let fd = region!.fileDescriptor.rawValue
        let dataFD = try XCTUnwrap(region!.dataFileDescriptor).rawValue
        XCTAssertNotEqual(fcntl(fd, F_GETFD), -1)
        XCTAssertNotEqual(fcntl(dataFD, F_GETFD), -1)
        region = nil
        XCTAssertEqual(fcntl(fd, F_GETFD), -1, "the region's descriptor closed with it")
        XCTAssertEqual(fcntl(dataFD, F_GETFD), -1, "the data object's descriptor closed with it")
    }

    func testNamedRegionIsOpenedByAChildProcess() throws {
        let region = try SharedRegion.create(name: "cross", configuration())
        let d = region.geometry.dataOffset
        let exit = try HelperProcess.run([
            "name", "cross", prefix, "print-header", "fill", "\(d + 12345)", "777", "\(0x5A)",
            "fill", "\(region.geometry.metadataOffset)", "16", "\(0x6B)",
        ])
        XCTAssertEqual(exit.status, 0, "\(exit)")
        XCTAssertEqual(exit.output, "nonce=\(region.header.nonce) kind=base pid=\(getpid())")
        let bytes = try region.mapping.withUnsafeBytes(atOffset: d + 12344, length: 779) { Array($0) }
        XCTAssertEqual(bytes.first, 0)
        XCTAssertEqual(bytes.last, 0)
        XCTAssertTrue(bytes.dropFirst().dropLast().allSatisfy { $0 == 0x5A }, "the child's write, exactly")
        XCTAssertEqual(
            try region.mapping.withUnsafeBytes(atOffset: region.geometry.metadataOffset, length: 16) { Array($0) },
            [UInt8](repeating: 0x6B, count: 16))

        // A child that opens a missing name fails with the clear error (exit 2), not a crash.
        XCTAssertEqual(try HelperProcess.run(["name", "nope", prefix]).status, 2)
    }

    func testConcurrentCreatorsAndOpenersOfOneName() throws {
        // Three processes race to create one name while three others open it as soon as it appears. Exactly one
        // creator wins; no opener ever gets a half-initialized region (they retry on .notFound / .notInitialized,
        // and any other error fails them); everyone ends up with the winner's region.
        for round in 0..<5 {
            let name = "race\(round)"
            let size = "\(16 << 20)"  // large enough that fallocate takes a moment, widening the window
            var processes: [HelperProcess] = []
            for i in 0..<6 {
                processes.append(
                    try HelperProcess.spawn(
                        i % 2 == 0
                            ? ["create", name, prefix, size, "print-header"]
                            : ["open-retry", name, prefix, "print-header"]))
            }
            let exits = processes.map { $0.wait() }
            let creators = stride(from: 0, to: 6, by: 2).map { exits[$0] }
            let openers = stride(from: 1, to: 6, by: 2).map { exits[$0] }
            XCTAssertEqual(creators.filter { $0.status == 0 }.count, 1, "round \(round): \(creators)")
            XCTAssertEqual(creators.filter { $0.status == 4 }.count, 2, "round \(round): \(creators)")
            let region = try SharedRegion.open(name: name, namePrefix: prefix)
            let expected = "nonce=\(region.header.nonce) kind=base"
            for exit in creators where exit.status == 0 { XCTAssertTrue(exit.output.hasPrefix(expected), "\(exit)") }
            for exit in openers {
                XCTAssertEqual(exit.status, 0, "round \(round): \(exit)")
                XCTAssertTrue(exit.output.hasPrefix(expected), "round \(round): \(exit) vs \(expected)")
            }
            try region.remove()
        }
    }

    func testACreatorKilledAtAnyMomentLeavesNothingHalfInitializedThatOpens() throws {
        // SIGKILL the creator of a 256 MiB region after a growing delay: whatever it left must be absent, refuse to
        // open with .notInitialized, or be complete. `.replace` then recovers the name.
        for (trial, delay) in [0, 200, 1_000, 5_000, 20_000, 100_000].enumerated() {
            let name = "killed\(trial)"
            let creator = try HelperProcess.spawn(["create", name, prefix, "\(256 << 20)"])
            usleep(UInt32(delay))
            kill(creator.pid, SIGKILL)
            let exit = creator.wait()
            do {
                let region = try SharedRegion.open(name: name, namePrefix: prefix)
                XCTAssertEqual(region.geometry.dataSize, 256 << 20, "a region that opens is complete")
                XCTAssertEqual(region.header.creatorPID, creator.pid)
            } catch let error as SharedRegionError {
                XCTAssertTrue(
                    error.code == .notFound || error.code == .notInitialized, "trial \(trial) (\(exit)): \(error)")
            }
            let fresh = try SharedRegion.create(name: name, configuration { $0.ifExists = .replace })
            XCTAssertEqual(try SharedRegion.open(name: name, namePrefix: prefix).header.nonce, fresh.header.nonce)
            try fresh.remove()
        }
    }

    func testAtomicsInTheRegionAreExactAcrossProcesses() throws {
        // Two helper processes and this one add to one counter at once: every add lands (MAP_SHARED, one object).
        let region = try SharedRegion.create(name: "counter", configuration())
        let counter = region.geometry.dataOffset + 64
        var children = try (0..<2).map { _ in
            try HelperProcess.spawn(["name", "counter", prefix, "increment", "\(counter)", "200000"])
        }
        children.append(
            try HelperProcess.spawn(
                ["fd", "3", "increment", "\(counter)", "200000"], inheriting: region.fileDescriptor.rawValue))
        let word = flag(region.mapping, at: counter)
        for _ in 0..<200_000 { word.wrappingIncrement(ordering: .relaxed) }
        for child in children {
            let exit = child.wait()
            XCTAssertEqual(exit.status, 0, "\(exit)")
        }
        // Acquire is not needed after waitpid (the kernel orders the child's exit before the parent's return).
        XCTAssertEqual(word.load(ordering: .relaxed), 800_000)
    }

    func testDataAreaMappingSeesDataAndCannotReachMetadata() throws {
        let region = try SharedRegion.create(name: "data", configuration())
        let g = region.geometry
        let data = try region.mapDataArea()
        XCTAssertEqual(data.offsets, g.dataRange)
        XCTAssertEqual(data.regionOffset, g.dataOffset)
        XCTAssertEqual(data.length, g.dataSize)

        try region.mapping.withUnsafeMutableBytes(atOffset: g.dataOffset + 10, length: 1) { $0[0] = 0xA1 }
        XCTAssertEqual(try data.withUnsafeBytes(atOffset: g.dataOffset + 10, length: 1) { $0[0] }, 0xA1)
        try data.withUnsafeMutableBytes(atOffset: g.totalSize - 1, length: 1) { $0[0] = 0xB2 }
        XCTAssertEqual(try region.mapping.withUnsafeBytes(atOffset: g.totalSize - 1, length: 1) { $0[0] }, 0xB2)

        // Offsets are region offsets in every mapping: the same offset names the same byte.
        let p = try data.unsafePointer(forOffset: g.dataOffset + 10)
        XCTAssertEqual(try data.offset(of: p), g.dataOffset + 10)
        XCTAssertEqual(p.load(as: UInt8.self), 0xA1)

        for offset in [0, g.metadataOffset, g.dataOffset - 1, g.totalSize, -1] {
            assertRegionError(.outOfBounds, "offset \(offset)") { _ = try data.unsafePointer(forOffset: offset) }
        }
        assertRegionError(.outOfBounds) { _ = try data.unsafePointer(forOffset: g.dataOffset - 4, length: 8) }
        let header = try region.mapping.unsafePointer(forOffset: 0)
        assertRegionError(.outOfBounds, "a metadata pointer has no offset in the data mapping") {
            _ = try data.offset(of: header)
        }

        let readOnly = try region.mapDataArea(access: .readOnly)
        XCTAssertEqual(try readOnly.withUnsafeBytes(atOffset: g.totalSize - 1, length: 1) { $0[0] }, 0xB2)
        assertRegionError(.permissionDenied) {
            try readOnly.withUnsafeMutableBytes(atOffset: g.dataOffset, length: 1) { $0[0] = 1 }
        }

        // From the geometry alone (what a mediated client gets), with a size check.
        let mediated = try SharedRegion.mapDataArea(of: region.fileDescriptor, geometry: g)
        XCTAssertEqual(try mediated.withUnsafeBytes(atOffset: g.dataOffset + 10, length: 1) { $0[0] }, 0xA1)
        let wrong = SharedRegionGeometry(
            totalSize: g.totalSize * 2, pageSize: g.pageSize, headerSize: g.headerSize,
            metadataOffset: g.metadataOffset,
            metadataSize: g.metadataSize, dataOffset: g.dataOffset, dataSize: g.totalSize * 2 - g.dataOffset)
        assertRegionError(.geometryMismatch) {
            _ = try SharedRegion.mapDataArea(of: region.fileDescriptor, geometry: wrong)
        }

        // In a second process: a data-area mapping refuses metadata offsets, and a read-only one really is.
        let child = try HelperProcess.run(
            [
                "fd", "3", "data-area", "rw", "out-of-bounds", "0", "out-of-bounds", "\(g.metadataOffset)",
                "expect", "\(g.dataOffset + 10)", "1", "\(0xA1)",
            ],
            inheriting: region.fileDescriptor.rawValue)
        XCTAssertEqual(child.status, 0, "\(child)")
        let writer = try HelperProcess.run(
            [
                "fd", "3", "data-area", "ro", "expect", "\(g.dataOffset + 10)", "1", "\(0xA1)",
                "write-raw", "\(g.dataOffset + 20)",
            ],
            inheriting: region.fileDescriptor.rawValue)
        XCTAssertEqual(writer.signal, SIGSEGV, "a write through a read-only data mapping faults: \(writer)")
        XCTAssertEqual(try region.mapping.withUnsafeBytes(atOffset: g.dataOffset + 20, length: 1) { $0[0] }, 0)
    }

    func testOffsetPointerTranslationIsBoundsChecked() throws {
        let region = try SharedRegion.createAnonymous(configuration())
        let m = region.mapping
        let total = region.geometry.totalSize
        XCTAssertEqual(try m.unsafePointer(forOffset: 0), m.base)
        XCTAssertEqual(try m.unsafePointer(forOffset: total - 8, length: 8), m.base + (total - 8))
        XCTAssertEqual(try m.unsafePointer(forOffset: total, length: 0), m.base + total, "the end, for zero bytes")
        for (offset, length) in [(-1, 1), (total, 1), (total - 4, 8), (0, total + 1), (0, -1), (Int.max, 1)] {
            assertRegionError(.outOfBounds, "\(offset)+\(length)") {
                _ = try m.unsafePointer(forOffset: offset, length: length)
            }
        }
        XCTAssertEqual(try m.offset(of: m.base + 4096), 4096)
        XCTAssertEqual(try m.offset(of: m.base + (total - 8), length: 8), total - 8)
        assertRegionError(.outOfBounds) { _ = try m.offset(of: m.base + (total - 4), length: 8) }
        assertRegionError(.outOfBounds) { _ = try m.offset(of: m.base - 1) }
        assertRegionError(.outOfBounds) { _ = try m.offset(of: m.base, length: total + 1) }
        assertRegionError(.outOfBounds) { _ = try m.offset(of: m.base, length: -1) }
        var local = 0
        let error = assertRegionError(.outOfBounds) { _ = try withUnsafePointer(to: &local) { try m.offset(of: $0) } }
        XCTAssertTrue(error?.message.contains("another mapping") ?? false, "\(String(describing: error))")
    }

    // MARK: - Commitment and space

    func testLazyReservationOf64GiBStaysSmall() throws {
        let size = 64 << 30
        let region = try SharedRegion.create(name: "lazy", configuration(dataSize: size) { $0.commitment = .lazy })
        let g = region.geometry
        XCTAssertEqual(g.dataSize, size)
        XCTAssertTrue(region.header.isLazy)
        let initial = try region.allocatedBytes()
        XCTAssertGreaterThanOrEqual(initial, g.dataOffset, "the header and metadata are committed")
        XCTAssertLessThanOrEqual(initial, g.dataOffset + page, "the data area is not")
        for offset in [g.dataOffset, g.dataOffset + size / 2, g.totalSize - 1] {
            try region.mapping.withUnsafeMutableBytes(atOffset: offset, length: 1) { $0[0] = 9 }
        }
        XCTAssertLessThanOrEqual(try region.allocatedBytes(), initial + 3 * page, "only touched pages are backed")
        let opened = try SharedRegion.open(name: "lazy", namePrefix: prefix)
        XCTAssertEqual(try opened.mapping.withUnsafeBytes(atOffset: g.dataOffset + size / 2, length: 1) { $0[0] }, 9)

        // Committing part of it later allocates exactly that part.
        try region.commit(offset: g.dataOffset + (1 << 30), length: 1 << 20)
        XCTAssertEqual(try region.allocatedBytes(), try opened.allocatedBytes())
        XCTAssertGreaterThanOrEqual(try region.allocatedBytes(), initial + (1 << 20))
        XCTAssertLessThanOrEqual(try region.allocatedBytes(), initial + (1 << 20) + 3 * page)
        assertRegionError(.outOfBounds) { try region.commit(offset: g.totalSize - 4096, length: 8192) }
        assertRegionError(.outOfBounds) { try region.commit(offset: -1, length: 1) }
        // Committing it all would not fit in /dev/shm (24 GiB here): refused with sizes, nothing allocated.
        let space = try XCTUnwrap(systemStatvfs("/dev/shm").get())
        if space.available < size {
            let before = try region.allocatedBytes()
            let error = assertRegionError(.insufficientSpace) { try region.commit(offset: g.dataOffset, length: size) }
            XCTAssertTrue(error?.message.contains("needs 64 GiB") ?? false, "\(String(describing: error))")
            XCTAssertEqual(try region.allocatedBytes(), before)
        }
    }

    func testCommittingMoreThanDevShmHoldsFailsCleanly() throws {
        let space = try XCTUnwrap(systemStatvfs("/dev/shm").get())
        let dataSize = space.available + (1 << 30)
        let total = try XCTUnwrap(
            SharedRegionGeometry.layout(metadataSize: 60 << 10, dataSize: dataSize, pageSize: page)
        )
        .totalSize
        let error = assertRegionError(.insufficientSpace) {
            _ = try SharedRegion.create(name: "too-big", configuration(dataSize: dataSize))
        }
        let message = error?.message ?? ""
        XCTAssertTrue(message.contains("'/\(prefix)too-big' needs \(formatByteCount(total))"), message)
        XCTAssertTrue(message.contains("but /dev/shm has"), message)
        XCTAssertTrue(message.contains("free; enlarge /dev/shm"), message)
        XCTAssertFalse(exists("too-big"), "a refused region leaves no object behind")
        XCTAssertTrue(shmObjects().isEmpty)

        // Anonymous regions are limited by memory rather than /dev/shm.
        let memory = try XCTUnwrap(Backing.availableMemory())
        let anonymous = assertRegionError(.insufficientSpace) {
            _ = try SharedRegion.createAnonymous(configuration(dataSize: memory + (4 << 30)))
        }
        XCTAssertTrue(
            anonymous?.message.contains("available (MemAvailable + SwapFree)") ?? false,
            "\(String(describing: anonymous))")
    }

    func testAFailureAfterTheObjectExistsRemovesIt() throws {
        // In a helper whose address space is capped at 2 GiB, a lazy 8 GiB region passes every space check and is
        // created, but cannot be mapped: creation fails, and the object it had created is gone.
        let exit = try HelperProcess.spawn(
            ["create-lazy", "unmappable", prefix, "\(8 << 30)"], environment: ["DIVVY_HELPER_ADDRESS_SPACE_LIMIT": "\(2 << 30)"]
        ).wait()
        XCTAssertEqual(exit.status, 2, "\(exit)")
        XCTAssertFalse(exists("unmappable"), "no object is left behind")
        XCTAssertTrue(shmObjects().isEmpty, "\(shmObjects())")
    }

    func testByteCountsInMessages() {
        XCTAssertEqual(formatByteCount(1 << 30), "1 GiB")
        XCTAssertEqual(formatByteCount(64 << 20), "64 MiB")
        XCTAssertEqual(formatByteCount(3 << 29), "1.5 GiB")
        XCTAssertEqual(formatByteCount(4097), "4.0 KiB")
        XCTAssertEqual(formatByteCount(1000), "1000 bytes")
        XCTAssertEqual(formatByteCount(1), "1 byte")
    }

    // MARK: - Header checks

    func testHeaderMismatchesAreDistinctErrorsAndChangeNothing() throws {
        let source = try SharedRegion.create(name: "source", configuration(dataSize: 64 << 10))
        try source.mapping.withUnsafeMutableBytes(atOffset: source.geometry.dataOffset, length: 4) {
            $0.copyBytes(from: [9, 8, 7, 6])
        }
        let original = try XCTUnwrap(objectBytes(source.objectName!))
        XCTAssertEqual(original.count, source.geometry.totalSize)

        func patch<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ offset: Int, _ value: T) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }
        func resealed(_ bytes: [UInt8]) -> [UInt8] {
            var bytes = bytes
            let sum = bytes.withUnsafeBytes { SharedRegionHeader.checksum(of: $0.baseAddress!) }
            patch(&bytes, HeaderField.checksum, sum)
            return bytes
        }
        var cases: [(String, [UInt8], SharedRegionError.Code)] = []
        var bytes = original
        bytes[0] ^= 0xFF
        cases.append(("magic", bytes, .badMagic))
        bytes = original
        patch(&bytes, HeaderField.layoutVersion, UInt32(2))
        cases.append(("version", resealed(bytes), .unsupportedVersion))
        bytes = original
        patch(&bytes, HeaderField.state, UInt32(0))
        cases.append(("state initializing", bytes, .notInitialized))
        bytes = original
        for i in 0..<128 { bytes[i] = 0 }
        cases.append(("zero header", bytes, .notInitialized))
        cases.append(("empty object", [], .notInitialized))
        cases.append(("shorter than a header", Array(original[..<100]), .geometryMismatch))
        bytes = original
        patch(&bytes, HeaderField.totalSize, UInt64(original.count + 4096))
        cases.append(("geometry without checksum", bytes, .corruptHeader))
        bytes = original
        patch(&bytes, HeaderField.creationTime, UInt64(1))
        cases.append(("any byte", bytes, .corruptHeader))
        bytes = original
        patch(&bytes, HeaderField.flags, UInt32(1 << 20))
        cases.append(("unknown flags", resealed(bytes), .corruptHeader))
        cases.append(
            ("object larger than the header says", original + [UInt8](repeating: 0, count: 4096), .geometryMismatch))
        cases.append(
            ("object smaller than the header says", Array(original[..<(original.count - 4096)]), .geometryMismatch))
        bytes = original
        patch(&bytes, HeaderField.dataOffset, UInt64(source.geometry.dataOffset + 4096))
        cases.append(("data area past the end", resealed(bytes), .geometryMismatch))
        bytes = original
        patch(&bytes, HeaderField.metadataSize, UInt64(source.geometry.dataOffset))
        cases.append(("metadata overlapping data", resealed(bytes), .geometryMismatch))
        bytes = original
        patch(&bytes, HeaderField.pageSize, UInt64(3000))
        cases.append(("page size", resealed(bytes), .geometryMismatch))

        var seen: Set<String> = []
        for (index, (label, bytes, code)) in cases.enumerated() {
            let name = "copy\(index)"
            let objectName = "/\(prefix)\(name)"
            try writeObject(objectName, bytes)
            let error = assertRegionError(code, label) { _ = try SharedRegion.open(name: name, namePrefix: prefix) }
            XCTAssertTrue(
                error?.message.contains(objectName) ?? false, "\(label): names the region: \(String(describing: error))"
            )
            if let error { seen.insert(error.message) }
            XCTAssertEqual(objectBytes(objectName), bytes, "\(label): a refused open changes nothing")
            // The same check through a descriptor.
            let fd = shm_open(objectName, O_RDONLY, 0)
            XCTAssertGreaterThanOrEqual(fd, 0)
            assertRegionError(code, "\(label) by fd") {
                _ = try SharedRegion.open(fileDescriptor: FileDescriptor(rawValue: fd), access: .readOnly)
            }
            close(fd)
            try SharedRegion.remove(name: name, namePrefix: prefix)
        }
        XCTAssertEqual(seen.count, cases.count, "every case has its own message")
        XCTAssertEqual(objectBytes(source.objectName!), original)
        XCTAssertEqual(try SharedRegion.open(name: "source", namePrefix: prefix).header, source.header)
    }

    func testOpeningSomethingThatIsNotARegion() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { fds.forEach { close($0) } }
        assertRegionError(.badMagic, "a pipe") {
            _ = try SharedRegion.open(fileDescriptor: FileDescriptor(rawValue: fds[0]))
        }
        assertRegionError(.systemCallFailed, "a closed descriptor") {
            _ = try SharedRegion.open(fileDescriptor: FileDescriptor(rawValue: 9999))
        }
    }

    private func writeObject(_ objectName: String, _ bytes: [UInt8]) throws {
        let fd = shm_open(objectName, O_RDWR | O_CREAT | O_EXCL, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0, "shm_open \(objectName)")
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        XCTAssertEqual(written, bytes.count)
    }

    // MARK: - Pages

    func testPageKindFallsBackToBasePagesAndReportsIt() throws {
        let free2MiB = readInt("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? 0
        // This machine: shmem_enabled [never], /dev/shm without huge=: no transparent huge pages for any region.
        let thp = shmemTransparentHugePages || devShmHugeOption
        let automatic = try SharedRegion.createAnonymous(configuration { $0.hugePages = .automatic })
        if free2MiB == 0 && !thp {
            XCTAssertEqual(automatic.pageKind, .base, "no hugetlb pool, shmem THP off: base pages")
            XCTAssertEqual(automatic.geometry.pageSize, page)
        }
        let named = try SharedRegion.create(name: "auto", configuration { $0.hugePages = .automatic })
        let fallback = try SharedRegion.create(name: "fallback", configuration { $0.hugePages = .explicit2MiB })
        if !thp {
            XCTAssertEqual(named.pageKind, .base, "named regions never get hugetlb pages")
            XCTAssertEqual(fallback.pageKind, .base)
        }
        XCTAssertNotEqual(named.pageKind, .explicit2MiB)
        XCTAssertEqual(try SharedRegion.open(name: "fallback", namePrefix: prefix).pageKind, fallback.pageKind)

        let strictNamed = assertRegionError(.hugePagesUnavailable) {
            _ = try SharedRegion.create(
                name: "strict",
                configuration {
                    $0.hugePages = .explicit2MiB
                    $0.fallback = false
                })
        }
        XCTAssertTrue(strictNamed?.message.contains("anonymous region") ?? false, "\(String(describing: strictNamed))")
        if !thp {
            let error = assertRegionError(.hugePagesUnavailable) {
                _ = try SharedRegion.createAnonymous(
                    configuration {
                        $0.hugePages = .transparent
                        $0.fallback = false
                    })
            }
            XCTAssertTrue(error?.message.contains("shmem_enabled") ?? false, "\(String(describing: error))")
        }
        if free2MiB == 0 {
            let error = assertRegionError(.insufficientSpace) {
                _ = try SharedRegion.createAnonymous(
                    configuration {
                        $0.hugePages = .explicit2MiB
                        $0.fallback = false
                    })
            }
            XCTAssertTrue(
                error?.message.contains("needs 4 MiB of 2 MiB huge pages (2 pages) but the pool has 0 free") ?? false,
                "\(String(describing: error))")
        }
        XCTAssertFalse(exists("strict"))
    }

    func testTransparentHugePagesWhenShmemAllowsThem() throws {
        // Needs root: switches shmem THP to `advise` for the duration of the test and puts the old choice back.
        let knob = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
        guard getuid() == 0, let text = readText(knob), let open = text.firstIndex(of: "["),
            let close = text.firstIndex(of: "]")
        else { throw XCTSkip("needs root and \(knob)") }
        let original = String(text[text.index(after: open)..<close])
        guard writeText(knob, "advise\n"), readText(knob)?.contains("[advise]") == true else {
            throw XCTSkip("cannot write \(knob)")
        }
        defer {
            _ = writeText(knob, original + "\n")
            XCTAssertTrue(readText(knob)?.contains("[\(original)]") == true, "shmem_enabled must be restored")
        }
        let thpSize = OSAllocator.transparentHugePageSize
        try {
            let region = try SharedRegion.createAnonymous(
                configuration(dataSize: 4 << 20) {
                    $0.hugePages = .transparent
                    $0.fallback = false
                })
            XCTAssertEqual(region.pageKind, .transparent)
            XCTAssertEqual(region.geometry.pageSize, thpSize)
            XCTAssertEqual(region.geometry.dataOffset % thpSize, 0)
            let g = region.geometry
            try region.mapping.withUnsafeMutableBytes(atOffset: g.dataOffset, length: g.dataSize) {
                $0.initializeMemory(as: UInt8.self, repeating: 0x44)
            }
            let child = try HelperProcess.run(
                ["fd", "3", "print-header", "expect", "\(g.dataOffset)", "\(g.dataSize)", "\(0x44)"],
                inheriting: region.fileDescriptor.rawValue)
            XCTAssertEqual(child.status, 0, "\(child)")
            XCTAssertTrue(child.output.contains("kind=transparent"), child.output)
            let pmd = smapsField("ShmemPmdMapped", from: UInt(bitPattern: region.mapping.base), length: g.totalSize)
                + smapsField("FilePmdMapped", from: UInt(bitPattern: region.mapping.base), length: g.totalSize)
            XCTAssertGreaterThan(pmd, 0, "touched, advised shmem gets huge pages when shmem_enabled allows them")

            // The /dev/shm mount has its own switch (huge=); without it named regions cannot have THP.
            if !devShmHugeOption {
                let error = assertRegionError(.hugePagesUnavailable) {
                    _ = try SharedRegion.create(
                        name: "thp",
                        configuration {
                            $0.hugePages = .transparent
                            $0.fallback = false
                        })
                }
                XCTAssertTrue(error?.message.contains("huge=advise") ?? false, "\(String(describing: error))")
            }
        }()
    }

    func testHugeTLBRegionWhenThePoolCanBeRaised() throws {
        let pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        guard getuid() == 0, let original = readInt(pool) else { throw XCTSkip("needs root to reserve huge pages") }
        let wanted = original + 4
        guard writeText(pool, "\(wanted)\n") else { throw XCTSkip("cannot write \(pool)") }
        defer {
            _ = writeText(pool, "\(original)\n")
            XCTAssertEqual(readInt(pool), original, "nr_hugepages must be restored")
        }
        guard readInt(pool) == wanted, Backing.availableHugePages(.explicit2MiB) >= 4 else {
            throw XCTSkip("the kernel could not find 4 free 2 MiB pages")
        }
        try {
            // 2 MiB of data + the header page: two huge pages, reserved at once (no SIGBUS later).
            let region = try SharedRegion.createAnonymous(
                configuration(dataSize: 2 << 20) {
                    $0.hugePages = .explicit2MiB
                    $0.fallback = false
                })
            XCTAssertEqual(region.pageKind, .explicit2MiB)
            XCTAssertEqual(region.geometry.pageSize, 2 << 20)
            XCTAssertEqual(region.geometry.dataOffset, 2 << 20)
            XCTAssertEqual(region.geometry.totalSize, 4 << 20)
            XCTAssertEqual(UInt(bitPattern: region.mapping.base) % UInt(2 << 20), 0, "hugetlb mappings are aligned")
            XCTAssertEqual(Backing.availableHugePages(.explicit2MiB), 2, "both pages are taken from the pool")
            try region.mapping.withUnsafeMutableBytes(atOffset: region.geometry.dataOffset, length: 2 << 20) {
                $0.initializeMemory(as: UInt8.self, repeating: 0x77)
            }
            let child = try HelperProcess.run(
                [
                    "fd", "3", "print-header", "expect", "\(region.geometry.dataOffset)", "\(2 << 20)", "\(0x77)",
                    "data-area", "rw", "fill", "\(region.geometry.totalSize - 1)", "1", "1",
                ],
                inheriting: region.fileDescriptor.rawValue)
            XCTAssertEqual(child.status, 0, "\(child)")
            XCTAssertTrue(child.output.contains("kind=explicit2MiB"), child.output)
            XCTAssertEqual(
                try region.mapping.withUnsafeBytes(atOffset: region.geometry.totalSize - 1, length: 1) { $0[0] }, 1)

            // Automatic takes hugetlb pages when the pool holds the whole region; otherwise it falls back.
            let automatic = try SharedRegion.createAnonymous(
                configuration(dataSize: 1 << 20) { $0.hugePages = .automatic })
            XCTAssertEqual(automatic.pageKind, .explicit2MiB)
            XCTAssertEqual(Backing.availableHugePages(.explicit2MiB), 0)
            let error = assertRegionError(.insufficientSpace) {
                _ = try SharedRegion.createAnonymous(
                    configuration(dataSize: 2 << 20) {
                        $0.hugePages = .explicit2MiB
                        $0.fallback = false
                    })
            }
            XCTAssertTrue(error?.message.contains("the pool has 0 free") ?? false, "\(String(describing: error))")
            let fellBack = try SharedRegion.createAnonymous(configuration { $0.hugePages = .automatic })
            XCTAssertNotEqual(fellBack.pageKind, .explicit2MiB)
        }()
    }

    // MARK: - Helpers

    private func flag(_ mapping: SharedMapping, at offset: Int) -> UnsafeAtomic<UInt64> {
        let word = try! mapping.unsafePointer(forOffset: offset, length: 8)
        return UnsafeAtomic(at: word.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    /// Waits (acquire) for the child's flag; fails instead of hanging if the child dies first.
    private func awaitFlag(_ mapping: SharedMapping, at offset: Int, child: HelperProcess) throws {
        let word = flag(mapping, at: offset)
        var status: Int32 = 0
        while word.load(ordering: .acquiring) != 1 {
            if waitpid(child.pid, &status, WNOHANG) == child.pid {
                XCTFail("the helper exited (status \(status)) before signalling")
                throw XCTSkip("helper died")
            }
            usleep(1000)
        }
    }
}
