import Logging
import Synchronization

/// A log level shared by every `DivvyLogHandler` made to follow it, changeable from any thread.
///
/// swift-log's `Logger` is a value that holds its own copy of the handler, so setting one logger's `logLevel`
/// changes only that copy. divvyd's loggers follow one control instead, and a configuration reload sets the control:
/// every logger, including copies already handed to the server, writes at the new level from the next record on.
public final class LogLevelControl: Sendable {
    private let storage: Mutex<Logger.Level>

    /// A control at `level`.
    public init(_ level: Logger.Level) {
        storage = Mutex(level)
    }

    /// The level (any thread).
    public var level: Logger.Level {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}
