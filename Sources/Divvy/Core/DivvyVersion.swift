/// The release of Divvy this code belongs to: the one place the version is written.
///
/// Everything that reports a version reads it from here: `divvyd --version`, `divvyctl --version`, the daemon's
/// `status` document, `divvy_version()` in the C library, the `.deb`'s control file and `divvy.pc` (the packaging
/// scripts read the `string` line below; keep it a plain literal). Releases follow semantic versioning; see
/// `CHANGELOG.md` and `docs/RELEASING.md`.
public enum DivvyVersion {
    /// The version as `MAJOR.MINOR.PATCH`, e.g. `"0.2.0"`.
    public static let string = "0.2.0"

    /// The major version: releases with the same major version (above 0) are source- and ABI-compatible.
    public static var major: Int { component(0) }

    /// The minor version: new features that keep compatibility.
    public static var minor: Int { component(1) }

    /// The patch version: fixes only.
    public static var patch: Int { component(2) }

    /// The version as one comparable number, `major * 10_000 + minor * 100 + patch` (what `divvy_version_number()`
    /// returns to C).
    public static var number: Int { major * 10_000 + minor * 100 + patch }

    private static func component(_ index: Int) -> Int {
        let parts = string.split(separator: ".")
        // Invariant: `string` is three dot-separated decimal numbers (DivvyVersionTests checks it).
        return Int(parts[index])!
    }
}
