/// The versions of the divvyd wire protocol this module speaks (see `Protocol/PROTOCOL.md`).
public enum ProtocolVersion {
    /// The newest protocol version this module encodes and decodes.
    public static let current: UInt16 = 1
    /// Every version this module can speak.
    public static let supported: ClosedRange<UInt16> = 1...1
}
