import Foundation
import Testing

@testable import JSONSchema

private func schema(_ text: String) throws -> JSONSchema {
    try JSONSchema(bytes: Array(text.utf8))
}

private func violations(_ schemaText: String, _ instance: String) throws -> [JSONSchemaViolation] {
    try schema(schemaText).validate(try JSONValue(parsing: Array(instance.utf8)))
}

/// Asserts every `valid` instance passes and every `invalid` one yields exactly the given paths.
private func check(
    _ schemaText: String, valid: [String], invalid: [(String, [String])],
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let compiled = try schema(schemaText)
    for text in valid {
        let found = compiled.validate(try JSONValue(parsing: Array(text.utf8)))
        #expect(found.isEmpty, "\(text) should be valid: \(found)", sourceLocation: sourceLocation)
    }
    for (text, paths) in invalid {
        let found = compiled.validate(try JSONValue(parsing: Array(text.utf8)))
        #expect(found.map(\.path) == paths, "\(text): \(found)", sourceLocation: sourceLocation)
    }
}

/// The load error for a schema, or nil when it loads.
private func loadError(_ text: String) -> String? {
    do {
        _ = try schema(text)
        return nil
    } catch let error as JSONSchemaError {
        return error.message
    } catch {
        return "unexpected error \(error)"
    }
}

@Suite struct KeywordTests {
    @Test func type() throws {
        try check(#"{"type": "string"}"#, valid: [#""a""#], invalid: [("1", [""]), ("null", [""])])
        try check(
            #"{"type": "integer"}"#, valid: ["1", "-7", "2.0", "1e3"], invalid: [("2.5", [""]), (#""1""#, [""])])
        try check(#"{"type": "number"}"#, valid: ["1", "2.5"], invalid: [("true", [""])])
        try check(#"{"type": "boolean"}"#, valid: ["true", "false"], invalid: [("0", [""])])
        try check(#"{"type": "null"}"#, valid: ["null"], invalid: [("false", [""])])
        try check(#"{"type": "object"}"#, valid: ["{}"], invalid: [("[]", [""])])
        try check(#"{"type": "array"}"#, valid: ["[]"], invalid: [("{}", [""])])
        try check(#"{"type": ["string", "null"]}"#, valid: [#""x""#, "null"], invalid: [("3", [""])])
        let message = try violations(#"{"type": ["string", "null"]}"#, "3").first?.message
        #expect(message == "expected one of string, null, found integer")
    }

    @Test func propertiesRequiredAndAdditionalProperties() throws {
        let s = #"""
            {"type": "object", "properties": {"a": {"type": "integer"}, "b/c": {"type": "string"}},
             "required": ["a"], "additionalProperties": false}
            """#
        try check(
            s, valid: [#"{"a": 1}"#, #"{"a": 1, "b/c": "x"}"#],
            invalid: [
                (#"{}"#, [""]),
                (#"{"a": "1"}"#, ["/a"]),
                (#"{"a": 1, "b/c": 2}"#, ["/b~1c"]),
                (#"{"a": 1, "x~y": 2}"#, ["/x~0y"]),
                (#"{"b/c": 2, "z": 0}"#, ["", "/b~1c", "/z"]),
            ])
        // Without additionalProperties, unknown members are allowed; required ignores non-objects.
        try check(
            #"{"properties": {"a": {"type": "null"}}, "required": ["a"]}"#,
            valid: [#"{"a": null, "q": 1}"#, "7"], invalid: [(#"{"q": 1}"#, [""])])
        let missing = try violations(s, "{}")
        #expect(missing == [JSONSchemaViolation(path: "", message: #"missing required property "a""#)])
        #expect(missing[0].description == #"(root): missing required property "a""#)
    }

    @Test func itemsMinItemsMaxItems() throws {
        try check(
            #"{"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 2}"#,
            valid: ["[1]", "[1, 2]"],
            invalid: [("[]", [""]), ("[1, 2, 3]", [""]), ("[1, 0]", ["/1"]), (#"[0, "x"]"#, ["/0", "/1"])])
        try check(#"{"items": false}"#, valid: ["[]", "{}"], invalid: [("[1]", ["/0"])])
    }

    @Test func numericBounds() throws {
        try check(
            #"{"minimum": 0, "maximum": 10}"#, valid: ["0", "10", "5.5", "10.0", #""not a number""#],
            invalid: [("-1", [""]), ("11", [""]), ("10.01", [""]), ("-0.5", [""])])
        try check(
            #"{"exclusiveMinimum": 0}"#, valid: ["1", "0.001"], invalid: [("0", [""]), ("0.0", [""]), ("-3", [""])])
        try check(#"{"minimum": 0.5}"#, valid: ["1", "0.5"], invalid: [("0", [""])])
        // Exact comparison of large integers against a double bound.
        try check(#"{"maximum": 9007199254740992}"#, valid: ["9007199254740992"], invalid: [("9007199254740993", [""])])
        try check(
            #"{"maximum": 9007199254740992.0}"#, valid: ["9007199254740992"], invalid: [("9007199254740993", [""])])
    }

    @Test func stringLengthCountsUnicodeScalars() throws {
        try check(
            #"{"minLength": 2, "maxLength": 3}"#, valid: [#""ab""#, #""abc""#, #""é😀""#, "4"],
            invalid: [(#""a""#, [""]), (#""abcd""#, [""]), (#""""#, [""])])
        // "e" + combining acute accent: one grapheme, two scalars.
        try check(#"{"maxLength": 1}"#, valid: [#""😀""#], invalid: [(#""e\u0301""#, [""])])
    }

    @Test func patternIsUnanchoredSearch() throws {
        try check(#"{"pattern": "b+"}"#, valid: [#""abbc""#, #""b""#, "12"], invalid: [(#""ac""#, [""])])
        try check(
            #"{"pattern": "^[A-Z]{3}$"}"#, valid: [#""EUR""#],
            invalid: [(#""eur""#, [""]), (#""EURO""#, [""]), (#""XEUR""#, [""])])
        try check(#"{"pattern": "^😀+$"}"#, valid: [#""😀😀""#], invalid: [(#""😀x""#, [""])])
    }

    /// Patterns of ASCII classes and literals with counts, anchored at both ends, are matched without ICU, with the
    /// same answers as ICU's for random strings (strings ending in a line break aside: there ICU's `$` differs).
    @Test func simplePatternsMatchAsICUDoes() throws {
        let patterns = [
            "^[A-Z]{3}$", #"^[a-z]+\.[a-z]+$"#, "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", "^$", "^a$",
            #"^\d{2,4}$"#, "^[a-c]*[b-d]+c?$", "^x{0,}y{1,2}$", "^[-a]+[a-]$", #"^[\.\-]a\{$"#, "^[.$*]+z$",
            "^[a-z]+[a-z]$", "^a*a{2}$", "^ab?c*$", "^[A-Za-z0-9_]{1,8} [ -~]*$",
        ]
        let alphabet = Array("abcdxyzAZ09._-*${ \n\u{E9}")
        var generator = SystemRandomNumberGenerator()
        for source in patterns {
            let simple = try #require(SimplePattern(source), "\(source)")
            let regex = try NSRegularExpression(pattern: source)
            var samples = [
                "", "a", "EUR", "ab", "aa", "aaa", "12", "1234", "-a", "a-", ".a{", "ab.cd",
                "00-" + String(repeating: "a", count: 32) + "-" + String(repeating: "b", count: 16) + "-01",
            ]
            for _ in 0..<2_000 {
                samples.append(
                    String(
                        (0..<Int.random(in: 0...12, using: &generator)).map { _ in
                            alphabet.randomElement(using: &generator)!
                        }))
            }
            for sample in samples where !sample.hasSuffix("\n") {
                let icu = regex.firstMatch(in: sample, range: NSRange(location: 0, length: sample.utf16.count)) != nil
                #expect(simple.matches(sample) == icu, "\(source) on \(sample.debugDescription)")
            }
        }
    }

    /// Anything beyond that subset is left to ICU, with its meaning.
    @Test func otherPatternsAreLeftToICU() throws {
        for source in [
            "b+", "^a", "a$", "^a|b$", "^(ab)+$", "^[^a]$", "^.+$", #"^\w+$"#, "^a+?$", "^a{2}?$", "^😀+$", #"^a\$"#,
            "^[a$", "^a{2,1}$", "^[z-a]$",
        ] {
            #expect(SimplePattern(source) == nil, "\(source)")
        }
        try check(#"{"pattern": "^(ab)+$"}"#, valid: [#""abab""#], invalid: [(#""aba""#, [""])])
    }

    /// `$` is the end of the string, as in ECMA-262: a trailing line break does not match (ICU's `$` let it).
    @Test func dollarIsTheEndOfTheString() throws {
        try check(#"{"pattern": "^[A-Z]{3}$"}"#, valid: [#""EUR""#], invalid: [(#""EUR\n""#, [""])])
    }

    @Test func enumAndConst() throws {
        try check(
            #"{"enum": ["a", 1, null, [1, {"k": true}]]}"#,
            valid: [#""a""#, "1", "1.0", "null", #"[1.0, {"k": true}]"#],
            invalid: [(#""b""#, [""]), ("2", [""]), ("false", [""]), (#"[1, {"k": false}]"#, [""])])
        try check(
            #"{"const": {"x": 2}}"#, valid: [#"{"x": 2}"#, #"{"x": 2.0}"#],
            invalid: [(#"{"x": 3}"#, [""]), (#"{}"#, [""])])
        try check(#"{"const": null}"#, valid: ["null"], invalid: [("0", [""])])
        try check(#"{"const": false}"#, valid: ["false"], invalid: [("0", [""])])
    }

    @Test func uuidFormat() throws {
        try check(
            #"{"format": "uuid"}"#,
            valid: [#""123e4567-e89b-12d3-a456-426614174000""#, #""123E4567-E89B-12D3-A456-426614174000""#, "3"],
            invalid: [
                (#""123e4567e89b12d3a456426614174000""#, [""]),
                (#""123e4567-e89b-12d3-a456-42661417400""#, [""]),
                (#""123e4567-e89b-12d3-a456-4266141740000""#, [""]),
                (#""g23e4567-e89b-12d3-a456-426614174000""#, [""]),
                (#""{123e4567-e89b-12d3-a456-426614174000}""#, [""]),
                (#""""#, [""]),
            ])
    }

    @Test func dateTimeFormat() throws {
        try check(
            #"{"format": "date-time"}"#,
            valid: [
                #""2024-05-01T12:30:00Z""#, #""2024-05-01t12:30:00.123456z""#, #""2024-02-29T00:00:00+02:00""#,
                #""1998-12-31T23:59:60Z""#, #""1998-12-31T15:59:60-08:00""#, "0",
            ],
            invalid: [
                (#""2024-05-01""#, [""]), (#""2024-05-01 12:30:00Z""#, [""]), (#""2024-05-01T12:30:00""#, [""]),
                (#""2023-02-29T00:00:00Z""#, [""]), (#""2024-13-01T00:00:00Z""#, [""]),
                (#""2024-04-31T00:00:00Z""#, [""]),
                (#""2024-05-01T24:00:00Z""#, [""]), (#""2024-05-01T12:60:00Z""#, [""]),
                (#""2024-05-01T12:30:00.Z""#, [""]),
                (#""2024-05-01T12:30:60Z""#, [""]), (#""2024-05-01T12:30:00+0200""#, [""]),
                (#""2024-05-01T12:30:00Z ""#, [""]),
            ])
    }

    @Test func annotationsAreAccepted() throws {
        try check(
            #"""
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x:y/v1", "title": "T",
             "description": "D", "$comment": "C", "examples": [1, "two"], "type": "integer"}
            """#, valid: ["1"], invalid: [(#""two""#, [""])])
    }

    @Test func booleanSchemas() throws {
        try check("true", valid: ["1", "null", "{}"], invalid: [])
        try check("false", valid: [], invalid: [("1", [""])])
        try check(#"{"properties": {"a": false}}"#, valid: ["{}"], invalid: [(#"{"a": 1}"#, ["/a"])])
    }

    @Test func reportsAllViolationsWithNestedPaths() throws {
        let s = #"""
            {"type": "object", "additionalProperties": false, "required": ["data"],
             "properties": {"data": {"type": "object", "properties": {"lines": {"type": "array",
               "items": {"type": "object", "properties": {"quantity": {"type": "integer", "minimum": 1}}}}}}}}
            """#
        let found = try violations(
            s, #"{"data": {"lines": [{"quantity": 1}, {"quantity": 0}, {"quantity": "x"}]}, "x": 1}"#)
        #expect(found.map(\.path) == ["/data/lines/1/quantity", "/data/lines/2/quantity", "/x"])
        #expect(found[0].message == "0 is less than minimum 1")
        #expect(found[1].message == "expected integer, found string")
    }

    /// Members are checked in no particular order, and once more in key order where one is wrong: the report
    /// still lists them by key, with their keys escaped as JSON pointer tokens.
    @Test func reportsMembersInKeyOrder() throws {
        let keys = (0..<24).map { "k\($0)" } + ["a/b", "c~d"]
        let instance = "{" + keys.map { "\"\($0)\": {\"n\": \"x\"}" }.joined(separator: ", ") + ", \"ok\": {\"n\": 1}}"
        let properties = (keys + ["ok"]).map { "\"\($0)\": {\"properties\": {\"n\": {\"type\": \"integer\"}}}" }
        let found = try violations("{\"properties\": {" + properties.joined(separator: ", ") + "}}", instance)
        let expected = keys.sorted().map { "/" + $0.replacing("~", with: "~0").replacing("/", with: "~1") + "/n" }
        #expect(found.map(\.path) == expected)
    }
}

@Suite struct ReferenceTests {
    static let money = #"""
        {"$defs": {"Money": {"type": "object", "required": ["amount"], "additionalProperties": false,
                             "properties": {"amount": {"type": "integer", "minimum": 0}}},
                   "a~b/c": {"type": "string"}},
         "type": "object",
         "properties": {"total": {"$ref": "#/$defs/Money"}, "name": {"$ref": "#/$defs/a~0b~1c", "minLength": 2}}}
        """#

    @Test func resolvesLocalDefinitions() throws {
        try check(
            Self.money, valid: [#"{"total": {"amount": 3}, "name": "ok"}"#],
            invalid: [
                (#"{"total": {"amount": -3}}"#, ["/total/amount"]),
                (#"{"total": {}}"#, ["/total"]),
                (#"{"total": {"amount": 1, "x": 1}}"#, ["/total/x"]),
                (#"{"name": 5}"#, ["/name"]),
                (#"{"name": "a"}"#, ["/name"]),  // sibling keyword applies alongside $ref
            ])
    }

    @Test func recursiveDefinitionsTerminate() throws {
        let tree = #"""
            {"$ref": "#/$defs/Node",
             "$defs": {"Node": {"type": "object", "additionalProperties": false,
                                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}}
            """#
        try check(
            tree, valid: [#"{"children": [{"children": []}, {}]}"#],
            invalid: [(#"{"children": [{"children": [{"x": 1}]}]}"#, ["/children/0/children/0/x"])])
    }

    @Test func rejectsUnresolvableAndUnsupportedReferences() {
        #expect(loadError(##"{"$ref": "#/$defs/Nope"}"##)?.contains("unresolvable reference") == true)
        #expect(
            loadError(##"{"properties": {"a": {"$ref": "#/$defs/Nope"}}, "$defs": {}}"##)?
                .contains("schema at #/properties/a/$ref") == true)
        for ref in [
            "#", "other.json#/$defs/A", "#/definitions/A", "#/$defs/A/properties/b", "#/$defs/", "#/$defs/a~2",
            "#/$defs/a%20b",
        ] {
            let text = #"{"$defs": {"A": {}}, "$ref": "\#(ref)"}"#
            #expect(loadError(text)?.contains("only local references") == true, "\(ref)")
        }
    }

    @Test func rejectsReferenceCycles() {
        let cycle = ##"{"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}"##
        #expect(loadError(cycle)?.contains("reference cycle") == true)
        #expect(loadError(##"{"$defs": {"A": {"$ref": "#/$defs/A"}}}"##)?.contains("reference cycle") == true)
    }
}

@Suite struct SchemaLoadErrorTests {
    @Test func rejectsUnknownKeywords() {
        for keyword in [
            "patternProperties", "oneOf", "anyOf", "allOf", "not", "if", "prefixItems", "exclusiveMaximum",
            "uniqueItems", "multipleOf", "dependentRequired", "propertyNames", "typo",
        ] {
            let message = loadError(#"{"properties": {"a": {"\#(keyword)": 1}}}"#)
            #expect(message == "schema at #/properties/a/\(keyword): unsupported keyword \"\(keyword)\"", "\(keyword)")
        }
    }

    @Test func rejectsMalformedKeywordValues() {
        let cases: [(String, String)] = [
            (##"{"type": "str"}"##, "#/type"),
            (##"{"type": []}"##, "#/type"),
            (##"{"type": ["string", "string"]}"##, "#/type"),
            (##"{"type": 1}"##, "#/type"),
            (##"{"properties": []}"##, "#/properties"),
            (##"{"properties": {"a": 1}}"##, "#/properties/a"),
            (##"{"required": "a"}"##, "#/required"),
            (##"{"required": [1]}"##, "#/required"),
            (##"{"required": ["a", "a"]}"##, "#/required"),
            (##"{"additionalProperties": {}}"##, "#/additionalProperties"),
            (##"{"items": [{}]}"##, "#/items"),
            (##"{"items": {"type": "nope"}}"##, "#/items/type"),
            (##"{"minItems": -1}"##, "#/minItems"),
            (##"{"maxItems": 1.5}"##, "#/maxItems"),
            (##"{"minLength": "1"}"##, "#/minLength"),
            (##"{"maxLength": null}"##, "#/maxLength"),
            (##"{"minimum": "0"}"##, "#/minimum"),
            (##"{"maximum": true}"##, "#/maximum"),
            (##"{"exclusiveMinimum": []}"##, "#/exclusiveMinimum"),
            (##"{"pattern": "("}"##, "#/pattern"),
            (##"{"pattern": 1}"##, "#/pattern"),
            (##"{"enum": []}"##, "#/enum"),
            (##"{"enum": "a"}"##, "#/enum"),
            (##"{"format": "email"}"##, "#/format"),
            (##"{"format": 1}"##, "#/format"),
            (##"{"title": 1}"##, "#/title"),
            (##"{"description": []}"##, "#/description"),
            (##"{"$comment": null}"##, "#/$comment"),
            (##"{"examples": {}}"##, "#/examples"),
            (##"{"$schema": "http://json-schema.org/draft-07/schema#"}"##, "#/$schema"),
            (##"{"$id": 3}"##, "#/$id"),
            (##"{"$defs": []}"##, "#/$defs"),
            (##"{"$defs": {"A": 3}}"##, "#/$defs/A"),
            (##"{"$ref": 3}"##, "#/$ref"),
            (##"{"items": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}"##, "#/items/$schema"),
            (##"{"items": {"$id": "x"}}"##, "#/items/$id"),
            (##"{"items": {"$defs": {}}}"##, "#/items/$defs"),
            ("3", "#"),
            (#""string""#, "#"),
        ]
        for (text, pointer) in cases {
            let message = loadError(text)
            #expect(message?.hasPrefix("schema at \(pointer):") == true, "\(text) gave \(message ?? "no error")")
        }
    }

    @Test func rejectsInvalidJSONBytes() {
        #expect(loadError(#"{"type": "string",}"#)?.hasPrefix("invalid JSON at byte") == true)
    }
}
