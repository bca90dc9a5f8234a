import SagaPostgres

/// A `text[]` bind parameter built byte by byte: the same array literal as `PostgresArray([String])`,
/// without its per-element string replacing, which costs more than the statement for the outbox's payloads.
struct TextArray: PostgresEncodable {
    let postgresText: String

    init<S: Sequence>(_ values: S) where S.Element == String {
        var bytes: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        for value in values {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            bytes.append(UInt8(ascii: "\""))
            for b in value.utf8 {
                if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { bytes.append(UInt8(ascii: "\\")) }
                bytes.append(b)
            }
            bytes.append(UInt8(ascii: "\""))
        }
        bytes.append(UInt8(ascii: "}"))
        postgresText = String(decoding: bytes, as: UTF8.self)
    }
}
