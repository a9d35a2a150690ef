import DivvyShm

#if canImport(Glibc)
import Glibc
#endif

// The value parsers of `ServerConfiguration.set(_:_:)`: sizes, counts, octal modes, booleans, lists, id sets.
extension ServerConfiguration {
    // MARK: Value parsers

    /// `host:port` split, or nil.
    static func hostAndPort(_ text: String) -> (host: String, port: UInt16)? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            return nil
        }
        let host = String(text[..<colon])
        return host.isEmpty ? nil : (host, port)
    }

    static func size(_ text: String, _ key: String) throws(ParseError) -> Int {
        var digits = Substring(text)
        var multiplier = 1
        switch text.last {
        case "K", "k": multiplier = 1 << 10
        case "M", "m": multiplier = 1 << 20
        case "G", "g": multiplier = 1 << 30
        case "T", "t": multiplier = 1 << 40
        default: break
        }
        if multiplier != 1 { digits = digits.dropLast() }
        guard let value = Int(digits), value >= 0, value <= Int.max / multiplier else {
            throw ParseError("\(key) must be a size like 65536, 64K, 256M or 1G, not '\(text)'")
        }
        return value * multiplier
    }

    static func count(_ text: String, _ key: String) throws(ParseError) -> Int {
        guard let value = Int(text), value >= 0 else {
            throw ParseError("\(key) must be a non-negative integer, not '\(text)'")
        }
        return value
    }

    static func octal(_ text: String, _ key: String) throws(ParseError) -> UInt32 {
        guard let value = UInt32(text, radix: 8) else {
            throw ParseError("\(key) must be octal permission bits like 0660, not '\(text)'")
        }
        return value
    }

    static func bool(_ text: String, _ key: String) throws(ParseError) -> Bool {
        switch text {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw ParseError("\(key) must be true or false, not '\(text)'")
        }
    }

    static func list(_ text: String, _ key: String) throws(ParseError) -> [String] {
        text.split(separator: ",").map { String($0.trimmingWhitespace) }.filter { !$0.isEmpty }
    }

    static func ids(_ text: String, _ key: String) throws(ParseError) -> Set<UInt32> {
        var result = Set<UInt32>()
        for item in try list(text, key) {
            if item == "self" {
                result.insert(getuid())
            } else if let id = UInt32(item) {
                result.insert(id)
            } else {
                throw ParseError("\(key) must be a comma-separated list of numeric ids (or 'self'), not '\(item)'")
            }
        }
        return result
    }
}

extension Substring {
    var trimmingWhitespace: Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" || first == "\r" { result = result.dropFirst() }
        while let last = result.last, last == " " || last == "\t" || last == "\r" { result = result.dropLast() }
        return result
    }
}

extension String {
    var trimmingWhitespace: Substring { Substring(self).trimmingWhitespace }
}
