import JSONSchema
import Testing

private func parse(_ text: String) throws(JSONSchemaError) -> JSONValue {
    try JSONValue(parsing: Array(text.utf8))
}

private func rejects(_ text: String) -> Bool {
    do {
        _ = try parse(text)
        return false
    } catch {
        return true
    }
}

@Suite struct JSONValueTests {
    @Test func parsesScalars() throws {
        #expect(try parse("null") == .null)
        #expect(try parse(" true ") == .bool(true))
        #expect(try parse("false") == .bool(false))
        #expect(try parse("\"a\\n\\u00e9\\ud83d\\ude00\\/\"") == .string("a\né😀/"))
        #expect(try parse("\"héllo\"") == .string("héllo"))
    }

    @Test func distinguishesIntegersFromOtherNumbers() throws {
        #expect(try parse("42") == .integer(42))
        #expect(try parse("-0") == .integer(0))
        #expect(try parse("-9223372036854775808") == .integer(Int64.min))
        #expect(try parse("2.0") == .number(2.0))
        #expect(try parse("1e2") == .number(100))
        #expect(try parse("-1.5E-3") == .number(-0.0015))
        // Too large for Int64: kept as a Double rather than rejected.
        #expect(try parse("9223372036854775808") == .number(9_223_372_036_854_775_808.0))
    }

    @Test func parsesContainers() throws {
        let value = try parse(#" { "b" : [1, 2.5, "x", null, {}], "a": {"c": []} } "#)
        #expect(
            value
                == .object([
                    "b": .array([.integer(1), .number(2.5), .string("x"), .null, .object([:])]),
                    "a": .object(["c": .array([])]),
                ]))
    }

    @Test func rejectsMalformedJSON() {
        for bad in [
            "", " ", "nul", "tru", "[1,]", "[1 2]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "01", "1.", ".5", "-", "1e",
            "+1", "NaN", "Infinity", "1e400", "\"abc", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\u12\"",
            "\"tab\there\"", "[1] [2]", "{\"a\":1,\"a\":2}", "'a'", "[", "{", "\u{FEFF}1",
        ] {
            #expect(rejects(bad), "should reject \(bad.debugDescription)")
        }
        #expect(throws: JSONSchemaError.self) { try JSONValue(parsing: [0x22, 0xFF, 0x22]) }  // invalid UTF-8
    }

    /// Strings without an escape are taken from the input as they are; an escape anywhere (first, after plain
    /// text, last) switches to decoding byte by byte, keeping what came before it.
    @Test func stringsWithAndWithoutEscapesDecode() throws {
        let cases: [(String, String)] = [
            (#""plain""#, "plain"), (#""""#, ""), (#""Grüße 日本 🌍""#, "Grüße 日本 🌍"),
            (#""a \"quoted\" word""#, #"a "quoted" word"#), (#""\\start""#, #"\start"#), (#""end\n""#, "end\n"),
            (#""caf\u00e9 \ud83c\udf0d ok""#, "café 🌍 ok"), (#""tab\tand/slash\/""#, "tab\tand/slash/"),
        ]
        for (json, expected) in cases {
            #expect(try parse(json) == .string(expected), "\(json)")
        }
        #expect(throws: JSONSchemaError.self) { try JSONValue(parsing: Array("\"ok\u{01}\"".utf8)) }  // control char
        #expect(throws: JSONSchemaError.self) { try JSONValue(parsing: [0x22, 0x61, 0xC3, 0x22]) }  // cut UTF-8
        #expect(throws: JSONSchemaError.self) { try JSONValue(parsing: [0x22, 0x61, 0x5C, 0x6E, 0xFF, 0x22]) }
    }

    @Test func rejectsExcessiveNesting() throws {
        #expect(rejects(String(repeating: "[", count: 600) + String(repeating: "]", count: 600)))
        _ = try parse(String(repeating: "[", count: 500) + String(repeating: "]", count: 500))
    }

    @Test func errorMessageNamesTheOffset() {
        do {
            _ = try parse("[1, x]")
            Issue.record("parsed invalid JSON")
        } catch {
            #expect(error.message.contains("byte 4"), "\(error.message)")
            #expect(error.description == error.message)
        }
    }

    @Test func serializesCompactlyWithSortedKeys() throws {
        let value = try parse(#"{ "z": 1, "a": [true, null, 2.5, -3], "m": "q\"\\\n\u0001é" }"#)
        let text = String(decoding: value.serialized(), as: UTF8.self)
        #expect(text == #"{"a":[true,null,2.5,-3],"m":"q\"\\\n\u0001é","z":1}"#)
        #expect(try JSONValue(parsing: value.serialized()) == value)
    }

    /// Plain runs are copied whole between escapes: escapes first, last, next to each other, or none at all.
    @Test func serializesStringsWithEscapesAnywhere() throws {
        let cases: [(String, String)] = [
            ("", #""""#), ("plain text, no escape at all", #""plain text, no escape at all""#),
            ("\"first", #""\"first""#), ("last\\", #""last\\""#), ("\t\n\r", #""\t\n\r""#),
            ("a\u{1F}b\u{0}c\u{8}\u{C}", #""a\u001fb\u0000c\b\f""#), ("é \"🌍\" ok", #""é \"🌍\" ok""#),
        ]
        for (string, json) in cases {
            #expect(String(decoding: JSONValue.string(string).serialized(), as: UTF8.self) == json)
            #expect(try JSONValue(parsing: Array(json.utf8)) == .string(string))
        }
    }

    @Test func serializationIsIndependentOfInsertionOrder() {
        var a: [String: JSONValue] = [:]
        a["x"] = .integer(1)
        a["b"] = .integer(2)
        var b: [String: JSONValue] = [:]
        b["b"] = .integer(2)
        b["x"] = .integer(1)
        #expect(JSONValue.object(a).serialized() == JSONValue.object(b).serialized())
        #expect(JSONValue.number(.infinity).serialized() == Array("null".utf8))
    }
}
