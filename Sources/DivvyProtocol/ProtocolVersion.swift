/// The versions of the divvyd wire protocol this module speaks (see `Protocol/PROTOCOL.md`).
public enum ProtocolVersion {
    /// The newest protocol version this module encodes and decodes: 2 (128-bit handles).
    public static let current: UInt16 = 2
    /// Every version this module can negotiate in `hello`/`welcome`. Version 1 (64-bit handles) is not among them:
    /// its payloads carrying handles differ, and a version-1 peer is refused with `unsupportedVersion`.
    public static let supported: ClosedRange<UInt16> = 2...2
    /// The header version of the frames sent before `welcome` (`hello` and the daemon's reply to it), whatever the
    /// versions negotiated, so that a peer of any version can read them (PROTOCOL.md, section 6.1).
    public static let handshake: UInt16 = 1
    /// The header versions `Frame.decode` accepts: `handshake` and `supported`. Every payload is decoded with
    /// version 2's layout; only the handshake's messages (which are the same in both versions) travel in
    /// version-1 frames between version-2 peers.
    public static let headerVersions: ClosedRange<UInt16> = handshake...current
}
