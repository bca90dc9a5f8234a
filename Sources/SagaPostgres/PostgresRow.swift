/// One row of a query result, with every value in PostgreSQL's text format.
public struct PostgresRow: Sendable {
    /// Column names in result order.
    public let columns: [String]
    let values: [String?]
    let index: [String: Int]

    /// The raw text of `column`, or `nil` when the value is NULL or there is no such column.
    public subscript(column: String) -> String? {
        guard let position = index[column] else { return nil }
        return values[position]
    }

    /// Whether `column` is NULL (also `true` when there is no such column).
    public func isNull(_ column: String) -> Bool { self[column] == nil }

    /// Decodes a non-NULL value.
    /// - Throws: `.decoding` when the column does not exist, is NULL, or does not parse as `T`.
    public func decode<T: PostgresDecodable>(_ column: String, as: T.Type = T.self) throws(PostgresError) -> T {
        guard let text = try rawValue(column) else {
            throw PostgresError(
                kind: .decoding, message: "column \"\(column)\" is NULL; decode it as \(T.self)? instead")
        }
        return try decodeText(text, column: column)
    }

    /// Decodes a value that may be NULL.
    /// - Throws: `.decoding` when the column does not exist or a non-NULL value does not parse as `T`.
    public func decode<T: PostgresDecodable>(_ column: String, as: T?.Type) throws(PostgresError) -> T? {
        guard let text = try rawValue(column) else { return nil }
        return try decodeText(text, column: column) as T
    }

    private func rawValue(_ column: String) throws(PostgresError) -> String? {
        guard let position = index[column] else {
            throw PostgresError(
                kind: .decoding,
                message: "no column \"\(column)\" in the row (columns: \(columns.joined(separator: ", ")))")
        }
        return values[position]
    }

    private func decodeText<T: PostgresDecodable>(_ text: String, column: String) throws(PostgresError) -> T {
        do {
            return try T(postgresText: text)
        } catch {
            throw PostgresError(kind: .decoding, message: "column \"\(column)\": \(error.message)")
        }
    }
}
