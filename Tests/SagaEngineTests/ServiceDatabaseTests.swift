import Foundation
import Logging
import SagaEngine
import SagaPostgres
import SagaTestSupport
import Testing

/// Preparing a service's schema, as every daemon of the service does when it starts.
@Suite struct ServiceDatabaseTests {
    /// Replicas of a service (or a daemon and `saga migrate`) that start at the same moment all prepare the same
    /// schema that does not exist yet: each succeeds, and the migrations are applied once.
    @Test func replicasStartingAtOnceAllPrepareTheNewSchema() async throws {
        let logger = {
            var logger = Logger(label: "service-database-test")
            logger.logLevel = .critical
            return logger
        }()
        for _ in 0..<3 {
            let schema = "prep_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(10).lowercased()
            let database = ServiceDatabase(url: PostgresTestDatabase.url, schema: schema)
            let failures = await withTaskGroup(of: (any Error)?.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        do { try await database.prepare(migrations: [], logger: logger) } catch { return error }
                        return nil
                    }
                }
                return await group.reduce(into: [String]()) { all, failure in
                    if let failure { all.append("\(failure)") }
                }
            }
            let pool = PostgresPool(
                configuration: PostgresTestDatabase.configuration(schema: schema), size: 1, logger: logger)
            let applied = try await pool.query("SELECT count(*) AS n FROM schema_migrations").first?
                .decode("n", as: Int.self)
            await pool.close()
            try await PostgresTestDatabase.dropSchema(schema)
            #expect(failures == [])
            #expect(applied == EngineMigrations.all.count)
        }
    }

    /// A vacuum of the outbox (the relay's, autovacuum's) never truncates it: that takes a lock that blocks every
    /// writer's outbox insert.
    @Test func vacuumNeverTruncatesTheOutbox() async throws {
        var logger = Logger(label: "service-database-test")
        logger.logLevel = .critical
        let schema = "prep_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(10).lowercased()
        let database = ServiceDatabase(url: PostgresTestDatabase.url, schema: schema)
        try await database.prepare(migrations: [], logger: logger)
        let pool = PostgresPool(
            configuration: PostgresTestDatabase.configuration(schema: schema), size: 1, logger: logger)
        let options = try await pool.query(
            """
            SELECT coalesce(array_to_string(reloptions, ','), '') AS o FROM pg_class
            WHERE oid = 'saga_outbox'::regclass
            """
        ).first?.decode("o", as: String.self)
        await pool.close()
        try await PostgresTestDatabase.dropSchema(schema)
        #expect(options == "vacuum_truncate=false")
    }
}
