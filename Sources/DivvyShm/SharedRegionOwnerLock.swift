import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The exclusive right to serve a named region: an flock(2) on a companion shared-memory object
/// `/<namePrefix><name>.lock`, held for as long as the value lives.
///
/// A daemon that serves a named region takes this lock *before* creating the region, and keeps it until it exits.
/// The kernel drops the lock when the holder dies, however it dies, so a successor can tell "another daemon serves
/// this name" (the lock is held: refuse) from "the last one crashed and left its object behind" (the lock is free:
/// the object is abandoned and may be replaced or re-attached) without reading pids or timing anything.
///
/// Why a companion object and not a lock on the region's own descriptor: flock locks belong to the open file
/// description, and the region's descriptor is passed to clients (SCM_RIGHTS shares the description), so a client
/// still holding it would keep a dead daemon's lock alive.
///
/// The lock object stays in /dev/shm while the lock is held; `release(removingName:)` removes it on a clean exit.
/// A successor that locked a lock object whose name was removed meanwhile (it opened the object just before the
/// previous holder removed it) would hold a lock nobody else can see, so `acquire` checks, after locking, that its
/// descriptor is still the object the name points at, and starts over when it is not.
public final class SharedRegionOwnerLock {
    /// The lock object's name, e.g. `/divvy-cache.lock`.
    public let lockObjectName: String
    /// The locked descriptor; nil once released. Closing it (when set to nil, or when the lock is destroyed)
    /// drops the lock.
    private var descriptor: OwnedDescriptor?
    /// `release` ran.
    private var isReleased = false

    private init(lockObjectName: String, descriptor: consuming OwnedDescriptor) {
        self.lockObjectName = lockObjectName
        self.descriptor = .some(descriptor)
    }

    /// Takes the owner lock of the named region `/<namePrefix><name>` without waiting.
    ///
    /// Corresponds to shm_open(3) with `O_CREAT` on `/<namePrefix><name>.lock`, then flock(2) with
    /// `LOCK_EX | LOCK_NB`.
    ///
    /// - Throws: `.inUse` when a live process holds the lock (the message says how to find it and what to do),
    ///   `.invalidName`, `.permissionDenied`, `.systemCallFailed`.
    public static func acquire(
        name: String, namePrefix: String = "divvy-", mode: FilePermissions = [.ownerReadWrite]
    ) throws(SharedRegionError) -> SharedRegionOwnerLock {
        let regionObject = try SharedRegion.objectName(for: name, namePrefix: namePrefix)
        let lockObject = regionObject + ".lock"
        guard lockObject.utf8.count <= 255 else {
            throw SharedRegionError(
                .invalidName, "the owner lock of region '\(regionObject)' would be named '\(lockObject)', longer "
                    + "than NAME_MAX; choose a shorter region name or prefix")
        }
        // A lock object whose name was replaced between our open and our flock is retried; the bound only stops a
        // pathological loop (each retry needs another process to remove and recreate the name meanwhile).
        for _ in 0..<100 {
            // Owned from here: every path that does not return the lock closes it.
            let fd: OwnedDescriptor
            switch systemShmOpen(lockObject, flags: O_RDWR | O_CREAT, mode: mode_t(mode.rawValue)) {
            case .success(let opened): fd = OwnedDescriptor(taking: opened)
            case .failure(let error):
                throw SharedRegionError(
                    error == .permissionDenied ? .permissionDenied : .systemCallFailed,
                    "could not open the owner lock '\(lockObject)' of region '\(regionObject)'", cause: error)
            }
            switch systemFlock(fd.rawValue, LOCK_EX | LOCK_NB) {
            case .success:
                break
            case .failure(let error):
                if error == .wouldBlock || error == .resourceTemporarilyUnavailable {
                    throw SharedRegionError(
                        .inUse, "region '\(regionObject)' is served by another running process: it holds the "
                            + "owner lock \(Backing.shmDirectory)\(lockObject) (`fuser -v "
                            + "\(Backing.shmDirectory)\(lockObject)` names it); stop that daemon or choose another "
                            + "region name", cause: error)
                }
                throw SharedRegionError(
                    .systemCallFailed, "could not lock the owner lock '\(lockObject)' of region '\(regionObject)'",
                    cause: error)
            }
            // Still the object the name points at? (See the type's discussion.)
            if case .success(let mine) = systemFstat(fd.rawValue),
                case .success(let named) = systemStat(Backing.shmDirectory + lockObject),
                mine.st_ino == named.st_ino, mine.st_dev == named.st_dev
            {
                return SharedRegionOwnerLock(lockObjectName: lockObject, descriptor: fd)
            }
            fd.close()
        }
        throw SharedRegionError(
            .inUse, "the owner lock '\(lockObject)' of region '\(regionObject)' kept being removed and recreated "
                + "while this process tried to take it: several processes are starting on the same name")
    }

    /// Whether some live process holds the owner lock of `/<namePrefix><name>` (a probe: takes and drops the lock
    /// when it is free). False when there is no lock object at all.
    ///
    /// - Throws: `.invalidName`, `.permissionDenied`, `.systemCallFailed`.
    public static func isHeld(name: String, namePrefix: String = "divvy-") throws(SharedRegionError) -> Bool {
        let lockObject = try SharedRegion.objectName(for: name, namePrefix: namePrefix) + ".lock"
        let fd: OwnedDescriptor
        switch systemShmOpen(lockObject, flags: O_RDONLY, mode: 0) {
        case .success(let opened): fd = OwnedDescriptor(taking: opened)
        case .failure(.noSuchFileOrDirectory): return false
        case .failure(let error):
            throw SharedRegionError(
                error == .permissionDenied ? .permissionDenied : .systemCallFailed,
                "could not open the owner lock '\(lockObject)'", cause: error)
        }
        switch systemFlock(fd.rawValue, LOCK_SH | LOCK_NB) {
        case .success: return false  // Released when `fd` closes, on return.
        case .failure(.wouldBlock), .failure(.resourceTemporarilyUnavailable): return true
        case .failure(let error):
            throw SharedRegionError(.systemCallFailed, "could not probe the owner lock '\(lockObject)'", cause: error)
        }
    }

    /// Gives the lock up; with `removingName`, first removes the lock object's name (a clean exit: nothing stays in
    /// /dev/shm). Idempotent; `deinit` releases without removing.
    public func release(removingName: Bool) {
        guard !isReleased else { return }
        isReleased = true
        // Remove the name while still holding the lock, so no successor can lock this object after we let go
        // without `acquire`'s identity check catching it.
        if removingName { _ = systemShmUnlink(lockObjectName) }
        descriptor = nil  // Closes it: the lock is dropped.
    }
}
