import DivvySystem

#if canImport(Glibc)
import Glibc
#endif

/// Where divvyd's configuration comes from, kept so it can be read again on reload: the `--config` file, then the
/// command line's settings on top in order (flags, `--set key=value`, and what the service manager imposes, such
/// as a socket-activated listener's path). Flags win, at start and at every reload.
public struct ConfigurationSource: Hashable, Sendable {
    /// The config file's path, or nil (built-in defaults under the overrides).
    public var configFile: String?
    /// `key`/`value` settings applied after the file, in order (a later one wins).
    public var overrides: [Override]

    /// One setting from the command line.
    public struct Override: Hashable, Sendable {
        /// The config key.
        public var key: String
        /// Its value as written.
        public var value: String

        /// Creates an override.
        public init(_ key: String, _ value: String) {
            self.key = key
            self.value = value
        }
    }

    /// Creates a source.
    public init(configFile: String?, overrides: [Override] = []) {
        self.configFile = configFile
        self.overrides = overrides
    }

    /// Reads the file, applies the overrides and validates the result.
    ///
    /// - Throws: `ServerConfiguration.ParseError` naming the file (and line) or the setting that is wrong, or why
    ///   the file could not be read.
    public func load() throws(ServerConfiguration.ParseError) -> ServerConfiguration {
        var configuration = ServerConfiguration()
        if let configFile {
            let text: String
            do throws(FileReadError) {
                text = try Self.readFile(configFile)
            } catch {
                throw ServerConfiguration.ParseError("cannot read config file \(configFile): \(error.message)")
            }
            do throws(ServerConfiguration.ParseError) {
                try configuration.apply(configText: text)
            } catch {
                throw ServerConfiguration.ParseError("\(configFile): \(error.message)")
            }
        }
        for override in overrides { try configuration.set(override.key, override.value) }
        try configuration.validate()
        return configuration
    }

    /// Why a file could not be read: strerror(3) of the failing call's errno.
    struct FileReadError: Error {
        var message: String
    }

    /// The whole file at `path` as UTF-8 text (open(2) and read(2) through the system layer, EINTR retried).
    static func readFile(_ path: String) throws(FileReadError) -> String {
        switch systemReadSmallFile(path, limit: .max) {
        case .success(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .failure(let error): throw FileReadError(message: systemErrorDescription(error.rawValue))
        }
    }
}
