/// Peer-supplied text made safe to show: the one escaping used by the daemon's log lines and by `divvyctl`'s
/// output for anything a client chose (its `hello` name above all).
///
/// A name is valid UTF-8 (the decoder checks), but may still hold a newline that forges a log line
/// (`"x\n<2>critical"`), a terminal escape sequence (`"\u{1b}[31m"`), or a bidirectional override that makes the
/// text read differently from what it is (`"\u{202E}"`). Each of those becomes a visible escape; everything else is
/// kept as is.
public enum DisplayText {
    /// `text` with every character that could change how the surrounding output reads written as an escape:
    /// `\` → `\\`; `\n`, `\r`, `\t` as such; other C0 controls, DEL and C1 controls as `\xHH`; line and paragraph
    /// separators (U+2028, U+2029), bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E,
    /// U+200F, U+202A…U+202E, U+2066…U+2069) and other invisible format characters (U+200B…U+200D, U+2060,
    /// U+FEFF) as `\u{HHHH}`. With `quoting`, `"` → `\"` too.
    ///
    /// The result never contains a line break or a control character.
    public static func escaped(_ text: String, quoting: Bool = false) -> String {
        var output = ""
        output.reserveCapacity(text.utf8.count)
        escape(text, into: &output, quoting: quoting)
        return output
    }

    /// Appends `escaped(text, quoting:)` to `output`.
    public static func escape(_ text: String, into output: inout String, quoting: Bool = false) {
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case "\"" where quoting: output += "\\\""
            case "\u{00}"..."\u{1F}", "\u{7F}"..."\u{9F}":
                output += "\\x" + hex(scalar.value, digits: 2)
            case "\u{061C}", "\u{200B}"..."\u{200F}", "\u{2028}"..."\u{202E}", "\u{2060}", "\u{2066}"..."\u{2069}",
                "\u{FEFF}":
                output += "\\u{" + hex(scalar.value, digits: 4) + "}"
            default:
                output.unicodeScalars.append(scalar)
            }
        }
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
