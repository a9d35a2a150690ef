import DivvySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A direct client's process, held by a pidfd, so that an admin `disconnect` signals exactly the process that
/// connected and never one that later reused its pid (`pidfd_send_signal(2)`).
///
/// The pidfd comes from the connection itself (`SO_PEERPIDFD`, Linux 6.5): it names the process the kernel
/// recorded at `connect`, whenever it is asked for. Else it comes from `pidfd_open(2)` on the `SO_PEERCRED` pid
/// (Linux 5.3). Only on a kernel with neither does a signal go by pid (`kill(2)`), as before. The daemon takes it
/// when a client joins the heap, right after checking that the participant's recorded pid is alive and is the
/// peer's: only direct clients are ever signalled, and a descriptor per mediated client would halve the clients
/// a file-descriptor limit allows. Loop-thread only; owns the descriptor until `close()` or `takeDescriptor()`.
final class PeerProcess {
    /// How a signal reached (or was meant to reach) the process.
    enum Route: String, Hashable, Sendable {
        /// `pidfd_send_signal` on the pidfd of the process that connected.
        case pidfd
        /// `kill` on the pid (no pidfd support in this kernel).
        case pid
    }

    /// What `signal(_:)` did.
    enum Outcome: Hashable, Sendable {
        /// The signal was delivered.
        case sent(Route)
        /// The process had already exited: there is nothing left to stop.
        case exited
        /// The kernel refused (`errno`: EPERM when the daemon may not signal that process).
        case failed(errno: Int32, route: Route)
    }

    /// The `SO_PEERCRED` pid.
    let pid: Int32
    /// The pidfd, or -1 when there is none.
    private(set) var descriptor: Int32
    /// The owner of `descriptor`: nil when there is none (closed, handed over, or never taken).
    private var owner: OwnedDescriptor?
    /// The process had exited before a pidfd could be taken (`ESRCH`): it must never be signalled by pid.
    private let exitedAtConnect: Bool

    /// Takes a pidfd for the peer of the connected socket `socket` whose credentials name `pid`.
    init(socket: Int32, pid: Int32) {
        self.pid = pid
        var result = systemPeerPidfd(socket)
        if case .failure(let error) = result, error != .noSuchProcess, pid > 0 {
            // ENOPROTOOPT/EINVAL: a kernel before 6.5. pidfd_open races with pid reuse only if the process that
            // connected died and its pid was reused since its participant was seen alive, just now.
            result = systemPidfdOpen(pid)
        }
        switch result {
        case .success(let fd):
            descriptor = fd
            owner = OwnedDescriptor(taking: fd)
            exitedAtConnect = false
        case .failure(let error):
            descriptor = -1
            owner = nil
            exitedAtConnect = error == .noSuchProcess
        }
    }

    /// Closes the pidfd (idempotent).
    func close() {
        owner = nil
        descriptor = -1
    }

    /// Hands the pidfd over (the caller closes it from now on); -1 when there is none.
    func takeDescriptor() -> Int32 {
        descriptor = -1
        guard let taken = owner.take() else { return -1 }
        return taken.take()
    }

    /// Sends `signal` to the process: through the pidfd when there is one, else by pid.
    func signal(_ signal: Int32) -> Outcome {
        if descriptor >= 0 {
            switch systemPidfdSendSignal(descriptor, signal) {
            case .success: return .sent(.pidfd)
            case .failure(.noSuchProcess): return .exited
            case .failure(let error): return .failed(errno: error.rawValue, route: .pidfd)
            }
        }
        if exitedAtConnect || pid <= 0 { return .exited }
        switch systemKill(pid, signal) {
        case .success: return .sent(.pid)
        case .failure(.noSuchProcess): return .exited
        case .failure(let error): return .failed(errno: error.rawValue, route: .pid)
        }
    }

    /// The symbolic name of the errno values a signal can fail with (`EPERM`), else `errno N`.
    static func errnoName(_ value: Int32) -> String {
        switch value {
        case EPERM: "EPERM"
        case ESRCH: "ESRCH"
        case EINVAL: "EINVAL"
        case EBADF: "EBADF"
        case ENOSYS: "ENOSYS"
        default: "errno \(value)"
        }
    }
}
