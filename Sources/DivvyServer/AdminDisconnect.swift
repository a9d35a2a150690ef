import DivvyProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The parts of an admin `disconnect` that are not the event loop's: stopping a direct client's process first.
///
/// A direct client writes heap metadata itself, so its pages may be taken back only once its process has stopped.
/// Disconnecting it therefore kills it (SIGKILL through the pidfd taken when it connected). When the kernel refuses
/// (EPERM: divvyd, e.g. under the shipped unit, runs as its own user with no capabilities), nothing is done: the
/// client stays connected and keeps its pages and blocks, and the admin gets an error that says what to do.
extension DivvyServer {
    /// The error for a `disconnect` whose signal to client `row` failed with `errno` (sent by `route`).
    static func disconnectRefused(_ row: AdminDocument.Client, errno: Int32, route: PeerProcess.Route) -> ServiceError {
        let call = route == .pidfd ? "pidfd_send_signal(SIGKILL)" : "kill(\(row.pid), SIGKILL)"
        let reason = errno == EPERM
            ? "divvyd (uid \(getuid())) may not signal a process of uid \(row.uid)"
            : String(cString: strerror(errno))
        return ServiceError(
            .internalError,
            "client \(row.id) was NOT disconnected: killing its process (pid \(row.pid)) failed: \(call) failed with "
                + "\(PeerProcess.errnoName(errno)) (\(reason)). It is a direct client that writes shared memory "
                + "itself, so it keeps its connection, its pages and its blocks until it stops. Give divvyd CAP_KILL "
                + "(a systemd drop-in with AmbientCapabilities=CAP_KILL and CapabilityBoundingSet=CAP_KILL, see "
                + "docs/operations.md), or run the client as divvyd's user, or stop it yourself (kill -9 \(row.pid)): "
                + "its memory is recovered when it exits.")
    }
}
