import DivvyProtocol
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Keeps admin documents inside one frame (`ProtocolLimits.maxAdminBodyLength` bytes of body): `clients` is paged
/// and `verify` cuts its list of violations. See `Protocol/PROTOCOL.md`, "Admin paging".
///
/// A frame is one `SOCK_SEQPACKET` datagram of at most 65,536 bytes, and a `clients` row is ~200–500 bytes (names
/// are up to 255 bytes, up to 6 bytes each once escaped for JSON): 1,000 clients make a 200–500 KB list. Rather than
/// a second framing layer, the list is cut into pages that each are a complete document of the old shape (a JSON
/// array of rows), and the request's argument says where a page starts. Tools written before paging send argument
/// 0 and get a valid first page.
enum AdminPaging {
    /// The encoder of every admin document: compact, keys sorted (equal values give equal bytes).
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    /// `value` as an admin document's JSON bytes (`{}` if it cannot be encoded, which the `Codable` documents
    /// never cause).
    static func encode<T: Encodable>(_ value: T, with encoder: JSONEncoder = encoder()) -> [UInt8] {
        (try? encoder.encode(value)).map { Array($0) } ?? Array("{}".utf8)
    }

    /// A JSON array of as many of `rows` (in order) as fit in `limit` bytes, and how many that is.
    ///
    /// Each row is encoded on its own and the rows are joined with commas inside brackets: the same bytes as
    /// encoding the array at once. The page ends where the next row would not fit. A first row that alone does not
    /// fit is still returned (rows are bounded far below a page; the send check answers `internalError` if one
    /// ever is not).
    /// - Complexity: O(bytes of the rows taken, plus one row).
    static func arrayPage<Rows: Sequence>(_ rows: Rows, limit: Int) -> (body: [UInt8], count: Int)
    where Rows.Element: Encodable {
        let encoder = encoder()
        var body: [UInt8] = [UInt8(ascii: "[")]
        var count = 0
        for row in rows {
            let bytes = encode(row, with: encoder)
            // The row, its comma (after the first) and the closing bracket must fit.
            let needed = bytes.count + (count == 0 ? 0 : 1) + 1
            if count > 0 && body.count + needed > limit { break }
            if count > 0 { body.append(UInt8(ascii: ",")) }
            body += bytes
            count += 1
        }
        body.append(UInt8(ascii: "]"))
        return (body, count)
    }

    /// A JSON array of as many `clients` rows (in order) as fit in `limit` bytes, and how many that is: the same
    /// bytes as the generic `arrayPage`, each row written by `ClientRowJSON` into one buffer.
    /// - Complexity: O(bytes of the rows taken, plus one row).
    static func arrayPage<Rows: Sequence>(_ rows: Rows, limit: Int) -> (body: [UInt8], count: Int)
    where Rows.Element == AdminDocument.Client {
        var body: [UInt8] = [UInt8(ascii: "[")]
        body.reserveCapacity(min(limit, 1 << 16))
        var count = 0
        for row in rows {
            let mark = body.count
            if count > 0 { body.append(UInt8(ascii: ",")) }
            ClientRowJSON.append(row, to: &body)
            // The row, its comma (after the first) and the closing bracket must fit.
            if count > 0 && body.count + 1 > limit {
                body.removeSubrange(mark...)
                break
            }
            count += 1
        }
        body.append(UInt8(ascii: "]"))
        return (body, count)
    }

    /// The `clients` page that starts after `cursor`: the rows of the clients whose id is greater than `cursor`,
    /// in ascending id order, as many as fit in `limit` bytes. An empty array (`[]`) means no client follows
    /// `cursor`: the listing is complete. `order` holds the ids of `sessions`.
    /// - Complexity: O(log n + the page's rows): the ids are kept sorted (`SortedClientIDs`).
    static func clientsPage(
        _ sessions: [UInt32: Session], order: SortedClientIDs, after cursor: UInt32, limit: Int,
        row: (Session) -> AdminDocument.Client
    ) -> [UInt8] {
        arrayPage(order.after(cursor).lazy.compactMap { sessions[$0] }.map(row), limit: limit).body
    }

    /// The `verify` document in at most `limit` bytes: when its violations do not all fit, the first ones are
    /// kept and `violationsOmitted` counts the rest (the summary still counts them all).
    /// - Complexity: O(document size × log(violations)) when cut, else one encoding.
    static func verifyBody(_ report: AdminDocument.Verify, limit: Int) -> [UInt8] {
        let encoder = encoder()
        func body(keeping kept: Int) -> [UInt8] {
            var cut = report
            cut.violations = Array(report.violations.prefix(kept))
            cut.violationsOmitted = report.violations.count - kept
            return encode(cut, with: encoder)
        }
        let whole = body(keeping: report.violations.count)
        guard whole.count > limit else { return whole }
        // Invariant: keeping `low` violations fits (0 does: the rest of the document is small and bounded),
        // keeping `high` does not.
        var low = 0
        var high = report.violations.count
        while high - low > 1 {
            let middle = low + (high - low) / 2
            if body(keeping: middle).count <= limit { low = middle } else { high = middle }
        }
        return body(keeping: low)
    }
}
