/// A connection's replies on their way out, and how the connection ends, as a value: the loop asks it whether to
/// read the next request or write a reply straight to the socket, hands it the frames the socket could not take,
/// and reports what the socket took; it says when to watch for writability, when to read again and when to close.
/// Tested on its own (`ConnectionOutboxTests`).
///
/// The rules: replies go out in order, so while one waits every later one waits behind it; no request is read
/// while replies wait, so a client that does not read its replies stops only its own requests (its replies cannot
/// pile up); and a connection that is to close (after `farewell`, a closing error, an admin disconnect of itself,
/// the handshake timeout, or a failed send) closes once its waiting replies are out, never before.
struct ConnectionOutbox {
    /// A frame and the descriptors that travel with it (the region's own: never closed here).
    typealias Frame = (bytes: [UInt8], descriptors: [Int32])

    /// Frames the socket could not take yet, oldest first.
    private(set) var frames: [Frame] = []
    /// Whether the connection closes once `frames` is empty.
    private(set) var closesWhenFlushed = false

    /// Whether no frame waits.
    var isEmpty: Bool { frames.isEmpty }

    /// Whether the loop may read the connection's next request (and write a reply straight to its socket): only
    /// while no frame waits.
    var isIdle: Bool { frames.isEmpty }

    /// Queues a frame the socket could not take, or that must wait behind earlier ones. Returns true when it is the
    /// first one waiting: the loop then watches the socket for writability (and stops reading it).
    mutating func hold(_ bytes: [UInt8], descriptors: [Int32]) -> Bool {
        frames.append((bytes, descriptors))
        return frames.count == 1
    }

    /// The oldest waiting frame, for the loop to try again.
    var next: Frame? { frames.first }

    /// The socket took the oldest waiting frame.
    mutating func sentNext() {
        frames.removeFirst()
    }

    /// What the loop does once every waiting frame is out.
    enum Flushed: Hashable, Sendable {
        /// Close the connection: it was to close after its replies.
        case close
        /// Watch the socket for readability again: requests are read again.
        case readAgain
    }

    /// The step after the last waiting frame went out.
    var flushed: Flushed {
        precondition(frames.isEmpty, "flushed with frames still waiting")
        return closesWhenFlushed ? .close : .readAgain
    }

    /// When a connection that is to close closes.
    enum Close: Hashable, Sendable {
        /// Now: nothing waits.
        case now
        /// Once the waiting frames are out (`flushed` then says `.close`).
        case afterFlush
    }

    /// The connection is to close after the replies sent so far.
    mutating func closeAfterReplies() -> Close {
        closesWhenFlushed = true
        return frames.isEmpty ? .now : .afterFlush
    }
}
