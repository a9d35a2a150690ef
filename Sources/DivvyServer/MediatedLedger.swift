import DivvyShm

/// One client's mediated holdings: which blocks it holds through the daemon, how often, and the totals its limits
/// are checked against. A value kept in the client's `Session`; only `MediatedLedger` changes it.
struct MediatedAccount {
    /// One handle's holdings by this client.
    struct Holding: Hashable, Sendable {
        /// How many times this client holds the block (allocations + adoptions).
        var count: UInt32
        /// The block's size (its class), so a free needs no heap lookup for the byte count.
        var blockSize: UInt32
    }

    /// Handle → holding. Keyed by all 128 bits: a handle that differs in any bit (heap id, generation) from one
    /// this client holds is not found.
    fileprivate(set) var holdings = HandleTable<Holding>()
    /// Blocks held (the sum of the holdings' counts).
    fileprivate(set) var blocksHeld = 0
    /// Bytes of the blocks held, with multiplicity.
    fileprivate(set) var bytesHeld = 0
    /// Bytes of large (span-tier) blocks held, with multiplicity (`large-quota`, `FairShare`).
    fileprivate(set) var largeBytesHeld = 0

    /// The holding of `handle`, or nil when this client does not hold it.
    subscript(handle: SharedHeapHandle) -> Holding? { holdings[handle] }

    fileprivate mutating func add(_ handle: SharedHeapHandle, blockSize: Int, isLarge: Bool) {
        if let holding = holdings[handle] {
            holdings[handle] = Holding(count: holding.count + 1, blockSize: holding.blockSize)
        } else {
            holdings[handle] = Holding(count: 1, blockSize: UInt32(blockSize))
        }
        blocksHeld += 1
        bytesHeld += blockSize
        if isLarge { largeBytesHeld += blockSize }
    }

    fileprivate mutating func remove(_ handle: SharedHeapHandle, _ holding: Holding, isLarge: Bool) {
        if holding.count == 1 {
            holdings[handle] = nil
        } else {
            holdings[handle] = Holding(count: holding.count - 1, blockSize: holding.blockSize)
        }
        blocksHeld -= 1
        bytesHeld -= Int(holding.blockSize)
        if isLarge { largeBytesHeld -= Int(holding.blockSize) }
    }
}

/// The mediated ledger — which client holds what through the daemon — and its rules, as values: each event
/// (allocate, free, adopt, a client leaving) says what the heap must do, and the loop reports back once the heap
/// has done it. Nothing changes when a request is refused or the heap's step fails. Tested on its own
/// (`MediatedLedgerTests`), with no socket and no heap.
///
/// The daemon's participant holds a mediated block once (one bit in the block's word), whichever clients hold it;
/// that bit stands for the first mediated holding, and any further ones (another client adopting the block) are
/// counted in `extraHoldings`. So a free drops an extra holding without touching the heap, and only the last
/// mediated holding is the daemon participant's free. Usually `extraHoldings` is empty, so allocating and freeing
/// touch only the client's own account.
struct MediatedLedger {
    /// The per-client block and large-block limits.
    let fairShare: FairShare
    /// Mediated holdings beyond the first, per handle.
    private(set) var extraHoldings: [SharedHeapHandle: Int] = [:]

    init(fairShare: FairShare) {
        self.fairShare = fairShare
    }

    // MARK: Allocate

    /// Whether `count` more blocks of `blockSize` bytes fit the client's limits: `max-blocks-per-client` and
    /// `large-quota` (`FairShare`), then its quota (`ClientQuota`, with the pages it has leased). Nil when they do.
    func refusal(
        client: UInt32, adding count: Int, of blockSize: Int, to account: MediatedAccount, leasedPages: Int,
        quota: ClientQuota
    ) -> ServiceError? {
        if let refusal = fairShare.refusal(
            client: client, blocksHeld: account.blocksHeld, largeBytesHeld: account.largeBytesHeld, adding: count,
            blockSize: blockSize)
        {
            return ServiceError(refusal)
        }
        if let refusal = quota.refusal(
            client: client, bytesHeld: account.bytesHeld, leasedPages: leasedPages, adding: blockSize * count)
        {
            return ServiceError(refusal)
        }
        return nil
    }

    /// Records blocks the daemon's participant just allocated for the client (after `refusal` said they fit).
    func allocated(_ handle: SharedHeapHandle, blockSize: Int, to account: inout MediatedAccount) {
        account.add(handle, blockSize: blockSize, isLarge: fairShare.isLarge(blockSize))
    }

    /// Records a batch of fresh handles (none can be in the account yet) of one block size.
    func allocated(_ handles: [SharedHeapHandle], blockSize: Int, to account: inout MediatedAccount) {
        let holding = MediatedAccount.Holding(count: 1, blockSize: UInt32(blockSize))
        for handle in handles { account.holdings.insertNew(handle, holding) }
        account.blocksHeld += handles.count
        account.bytesHeld += blockSize * handles.count
        if fairShare.isLarge(blockSize) { account.largeBytesHeld += blockSize * handles.count }
    }

    // MARK: Free

    /// What a client's free of a handle needs.
    enum FreeStep: Hashable, Sendable {
        /// The client does not hold it: nothing changed (the loop asks the heap what is wrong with the handle).
        case notHeld
        /// Another mediated holding keeps the block: this one is dropped, the heap is not touched, nothing is
        /// released.
        case dropped
        /// The last mediated holding: the daemon's participant must free the block; on success call
        /// `freedInHeap`, on failure nothing has changed.
        case freeInHeap
    }

    /// A client frees `handle`.
    mutating func free(_ handle: SharedHeapHandle, from account: inout MediatedAccount) -> FreeStep {
        guard let holding = account.holdings[handle] else { return .notHeld }
        guard !extraHoldings.isEmpty, let extra = extraHoldings[handle] else { return .freeInHeap }
        extraHoldings[handle] = extra == 1 ? nil : extra - 1
        account.remove(handle, holding, isLarge: fairShare.isLarge(Int(holding.blockSize)))
        return .dropped
    }

    /// The daemon's participant freed `handle` for the client (after `free` said `.freeInHeap`).
    func freedInHeap(_ handle: SharedHeapHandle, from account: inout MediatedAccount) {
        guard let holding = account.holdings[handle] else {
            preconditionFailure("freedInHeap of a handle the client does not hold")
        }
        account.remove(handle, holding, isLarge: fairShare.isLarge(Int(holding.blockSize)))
    }

    // MARK: Adopt

    /// What a client's adoption of a block needs.
    enum AdoptStep: Hashable, Sendable {
        /// Refused; nothing changed.
        case refuse(ServiceError)
        /// The daemon's participant already holds the block for another client: counted as an extra holding and
        /// recorded; the heap is not touched.
        case counted
        /// The daemon's participant must adopt the block; on success call `adoptedInHeap`, on failure nothing has
        /// changed.
        case adoptInHeap
    }

    /// A client adopts `handle`, a block of `blockSize` bytes (`daemonHolds`: whether the daemon's participant
    /// holds it already, for some mediated client).
    mutating func adopt(
        _ handle: SharedHeapHandle, blockSize: Int, daemonHolds: Bool, client: UInt32,
        to account: inout MediatedAccount, leasedPages: Int, quota: ClientQuota
    ) -> AdoptStep {
        // One holding per client, as in direct mode (the heap refuses a participant's second holding): a block's
        // holders are then clients, and one free drops a client's holding.
        guard account.holdings[handle] == nil else {
            return .refuse(
                ServiceError(
                    .alreadyHolder,
                    "this client already holds \(handle); a client holds a block once: free it before adopting it "
                        + "again"))
        }
        if let refusal = refusal(
            client: client, adding: 1, of: blockSize, to: account, leasedPages: leasedPages, quota: quota)
        {
            return .refuse(refusal)
        }
        guard daemonHolds else { return .adoptInHeap }
        extraHoldings[handle, default: 0] += 1
        account.add(handle, blockSize: blockSize, isLarge: fairShare.isLarge(blockSize))
        return .counted
    }

    /// The daemon's participant adopted `handle` for the client (after `adopt` said `.adoptInHeap`).
    func adoptedInHeap(_ handle: SharedHeapHandle, blockSize: Int, to account: inout MediatedAccount) {
        account.add(handle, blockSize: blockSize, isLarge: fairShare.isLarge(blockSize))
    }

    // MARK: Leaving, sharing

    /// A client leaves: every holding of its account is dropped. Returns the handles the daemon's participant
    /// must free (one entry per heap-level free; a block it frees there goes back to the heap unless a direct
    /// client holds it too). Extra holdings are dropped here.
    mutating func release(_ account: MediatedAccount) -> [SharedHeapHandle] {
        var heapFrees: [SharedHeapHandle] = []
        for (handle, holding) in account.holdings.entries {
            for _ in 0..<holding.count {
                if !extraHoldings.isEmpty, let extra = extraHoldings[handle] {
                    extraHoldings[handle] = extra == 1 ? nil : extra - 1
                } else {
                    heapFrees.append(handle)
                }
            }
        }
        return heapFrees
    }

    /// How many mediated holdings `handle` has (`daemonHolds`: whether the daemon's participant holds it).
    func mediatedHolders(of handle: SharedHeapHandle, daemonHolds: Bool) -> Int {
        daemonHolds ? 1 + (extraHoldings[handle] ?? 0) : 0
    }
}
