// Handlers work in the transaction the runtime opens: the Postgres layer's connection, rows and errors
// are part of the engine's API, so services import only SagaEngine.
@_exported import JSONSchema
@_exported import SagaPostgres
// A participant supplies the JSON Schemas of its events (``EventSchema``) and its codec validates with a
// ``SchemaRegistry`` built from them: the schema types are part of the runtime's API.
@_exported import SagaSchemas
