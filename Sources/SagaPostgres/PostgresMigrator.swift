import Logging

/// One schema change: `sql` is a parameterless script, run in one transaction together with
/// the row that records it.
public struct PostgresMigration: Sendable {
    /// The migration's version: it runs after every lower version, and only once.
    public var version: Int
    /// A short name, recorded with the version.
    public var name: String
    /// The SQL script, without parameters.
    public var sql: String

    /// A migration of `version`, recorded as `name`, that runs `sql`.
    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }
}

/// Applies ``PostgresMigration``s once each, in version order.
///
/// Applied versions are recorded in `table` (columns `version`, `name`, `applied_at`), created
/// if missing in the first schema of the connection's `search_path`. Concurrent migrators (other
/// processes too) are serialised with `pg_advisory_xact_lock` on a key derived from that schema
/// and the table name, so each migration runs exactly once.
public struct PostgresMigrator: Sendable {
    /// The table that records applied versions.
    public let table: String
    /// Sorted by version.
    public let migrations: [PostgresMigration]

    /// - Precondition: versions are unique.
    public init(table: String = "schema_migrations", migrations: [PostgresMigration]) {
        let versions = migrations.map(\.version)
        precondition(
            Set(versions).count == versions.count, "PostgresMigrator: migration versions must be unique: \(versions)")
        self.table = table
        self.migrations = migrations.sorted { $0.version < $1.version }
    }

    /// Applies every pending migration, each in its own transaction with its record row.
    ///
    /// - Returns: the versions applied by this call, in order (empty when already up to date).
    /// - Throws: the first failing migration's error (earlier migrations stay applied, the
    ///   failing one is rolled back entirely), or any connection error.
    @discardableResult
    public func migrate(_ pool: PostgresPool, logger: Logger) async throws -> [Int] {
        let quotedTable = PostgresConnection.quoteIdentifier(table)
        let applied: Set<Int> = try await pool.withTransaction { connection in
            try await lock(connection)
            try await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS \(quotedTable) (
                    version bigint PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """)
            let rows = try await connection.query("SELECT version FROM \(quotedTable)")
            return Set(try rows.map { row throws(PostgresError) in try row.decode("version", as: Int.self) })
        }
        let known = Set(migrations.map(\.version))
        let unknown = applied.subtracting(known).sorted()
        if !unknown.isEmpty {
            logger.warning(
                "the database has migrations this code does not know",
                metadata: ["versions": "\(unknown)", "table": "\(table)"])
        }
        var appliedNow: [Int] = []
        for migration in migrations where !applied.contains(migration.version) {
            let didApply: Bool = try await pool.withTransaction { connection in
                try await lock(connection)
                let existing = try await connection.query(
                    "SELECT 1 FROM \(quotedTable) WHERE version = $1", [migration.version])
                guard existing.isEmpty else { return false }
                try await connection.executeScript(migration.sql)
                try await connection.execute(
                    "INSERT INTO \(quotedTable) (version, name) VALUES ($1, $2)", [migration.version, migration.name])
                return true
            }
            if didApply {
                logger.info(
                    "applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
                appliedNow.append(migration.version)
            }
        }
        return appliedNow
    }

    /// Takes the transaction-scoped advisory lock for this migrations table in the current schema.
    private func lock(_ connection: PostgresConnection) async throws(PostgresError) {
        try await connection.execute(
            """
            SELECT pg_advisory_xact_lock(
                ('x' || substr(md5('saga.migrations:' || coalesce(current_schema(), '') || '.' || $1), 1, 16))::bit(64)::bigint)
            """, [table])
    }
}
