import Logging
import SagaEngine
import SagaPostgres
import SagaTestSupport
import Testing

/// A table of the schema that holds rows but was never analyzed is analyzed once; small tables and analyzed ones
/// are left alone.
@Suite struct FreshTablesTests {
    @Test func analyzesTablesWithRowsThatWereNeverAnalyzedOnce() async throws {
        let schema = try await PostgresTestDatabase.freshSchema("fresh")
        let logger = Logger(label: "fresh-tables-test")
        let pool = PostgresPool(
            configuration: PostgresTestDatabase.configuration(schema: schema), size: 1, logger: logger)
        func changes(_ table: String) async throws -> Int {
            try await pool.query(
                """
                SELECT coalesce(sum(n_mod_since_analyze), 0)::bigint AS n FROM pg_stat_user_tables
                WHERE schemaname = current_schema() AND relname = $1
                """, [table]
            ).first?.decode("n") ?? 0
        }
        do {
            for table in ["big", "small", "done"] { try await pool.execute("CREATE TABLE \(table) (n int)") }
            try await pool.execute("INSERT INTO big SELECT generate_series(1, 2000)")
            try await pool.execute("INSERT INTO small SELECT generate_series(1, 10)")
            try await pool.execute("INSERT INTO done SELECT generate_series(1, 2000)")
            try await pool.execute("ANALYZE done")
            // The session's counts reach the server's statistics when it next goes idle.
            _ = try await pool.query("SELECT pg_stat_force_next_flush()")
            let deadline = ContinuousClock.now + .seconds(10)
            while try await changes("big") < 2000 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(await FreshTables.analyze(pool: pool, logger: logger) == ["big"])
            let analyzed: Bool = try await pool.query(
                """
                SELECT last_analyze IS NOT NULL AS analyzed FROM pg_stat_user_tables
                WHERE schemaname = current_schema() AND relname = 'big'
                """)[0].decode("analyzed")
            #expect(analyzed)
            #expect(await FreshTables.analyze(pool: pool, logger: logger) == [])
        } catch {
            await pool.close()
            throw error
        }
        await pool.close()
    }
}
