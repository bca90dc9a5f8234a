import Foundation
import Logging
import SagaPostgres

/// Where the participants of a choreography declare their part of the saga, so that the tracker and
/// `saga inspect` can assemble its shape (``SagaModel/init(declarations:)``) without a central list.
///
/// One table in a schema of its own (``defaultSchema`` unless configured), shared by every participant and
/// the tracker:
///
/// ```sql
/// CREATE TABLE participants (
///     name        text PRIMARY KEY,          -- the participant (= its database schema and consumer group)
///     declaration jsonb       NOT NULL,      -- its SagaDeclaration as JSON
///     updated_at  timestamptz NOT NULL DEFAULT now()  -- when it last registered
/// );
/// ```
///
/// Whoever comes first creates it (``prepare(logger:)``: idempotent, and safe when several processes start
/// at once). A participant registers on every start or migration (``ServiceDatabase/prepare(_:logger:)``),
/// replacing its previous declaration; a participant that is gone stays registered until its row is deleted.
public struct ParticipantRegistry: Sendable, Hashable {
    /// The registry's schema unless configured otherwise.
    public static let defaultSchema = "saga_registry"

    /// The database (a PostgreSQL URL).
    public var url: String
    /// The registry's schema.
    public var schema: String

    /// The registry in `schema` of the database at `url`.
    public init(url: String, schema: String = ParticipantRegistry.defaultSchema) {
        self.url = url
        self.schema = schema
    }

    static let migrations = [
        PostgresMigration(
            version: 1, name: "registry: participants and their part of the saga",
            sql: """
                CREATE TABLE participants (
                    name        text PRIMARY KEY,
                    declaration jsonb       NOT NULL,
                    updated_at  timestamptz NOT NULL DEFAULT now()
                );
                """)
    ]

    /// `"<schema>".participants`.
    var table: String { PostgresConnection.quoteIdentifier(schema) + ".participants" }

    /// Creates the registry's schema and table if missing. Idempotent, and safe from several processes at
    /// once: the schema is created under an advisory lock, the table by `PostgresMigrator`.
    /// - Throws: `PostgresError`.
    public func prepare(logger: Logger) async throws {
        try await withPool(logger: logger) { pool in try await prepare(pool, logger: logger) }
    }

    /// Registers `name` with `declaration` (replacing what it declared before), preparing the registry first.
    /// - Throws: `PostgresError`; `EncodingError` never in practice (the declaration is plain data).
    public func register(_ name: String, declaration: SagaDeclaration, logger: Logger) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(declaration), as: UTF8.self)
        try await withPool(logger: logger) { pool in
            try await prepare(pool, logger: logger)
            _ = try await pool.execute(
                """
                INSERT INTO \(table) (name, declaration, updated_at) VALUES ($1, $2::jsonb, now())
                ON CONFLICT (name) DO UPDATE SET declaration = EXCLUDED.declaration, updated_at = now()
                """, [name, json])
        }
        logger.debug("registered", metadata: ["participant": .string(name), "registry": .string(schema)])
    }

    /// Every registered participant's declaration. Empty when the registry does not exist yet; a row that
    /// does not decode (e.g. written by a newer runtime) is skipped with a warning.
    /// - Throws: `PostgresError`.
    public func declarations(logger: Logger) async throws -> [String: SagaDeclaration] {
        let rows: [PostgresRow]
        do {
            rows = try await withPool(logger: logger) { pool in
                try await pool.query("SELECT name, declaration::text AS declaration FROM \(table)")
            }
        } catch let error as PostgresError where error.sqlState == "42P01" || error.sqlState == "3F000" {
            return [:]  // no participant registered yet (undefined table / schema)
        }
        var declarations: [String: SagaDeclaration] = [:]
        for row in rows {
            let name: String = try row.decode("name")
            do {
                declarations[name] = try JSONDecoder().decode(
                    SagaDeclaration.self, from: Data(try row.decode("declaration", as: String.self).utf8))
            } catch {
                logger.warning(
                    "a participant's declaration does not decode: it is left out of the saga's model",
                    metadata: ["participant": .string(name), "error": "\(error)"])
            }
        }
        return declarations
    }

    /// The saga's model assembled from every registered participant (see ``declarations(logger:)``).
    public func model(logger: Logger) async throws -> SagaModel {
        SagaModel(declarations: try await declarations(logger: logger))
    }

    private func prepare(_ pool: PostgresPool, logger: Logger) async throws {
        try await ServiceDatabase.createSchemaIfMissing(schema, on: pool)
        let applied = try await PostgresMigrator(migrations: Self.migrations).migrate(pool, logger: logger)
        if !applied.isEmpty {
            logger.info("migrated", metadata: ["schema": .string(schema), "versions": "\(applied)"])
        }
    }

    private func withPool<T>(logger: Logger, _ body: (PostgresPool) async throws -> T) async throws -> T {
        let pool = PostgresPool(
            configuration: PostgresConfiguration(url: url, searchPath: schema), size: 1, logger: logger)
        let result: T
        do { result = try await body(pool) } catch {
            await pool.close()
            throw error
        }
        await pool.close()
        return result
    }
}
