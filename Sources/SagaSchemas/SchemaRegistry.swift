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

/// The JSON Schema of one version of an event type's `data`, as a participant supplies it.
public struct EventSchema: Sendable, Hashable {
    /// The event type, e.g. `order.created`.
    public var type: String
    /// The schema version, 1 or more.
    public var version: Int
    /// The schema document (JSON Schema 2020-12, the subset `JSONSchema` supports).
    public var json: String

    /// Creates a schema entry.
    public init(type: String, version: Int, json: String) {
        self.type = type
        self.version = version
        self.json = json
    }

    /// Its key.
    public var key: SchemaKey { SchemaKey(type: type, version: version) }
}

/// Compiled event schemas: the envelope schema and the payload schemas of event types.
///
/// A participant's codec validates with a registry built from the schemas the participant supplies and the
/// runtime's envelope schema (`SchemaRegistry(schemas:)` in SagaEngine, or ``init(envelope:schemas:)``);
/// ``shared`` holds every schema embedded from this repository's `schemas/`.
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

    /// A load failure of one schema: which one, and why.
    public struct LoadError: Error, CustomStringConvertible {
        /// The schema that failed to load.
        public var key: SchemaKey
        /// Why it failed.
        public var underlying: JSONSchemaError
        public var description: String { "schema \(key) does not load: \(underlying.message)" }
    }

    /// Compiles `envelope` (the envelope schema, v1) and `schemas`.
    /// - Throws: ``LoadError`` naming the first schema that does not compile, or a type named `envelope`.
    public convenience init(envelope: String, schemas: [EventSchema]) throws(LoadError) {
        if let clash = schemas.first(where: { $0.type == Self.envelopeType }) {
            throw LoadError(key: clash.key, underlying: JSONSchemaError(message: "`envelope` is not an event type"))
        }
        try self.init(
            embedded: [(type: Self.envelopeType, version: 1, json: envelope)]
                + schemas.map { (type: $0.type, version: $0.version, json: $0.json) })
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
