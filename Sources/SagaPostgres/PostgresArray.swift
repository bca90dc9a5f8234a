import Foundation

/// A one-dimensional array bind parameter, for `$1::text[]`, `$1::bigint[]`, `$1::uuid[]` (e.g.
/// `WHERE id = ANY($1::bigint[])`). It travels in PostgreSQL's binary array format, typed `text[]`, `bigint[]` or
/// `uuid[]` by its elements (a cast in the SQL converts it, e.g. strings to `$1::uuid[]`), or `bytea[]`
/// (``init(bytes:)``), so the server neither parses an array literal nor the elements' text, and no value needs
/// quoting, escaping or hex digits.
public struct PostgresArray: PostgresEncodable, Hashable {
    /// The array in `array_send`'s format: dimensions, element type, then each element's length and bytes.
    let binary: [UInt8]
    /// The OID of the array's type (`text[]`, `bigint[]`, `uuid[]`, `bytea[]`), with which it is bound.
    let typeOID: UInt32
    /// The array literal of integers too large for `bigint`, sent as text: the server refuses them as it would
    /// refuse them in a `bigint[]` (or takes them, for a `numeric[]`).
    private let literal: String?

    private static let textOID: UInt32 = 25
    private static let int8OID: UInt32 = 20
    private static let uuidOID: UInt32 = 2950
    private static let byteaOID: UInt32 = 17

    /// An array of strings (`$1::text[]`).
    public init<Values: Collection<String>>(_ values: Values) {
        var bytes = Self.header(count: values.count, element: Self.textOID)
        bytes.reserveCapacity(values.reduce(bytes.count) { $0 + 4 + $1.utf8.count })
        for var value in values {
            value.withUTF8 { utf8 in
                Self.append(Int32(utf8.count), to: &bytes)
                bytes.append(contentsOf: utf8)
            }
        }
        binary = bytes
        typeOID = 1009
        literal = nil
    }

    /// An array of integers (`$1::bigint[]`, `$1::int[]`).
    public init<T: BinaryInteger>(_ values: [T]) {
        var bytes = Self.header(count: values.count, element: Self.int8OID)
        bytes.reserveCapacity(bytes.count + 12 * values.count)
        for value in values {
            guard let value = Int64(exactly: value) else {
                binary = []
                typeOID = 0
                literal = "{" + values.map { String($0) }.joined(separator: ",") + "}"
                return
            }
            Self.append(Int32(8), to: &bytes)
            Self.append(UInt64(bitPattern: value), to: &bytes)
        }
        binary = bytes
        typeOID = 1016
        literal = nil
    }

    /// An array of UUIDs (`$1::uuid[]`).
    public init(_ values: [UUID]) {
        var bytes = Self.header(count: values.count, element: Self.uuidOID)
        bytes.reserveCapacity(bytes.count + 20 * values.count)
        for value in values {
            Self.append(Int32(16), to: &bytes)
            withUnsafeBytes(of: value.uuid) { bytes.append(contentsOf: $0) }
        }
        binary = bytes
        typeOID = 2951
        literal = nil
    }

    /// An array of byte strings, `nil` for NULL (`$1::bytea[]`).
    public init(bytes values: [[UInt8]?]) {
        var bytes = Self.header(count: values.count, element: Self.byteaOID, nulls: values.contains(nil))
        bytes.reserveCapacity(values.reduce(bytes.count) { $0 + 4 + ($1?.count ?? 0) })
        for value in values {
            guard let value else {
                Self.append(Int32(-1), to: &bytes)
                continue
            }
            Self.append(Int32(value.count), to: &bytes)
            bytes.append(contentsOf: value)
        }
        binary = bytes
        typeOID = 1001
        literal = nil
    }

    /// The array as a literal (`{"a","b"}`, `{1,2}`, `{…uuid…}`): what it would be as a text parameter.
    public var postgresText: String {
        if let literal { return literal }
        var elements: [String] = []
        let element = Self.uint32(binary, at: 8)
        var offset = Self.uint32(binary, at: 0) == 0 ? 12 : 20
        while offset < binary.count {
            let length = Int(Int32(bitPattern: Self.uint32(binary, at: offset)))
            guard length >= 0 else {
                elements.append("NULL")
                offset += 4
                continue
            }
            let bytes = binary[(offset + 4)..<(offset + 4 + length)]
            offset += 4 + length
            switch element {
            case Self.byteaOID:
                elements.append(
                    "\"" + ByteaHex.encode(Array(bytes)).replacingOccurrences(of: "\\", with: "\\\\") + "\"")
            case Self.int8OID:
                elements.append(String(Int64(bitPattern: bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case Self.uuidOID:
                let uuid = bytes.withUnsafeBytes { UUID(uuid: $0.loadUnaligned(as: uuid_t.self)) }
                elements.append(uuid.lowercasedString)
            default:
                var quoted = "\""
                for character in String(decoding: bytes, as: UTF8.self) {
                    if character == "\"" || character == "\\" { quoted.append("\\") }
                    quoted.append(character)
                }
                elements.append(quoted + "\"")
            }
        }
        return "{" + elements.joined(separator: ",") + "}"
    }

    /// Dimensions (none for an empty array, else one, from 1), whether it holds NULLs, and the element type.
    private static func header(count: Int, element: UInt32, nulls: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        append(UInt32(count == 0 ? 0 : 1), to: &bytes)
        append(UInt32(nulls ? 1 : 0), to: &bytes)
        append(element, to: &bytes)
        if count > 0 {
            append(Int32(clamping: count), to: &bytes)
            append(Int32(1), to: &bytes)
        }
        return bytes
    }

    private static func append<I: FixedWidthInteger>(_ value: I, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    private static func uint32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes[offset..<(offset + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }
}

extension PostgresArray {
    /// How the connection binds it: the binary array and its type, or (integers beyond `bigint`) the literal as text.
    var bind: (bytes: [UInt8], typeOID: UInt32)? { literal == nil ? (binary, typeOID) : nil }
}
