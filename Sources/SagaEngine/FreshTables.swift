import Logging
import SagaPostgres

/// Statistics for tables that have none yet.
///
/// PostgreSQL plans without statistics until a table's first `ANALYZE`, which autovacuum starts at most once per
/// `autovacuum_naptime` (a minute by default): on a new deployment under load, the participant's tables grow by
/// thousands of rows while every plan still reads them whole (measured on new schemas: 3–8 ms a call, 250–490
/// pages, for statements that take ~0.1 ms once analyzed). The worker analyzes them itself as soon as they hold
/// rows (``WorkerConfiguration/freshTableCheckInterval``); every table the server has analyzed since is left to
/// autovacuum.
public enum FreshTables {
    /// Rows (inserted, updated or deleted since the last analyze, that is ever) a never-analyzed table needs before
    /// it is analyzed: fewer fit in a few pages, where a whole read costs little.
    public static let minimumRows = 1_000

    /// Analyzes each table of the session's schema (`current_schema()`) that the server has never analyzed, that
    /// has seen at least `minimumRows` row changes and that the session's role may analyze (its owner's). Returns
    /// their names. Failures are logged, not thrown: the server's own autovacuum analyzes them later anyway.
    @discardableResult
    public static func analyze(pool: PostgresPool, minimumRows: Int = minimumRows, logger: Logger) async -> [String] {
        var analyzed: [String] = []
        do {
            let fresh = try await pool.query(
                """
                SELECT s.schemaname, s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                WHERE s.schemaname = current_schema() AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
                    AND s.n_mod_since_analyze >= $1 AND pg_has_role(c.relowner, 'USAGE')
                ORDER BY s.relname
                """, [minimumRows])
            for row in fresh {
                let name: String = try row.decode("relname")
                let schema: String = try row.decode("schemaname")
                try await pool.execute(
                    "ANALYZE \(PostgresConnection.quoteIdentifier(schema)).\(PostgresConnection.quoteIdentifier(name))")
                analyzed.append(name)
            }
        } catch {
            logger.warning("analyzing new tables failed", metadata: ["error": "\(error)"])
        }
        if !analyzed.isEmpty { logger.info("analyzed new tables", metadata: ["tables": "\(analyzed)"]) }
        return analyzed
    }
}
