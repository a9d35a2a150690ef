/// Participant slots promised to direct clients between `welcome` and `join`.
///
/// A direct client joins the heap itself (it claims a free participant slot in shared memory) after the daemon
/// has welcomed it, so the daemon decides the mode at `hello` by counting: a client is welcomed as direct only
/// while the free slots outnumber the slots already promised. The promise is kept until the client's `join`
/// (or its disconnect), so that a welcomed direct client always finds a slot, and an `any` client that would
/// not is served mediated instead. Loop-thread only.
struct DirectSlotReservations {
    /// Slots promised and not yet joined.
    private(set) var reserved = 0

    /// Whether one more direct client fits, with `freeSlots` free participant slots in the heap now.
    func available(freeSlots: Int) -> Bool { freeSlots - reserved > 0 }

    /// Promises a slot; returns true (the value for the session's flag).
    mutating func reserve() -> Bool {
        reserved += 1
        return true
    }

    /// Gives a session's promise back and clears its flag.
    mutating func release(_ holds: inout Bool) {
        guard holds else { return }
        holds = false
        reserved = max(0, reserved - 1)
    }
}
