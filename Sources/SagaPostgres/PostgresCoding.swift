import Foundation

/// A Swift value that can travel as a bind parameter.
///
/// Conforming types: `String`, `Int`, `Int16`, `Int32`, `Int64`, `Bool`, `Double`, `UUID`,
/// `Date` (ISO 8601, UTC, microseconds), `[UInt8]` / `Data` (bytea) and ``PostgresArray``. Values travel in
/// text format, except `[UInt8]` and `Data`, which the connection sends as binary bytea, and ``PostgresArray``,
/// sent as a binary array (`postgresText`, the hex form or the array literal, is what they would be as text).
/// A `nil` ``PostgresBind`` is sent as SQL NULL.
public protocol PostgresEncodable: Sendable {
    /// The value in PostgreSQL's text input format.
    var postgresText: String { get }
}

/// One bind parameter: `nil` is SQL NULL. `String?` and friends convert implicitly.
public typealias PostgresBind = (any PostgresEncodable)?

/// A Swift value that can be read from PostgreSQL's text output format.
///
/// The decoders assume the session settings every ``PostgresConnection`` makes at connect:
/// `TimeZone` UTC, `DateStyle` ISO, `bytea_output` hex (the server default).
public protocol PostgresDecodable: Sendable {
    /// Parses the server's text output; throws a `.decoding` error when the text does not fit.
    init(postgresText: String) throws(PostgresError)
}

extension PostgresError {
    static func decoding(_ type: Any.Type, _ text: String) -> PostgresError {
        // The value itself is not quoted: it may be customer data.
        PostgresError(kind: .decoding, message: "cannot decode a text value of \(text.utf8.count) bytes as \(type)")
    }
}

extension String: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { self }
    public init(postgresText: String) { self = postgresText }
}

extension Int: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int(postgresText) else { throw .decoding(Int.self, postgresText) }
        self = value
    }
}

extension Int16: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int16(postgresText) else { throw .decoding(Int16.self, postgresText) }
        self = value
    }
}

extension Int32: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int32(postgresText) else { throw .decoding(Int32.self, postgresText) }
        self = value
    }
}

extension Int64: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int64(postgresText) else { throw .decoding(Int64.self, postgresText) }
        self = value
    }
}

extension Bool: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { self ? "true" : "false" }
    public init(postgresText: String) throws(PostgresError) {
        switch postgresText {
        case "t", "true": self = true
        case "f", "false": self = false
        default: throw .decoding(Bool.self, postgresText)
        }
    }
}

extension Double: PostgresEncodable, PostgresDecodable {
    /// Shortest text that reads back as the same value; `inf`, `-inf` and `nan` are accepted by PostgreSQL.
    public var postgresText: String { description }
    public init(postgresText: String) throws(PostgresError) {
        switch postgresText {
        case "Infinity": self = .infinity
        case "-Infinity": self = -.infinity
        case "NaN": self = .nan
        default:
            guard let value = Double(postgresText) else { throw .decoding(Double.self, postgresText) }
            self = value
        }
    }
}

extension UUID: PostgresEncodable, PostgresDecodable {
    public var postgresText: String { lowercasedString }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = UUID(parsing: postgresText) else { throw .decoding(UUID.self, postgresText) }
        self = value
    }
}

extension Array: PostgresEncodable, PostgresDecodable where Element == UInt8 {
    /// bytea in hex format: `\x0aff...`.
    public var postgresText: String { ByteaHex.encode(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let bytes = ByteaHex.decode(postgresText) else { throw .decoding([UInt8].self, postgresText) }
        self = bytes
    }
}

extension Data: PostgresEncodable, PostgresDecodable {
    /// bytea in hex format: `\x0aff...`.
    public var postgresText: String { ByteaHex.encode(Array(self)) }
    public init(postgresText: String) throws(PostgresError) {
        guard let bytes = ByteaHex.decode(postgresText) else { throw .decoding(Data.self, postgresText) }
        self = Data(bytes)
    }
}

enum ByteaHex {
    private static let digits = Array("0123456789abcdef".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = [UInt8(ascii: "\\"), UInt8(ascii: "x")]
        out.reserveCapacity(2 + bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { utf8 -> [UInt8]? in
            guard utf8.count >= 2, utf8[0] == UInt8(ascii: "\\"), utf8[1] == UInt8(ascii: "x"), utf8.count % 2 == 0
            else { return nil }
            let count = (utf8.count - 2) / 2
            var valid = true
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                var index = 2
                for position in 0..<count {
                    guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else {
                        valid = false
                        break
                    }
                    buffer[position] = high << 4 | low
                    index += 2
                }
                initialized = valid ? count : 0
            }
            return valid ? bytes : nil
        }
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
