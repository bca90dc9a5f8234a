import Foundation

/// A one-dimensional array bind parameter in PostgreSQL's array literal syntax, for `$1::text[]`,
/// `$1::bigint[]`, `$1::uuid[]` (e.g. `WHERE id = ANY($1::bigint[])`). Strings are quoted and escaped,
/// so any value is safe.
public struct PostgresArray: PostgresEncodable, Hashable {
    public let postgresText: String

    public init(_ values: [String]) {
        postgresText =
            "{"
            + values.map {
                "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                    + "\""
            }.joined(separator: ",") + "}"
    }

    public init<T: BinaryInteger>(_ values: [T]) {
        postgresText = "{" + values.map { String($0) }.joined(separator: ",") + "}"
    }

    public init(_ values: [UUID]) {
        postgresText = "{" + values.map { $0.uuidString.lowercased() }.joined(separator: ",") + "}"
    }
}
