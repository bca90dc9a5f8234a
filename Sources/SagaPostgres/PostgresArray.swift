import Foundation

/// A one-dimensional array bind parameter, for `$1::text[]`, `$1::bigint[]`, `$1::uuid[]` (e.g.
/// `WHERE id = ANY($1::bigint[])`). It travels in PostgreSQL's binary array format, typed `text[]`, `bigint[]` or
/// `uuid[]` by its elements (a cast in the SQL converts it, e.g. strings to `$1::uuid[]`), or `bytea[]`
/// (``init(bytes:)``), so the server neither parses an array literal nor the elements' text, and no value needs
/// quoting, escaping or hex digits.
public struct PostgresArray: PostgresEncodable, Hashable {
    /// How the connection binds it.
    enum Form: Hashable {
        /// In `array_send`'s format (dimensions, element type, then each element's length and bytes), bound as
        /// the array type `typeOID` (`text[]`, `bigint[]`, `uuid[]`, `bytea[]`).
        case binary(bytes: [UInt8], typeOID: UInt32)
        /// The array literal of integers too large for `bigint`, sent as text: the server refuses them as it would
        /// refuse them in a `bigint[]` (or takes them, for a `numeric[]`).
        case literal(String)
    }

    let form: Form

    private static let textArray: UInt32 = 1009
    private static let int8Array: UInt32 = 1016
    private static let uuidArray: UInt32 = 2951
    private static let byteaArray: UInt32 = 1001

    /// An array of strings (`$1::text[]`).
    public init<Values: Collection<String>>(_ values: Values) {
        var bytes = Self.header(count: values.count, element: 25)
        bytes.reserveCapacity(values.reduce(bytes.count) { $0 + 4 + $1.utf8.count })
        for var value in values {
            value.withUTF8 { utf8 in
                Self.append(Int32(utf8.count), to: &bytes)
                bytes.append(contentsOf: utf8)
            }
        }
        form = .binary(bytes: bytes, typeOID: Self.textArray)
    }

    /// An array of integers (`$1::bigint[]`, `$1::int[]`).
    public init<T: BinaryInteger>(_ values: [T]) {
        var bytes = Self.header(count: values.count, element: 20)
        bytes.reserveCapacity(bytes.count + 12 * values.count)
        for value in values {
            guard let value = Int64(exactly: value) else {
                form = .literal("{" + values.map { String($0) }.joined(separator: ",") + "}")
                return
            }
            Self.append(Int32(8), to: &bytes)
            Self.append(value, to: &bytes)
        }
        form = .binary(bytes: bytes, typeOID: Self.int8Array)
    }

    /// An array of UUIDs (`$1::uuid[]`).
    public init(_ values: [UUID]) {
        var bytes = Self.header(count: values.count, element: 2950)
        bytes.reserveCapacity(bytes.count + 20 * values.count)
        for value in values {
            Self.append(Int32(16), to: &bytes)
            withUnsafeBytes(of: value.uuid) { bytes.append(contentsOf: $0) }
        }
        form = .binary(bytes: bytes, typeOID: Self.uuidArray)
    }

    /// An array of byte strings, `nil` for NULL (`$1::bytea[]`).
    public init(bytes values: [[UInt8]?]) {
        var bytes = Self.header(count: values.count, element: 17, nulls: values.contains(nil))
        bytes.reserveCapacity(values.reduce(bytes.count) { $0 + 4 + ($1?.count ?? 0) })
        for value in values {
            guard let value else {
                Self.append(Int32(-1), to: &bytes)
                continue
            }
            Self.append(Int32(value.count), to: &bytes)
            bytes.append(contentsOf: value)
        }
        form = .binary(bytes: bytes, typeOID: Self.byteaArray)
    }

    /// The array as a literal (`{"a","b"}`, `{1,2}`, `{…uuid…}`): what it would be as a text parameter.
    public var postgresText: String {
        let (binary, typeOID): ([UInt8], UInt32)
        switch form {
        case .literal(let literal): return literal
        case .binary(let bytes, let type): (binary, typeOID) = (bytes, type)
        }
        // Our own encoding: every length is right, so the binary decoders cannot fail.
        func int32(at offset: Int) -> Int { Int(try! Int32(postgresBinary: binary[offset..<(offset + 4)])) }
        var elements: [String] = []
        var offset = int32(at: 0) == 0 ? 12 : 20  // the header, with one dimension's length and lower bound
        while offset < binary.count {
            let length = int32(at: offset)
            offset += 4
            guard length >= 0 else {
                elements.append("NULL")
                continue
            }
            let bytes = binary[offset..<(offset + length)]
            offset += length
            switch typeOID {
            case Self.byteaArray: elements.append("\"\\" + ByteaHex.encode(Array(bytes)) + "\"")
            case Self.int8Array: elements.append(String(try! Int64(postgresBinary: bytes)))
            case Self.uuidArray: elements.append((try! UUID(postgresBinary: bytes)).lowercasedString)
            default:
                var quoted = "\""
                for character in String(postgresBinary: bytes) {
                    if character == "\"" || character == "\\" { quoted.append("\\") }
                    quoted.append(character)
                }
                elements.append(quoted + "\"")
            }
        }
        return "{" + elements.joined(separator: ",") + "}"
    }

    /// Dimensions (none for an empty array, else one, from 1), whether it holds NULLs, and the element type's OID.
    private static func header(count: Int, element: UInt32, nulls: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        append(Int32(count == 0 ? 0 : 1), to: &bytes)
        append(Int32(nulls ? 1 : 0), to: &bytes)
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
}
