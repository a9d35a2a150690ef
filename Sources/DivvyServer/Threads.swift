import DivvySystem

#if canImport(Glibc)
import Glibc
#endif

/// A process-private mutex with `lock()`/`unlock()` (pthread_mutex_lock(3)/pthread_mutex_unlock(3)): the daemon's
/// few cross-thread flags, without Foundation's `NSLock` (the daemon links FoundationEssentials only, which keeps
/// the statically linked binary free of ICU's data).
///
/// Never place one in shared memory: the mutex is process-private (the default attributes).
final class ProcessLock: @unchecked Sendable {
    // Invariant: allocated and initialised in `init`, destroyed and freed in `deinit`, never moved (a pthread mutex
    // must not change address while in use). @unchecked Sendable: every access goes through the mutex's own calls.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "pthread_mutex_init failed: \(status)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Takes the lock, waiting for it.
    func lock() {
        let status = pthread_mutex_lock(mutex)
        precondition(status == 0, "pthread_mutex_lock failed: \(status)")  // EDEADLK/EINVAL: a programming error
    }

    /// Releases the lock, which the calling thread holds.
    func unlock() {
        let status = pthread_mutex_unlock(mutex)
        precondition(status == 0, "pthread_mutex_unlock failed: \(status)")
    }
}

/// Starts detached threads with pthread_create(3) (the daemon's event loop and metrics listener), without
/// Foundation's `Thread`.
enum DetachedThread {
    /// What the new thread runs, and its name (pthread_setname_np(3): at most 15 bytes are kept).
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Runs `body` on a new detached thread named `name`.
    ///
    /// Traps if the thread cannot be created (EAGAIN: the process is out of threads or memory at start-up, where
    /// the daemon cannot do without its loop).
    static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        // Safe: the retained Start is released exactly once, by the new thread (or below if creation fails).
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let start = Unmanaged<Start>.fromOpaque(argument).takeRetainedValue()
            systemSetThreadName(start.name)
            start.body()
            return nil
        }, start)
        guard status == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            preconditionFailure("pthread_create for \(name) failed: \(status)")
        }
        pthread_detach(thread)
    }
}
