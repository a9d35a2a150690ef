import DivvyProtocol

/// Writes an `admin clients` row (`AdminDocument.Client`) as JSON directly into a byte buffer: the same bytes as
/// `AdminPaging.encoder()` (`JSONEncoder`, keys sorted) gives, without setting up an encoder and its containers for
/// each row. A page of 1,000 clients is built on the loop thread, so this is what an `admin clients` page costs.
/// `AdminPagingTests` checks the bytes against `JSONEncoder`'s.
enum ClientRowJSON {
    /// Appends `row`'s JSON object to `out`.
    static func append(_ row: AdminDocument.Client, to out: inout [UInt8]) {
        // Keys in `JSONEncoder`'s `.sortedKeys` order.
        out.append(UInt8(ascii: "{"))
        key("blocksHeld", first: true, &out); integer(row.blocksHeld, &out)
        key("bytesHeld", &out); integer(row.bytesHeld, &out)
        key("connectedSeconds", &out); double(row.connectedSeconds, &out)
        key("gid", &out); integer(Int(row.gid), &out)
        key("id", &out); integer(Int(row.id), &out)
        key("mode", &out); string(row.mode, &out)
        key("name", &out); string(row.name, &out)
        key("pageAllowance", &out); integer(row.pageAllowance, &out)
        if let participant = row.participant { key("participant", &out); integer(participant, &out) }
        key("pid", &out); integer(Int(row.pid), &out)
        key("quotaBytes", &out); integer(row.quotaBytes, &out)
        key("requests", &out); integer(row.requests, &out)
        key("uid", &out); integer(Int(row.uid), &out)
        out.append(UInt8(ascii: "}"))
    }

    private static func key(_ name: StaticString, first: Bool = false, _ out: inout [UInt8]) {
        if !first { out.append(UInt8(ascii: ",")) }
        out.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: ":"))
    }

    private static func integer(_ value: Int, _ out: inout [UInt8]) {
        out.append(contentsOf: String(value).utf8)
    }

    private static func double(_ value: Double, _ out: inout [UInt8]) {
        // As `JSONEncoder` writes a finite Double: its description, without a trailing ".0". A non-finite value
        // (never a duration) is written as 0 rather than as invalid JSON.
        guard value.isFinite else { return out.append(UInt8(ascii: "0")) }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        out.append(contentsOf: text.utf8)
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    private static func string(_ value: String, _ out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "/"): out += [UInt8(ascii: "\\"), UInt8(ascii: "/")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0C: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                out += Array("\\u00".utf8)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
