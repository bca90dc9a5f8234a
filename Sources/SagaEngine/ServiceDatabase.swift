import Logging
import SagaPostgres

/// A service's database: its own schema, holding the engine's tables and the service's tables.
public struct ServiceDatabase: Sendable {
    /// The database's PostgreSQL URL.
    public var url: String
    /// The service's schema: its tables and the runtime's (outbox, inbox, dead letters) live there.
    public var schema: String
    /// `statement_timeout` of every session the service opens (not of migrations), or nil for the server's.
    public var statementTimeout: Duration? = nil
    /// `lock_timeout` of every session the service opens (not of migrations), or nil for the server's.
    public var lockTimeout: Duration? = nil
    /// Where ``prepare(_:logger:)`` registers the participant and the tracker reads the saga's shape: every
    /// participant and the tracker of one choreography name the same one. Default: the schema
    /// `saga_registry` on this database (``url``).
    public var registry: ParticipantRegistry

    /// The database at `url`, schema `schema`; the participant registry in the same database.
    public init(url: String, schema: String) {
        self.url = url
        self.schema = schema
        self.registry = ParticipantRegistry(url: url)
    }

    /// The connection configuration: ``url``, ``schema`` as search path, and the sessions' timeouts.
    public var configuration: PostgresConfiguration {
        var configuration = PostgresConfiguration(url: url, searchPath: schema)
        configuration.statementTimeout = statementTimeout
        configuration.lockTimeout = lockTimeout
        return configuration
    }

    /// Prepares `definition`'s database (``prepare(migrations:logger:)`` with its migrations), then registers
    /// its part of the saga in ``registry``: what a participant does when it starts or migrates.
    /// - Throws: `PostgresError` (unreachable database, failing migration).
    public func prepare(_ definition: ParticipantDefinition, logger: Logger) async throws {
        try await prepare(migrations: definition.migrations, logger: logger)
        try await registry.register(definition.name, declaration: definition.declaration, logger: logger)
    }

    /// Creates the schema if missing and applies the engine's migrations and then `migrations`
    /// (the service's, versions ≥ 100). Safe to run from several processes at once.
    /// - Throws: `PostgresError` (unreachable database, failing migration).
    public func prepare(migrations: [PostgresMigration], logger: Logger) async throws {
        try await prepare(migrations: migrations, engine: EngineMigrations.all, logger: logger)
    }

    /// Creates the schema and applies `engine` then `migrations`.
    package func prepare(migrations: [PostgresMigration], engine: [PostgresMigration], logger: Logger) async throws {
        // Migrations may take long and wait for locks: the service's timeouts are not theirs.
        let pool = PostgresPool(
            configuration: PostgresConfiguration(url: url, searchPath: schema), size: 1, logger: logger)
        do {
            try await Self.createSchemaIfMissing(schema, on: pool)
            let applied = try await PostgresMigrator(migrations: engine + migrations)
                .migrate(pool, logger: logger)
            if !applied.isEmpty {
                logger.info("migrated", metadata: ["schema": .string(schema), "versions": "\(applied)"])
            }
        } catch {
            await pool.close()
            throw error
        }
        await pool.close()
    }

    /// `CREATE SCHEMA IF NOT EXISTS`, serialised: two sessions running it at once for a schema that does not
    /// exist can both try to create it, and one fails with a unique violation (23505). The lock makes the second
    /// wait, then find it.
    static func createSchemaIfMissing(_ schema: String, on pool: PostgresPool) async throws {
        try await pool.withTransaction { connection in
            try await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ["saga_schema:" + schema])
            try await connection.execute("CREATE SCHEMA IF NOT EXISTS \(PostgresConnection.quoteIdentifier(schema))")
        }
    }
}
