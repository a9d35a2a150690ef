import DivvyProtocol

/// Encodes the daemon's outgoing frames, and replaces one that would not fit a datagram with an error reply.
///
/// A frame longer than `ProtocolLimits.maxFrameSize` is refused by the socket (`EMSGSIZE`) and would be refused
/// by the client's decoder (`frameTooLarge`). Sending it anyway used to lose the reply and close the connection,
/// and requests the client had already pipelined lost their answers. Every request gets exactly one reply
/// (PROTOCOL.md, section 3), so such a reply becomes `internalError`: the request had no effect, the connection
/// stays usable, and the daemon logs the bug.
enum ReplyCheck {
    /// Encodes `message` for `requestID` into `buffer` (cleared first); if the frame would exceed
    /// `maxFrameSize`, encodes an `internalError` reply to the same request instead.
    ///
    /// `version` is the header version (nil: `Frame`'s default for the message); a connection not yet welcomed is
    /// answered in version-1 frames (PROTOCOL.md, section 6.1).
    ///
    /// - Returns: nil when `message` was encoded; else what was replaced and why (for the log).
    /// - Complexity: O(frame size); the error reply is encoded only when needed.
    static func encode(
        _ message: Message, requestID: UInt64, version: UInt16? = nil, into buffer: inout [UInt8]
    ) -> String? {
        buffer.removeAll(keepingCapacity: true)
        Frame(requestID: requestID, message: message, version: version).encode(into: &buffer)
        guard buffer.count > ProtocolLimits.maxFrameSize else { return nil }
        let size = buffer.count
        let type = message.type
        // A successful reply's type is its request's with the high bit set; notices and errors answer nothing.
        let answers =
            type.rawValue & 0x8000 != 0 && type != .error && type != .shutdown
            ? MessageType(rawValue: type.rawValue & 0x7FFF) : MessageType(rawValue: 0)
        let text =
            "the daemon's \(type) reply would be a \(size)-byte frame, over the protocol's limit of "
            + "\(ProtocolLimits.maxFrameSize) bytes, so it was not sent and the request had no effect; this is a "
            + "divvyd bug: please report it. The connection stays usable."
        buffer.removeAll(keepingCapacity: true)
        Frame(
            requestID: requestID,
            message: .error(ErrorReply(code: .internalError, requestType: answers, message: text)), version: version
        ).encode(into: &buffer)
        return text
    }
}
