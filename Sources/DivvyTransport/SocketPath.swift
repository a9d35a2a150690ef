#if canImport(Glibc)
import Glibc
#endif

/// Where divvyd listens by default, and how clients find it.
public enum DivvySocketPath {
    /// The environment variable that overrides the default socket path for clients and `divvyctl`.
    public static let environmentVariable = "DIVVY_SOCKET"

    /// The default socket path for the current user: `/run/divvy/divvyd.sock` for root,
    /// `$XDG_RUNTIME_DIR/divvy/divvyd.sock` otherwise, or `/tmp/divvy-<uid>/divvyd.sock` when `XDG_RUNTIME_DIR` is
    /// unset.
    public static var defaultPath: String {
        "\(defaultDirectory)/divvyd.sock"
    }

    /// The directory of `defaultPath`.
    public static var defaultDirectory: String {
        if getuid() == 0 { return "/run/divvy" }
        if let runtime = getenv("XDG_RUNTIME_DIR"), runtime.pointee != 0 {
            return "\(String(cString: runtime))/divvy"
        }
        return "/tmp/divvy-\(getuid())"
    }

    /// The path a client uses: `explicit` if given, else `$DIVVY_SOCKET` if set, else `defaultPath`.
    public static func resolve(_ explicit: String?) -> String {
        if let explicit { return explicit }
        if let variable = getenv(environmentVariable), variable.pointee != 0 { return String(cString: variable) }
        return defaultPath
    }
}
