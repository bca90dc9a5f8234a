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
