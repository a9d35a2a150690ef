@testable import DivvyShm
import DivvyTestSupport
import Foundation
import XCTest

/// Sizing a region against the host's memory and the memory cgroup's limit: the cgroup files' parsers on
/// fixtures, and a real region refused for a limit given as a parameter.
final class MemoryBudgetTests: ShmTestCase {
    // MARK: Parsers

    func testProcSelfCgroupLines() {
        let v2 = "0::/system.slice/divvyd.service\n"
        XCTAssertEqual(CgroupMemory.parseProcCgroup(v2).unified, "/system.slice/divvyd.service")
        XCTAssertNil(CgroupMemory.parseProcCgroup(v2).memory)
        let v1 = """
            12:pids:/user.slice
            4:memory:/process_api/35ccbcd6
            3:cpu,cpuacct:/
            0::/
            """
        XCTAssertEqual(CgroupMemory.parseProcCgroup(v1).memory, "/process_api/35ccbcd6")
        XCTAssertEqual(CgroupMemory.parseProcCgroup(v1).unified, "/")
        XCTAssertEqual(CgroupMemory.parseProcCgroup("7:cpuset,memory:/a:b\n").memory, "/a:b", "':' in the path")
        XCTAssertEqual(CgroupMemory.parseProcCgroup("garbage\n\n1:name=systemd:/x\n").memory, nil)
    }

    func testLimitAndUsageFiles() {
        XCTAssertEqual(CgroupMemory.parseLimit("2147483648\n"), 2 << 30)
        XCTAssertNil(CgroupMemory.parseLimit("max\n"), "v2: no limit")
        XCTAssertNil(CgroupMemory.parseLimit("9223372036854771712\n"), "v1: the 'unlimited' value")
        XCTAssertNil(CgroupMemory.parseLimit(""))
        XCTAssertNil(CgroupMemory.parseLimit("-1"))
        XCTAssertEqual(CgroupMemory.parseUsage("1234\n"), 1234)
        XCTAssertNil(CgroupMemory.parseUsage("lots"))
    }

    /// A fake cgroup file system.
    func reader(_ files: [String: String]) -> (String) -> String? { { files[$0] } }

    func testTheTightestLimitAlongTheHierarchyWins() throws {
        // v2: the service's own limit is loose, its slice's is tight (and counts its siblings' usage).
        let files = [
            "/sys/fs/cgroup/system.slice/memory.max": "4294967296\n",
            "/sys/fs/cgroup/system.slice/memory.current": "3221225472\n",
            "/sys/fs/cgroup/system.slice/divvyd.service/memory.max": "8589934592\n",
            "/sys/fs/cgroup/system.slice/divvyd.service/memory.current": "104857600\n",
        ]
        let limit = try XCTUnwrap(CgroupMemory.tightestLimit(
            procSelfCgroup: "0::/system.slice/divvyd.service\n", read: reader(files)))
        XCTAssertEqual(limit.directory, "/sys/fs/cgroup/system.slice")
        XCTAssertEqual(limit.version, 2)
        XCTAssertEqual(limit.headroom, 1 << 30)
        XCTAssertEqual(limit.limitFile, "memory.max")
        // No limit anywhere ("max"): nil.
        let unlimited = [
            "/sys/fs/cgroup/a/memory.max": "max\n", "/sys/fs/cgroup/a/memory.current": "5\n",
        ]
        XCTAssertNil(CgroupMemory.tightestLimit(procSelfCgroup: "0::/a\n", read: reader(unlimited)))
        // Nothing readable: nil.
        XCTAssertNil(CgroupMemory.tightestLimit(procSelfCgroup: "0::/a\n", read: reader([:])))
    }

    func testHybridAndV1Hierarchies() throws {
        // Hybrid: the unified tree under /sys/fs/cgroup/unified (no memory controller there), v1 memory limit.
        let files = [
            "/sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes": "2147483648\n",
            "/sys/fs/cgroup/memory/process_api/x/memory.usage_in_bytes": "536870912\n",
            "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": "9223372036854771712\n",
            "/sys/fs/cgroup/memory/process_api/memory.usage_in_bytes": "900000000\n",
        ]
        let limit = try XCTUnwrap(CgroupMemory.tightestLimit(
            procSelfCgroup: "4:memory:/process_api/x\n0::/\n", read: reader(files)))
        XCTAssertEqual(limit.version, 1)
        XCTAssertEqual(limit.limit, 2 << 30)
        XCTAssertEqual(limit.headroom, (2 << 30) - (512 << 20))
        XCTAssertEqual(limit.limitFile, "memory.limit_in_bytes")
        // A namespaced path whose upper directories are not mounted: the mounted root's files still count.
        let namespaced = [
            "/sys/fs/cgroup/memory.max": "1073741824\n", "/sys/fs/cgroup/memory.current": "0\n",
        ]
        XCTAssertEqual(CgroupMemory.tightestLimit(
            procSelfCgroup: "0::/outer/inner\n", read: reader(namespaced))?.limit, 1 << 30)
    }

    // MARK: Regions

    /// A full-commit region counts header, metadata and data together against the cgroup's headroom (each part
    /// fits alone, the sum does not) and is refused with both figures and the remedies; nothing is left behind.
    /// Lazily committed, the same region is created (only its metadata is committed).
    func testARegionLargerThanTheCgroupAllowsIsRefused() throws {
        let dataSize = 4 << 20
        let metadataSize = 1 << 20
        let cgroup = CgroupMemoryLimit(
            directory: "/sys/fs/cgroup/test.slice", version: 2, limit: 64 << 20, usage: (64 << 20) - dataSize)
        let tight = MemoryBudget(hostAvailable: 1 << 40, cgroup: cgroup)
        let error = assertRegionError(.insufficientSpace) {
            _ = try SharedRegion.create(name: "big", configuration(dataSize: dataSize, metadataSize: metadataSize) {
                $0._memoryBudget = tight
            })
        }
        let message = error?.message ?? ""
        XCTAssertTrue(message.contains("/sys/fs/cgroup/test.slice"), message)
        XCTAssertTrue(message.contains("allows 4 MiB more"), message)
        XCTAssertTrue(message.contains("the system has 1 TiB available"), message)
        XCTAssertTrue(message.contains("commit=lazy") && message.contains("--data-size")
            && message.contains("memory.max"), message)
        XCTAssertEqual(shmObjects(), [], "nothing left behind")
        // The host's figure alone refuses too.
        let host = MemoryBudget(hostAvailable: dataSize, cgroup: nil)
        let hostError = assertRegionError(.insufficientSpace) {
            _ = try SharedRegion.createAnonymous(configuration(dataSize: dataSize, metadataSize: metadataSize) {
                $0._memoryBudget = host
            })
        }
        XCTAssertTrue(hostError?.message.contains("no memory cgroup limit applies") == true, "\(hostError as Any)")
        // Lazy: only the header and metadata are committed, and they fit.
        let lazy = try SharedRegion.create(name: "big", configuration(dataSize: dataSize, metadataSize: metadataSize) {
            $0._memoryBudget = tight
            $0.commitment = .lazy
        })
        XCTAssertEqual(lazy.geometry.dataSize, dataSize)
        // With room for everything, full commitment works.
        let roomy = MemoryBudget(
            hostAvailable: 1 << 40,
            cgroup: CgroupMemoryLimit(directory: "/x", version: 1, limit: 1 << 30, usage: 0))
        _ = try SharedRegion.createAnonymous(configuration(dataSize: dataSize, metadataSize: metadataSize) {
            $0._memoryBudget = roomy
        })
    }

    /// A lazy heap's region is admitted on what it commits at creation — the header and
    /// `SharedHeap.initialMetadataSize`, a few OS pages whatever the data size — so a 64 GiB lazy heap fits a cgroup
    /// with 1 MiB to spare; when even that does not fit it is refused, saying what it counted, without suggesting
    /// `commit=lazy`, and nothing is left behind.
    func testALazyHeapIsAdmittedOnWhatItCommitsAtCreation() throws {
        let dataSize = 64 << 30
        let metadataSize = SharedHeap.requiredMetadataSize(dataSize: dataSize)
        let initial = SharedHeap.initialMetadataSize(dataSize: dataSize)
        func budget(headroom: Int) -> MemoryBudget {
            MemoryBudget(hostAvailable: 1 << 40, cgroup: CgroupMemoryLimit(
                directory: "/sys/fs/cgroup/test.slice", version: 2, limit: 1 << 30, usage: (1 << 30) - headroom))
        }
        func lazy(_ budget: MemoryBudget) -> SharedRegion.Configuration {
            configuration(dataSize: dataSize, metadataSize: metadataSize) {
                $0._memoryBudget = budget
                $0.commitment = .lazy
                $0.separateDataObject = true
                $0.lazyCommittedMetadataSize = initial
            }
        }
        let region = try SharedRegion.create(name: "lazy-heap", lazy(budget(headroom: 1 << 20)))
        let heap = try SharedHeap.create(in: region)
        XCTAssertTrue(heap.lazyCommit)
        XCTAssertLessThanOrEqual(try region.allocatedBytes(), region.geometry.metadataOffset + initial)
        try region.remove()
        let error = assertRegionError(.insufficientSpace) {
            _ = try SharedRegion.create(name: "refused", lazy(budget(headroom: initial / 2)))
        }
        let message = error?.message ?? ""
        XCTAssertTrue(message.contains("the metadata needed at creation"), message)
        XCTAssertFalse(message.contains("commit=lazy"), message)
        XCTAssertEqual(shmObjects(), [], "nothing left behind")
    }
}
