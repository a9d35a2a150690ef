import DivvyShm

/// The daemon's outstanding share tokens: the capabilities that make sharing unforgeable (issue 13, item 15;
/// PROTOCOL.md 6.4).
///
/// Handles are predictable (an offset and a generation that counts up), so a handle alone must not let a mediated
/// client adopt — and so pin — a block. Each `share` issues a fresh token: 64 random bits, never 0, bound to one
/// handle (all 128 bits: heap id, generation, offset) and to the client that asked (the *issuer*). A mediated
/// `adopt` must present a live token for the handle it names, and a successful adopt uses the token up:
///
/// - **Single-use.** One token lets one client adopt once. A holder sharing with three clients sends `share`
///   three times. A refused adopt (any error) leaves the token as it was.
/// - **Bound to the issuer's holding.** A token is live while its issuer still holds the block. It dies when the
///   issuer frees its holding (`dropIssuer(_:handle:)`, which also kills every token of a freed block: an issuer
///   that held it has stopped), when the issuer disconnects (`dropIssuer(_:)`), and — for a direct issuer, whose
///   frees the daemon does not see — when a check finds the issuer's participant no longer holds it
///   (`issuerHolds`). So a token never outlives the block's generation either.
/// - **Counted per issuer.** An issuer has at most `limitPerIssuer` live tokens (`max-share-tokens-per-client`);
///   at the limit `issue` first forgets its dead ones (a direct issuer's), then refuses.
///
/// A pure value: the event loop passes in what it knows about holdings (`issuerHolds`) and the random source, so
/// the rules are tested without a socket (`ShareTokenTableTests`).
struct ShareTokenTable {
    /// What a token was issued for.
    struct Grant: Hashable, Sendable {
        /// The block, all 128 bits of its handle.
        var handle: SharedHeapHandle
        /// The client that sent `share`.
        var issuer: UInt32
    }

    /// Why `issue` refused: the issuer has `limitPerIssuer` live tokens.
    struct Refusal: Error, Hashable, Sendable {
        var message: String
    }

    /// Why a token does not let this adopt through (all are `badShareToken` on the wire); the message says which.
    enum Rejection: Error, Hashable, Sendable {
        /// No live token has this value: never issued (a guess, or 0), already redeemed, or dropped with its issuer.
        case unknown
        /// The token was issued for another handle: another block, or another generation of this one.
        case otherHandle
        /// The token's issuer no longer holds the block (a direct issuer that freed it in shared memory).
        case issuerStopped(issuer: UInt32)
    }

    /// Live tokens an issuer may have (`max-share-tokens-per-client`).
    var limitPerIssuer: Int
    private var grants: [UInt64: Grant] = [:]
    /// Each issuer's tokens, by handle: what `dropIssuer` drops and `issue` counts.
    private var byIssuer: [UInt32: [SharedHeapHandle: [UInt64]]] = [:]
    private var counts: [UInt32: Int] = [:]

    init(limitPerIssuer: Int) {
        self.limitPerIssuer = limitPerIssuer
    }

    /// Tokens outstanding, all issuers.
    var count: Int { grants.count }

    /// Whether no token is outstanding (the common case: frees then skip `dropIssuer`).
    var isEmpty: Bool { grants.isEmpty }

    /// Tokens `issuer` has outstanding.
    func count(issuer: UInt32) -> Int { counts[issuer] ?? 0 }

    /// A new token for `handle`, issued to `issuer`: random, never 0, distinct from every outstanding token.
    ///
    /// - Parameters:
    ///   - issuerHolds: whether `issuer` still holds a block; asked only at the limit, to forget dead tokens before
    ///     refusing.
    ///   - random: the source of the token (the daemon's is `SystemRandomNumberGenerator`: getrandom(2)).
    /// - Throws: `Refusal` when `issuer` has `limitPerIssuer` live tokens (its message names the key).
    mutating func issue<R: RandomNumberGenerator>(
        for handle: SharedHeapHandle, to issuer: UInt32, using random: inout R,
        issuerHolds: (SharedHeapHandle) -> Bool
    ) throws(Refusal) -> UInt64 {
        if count(issuer: issuer) >= limitPerIssuer {
            // Only a direct issuer can have dead tokens here (a mediated issuer's die when it frees).
            for (held, _) in byIssuer[issuer] ?? [:] where !issuerHolds(held) { dropIssuer(issuer, handle: held) }
            guard count(issuer: issuer) < limitPerIssuer else {
                throw Refusal(
                    message: "client \(issuer) has \(count(issuer: issuer)) share tokens outstanding, the most "
                        + "max-share-tokens-per-client (\(limitPerIssuer)) allows: a token is used up when a client "
                        + "adopts with it and dropped when you free the block; free blocks you shared, or ask the "
                        + "operator to raise max-share-tokens-per-client")
            }
        }
        var token: UInt64 = 0
        // 0 is never a token (an adopt that carries none); a collision with a live token is drawn again.
        while token == 0 || grants[token] != nil { token = random.next() }
        grants[token] = Grant(handle: handle, issuer: issuer)
        byIssuer[issuer, default: [:]][handle, default: []].append(token)
        counts[issuer, default: 0] += 1
        return token
    }

    /// Checks that `token` lets a client adopt `handle`, without using it up (`redeem` does, once the adopt has
    /// succeeded): a refused adopt must leave the token as it was.
    ///
    /// - Parameter issuerHolds: whether an issuer still holds `handle`.
    /// - Returns: the token's grant.
    func check(
        _ token: UInt64, for handle: SharedHeapHandle, issuerHolds: (UInt32) -> Bool
    ) throws(Rejection) -> Grant {
        guard token != 0, let grant = grants[token] else { throw .unknown }
        guard grant.handle == handle else { throw .otherHandle }
        guard issuerHolds(grant.issuer) else { throw .issuerStopped(issuer: grant.issuer) }
        return grant
    }

    /// Uses `token` up (after a successful adopt). Unknown tokens are ignored.
    mutating func redeem(_ token: UInt64) {
        guard let grant = grants.removeValue(forKey: token) else { return }
        forget(token, of: grant)
    }

    /// Drops the tokens `issuer` got for `handle`: it no longer holds the block.
    mutating func dropIssuer(_ issuer: UInt32, handle: SharedHeapHandle) {
        guard let tokens = byIssuer[issuer]?.removeValue(forKey: handle) else { return }
        for token in tokens { grants[token] = nil }
        let left = count(issuer: issuer) - tokens.count
        counts[issuer] = left == 0 ? nil : left
        if byIssuer[issuer]?.isEmpty == true { byIssuer[issuer] = nil }
    }

    /// Drops every token `issuer` got: it disconnected.
    mutating func dropIssuer(_ issuer: UInt32) {
        guard let handles = byIssuer.removeValue(forKey: issuer) else { return }
        for tokens in handles.values { for token in tokens { grants[token] = nil } }
        counts[issuer] = nil
    }

    private mutating func forget(_ token: UInt64, of grant: Grant) {
        if var tokens = byIssuer[grant.issuer]?[grant.handle] {
            tokens.removeAll { $0 == token }
            byIssuer[grant.issuer]?[grant.handle] = tokens.isEmpty ? nil : tokens
            if byIssuer[grant.issuer]?.isEmpty == true { byIssuer[grant.issuer] = nil }
        }
        let left = count(issuer: grant.issuer) - 1
        counts[grant.issuer] = left <= 0 ? nil : left
    }
}
