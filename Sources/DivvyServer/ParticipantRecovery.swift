/// The daemon's bookkeeping for recovering direct clients' heap participants, as a value: which session owns which
/// participant, which recoveries must be retried, and which exited-process watches are open. The loop carries out
/// the recoveries and the watches' descriptors (pidfds in its poller); this value decides which participant is
/// due. Tested on its own (`ParticipantRecoveryTests`).
///
/// A direct participant is recovered only once its process has exited — recovering one whose process still runs
/// would race with that process's own operations on the heap: at once if it has, else when its pidfd turns
/// readable (an exit watch), else (no pidfd support) when a tick finds it dead.
struct ParticipantRecovery: Hashable, Sendable {
    /// Poller tokens of exit watches start here (below are the listener, the waker and client ids).
    static let exitWatchBase: UInt64 = 1 << 40

    /// A process being watched for its exit.
    struct ExitWatch: Hashable, Sendable {
        /// The participant to recover.
        var participant: Int
        /// Its process.
        var pid: Int32
        /// The pidfd in the poller (the loop owns and closes it).
        var descriptor: Int32
    }

    /// How a recovery went.
    enum Outcome: Hashable, Sendable {
        /// Done.
        case complete
        /// Partly done (`recoveryIncomplete`): retried at the next tick.
        case incomplete
        /// Failed for another reason: not retried.
        case failed
    }

    /// Direct participants by the session that joined them.
    private(set) var owners: [Int: UInt32] = [:]
    /// Participants whose recovery must be retried.
    private(set) var pending: Set<Int> = []
    /// Open exit watches by poller token.
    private(set) var watches: [UInt64: ExitWatch] = [:]

    // MARK: Owners

    /// The session that owns participant `p`, if any.
    func owner(of p: Int) -> UInt32? { owners[p] }

    /// Session `client` joined participant `p` (the loop checked that no one owns it).
    mutating func claim(_ p: Int, by client: UInt32) {
        precondition(owners[p] == nil, "participant \(p) is owned by client \(owners[p]!)")
        owners[p] = client
    }

    /// Participant `p` no longer belongs to a session (it disconnected, or its slot was released).
    mutating func disown(_ p: Int) {
        owners[p] = nil
    }

    // MARK: Exit watches

    /// Whether a poller token is an exit watch's.
    static func isExitWatch(_ token: UInt64) -> Bool { token >= exitWatchBase }

    /// Watches participant `p`'s process through `descriptor`. Returns the poller token, and the watch it replaces
    /// (a watch for the same participant, whose descriptor the loop must close), if any.
    mutating func watch(_ p: Int, pid: Int32, descriptor: Int32) -> (token: UInt64, replaced: ExitWatch?) {
        let token = Self.exitWatchBase + UInt64(p)
        let replaced = watches.updateValue(ExitWatch(participant: p, pid: pid, descriptor: descriptor), forKey: token)
        return (token, replaced)
    }

    /// A watch's process exited (or its watch could not be added): the watch ends; nil if there is none for
    /// `token`. The loop closes its descriptor and recovers the participant if the slot is still that process's.
    mutating func endWatch(_ token: UInt64) -> ExitWatch? {
        watches.removeValue(forKey: token)
    }

    // MARK: Recovery

    /// Records how a recovery of `p` went: an incomplete one is retried.
    mutating func recovered(_ p: Int, _ outcome: Outcome) {
        switch outcome {
        case .complete: pending.remove(p)
        case .incomplete: pending.insert(p)
        case .failed: break
        }
    }

    /// The recoveries a tick retries first (incomplete ones), in participant order.
    var retries: [Int] { pending.sorted() }

    /// The participants a tick recovers after its retries: the heap's dead participants (read after the retries)
    /// that no session owns and that are not the daemon's own — their process joined the heap and died before
    /// telling the daemon.
    func orphans(deadParticipants: [Int], daemonParticipant: Int?) -> [Int] {
        deadParticipants.filter { owners[$0] == nil && $0 != daemonParticipant }
    }
}
