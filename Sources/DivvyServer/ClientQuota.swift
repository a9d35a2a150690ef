import DivvyProtocol

/// The byte quota every client works under (`quota`), as a pure value: the rules for mediated allocations and for
/// a direct client's page lease, which draw on the same quota. The loop builds one from the configuration in force
/// (a reload may change `quota`) and passes a client's counts in. Tested on its own (`ClientQuotaTests`).
///
/// A client's use is the bytes it holds through the daemon plus the pages it has leased (each `pageSize` bytes,
/// whether or not it has carved them yet): both must fit `quotaBytes` together.
struct ClientQuota: Hashable, Sendable {
    /// Bytes each client may use (`ServerConfiguration.effectiveQuotaBytes`).
    var quotaBytes: Int
    /// The heap's page size: the unit of a lease.
    var pageSize: Int

    /// Why a request does not fit the quota (`quotaExceeded`); the message says what to do.
    struct Refusal: Error, Hashable, Sendable {
        var message: String
    }

    /// Whether `bytes` more held through the daemon fit a client holding `bytesHeld` bytes with `leasedPages` pages
    /// leased: nil when they do, else the refusal.
    func refusal(client: UInt32, bytesHeld: Int, leasedPages: Int, adding bytes: Int) -> Refusal? {
        let leased = leasedPages * pageSize
        guard bytesHeld + leased + bytes > quotaBytes else { return nil }
        return Refusal(
            message: "client \(client) holds \(bytesHeld) bytes (+\(leased) leased); \(bytes) more would pass "
                + "its quota of \(quotaBytes) bytes: free some blocks first, or ask the operator to raise quota")
    }

    /// The lease a direct client gets when it joins: `initialLeasePages`, at most what the quota covers, and at
    /// least one page (a direct client that could lease nothing could not allocate at all).
    func initialLease(initialLeasePages: Int) -> Int {
        max(1, min(initialLeasePages, quotaBytes / pageSize))
    }

    /// What a request for `pages` more leased pages gets.
    enum LeaseGrant: Hashable, Sendable {
        /// The allowance stays as it is (a request for no pages).
        case unchanged
        /// Raise the allowance to this many pages (possibly fewer than asked: a partial grant is a grant).
        case raise(to: Int)
        /// Nothing at all is left under the quota.
        case refuse(Refusal)
    }

    /// Decides a request for `pages` more pages by a client with `allowance` pages leased and `bytesHeld` bytes
    /// held through the daemon.
    func lease(client: UInt32, more pages: Int, allowance: Int, bytesHeld: Int) -> LeaseGrant {
        // Asking for no pages changes nothing: the answer is the allowance as it is (PROTOCOL.md, lease).
        guard pages > 0 else { return .unchanged }
        let quotaPages = (quotaBytes - bytesHeld) / pageSize
        let granted = min(pages, quotaPages - allowance)
        guard granted > 0 else {
            return .refuse(
                Refusal(
                    message: "client \(client) has leased \(allowance) pages of \(pageSize) bytes; its quota of "
                        + "\(quotaBytes) bytes allows no more: free blocks (and return pages) first, or ask the "
                        + "operator to raise quota"))
        }
        return .raise(to: allowance + granted)
    }

    /// The allowance after a client with `allowance` pages leased, of which it owns `ownedPages`, returns `pages`:
    /// never below what it owns (an owned page cannot be taken back from under it).
    static func afterReturning(_ pages: Int, allowance: Int, ownedPages: Int) -> Int {
        max(ownedPages, allowance - max(0, pages))
    }
}
