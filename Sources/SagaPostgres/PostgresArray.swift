import Foundation

/// A one-dimensional array bind parameter in PostgreSQL's array literal syntax, for `$1::text[]`,
/// `$1::bigint[]`, `$1::uuid[]` (e.g. `WHERE id = ANY($1::bigint[])`). Strings are quoted and escaped,
/// so any value is safe.
public struct PostgresArray: PostgresEncodable, Hashable {
    public let postgresText: String

    /// An array of strings, each quoted and escaped (`$1::text[]`).
    public init<Values: Collection<String>>(_ values: Values) {
        // The runs between a quote or a backslash are copied whole: the values (ids, types, hex payloads) hardly
        // ever hold one. (Foundation's `replacingOccurrences`, through NSString, was ~7 % of `saga dev`'s CPU.)
        let quote = UInt8(ascii: "\"")
        let backslash = UInt8(ascii: "\\")
        var bytes: [UInt8] = [UInt8(ascii: "{")]
        bytes.reserveCapacity(values.reduce(2) { $0 + $1.utf8.count + 3 })
        for var value in values {
            if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(quote)
            value.withUTF8 { utf8 in
                var run = 0  // start of the bytes not yet copied
                for i in 0..<utf8.count where utf8[i] == quote || utf8[i] == backslash {
                    bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<i]))
                    bytes.append(backslash)
                    run = i
                }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run...]))
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
