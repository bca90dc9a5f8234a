import SagaSchemas

extension SchemaRegistry {
    /// Compiles `schemas` (a participant's event schemas) with the runtime's envelope schema
    /// (`SchemaRegistry.envelopeSchema`, `schemas/envelope/v1.schema.json`): every participant's codec
    /// validates envelopes with it.
    /// - Throws: `LoadError` naming the first schema that does not compile.
    public convenience init(schemas: [EventSchema]) throws(LoadError) {
        try self.init(envelope: Self.envelopeSchema, schemas: schemas)
    }
}
