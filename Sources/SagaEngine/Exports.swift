// Handlers work in the transaction the runtime opens: the Postgres layer's connection, rows and errors
// are part of the engine's API, so services import only SagaEngine.
@_exported import JSONSchema
@_exported import SagaPostgres
