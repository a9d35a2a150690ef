/// A direct client's page lease, as a value: the participant it joined and the pages it may own. Each request
/// (`join`, `lease`, `returnPages`) returns a step; when the step sets an allowance, the loop writes it to the
/// heap (`SharedHeap.setPageAllowance`) and then calls `applied(_:)`, so a failed heap write changes nothing.
/// Tested on its own (`DirectLeaseTests`).
///
/// States: not joined (`participant == nil`, no allowance) → joined (a participant and an allowance, changed by
/// `lease` and `returnPages`) → not joined again when the client leaves the heap before its session ends
/// (`forgetParticipant()`).
struct DirectLease: Hashable, Sendable {
    /// The heap participant the client joined, once `join` succeeded.
    private(set) var participant: Int?
    /// Pages the client may own.
    private(set) var pageAllowance = 0

    /// What a lease request needs.
    enum Step: Hashable, Sendable {
        /// Reply with the allowance as it is; nothing changes.
        case unchanged(pageAllowance: Int)
        /// Set `participant`'s allowance to `pages` in the heap, then `applied(_:)`.
        case setAllowance(participant: Int, pages: Int)
        /// Refuse; nothing changes.
        case refuse(ServiceError)
    }

    /// The client joins as participant `p`.
    ///
    /// - Parameters:
    ///   - joinable: whether `p` is a live participant joined by this client's process that no other session owns
    ///     and that is not the daemon's (the loop reads that from the heap).
    ///   - pid: the client's process, for the message.
    ///   - quota: the quota in force; `initialLeasePages` is capped by it.
    func join(_ p: Int, joinable: Bool, pid: Int32, quota: ClientQuota, initialLeasePages: Int) -> Step {
        if let participant {
            return .refuse(
                ServiceError(.invalidParticipant, "this connection already joined as participant \(participant)"))
        }
        guard joinable else {
            return .refuse(
                ServiceError(
                    .invalidParticipant,
                    "participant \(p) is not a live participant joined by pid \(pid) (join the heap first, then send "
                        + "join with its index)"))
        }
        return .setAllowance(participant: p, pages: quota.initialLease(initialLeasePages: initialLeasePages))
    }

    /// The client asks for `pages` more pages; `bytesHeld` is what it holds through the daemon (same quota).
    func lease(more pages: Int, client: UInt32, bytesHeld: Int, quota: ClientQuota) -> Step {
        guard let participant else { return Self.notJoined }
        switch quota.lease(client: client, more: pages, allowance: pageAllowance, bytesHeld: bytesHeld) {
        case .unchanged: return .unchanged(pageAllowance: pageAllowance)
        case .raise(let total): return .setAllowance(participant: participant, pages: total)
        case .refuse(let refusal): return .refuse(ServiceError(refusal))
        }
    }

    /// The client gives `pages` pages back; `ownedPages` reads how many pages its participant owns now (never
    /// taken back).
    func returnPages(_ pages: Int, ownedPages: (Int) -> Int) -> Step {
        guard let participant else { return Self.notJoined }
        let allowance = ClientQuota.afterReturning(pages, allowance: pageAllowance, ownedPages: ownedPages(participant))
        return .setAllowance(participant: participant, pages: allowance)
    }

    /// The heap carried out a step's allowance.
    mutating func applied(_ step: Step) {
        guard case .setAllowance(let p, let pages) = step else { return }
        precondition(participant == nil || participant == p, "an allowance for another participant")
        participant = p
        pageAllowance = pages
    }

    /// The client left the heap and its slot went to someone else: the session has no participant any more (its
    /// disconnect then has nothing to recover).
    mutating func forgetParticipant() {
        participant = nil
    }

    private static let notJoined = Step.refuse(
        ServiceError(.invalidParticipant, "join the heap (join) before leasing pages"))
}
