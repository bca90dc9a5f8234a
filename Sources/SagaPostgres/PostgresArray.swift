import Foundation

/// A one-dimensional array bind parameter in PostgreSQL's array literal syntax, for `$1::text[]`,
/// `$1::bigint[]`, `$1::uuid[]` (e.g. `WHERE id = ANY($1::bigint[])`). Strings are quoted and escaped,
/// so any value is safe.
public struct PostgresArray: PostgresEncodable, Hashable {
    public let postgresText: String

    /// An array of strings, each quoted and escaped (`$1::text[]`).
    public init(_ values: [String]) {
        // Byte by byte: Foundation's `replacingOccurrences` (through NSString) cost ~7 % of `saga dev`'s CPU in
        // the closed loop, for arrays of ids that hardly ever hold a quote or a backslash.
        let quote = UInt8(ascii: "\"")
        let backslash = UInt8(ascii: "\\")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.reduce(2) { $0 + $1.utf8.count + 3 })
        bytes.append(UInt8(ascii: "{"))
        for (index, value) in values.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(quote)
            for byte in value.utf8 {
                if byte == quote || byte == backslash { bytes.append(backslash) }
                bytes.append(byte)
            }
            bytes.append(quote)
        }
        bytes.append(UInt8(ascii: "}"))
        postgresText = String(decoding: bytes, as: UTF8.self)
    }

    /// An array of integers (`$1::bigint[]`, `$1::int[]`).
    public init<T: BinaryInteger>(_ values: [T]) {
        postgresText = "{" + values.map { String($0) }.joined(separator: ",") + "}"
    }

    /// An array of UUIDs in their lowercase form (`$1::uuid[]`).
    public init(_ values: [UUID]) {
        postgresText = "{" + values.map { $0.lowercasedString }.joined(separator: ",") + "}"
    }
}
