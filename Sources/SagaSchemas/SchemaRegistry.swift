import JSONSchema

/// Identifies one event schema: an event type and a version of its `data` payload.
public struct SchemaKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The event type, e.g. `order.created`.
    public var type: String
    /// The schema version, 1 or more.
    public var version: Int

    /// Creates a key.
    public init(type: String, version: Int) {
        self.type = type
        self.version = version
    }

    /// Orders by type, then by version.
    public static func < (lhs: SchemaKey, rhs: SchemaKey) -> Bool {
        (lhs.type, lhs.version) < (rhs.type, rhs.version)
    }

    /// `<type>/v<version>`, e.g. `order.created/v2` (the schema's `$id` is `saga:` + this).
    public var description: String { "\(type)/v\(version)" }
}

/// The compiled event schemas, built from the copies of `schemas/` embedded in the binary.
///
/// Validate an event in two steps: ``validateEnvelope(_:)`` on the whole envelope, then
/// ``validate(type:version:data:)`` on its `data` member. Violation paths are relative to
/// the value passed in (prefix `/data` to place payload violations in the envelope).
public final class SchemaRegistry: Sendable {
    /// The type name under which the envelope schema is stored in `schemas/`.
    static let envelopeType = "envelope"

    /// The registry of every embedded schema, compiled on first use.
    ///
    /// An embedded schema that does not compile is a programming error (the tests load
    /// every one), so it stops the process with the offending key.
    public static let shared: SchemaRegistry = {
        do throws(LoadError) {
            return try SchemaRegistry(embedded: EmbeddedSchemas.all)
        } catch {
            fatalError("embedded schema \(error.key) does not load: \(error.underlying)")
        }
    }()

    private let envelope: JSONSchema
    private let schemas: [SchemaKey: JSONSchema]

    /// A load failure of one embedded schema.
    struct LoadError: Error {
        var key: SchemaKey
        var underlying: JSONSchemaError
    }

    /// Compiles `(type, version, json)` entries; exactly one must be `envelope` v1.
    init(embedded: [(type: String, version: Int, json: String)]) throws(LoadError) {
        var envelope: JSONSchema?
        var schemas: [SchemaKey: JSONSchema] = [:]
        for entry in embedded {
            let key = SchemaKey(type: entry.type, version: entry.version)
            let schema: JSONSchema
            do {
                schema = try JSONSchema(bytes: Array(entry.json.utf8))
            } catch {
                throw LoadError(key: key, underlying: error)
            }
            if entry.type == Self.envelopeType {
                guard entry.version == 1 else {
                    throw LoadError(key: key, underlying: JSONSchemaError(message: "only envelope v1 is supported"))
                }
                envelope = schema
            } else {
                schemas[key] = schema
            }
        }
        guard let envelope else {
            throw LoadError(
                key: SchemaKey(type: Self.envelopeType, version: 1),
                underlying: JSONSchemaError(message: "the envelope schema is missing"))
        }
        self.envelope = envelope
        self.schemas = schemas
    }

    /// Every `(type, version)` with a payload schema, sorted; the envelope is not included.
    public var keys: [SchemaKey] { schemas.keys.sorted() }

    /// The versions known for `type`, ascending; empty for an unknown type.
    public func versions(of type: String) -> [Int] {
        schemas.keys.filter { $0.type == type }.map(\.version).sorted()
    }

    /// The highest version known for `type`, or nil for an unknown type.
    public func latestVersion(of type: String) -> Int? {
        versions(of: type).last
    }

    /// Validates a whole event envelope against `envelope/v1`; `[]` when valid.
    ///
    /// The payload is only checked to be an object; see ``validate(type:version:data:)``.
    public func validateEnvelope(_ envelope: JSONValue) -> [JSONSchemaViolation] {
        self.envelope.validate(envelope)
    }

    /// Validates an event payload against `<type>/v<version>`.
    ///
    /// - Returns: the violations (`[]` when valid), or nil when no schema exists for
    ///   `(type, version)`.
    public func validate(type: String, version: Int, data: JSONValue) -> [JSONSchemaViolation]? {
        schemas[SchemaKey(type: type, version: version)]?.validate(data)
    }
}
