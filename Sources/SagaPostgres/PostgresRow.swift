/// One row of a query result, with every value in PostgreSQL's text format, or in its binary format for a query
/// that asked for binary results (``PostgresConnection/query(_:_:binaryResults:)``).
public struct PostgresRow: Sendable {
    /// Column names in result order.
    public let columns: [String]
    let values: Values
    let index: [String: Int]

    enum Values: Sendable {
        case text([String?])
        case binary([ArraySlice<UInt8>?])
    }

    /// The raw text of `column`, or `nil` when the value is NULL or there is no such column. In a row of binary
    /// results, the value's bytes read as UTF-8 (the text of a `text` column).
    public subscript(column: String) -> String? {
        guard let position = index[column] else { return nil }
        switch values {
        case .text(let texts): return texts[position]
        case .binary(let values): return values[position].map { String(decoding: $0, as: UTF8.self) }
        }
    }

    /// Whether `column` is NULL (also `true` when there is no such column).
    public func isNull(_ column: String) -> Bool {
        guard let position = index[column] else { return true }
        switch values {
        case .text(let texts): return texts[position] == nil
        case .binary(let values): return values[position] == nil
        }
    }

    /// Decodes a non-NULL value.
    /// - Throws: `.decoding` when the column does not exist, is NULL, or does not parse as `T` (in a row of binary
    ///   results: when `T` is not ``PostgresBinaryDecodable``, or the bytes are not its binary form).
    public func decode<T: PostgresDecodable>(_ column: String, as: T.Type = T.self) throws(PostgresError) -> T {
        guard let value = try decodeIfPresent(column, as: T.self) else {
            throw PostgresError(
                kind: .decoding, message: "column \"\(column)\" is NULL; decode it as \(T.self)? instead")
        }
        return value
    }

    /// Decodes a value that may be NULL.
    /// - Throws: `.decoding` when the column does not exist or a non-NULL value does not parse as `T`.
    public func decode<T: PostgresDecodable>(_ column: String, as: T?.Type) throws(PostgresError) -> T? {
        try decodeIfPresent(column, as: T.self)
    }

    private func decodeIfPresent<T: PostgresDecodable>(_ column: String, as: T.Type) throws(PostgresError) -> T? {
        guard let position = index[column] else {
            throw PostgresError(
                kind: .decoding,
                message: "no column \"\(column)\" in the row (columns: \(columns.joined(separator: ", ")))")
        }
        do throws(PostgresError) {
            switch values {
            case .text(let texts):
                return try texts[position].map { (text) throws(PostgresError) in try T(postgresText: text) }
            case .binary(let values):
                guard let bytes = values[position] else { return nil }
                guard let binary = T.self as? any PostgresBinaryDecodable.Type else {
                    throw PostgresError(
                        kind: .decoding, message: "\(T.self) cannot be read from PostgreSQL's binary format")
                }
                return try binary.init(postgresBinary: bytes) as? T
            }
        } catch {
            throw PostgresError(kind: .decoding, message: "column \"\(column)\": \(error.message)")
        }
    }
}
