import Foundation

/// One way in which an instance fails a schema.
public struct JSONSchemaViolation: Sendable, Hashable, CustomStringConvertible {
    /// JSON pointer (RFC 6901) to the offending value in the instance, e.g.
    /// `"/lines/0/quantity"`; `""` is the root. For a missing required property it is
    /// the object that lacks it; for a disallowed additional property it is that property.
    public var path: String
    /// What is wrong, in English. Never quotes string contents (they may be personal data).
    public var message: String

    /// Creates a violation.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    /// `"<path>: <message>"`, with the root written as `(root)`.
    public var description: String { "\(path.isEmpty ? "(root)" : path): \(message)" }
}

/// A compiled JSON Schema restricted to a documented subset of draft 2020-12.
///
/// Loading fails (rather than silently ignoring) on any keyword outside the subset, so a
/// schema can never appear to constrain something it does not. The subset:
///
/// - Annotations (checked for shape, otherwise ignored): `title`, `description`,
///   `$comment` (strings), `examples` (array).
/// - Root only: `$schema` (must be `https://json-schema.org/draft/2020-12/schema`),
///   `$id` (string), `$defs` (object of schemas).
/// - `$ref`: only `#/$defs/<name>` (with `~0`/`~1` escapes), resolved against the root's
///   `$defs`; it applies alongside sibling keywords. Unresolvable references and cycles of
///   references that do not descend into the instance are load errors.
/// - `type`: one of `object`, `array`, `string`, `integer`, `number`, `boolean`, `null`,
///   or a non-empty array of distinct ones. `integer` accepts any number with a zero
///   fractional part (so `2.0` is an integer); `number` accepts integers.
/// - Objects: `properties`, `required` (distinct strings), `additionalProperties`
///   (boolean only; it looks at `properties` — there is no `patternProperties`).
/// - Arrays: `items` (a single schema, applied to every element), `minItems`, `maxItems`.
/// - Numbers: `minimum`, `maximum`, `exclusiveMinimum`, compared exactly between
///   integers and doubles.
/// - Strings: `minLength`, `maxLength` — counted in Unicode scalars (code points), not
///   grapheme clusters or UTF-16 units; `pattern` — an ICU regular expression
///   (`NSRegularExpression`, close to ECMA-262 for ordinary patterns) searched anywhere in
///   the string (unanchored, as the specification says: anchor with `^…$`). A pattern that is
///   `^`, ASCII classes and literals with counts, then `$` (as event schemas' are) is matched
///   without ICU, and there `$` is the string's end only, as in ECMA-262 (ICU's also matches
///   before a final line terminator).
/// - Any type: `enum` (non-empty array), `const`; numbers compare by value (`1 == 1.0`).
/// - `format`: `uuid` and `date-time` (RFC 3339) are asserted, not merely annotated;
///   any other format is a load error.
/// - Boolean schemas `true` and `false` are accepted wherever a schema is.
///
/// Keywords that do not apply to an instance's type are ignored for that instance, as in
/// the specification (`minLength` says nothing about a number).
public struct JSONSchema: Sendable {
    let root: SchemaNode
    let defs: [String: SchemaNode]

    /// Compiles a schema document.
    ///
    /// - Throws: ``JSONSchemaError`` naming the schema location (`#/…`) on an unsupported
    ///   keyword, a malformed keyword value, an invalid regular expression, an unsupported
    ///   `format`, or an unresolvable or cyclic `$ref`.
    public init(_ schema: JSONValue) throws(JSONSchemaError) {
        var compiler = SchemaCompiler()
        if case .object(let members) = schema, let defsValue = members["$defs"] {
            guard case .object(let defMembers) = defsValue else {
                throw SchemaCompiler.error("#/$defs", "$defs must be an object")
            }
            for name in defMembers.keys.sorted() {
                let defSchema = defMembers[name]!
                let pointer = "#/$defs/" + escapePointerToken(name)
                compiler.defs[name] = try compiler.compile(defSchema, at: pointer, isRoot: false)
            }
        }
        root = try compiler.compile(schema, at: "#", isRoot: true)
        defs = compiler.defs
        try compiler.checkReferences()
    }

    /// Parses `bytes` as strict JSON (see ``JSONValue/init(parsing:)``) and compiles it.
    public init(bytes: [UInt8]) throws(JSONSchemaError) {
        try self.init(try JSONValue(parsing: bytes))
    }

    /// Validates an instance and returns every violation found, or `[]` when it is valid.
    ///
    /// Violations are reported in a deterministic order (object members by key).
    public func validate(_ instance: JSONValue) -> [JSONSchemaViolation] {
        var violations: [JSONSchemaViolation] = []
        var path = PointerPath()
        validate(root, instance, path: &path, into: &violations)
        return violations
    }

    /// Appends the violations of `value` against `node` to `out`; `path` leads to `value` (and is as it was on
    /// return).
    private func validate(
        _ node: SchemaNode, _ value: JSONValue, path: inout PointerPath, into out: inout [JSONSchemaViolation]
    ) {
        if let boolean = node.boolean {
            if !boolean { out.append(JSONSchemaViolation(path: path.rendered, message: "no value is allowed here")) }
            return
        }
        let k = node.keywords
        if let ref = k.ref, let target = defs[ref] {
            validate(target, value, path: &path, into: &out)
        }
        if let types = k.types, !types.contains(where: { $0.matches(value) }) {
            let expected =
                types.count == 1 ? types[0].rawValue : "one of " + types.map(\.rawValue).joined(separator: ", ")
            out.append(
                JSONSchemaViolation(
                    path: path.rendered, message: "expected \(expected), found \(JSONType.describe(value))"))
        }
        if let allowed = k.enumValues, !allowed.contains(where: { jsonEqual($0, value) }) {
            let list = allowed.map { String(decoding: $0.serialized(), as: UTF8.self) }.joined(separator: ", ")
            out.append(JSONSchemaViolation(path: path.rendered, message: "value is not one of: \(list)"))
        }
        if let constant = k.constValue, !jsonEqual(constant, value) {
            out.append(
                JSONSchemaViolation(
                    path: path.rendered,
                    message: "value is not the constant \(String(decoding: constant.serialized(), as: UTF8.self))"))
        }
        switch value {
        case .object(let members):
            for name in k.required where members[name] == nil {
                out.append(JSONSchemaViolation(path: path.rendered, message: "missing required property \"\(name)\""))
            }
            func check(_ key: String, _ member: JSONValue) {
                path.tokens.append(.key(key))
                defer { path.tokens.removeLast() }
                if let propertySchema = k.properties[key] {
                    validate(propertySchema, member, path: &path, into: &out)
                } else if k.additionalProperties == false {
                    out.append(
                        JSONSchemaViolation(
                            path: path.rendered, message: "property is not allowed (additionalProperties is false)"))
                }
            }
            // In the dictionary's order, which is not deterministic, and only where something is wrong once more in
            // the key order: sorting the keys of every object took a tenth of validating a valid event.
            let before = out.count
            for (key, member) in members { check(key, member) }
            if out.count > before {
                out.removeSubrange(before...)
                for key in members.keys.sorted() { check(key, members[key]!) }
            }
        case .array(let items):
            if let minItems = k.minItems, items.count < minItems {
                out.append(
                    JSONSchemaViolation(
                        path: path.rendered, message: "array has \(items.count) items, fewer than minItems \(minItems)")
                )
            }
            if let maxItems = k.maxItems, items.count > maxItems {
                out.append(
                    JSONSchemaViolation(
                        path: path.rendered, message: "array has \(items.count) items, more than maxItems \(maxItems)"))
            }
            if let itemSchema = k.items {
                for (index, item) in items.enumerated() {
                    path.tokens.append(.index(index))
                    validate(itemSchema, item, path: &path, into: &out)
                    path.tokens.removeLast()
                }
            }
        case .string(let s):
            if k.minLength != nil || k.maxLength != nil {
                let length = s.unicodeScalars.count
                if let minLength = k.minLength, length < minLength {
                    out.append(
                        JSONSchemaViolation(
                            path: path.rendered,
                            message:
                                "string has \(length) characters (Unicode scalars), fewer than minLength \(minLength)"))
                }
                if let maxLength = k.maxLength, length > maxLength {
                    out.append(
                        JSONSchemaViolation(
                            path: path.rendered,
                            message:
                                "string has \(length) characters (Unicode scalars), more than maxLength \(maxLength)"))
                }
            }
            if let pattern = k.pattern, !pattern.matches(s) {
                out.append(
                    JSONSchemaViolation(path: path.rendered, message: "string does not match pattern \(pattern.source)")
                )
            }
            if let format = k.format, !format.accepts(s) {
                out.append(
                    JSONSchemaViolation(path: path.rendered, message: "string is not a valid \(format.rawValue)"))
            }
        case .integer, .number:
            let n = JSONNumber(value)!
            if let minimum = k.minimum, n.compare(to: minimum) < 0 {
                out.append(JSONSchemaViolation(path: path.rendered, message: "\(n) is less than minimum \(minimum)"))
            }
            if let exclusiveMinimum = k.exclusiveMinimum, n.compare(to: exclusiveMinimum) <= 0 {
                out.append(
                    JSONSchemaViolation(
                        path: path.rendered, message: "\(n) is not greater than exclusiveMinimum \(exclusiveMinimum)"))
            }
            if let maximum = k.maximum, n.compare(to: maximum) > 0 {
                out.append(JSONSchemaViolation(path: path.rendered, message: "\(n) is greater than maximum \(maximum)"))
            }
        case .null, .bool:
            break
        }
    }
}

/// Where a value sits in the instance being validated, as tokens: made into a JSON pointer only for a violation,
/// so that validating a valid instance builds no strings.
struct PointerPath {
    enum Token {
        case key(String)
        case index(Int)
    }
    var tokens: [Token] = []

    /// The JSON pointer (RFC 6901) of the path, "" for the root.
    var rendered: String {
        tokens.map {
            switch $0 {
            case .key(let key): "/" + escapePointerToken(key)
            case .index(let index): "/\(index)"
            }
        }.joined()
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901): `~` → `~0`, `/` → `~1`.
func escapePointerToken(_ token: String) -> String {
    // Most tokens need no escaping: skip the (slow) replacing then.
    guard token.utf8.contains(where: { $0 == UInt8(ascii: "~") || $0 == UInt8(ascii: "/") }) else { return token }
    return token.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
}

/// The seven JSON Schema type names.
enum JSONType: String, Sendable, CaseIterable {
    case object, array, string, integer, number, boolean, null

    func matches(_ value: JSONValue) -> Bool {
        switch (self, value) {
        case (.object, .object), (.array, .array), (.string, .string), (.boolean, .bool), (.null, .null): return true
        case (.number, .integer), (.number, .number), (.integer, .integer): return true
        case (.integer, .number(let d)): return d.isFinite && d.rounded(.towardZero) == d
        default: return false
        }
    }

    static func describe(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "boolean"
        case .integer: return "integer"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// A JSON number kept exact: either an `Int64` or a `Double`.
enum JSONNumber: Sendable, CustomStringConvertible {
    case int(Int64)
    case double(Double)

    init?(_ value: JSONValue) {
        switch value {
        case .integer(let i): self = .int(i)
        case .number(let d): self = .double(d)
        default: return nil
        }
    }

    var description: String {
        switch self {
        case .int(let i): return String(i)
        case .double(let d): return d.description
        }
    }

    /// The sign of `self - other`, computed exactly (no rounding of large integers).
    func compare(to other: JSONNumber) -> Int {
        switch (self, other) {
        case (.int(let a), .int(let b)): return a < b ? -1 : (a > b ? 1 : 0)
        case (.double(let a), .double(let b)): return a < b ? -1 : (a > b ? 1 : 0)
        case (.int(let a), .double(let b)): return JSONNumber.compare(a, b)
        case (.double(let a), .int(let b)): return -JSONNumber.compare(b, a)
        }
    }

    /// The sign of `i - d` for a finite `d`.
    private static func compare(_ i: Int64, _ d: Double) -> Int {
        if d >= 9_223_372_036_854_775_808.0 { return -1 }
        if d < -9_223_372_036_854_775_808.0 { return 1 }
        let floor = d.rounded(.down)
        let floorInt = Int64(floor)
        if i < floorInt { return -1 }
        if i > floorInt { return 1 }
        return floor == d ? 0 : -1
    }
}

/// Equality as JSON Schema defines it for `enum` and `const`: numbers by value,
/// arrays element-wise, objects member-wise regardless of order.
func jsonEqual(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.integer, .integer), (.integer, .number), (.number, .integer), (.number, .number):
        return JSONNumber(a)!.compare(to: JSONNumber(b)!) == 0
    case (.array(let x), .array(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { jsonEqual($0, $1) }
    case (.object(let x), .object(let y)):
        guard x.count == y.count else { return false }
        for (key, value) in x {
            guard let other = y[key], jsonEqual(value, other) else { return false }
        }
        return true
    default:
        return a == b
    }
}

/// A compiled `pattern`.
///
/// `NSRegularExpression` is immutable and documented as safe to use from several
/// threads at once, hence `@unchecked Sendable`.
struct Pattern: @unchecked Sendable {
    let source: String
    let regex: NSRegularExpression
    /// The pattern without ICU, when it is a simple one (see ``SimplePattern``).
    let simple: SimplePattern?

    init(source: String, regex: NSRegularExpression) {
        self.source = source
        self.regex = regex
        self.simple = SimplePattern(source)
    }

    func matches(_ s: String) -> Bool {
        if let simple { return simple.matches(s) }
        let range = NSRange(location: 0, length: s.utf16.count)
        return regex.firstMatch(in: s, options: [], range: range) != nil
    }
}

/// The keywords of one (non-boolean) schema object, after validation at load time.
struct Keywords: Sendable {
    var ref: String?
    var types: [JSONType]?
    var properties: [String: SchemaNode] = [:]
    var required: [String] = []
    var additionalProperties: Bool?
    var items: SchemaNode?
    var minItems: Int?
    var maxItems: Int?
    var minimum: JSONNumber?
    var maximum: JSONNumber?
    var exclusiveMinimum: JSONNumber?
    var minLength: Int?
    var maxLength: Int?
    var pattern: Pattern?
    var enumValues: [JSONValue]?
    var constValue: JSONValue?
    var format: Format?
}

/// A compiled schema: a boolean schema, or keywords.
final class SchemaNode: Sendable {
    let boolean: Bool?
    let keywords: Keywords

    init(boolean: Bool) {
        self.boolean = boolean
        self.keywords = Keywords()
    }

    init(keywords: Keywords) {
        self.boolean = nil
        self.keywords = keywords
    }
}

/// Turns schema JSON into ``SchemaNode``s, rejecting anything outside the subset.
struct SchemaCompiler {
    static let draft202012 = "https://json-schema.org/draft/2020-12/schema"
    static let refPrefix = "#/$defs/"

    var defs: [String: SchemaNode] = [:]
    /// Every `$ref` seen: its location and the definition name it targets.
    var references: [(pointer: String, name: String)] = []

    static func error(_ pointer: String, _ what: String) -> JSONSchemaError {
        JSONSchemaError(message: "schema at \(pointer): \(what)")
    }

    private static func nonNegativeInteger(_ value: JSONValue, _ pointer: String, _ keyword: String)
        throws(JSONSchemaError) -> Int
    {
        switch value {
        case .integer(let i) where i >= 0 && i <= Int64(Int32.max):
            return Int(i)
        case .number(let d) where d >= 0 && d <= Double(Int32.max) && d.rounded(.towardZero) == d:
            return Int(d)
        default:
            throw error(pointer, "\(keyword) must be a non-negative integer")
        }
    }

    private static func number(_ value: JSONValue, _ pointer: String, _ keyword: String) throws(JSONSchemaError)
        -> JSONNumber
    {
        guard let n = JSONNumber(value) else { throw error(pointer, "\(keyword) must be a number") }
        return n
    }

    private static func string(_ value: JSONValue, _ pointer: String, _ keyword: String) throws(JSONSchemaError)
        -> String
    {
        guard case .string(let s) = value else { throw error(pointer, "\(keyword) must be a string") }
        return s
    }

    /// Decodes `#/$defs/<token>` to the definition name, or nil for any other form.
    static func refName(_ ref: String) -> String? {
        guard ref.hasPrefix(refPrefix) else { return nil }
        let token = String(ref.dropFirst(refPrefix.count))
        guard !token.isEmpty, !token.contains("/"), !token.contains("%") else { return nil }
        // Every "~" must start "~0" or "~1".
        let scalars = Array(token.unicodeScalars)
        for (i, c) in scalars.enumerated() where c == "~" {
            guard i + 1 < scalars.count, scalars[i + 1] == "0" || scalars[i + 1] == "1" else { return nil }
        }
        return token.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
    }

    mutating func compile(_ schema: JSONValue, at pointer: String, isRoot: Bool) throws(JSONSchemaError) -> SchemaNode {
        switch schema {
        case .bool(let b):
            return SchemaNode(boolean: b)
        case .object(let members):
            var k = Keywords()
            for key in members.keys.sorted() {
                let value = members[key]!
                let here = pointer + "/" + escapePointerToken(key)
                switch key {
                case "$schema":
                    guard isRoot else { throw Self.error(here, "$schema is only allowed at the root") }
                    guard try Self.string(value, here, key) == Self.draft202012 else {
                        throw Self.error(here, "$schema must be \(Self.draft202012)")
                    }
                case "$id":
                    guard isRoot else { throw Self.error(here, "$id is only allowed at the root") }
                    _ = try Self.string(value, here, key)
                case "$defs":
                    // Compiled by JSONSchema.init before the root, so references can be checked.
                    guard isRoot else { throw Self.error(here, "$defs is only allowed at the root") }
                case "title", "description", "$comment":
                    _ = try Self.string(value, here, key)
                case "examples":
                    guard case .array = value else { throw Self.error(here, "examples must be an array") }
                case "$ref":
                    let ref = try Self.string(value, here, key)
                    guard let name = Self.refName(ref) else {
                        throw Self.error(here, "only local references of the form #/$defs/<name> are supported")
                    }
                    k.ref = name
                    references.append((here, name))
                case "type":
                    k.types = try Self.types(value, here)
                case "properties":
                    guard case .object(let props) = value else {
                        throw Self.error(here, "properties must be an object")
                    }
                    for name in props.keys.sorted() {
                        let propertySchema = props[name]!
                        k.properties[name] = try compile(
                            propertySchema, at: here + "/" + escapePointerToken(name), isRoot: false)
                    }
                case "required":
                    guard case .array(let names) = value else {
                        throw Self.error(here, "required must be an array of strings")
                    }
                    var seen = Set<String>()
                    for name in names {
                        guard case .string(let s) = name else {
                            throw Self.error(here, "required must be an array of strings")
                        }
                        guard seen.insert(s).inserted else { throw Self.error(here, "required lists \"\(s)\" twice") }
                        k.required.append(s)
                    }
                case "additionalProperties":
                    guard case .bool(let b) = value else {
                        throw Self.error(here, "additionalProperties must be a boolean (schemas are not supported)")
                    }
                    k.additionalProperties = b
                case "items":
                    switch value {
                    case .object, .bool: k.items = try compile(value, at: here, isRoot: false)
                    default: throw Self.error(here, "items must be a schema")
                    }
                case "minItems": k.minItems = try Self.nonNegativeInteger(value, here, key)
                case "maxItems": k.maxItems = try Self.nonNegativeInteger(value, here, key)
                case "minLength": k.minLength = try Self.nonNegativeInteger(value, here, key)
                case "maxLength": k.maxLength = try Self.nonNegativeInteger(value, here, key)
                case "minimum": k.minimum = try Self.number(value, here, key)
                case "maximum": k.maximum = try Self.number(value, here, key)
                case "exclusiveMinimum": k.exclusiveMinimum = try Self.number(value, here, key)
                case "pattern":
                    let source = try Self.string(value, here, key)
                    do {
                        k.pattern = Pattern(source: source, regex: try NSRegularExpression(pattern: source))
                    } catch {
                        throw Self.error(here, "pattern is not a valid regular expression")
                    }
                case "enum":
                    guard case .array(let values) = value, !values.isEmpty else {
                        throw Self.error(here, "enum must be a non-empty array")
                    }
                    k.enumValues = values
                case "const":
                    k.constValue = value
                case "format":
                    let name = try Self.string(value, here, key)
                    guard let format = Format(rawValue: name) else {
                        throw Self.error(here, "unsupported format \"\(name)\" (supported: uuid, date-time)")
                    }
                    k.format = format
                default:
                    throw Self.error(here, "unsupported keyword \"\(key)\"")
                }
            }
            return SchemaNode(keywords: k)
        default:
            throw Self.error(pointer, "a schema must be an object or a boolean")
        }
    }

    private static func types(_ value: JSONValue, _ pointer: String) throws(JSONSchemaError) -> [JSONType] {
        func one(_ v: JSONValue) throws(JSONSchemaError) -> JSONType {
            guard case .string(let s) = v, let t = JSONType(rawValue: s) else {
                throw error(
                    pointer, "type must name one of: " + JSONType.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return t
        }
        switch value {
        case .string:
            return [try one(value)]
        case .array(let values):
            guard !values.isEmpty else { throw error(pointer, "type must not be an empty array") }
            var result: [JSONType] = []
            for v in values {
                let t = try one(v)
                guard !result.contains(t) else { throw error(pointer, "type lists \(t.rawValue) twice") }
                result.append(t)
            }
            return result
        default:
            throw error(pointer, "type must be a string or an array of strings")
        }
    }

    /// Fails on a `$ref` to a missing definition, or a cycle of definitions that are
    /// each nothing but a reference to the next at their top level (validation would
    /// never terminate).
    func checkReferences() throws(JSONSchemaError) {
        for reference in references where defs[reference.name] == nil {
            throw Self.error(
                reference.pointer, "unresolvable reference to #/$defs/\(escapePointerToken(reference.name))")
        }
        for start in defs.keys.sorted() {
            var seen: Set<String> = [start]
            var current = start
            while let next = defs[current]?.keywords.ref {
                guard seen.insert(next).inserted else {
                    throw Self.error(
                        "#/$defs/" + escapePointerToken(start), "reference cycle that never descends into the instance")
                }
                current = next
            }
        }
    }
}
