/// An error from a `SharedHeap`: creating or attaching one, joining it, or an operation on a handle.
///
/// A struct with an extensible `code` (switch with a `default`), like `SharedRegionError`. Every rejected
/// operation leaves the heap exactly as it was: the checks that can fail run before the first shared write, and
/// the one write that could race (the compare-and-exchange of a block word) re-checks everything it depends on.
///
/// Bad input is not a hot path, so the message is an assembled `String`.
public struct SharedHeapError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        @usableFromInline internal let rawValue: UInt8
        @inlinable internal init(_ rawValue: UInt8) { self.rawValue = rawValue }

        /// A handle or pointer whose offset lies outside the heap's data pages.
        public static let outOfRange = Code(1)
        /// A handle or pointer that does not point at the start of a block of its page's size class.
        public static let misaligned = Code(2)
        /// A handle whose generation does not match the block's: the block was freed (and maybe reused) since.
        public static let staleHandle = Code(3)
        /// Freeing a block that is already free (same generation, no holder).
        public static let doubleFree = Code(4)
        /// Freeing a block this participant does not hold (someone else does).
        public static let notHeld = Code(5)
        /// No free page and no free block of the requested class is left.
        public static let heapFull = Code(6)
        /// The metadata area does not hold a valid heap header (magic, version, checksum or geometry).
        public static let corruptHeader = Code(7)
        /// A request larger than the largest size class (multi-page spans are not implemented yet), or zero.
        public static let unsupportedSize = Code(8)
        /// The configuration cannot work (page size, size classes, capacities), or the region is too small.
        public static let invalidConfiguration = Code(9)
        /// Every participant slot is taken.
        public static let participantTableFull = Code(10)
        /// This participant's held list is full: free or hand on some blocks first.
        public static let heldListFull = Code(11)
        /// Adopting a block this participant already holds.
        public static let alreadyHeld = Code(12)
        /// The participant has left the heap and may not be used any more.
        public static let participantLeft = Code(13)
        /// The metadata contradicts itself (a block word does not record a holding the held list records): it was
        /// overwritten behind the heap's back.
        public static let corruptMetadata = Code(14)
        /// `SharedHeap.recover(participant:)` could not finish yet (a page's owner has not collected an earlier
        /// suspect block); the participant stays marked dead: call `recover` again later.
        public static let recoveryIncomplete = Code(15)
        /// Allocation needed a new page, and the participant already owns as many pages as its page allowance
        /// (`SharedHeap.setPageAllowance(participant:pages:)`) permits.
        public static let pageAllowanceExhausted = Code(16)
        /// A handle made by another heap (its heap id is not this heap's `SharedHeap.heapID`): one formatted before
        /// the daemon restarted, or another daemon's.
        public static let foreignHeap = Code(17)

        /// The code's name, e.g. `"staleHandle"`.
        public var description: String {
            switch rawValue {
            case 1: "outOfRange"
            case 2: "misaligned"
            case 3: "staleHandle"
            case 4: "doubleFree"
            case 5: "notHeld"
            case 6: "heapFull"
            case 7: "corruptHeader"
            case 8: "unsupportedSize"
            case 9: "invalidConfiguration"
            case 10: "participantTableFull"
            case 11: "heldListFull"
            case 12: "alreadyHeld"
            case 13: "participantLeft"
            case 14: "corruptMetadata"
            case 15: "recoveryIncomplete"
            case 16: "pageAllowanceExhausted"
            case 17: "foreignHeap"
            default: "code\(rawValue)"
            }
        }
    }

    /// The kind of failure.
    public var code: Code
    /// What happened, to what, and what to do.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `"code: message"`.
    public var description: String { "\(code): \(message)" }
}
