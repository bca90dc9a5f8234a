import Foundation
import SagaTestSupport
import Testing

@testable import SagaPostgres

/// Dead connections are noticed in seconds: TCP keepalives and `tcp_user_timeout` on every connection, and
/// statement and lock timeouts when configured.
@Suite struct PostgresTimeoutTests {
    @Test func everyPooledConnectionCarriesKeepalivesAndTheConfiguredTimeouts() async throws {
        var configuration = PostgresTestDatabase.configuration()
        configuration.keepalivesIdleSeconds = 7
        configuration.keepalivesIntervalSeconds = 3
        configuration.keepalivesCount = 4
        configuration.tcpUserTimeoutMilliseconds = 19_000
        configuration.statementTimeout = .seconds(42)
        configuration.lockTimeout = .milliseconds(1500)
        let (settings, socket) = try await withPool(configuration, size: 1) { pool in
            try await pool.withConnection { connection in
                let row = try await connection.query(
                    """
                    SELECT current_setting('statement_timeout') AS statement, current_setting('lock_timeout') AS lock,
                           current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_user_timeout') AS user
                    """)[0]
                let settings = [
                    try row.decode("statement", as: String.self), try row.decode("lock", as: String.self),
                    try row.decode("idle", as: String.self), try row.decode("user", as: String.self),
                ]
                return (settings, try await connection.socketOptions())
            }
        }
        // The server applies them to the session (and watches the client with the same keepalives)...
        #expect(settings == ["42s", "1500ms", "7", "19000"])
        // ... and libpq set them on the client's socket.
        #expect(socket.keepalive)
        #expect(socket.idleSeconds == 7)
        #expect(socket.intervalSeconds == 3)
        #expect(socket.count == 4)
        #expect(socket.userTimeoutMilliseconds == 19_000)
    }

    @Test func genericPlansAreASessionSettingLeftToTheServerByDefault() async throws {
        func mode(_ configuration: PostgresConfiguration) async throws -> String {
            try await withConnection(configuration) {
                try await $0.query("SELECT current_setting('plan_cache_mode') AS mode")[0].decode("mode")
            }
        }
        var generic = PostgresTestDatabase.configuration()
        generic.genericPlans = true
        #expect(try await mode(generic) == "force_generic_plan")
        #expect(try await mode(PostgresTestDatabase.configuration()) == "auto")
    }

    @Test func keepalivesAreOnByDefaultAndTheURLCanTuneThem() async throws {
        let defaults = try await withConnection(PostgresTestDatabase.configuration()) { try await $0.socketOptions() }
        #expect(defaults.keepalive)
        #expect(defaults.idleSeconds == PostgresConfiguration(url: "postgresql://x").keepalivesIdleSeconds)
        #expect(defaults.userTimeoutMilliseconds > 0)
        let base = PostgresTestDatabase.configuration()
        var tuned = base
        tuned.url += (base.url.contains("?") ? "&" : "?") + "keepalives_idle=11"
        let fromURL = try await withConnection(tuned) { try await $0.socketOptions() }
        #expect(fromURL.idleSeconds == 11)
    }

    @Test func aStatementPastItsTimeoutIsCancelled() async throws {
        var configuration = PostgresTestDatabase.configuration()
        configuration.statementTimeout = .milliseconds(300)
        try await withConnection(configuration) { connection in
            let started = ContinuousClock.now
            let error = await #expect(throws: PostgresError.self) {
                try await connection.execute("SELECT pg_sleep(30)")
            }
            // Generous for a loaded machine: the point is "cut short by the timeout", not "fast".
            #expect(error?.sqlState == "57014")
            #expect(ContinuousClock.now - started < .seconds(15))
        }
    }
}

/// Cancelling in-flight statements: from another task, and when the task running a transaction is cancelled.
@Suite struct PostgresCancelTests {
    @Test func cancelStopsTheRunningStatementAtTheServer() async throws {
        try await withConnection(PostgresTestDatabase.configuration()) { connection in
            let started = ContinuousClock.now
            let sleeping = Task { () -> String? in
                do {
                    try await connection.execute("SELECT pg_sleep(30)")
                    return nil
                } catch {
                    return (error as? PostgresError)?.sqlState
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            await connection.cancel()
            #expect(await sleeping.value == "57014")
            #expect(ContinuousClock.now - started < .seconds(15))
            // The session goes on.
            #expect(try await connection.query("SELECT 1 AS one")[0].decode("one", as: Int.self) == 1)
        }
    }

    @Test func cancellingTheTaskOfACancellableTransactionRollsItBackAtOnce() async throws {
        try await withTestSchema("tx_cancel") { configuration in
            try await withPool(configuration, size: 1) { pool in
                try await pool.execute("CREATE TABLE items (name text)")
                let started = ContinuousClock.now
                let task = Task {
                    try await pool.withCancellableTransaction { c in
                        try await c.execute("INSERT INTO items VALUES ($1)", ["lost"])
                        try await c.execute("SELECT pg_sleep(30)")
                    }
                }
                try await Task.sleep(for: .milliseconds(300))
                task.cancel()
                let result = await task.result
                let elapsed = ContinuousClock.now - started
                let count = try await pool.query("SELECT count(*) AS n FROM items")[0].decode("n", as: Int.self)
                #expect(throws: PostgresError.self) { try result.get() }
                #expect(elapsed < .seconds(15))
                #expect(count == 0)
            }
        }
    }
}
