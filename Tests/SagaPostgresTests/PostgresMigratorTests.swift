import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresMigratorTests {
    /// Migration 2 is not idempotent: applying it twice leaves two rows, and 1 twice fails.
    private let migrations = [
        PostgresMigration(version: 2, name: "seed", sql: "INSERT INTO widgets (name) VALUES ('first');"),
        PostgresMigration(
            version: 1, name: "widgets", sql: "CREATE TABLE widgets (id bigserial PRIMARY KEY, name text NOT NULL);"),
        PostgresMigration(
            version: 3, name: "column", sql: "ALTER TABLE widgets ADD COLUMN size int; UPDATE widgets SET size = 1;"),
    ]

    @Test func runningTwiceAppliesOnce() async throws {
        try await withTestSchema("mig_twice") { configuration in
            try await withPool(configuration, size: 2) { pool in
                let migrator = PostgresMigrator(migrations: migrations)
                #expect(try await migrator.migrate(pool, logger: testLogger) == [1, 2, 3])
                #expect(try await migrator.migrate(pool, logger: testLogger) == [])
                let recorded = try await pool.query("SELECT version, name FROM schema_migrations ORDER BY version")
                #expect(recorded.map { $0["name"] } == ["widgets", "seed", "column"])
                #expect(try await pool.query("SELECT count(*) AS n FROM widgets")[0].decode("n", as: Int.self) == 1)
            }
        }
    }

    @Test func concurrentMigratorsApplyEachMigrationOnce() async throws {
        try await withTestSchema("mig_race") { configuration in
            let first = PostgresPool(configuration: configuration, size: 1, logger: testLogger)
            let second = PostgresPool(configuration: configuration, size: 1, logger: testLogger)
            let migrations = self.migrations
            async let a = PostgresMigrator(migrations: migrations).migrate(first, logger: testLogger)
            async let b = PostgresMigrator(migrations: migrations).migrate(second, logger: testLogger)
            let (appliedByA, appliedByB) = try await (a, b)
            #expect((appliedByA + appliedByB).sorted() == [1, 2, 3])
            #expect(try await first.query("SELECT count(*) AS n FROM widgets")[0].decode("n", as: Int.self) == 1)
            await first.close()
            await second.close()
        }
    }

    @Test func failingMigrationRollsBackAndKeepsEarlierOnes() async throws {
        try await withTestSchema("mig_fail") { configuration in
            try await withPool(configuration, size: 1) { pool in
                let migrator = PostgresMigrator(
                    table: "Custom Migrations",
                    migrations: [
                        PostgresMigration(version: 10, name: "ok", sql: "CREATE TABLE a (x int);"),
                        PostgresMigration(version: 20, name: "bad", sql: "CREATE TABLE b (x int); SELEC 1;"),
                    ])
                do {
                    try await migrator.migrate(pool, logger: testLogger)
                    Issue.record("a broken migration succeeded")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "42601")
                }
                let recorded = try await pool.query("SELECT version FROM \"Custom Migrations\"")
                #expect(try recorded.map { try $0.decode("version", as: Int.self) } == [10])
                let tables = try await pool.query(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1")
                #expect(tables.map { $0["table_name"] } == ["Custom Migrations", "a"])
            }
        }
    }
}
