extension EventSchema {
    /// Every event schema of this repository's `schemas/` (the envelope excluded: it is the runtime's),
    /// sorted by type then version: what the orders, inventory and billing participants supply.
    public static let embedded: [EventSchema] = EmbeddedSchemas.all.filter { $0.type != SchemaRegistry.envelopeType }
        .map { EventSchema(type: $0.type, version: $0.version, json: $0.json) }

    /// Every version of the embedded schemas of `types`, e.g. those a participant emits and consumes.
    public static func embedded(types: some Sequence<String>) -> [EventSchema] {
        let wanted = Set(types)
        return embedded.filter { wanted.contains($0.type) }
    }
}

extension SchemaRegistry {
    /// The envelope schema (`envelope/v1`, `schemas/envelope/v1.schema.json`) every event is published in: the
    /// runtime's, not a participant's.
    public static let envelopeSchema: String = {
        guard let entry = EmbeddedSchemas.all.first(where: { $0.type == envelopeType && $0.version == 1 }) else {
            fatalError("schemas/envelope/v1.schema.json is not embedded: run scripts/gen-schemas")
        }
        return entry.json
    }()
}
