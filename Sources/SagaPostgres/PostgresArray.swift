import Foundation

/// A one-dimensional array bind parameter in PostgreSQL's array literal syntax, for `$1::text[]`,
/// `$1::bigint[]`, `$1::uuid[]` (e.g. `WHERE id = ANY($1::bigint[])`). Strings are quoted and escaped,
/// so any value is safe.
public struct PostgresArray: PostgresEncodable, Hashable {
    public let postgresText: String

    /// An array of strings, each quoted and escaped (`$1::text[]`).
    public init(_ values: [String]) {
        postgresText =
            "{"
            + values.map {
                "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                    + "\""
            }.joined(separator: ",") + "}"
    }

    /// An array of integers (`$1::bigint[]`, `$1::int[]`).
    public init<T: BinaryInteger>(_ values: [T]) {
        postgresText = "{" + values.map { String($0) }.joined(separator: ",") + "}"
    }

    /// An array of UUIDs in their lowercase form (`$1::uuid[]`).
    public init(_ values: [UUID]) {
        postgresText = "{" + values.map { $0.uuidString.lowercased() }.joined(separator: ",") + "}"
    }
}
