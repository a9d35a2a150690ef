/// The per-client limits that keep one mediated client from taking what all of them draw from together (issue 13,
/// items 1 and 2), checked before the daemon's participant allocates or adopts for a client:
///
/// - **Blocks** (`max-blocks-per-client`): the daemon's participant holds every mediated block, in one held list of
///   `held-capacity` entries shared by all mediated clients. A client may hold at most `maxBlocksPerClient` of
///   them, which `ServerConfiguration.validate()` keeps below `held-capacity`, so no single client can fill it.
/// - **Large-block bytes** (`large-quota`): blocks above `largestSmallBlock` come from the span tier, a fixed share
///   of the data area (a quarter by default — as large as the default quota). A client may hold at most
///   `largeQuotaBytes` of them (a quarter of the tier by default), so no single client can take the whole tier.
///
/// Both are per client, not reservations: with many clients the shared capacity can still run out (then `heapFull`
/// says which tier or list is full), but never because of one client. A pure value: the event loop passes the
/// session's counts in.
struct FairShare: Hashable, Sendable {
    /// Blocks one client may hold through the daemon.
    var maxBlocksPerClient: Int
    /// The daemon's held-list capacity (shared by all mediated clients), for messages.
    var heldCapacity: Int
    /// The largest small block; larger blocks come from the span tier.
    var largestSmallBlock: Int
    /// Bytes of large blocks one client may hold.
    var largeQuotaBytes: Int
    /// Bytes in the span tier, for messages.
    var spanTierBytes: Int

    /// Why a request is refused: the message names the setting that would allow it.
    struct Refusal: Error, Hashable, Sendable {
        var message: String
    }

    /// Whether `count` more blocks of `blockSize` bytes fit a client that holds `blocksHeld` blocks, `largeBytesHeld`
    /// bytes of them large: nil when they do, or the refusal.
    func refusal(
        client: UInt32, blocksHeld: Int, largeBytesHeld: Int, adding count: Int, blockSize: Int
    ) -> Refusal? {
        if blocksHeld + count > maxBlocksPerClient {
            return Refusal(
                message: "client \(client) holds \(blocksHeld) blocks; \(count) more would pass max-blocks-per-client "
                    + "(\(maxBlocksPerClient)), which keeps one client from filling the \(heldCapacity)-entry list "
                    + "all mediated clients share: free some blocks first, allocate fewer larger blocks, or ask the "
                    + "operator to raise max-blocks-per-client")
        }
        if blockSize > largestSmallBlock, largeBytesHeld + blockSize * count > largeQuotaBytes {
            return Refusal(
                message: "client \(client) holds \(largeBytesHeld) bytes of large blocks (over \(largestSmallBlock) "
                    + "bytes); \(blockSize * count) more would pass its large-quota of \(largeQuotaBytes) bytes, "
                    + "which keeps one client from taking the whole \(spanTierBytes)-byte large-block tier: free some "
                    + "large blocks first, use blocks of at most \(largestSmallBlock) bytes, or ask the operator to "
                    + "raise large-quota")
        }
        return nil
    }

    /// Whether a block of `blockSize` bytes counts toward `large-quota`.
    func isLarge(_ blockSize: Int) -> Bool { blockSize > largestSmallBlock }
}
