import DivvyProtocol
import DivvyShm

extension DivvyServer {
    /// Whether client `id` (still connected) holds `handle`: through the daemon, or — a direct client — in shared
    /// memory, as its participant's held list records it. A share token is live only while this is true of its
    /// issuer (`ShareTokenTable`).
    func clientHolds(_ id: UInt32, _ handle: SharedHeapHandle) -> Bool {
        guard let session = sessions[id] else { return false }
        if session.account[handle] != nil { return true }
        guard let p = session.participant else { return false }
        return heap.holds(participant: p, handle)
    }

    /// Drops client `id`'s share tokens for `handle` once its `account` no longer holds it (after a free): they die
    /// with its holding. Free when no token is outstanding at all.
    func dropShareTokens(of id: UInt32, for handle: SharedHeapHandle, account: MediatedAccount) {
        guard !shareTokens.isEmpty, account[handle] == nil else { return }
        shareTokens.dropIssuer(id, handle: handle)
    }

    /// A new share token for `handle`, which `session` holds (the caller checked): `quotaExceeded` naming
    /// `max-share-tokens-per-client` when the session has that many live tokens.
    func issueShareToken(_ session: Session, for handle: SharedHeapHandle) throws(ServiceError) -> UInt64 {
        // getrandom(2) on Linux (the standard library's system generator): tokens must not be predictable, unlike
        // handles, which count up.
        var random = SystemRandomNumberGenerator()
        let issuer = session.id
        do throws(ShareTokenTable.Refusal) {
            return try shareTokens.issue(for: handle, to: issuer, using: &random) { clientHolds(issuer, $0) }
        } catch {
            throw ServiceError(.quotaExceeded, error.message)
        }
    }

    /// Refuses (`badShareToken`) an `adopt` of `handle` whose `token` is not live for it. Uses nothing up: the
    /// caller redeems the token (`shareTokens.redeem`) once the adopt has succeeded.
    func checkShareToken(_ token: UInt64, for handle: SharedHeapHandle) throws(ServiceError) {
        do throws(ShareTokenTable.Rejection) {
            _ = try shareTokens.check(token, for: handle) { clientHolds($0, handle) }
        } catch {
            let why: String
            switch error {
            case .unknown:
                why = token == 0
                    ? "no share token (0 is never one)"
                    : "share token \(token) is not outstanding: it was never issued, was already used, or its "
                        + "sharer freed the block or disconnected"
            case .otherHandle:
                why = "share token \(token) was issued for another handle (another block, or an earlier use of "
                    + "this one)"
            case .issuerStopped(let issuer):
                why = "share token \(token) is dead: client \(issuer), which shared the block, no longer holds it"
            }
            throw ServiceError(
                .badShareToken,
                "cannot adopt \(handle): \(why). A mediated client adopts only with the token a holder got from "
                    + "share for this handle, once; ask a holder to share it again")
        }
    }
}
