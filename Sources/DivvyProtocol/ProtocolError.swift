/// A frame that could not be decoded, with the error code the daemon answers it with.
///
/// `Frame.decode(_:)` throws this for every malformed byte string (it never traps). When the header could be read
/// (at least 24 bytes with the right magic), `requestID` and `requestType` come from it so that the daemon can
/// answer with `reply` (an `error` frame echoing the request id); otherwise they are 0.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The error code to report (`malformedFrame`, `unsupportedVersion`, `unknownMessageType`, `frameTooLarge`
    /// or `batchTooLarge` from the decoder).
    public var code: ErrorCode
    /// What was wrong, for people (logs, the error reply's message).
    public var message: String
    /// The request id from the header when it could be read, else 0.
    public var requestID: UInt64
    /// The message type from the header when it could be read, else `MessageType(rawValue: 0)`.
    public var requestType: MessageType

    /// Creates an error value.
    public init(
        code: ErrorCode, message: String, requestID: UInt64 = 0, requestType: MessageType = MessageType(rawValue: 0)
    ) {
        self.code = code
        self.message = message
        self.requestID = requestID
        self.requestType = requestType
    }

    /// The `error` frame that answers the offending frame (request id and type echoed; the message is cut to
    /// `ProtocolLimits.maxMessageLength` bytes when encoded).
    public var reply: Frame {
        Frame(requestID: requestID, message: .error(ErrorReply(code: code, requestType: requestType, message: message)))
    }

    /// `code: message (request id, type)`.
    public var description: String {
        "\(code): \(message) (request \(requestID), type \(requestType))"
    }
}
