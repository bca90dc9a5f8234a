import Foundation

/// A Swift value that can be read from PostgreSQL's binary output format, for the rows of a query that asks for
/// binary results (``PostgresConnection/query(_:_:binaryResults:)``): no hex digits for `bytea`, no number or
/// UUID text to parse.
///
/// Conforming types and the column types they read: `String` (`text`, `varchar`, `name`), `[UInt8]` and `Data`
/// (`bytea`), `Int` (`smallint`, `integer`, `bigint`), `Int64` (`bigint`), `Int32` (`integer`), `Int16`
/// (`smallint`), `Double` (`double precision`, `real`), `Bool` (`boolean`), `UUID` (`uuid`). Anything else (a
/// `timestamptz`, `jsonb`, `numeric`) is best cast to `text` in the query and read as a `String`.
public protocol PostgresBinaryDecodable: PostgresDecodable {
    /// The value from its binary form.
    /// - Throws: `.decoding` when `bytes` are not this type's binary form (e.g. the wrong length).
    init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError)
}

extension PostgresError {
    static func binaryDecoding(_ type: Any.Type, _ bytes: ArraySlice<UInt8>) -> PostgresError {
        PostgresError(
            kind: .decoding, message: "cannot read \(type) from \(bytes.count) bytes of PostgreSQL's binary format")
    }
}

/// The big-endian integer of `bytes` (which are 2, 4 or 8 long), sign-extended.
private func bigEndianInteger(_ bytes: ArraySlice<UInt8>) -> Int64 {
    let unsigned = bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    let shift = UInt64(64 - 8 * bytes.count)
    return Int64(bitPattern: unsigned << shift) >> shift
}

extension String: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) { self = String(decoding: bytes, as: UTF8.self) }
}

extension Array: PostgresBinaryDecodable where Element == UInt8 {
    public init(postgresBinary bytes: ArraySlice<UInt8>) { self = Array(bytes) }
}

extension Data: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) { self = Data(bytes) }
}

extension Int: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard [2, 4, 8].contains(bytes.count) else { throw .binaryDecoding(Int.self, bytes) }
        self = Int(bigEndianInteger(bytes))
    }
}

extension Int64: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard [2, 4, 8].contains(bytes.count) else { throw .binaryDecoding(Int64.self, bytes) }
        self = bigEndianInteger(bytes)
    }
}

extension Int32: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard [2, 4].contains(bytes.count) else { throw .binaryDecoding(Int32.self, bytes) }
        self = Int32(bigEndianInteger(bytes))
    }
}

extension Int16: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard bytes.count == 2 else { throw .binaryDecoding(Int16.self, bytes) }
        self = Int16(bigEndianInteger(bytes))
    }
}

extension Double: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        switch bytes.count {
        case 8: self = Double(bitPattern: UInt64(bitPattern: bigEndianInteger(bytes)))
        case 4: self = Double(Float(bitPattern: UInt32(truncatingIfNeeded: bigEndianInteger(bytes))))
        default: throw .binaryDecoding(Double.self, bytes)
        }
    }
}

extension Bool: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard bytes.count == 1 else { throw .binaryDecoding(Bool.self, bytes) }
        self = bytes.first != 0
    }
}

extension UUID: PostgresBinaryDecodable {
    public init(postgresBinary bytes: ArraySlice<UInt8>) throws(PostgresError) {
        guard bytes.count == 16 else { throw .binaryDecoding(UUID.self, bytes) }
        self = Array(bytes).withUnsafeBytes { UUID(uuid: $0.loadUnaligned(as: uuid_t.self)) }
    }
}
