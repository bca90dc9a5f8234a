import Foundation
import Logging
import SagaPostgres
import SagaTestSupport
import Testing

let testLogger = Logger(label: "saga.test")

/// Runs `body` with a configuration whose `search_path` is a fresh schema, dropped afterwards.
func withTestSchema<T>(_ prefix: String, _ body: (PostgresConfiguration) async throws -> T) async throws -> T {
    let schema = try await PostgresTestDatabase.freshSchema(prefix)
    let configuration = PostgresTestDatabase.configuration(schema: schema)
    do {
        let value = try await body(configuration)
        try await PostgresTestDatabase.dropSchema(schema)
        return value
    } catch {
        try? await PostgresTestDatabase.dropSchema(schema)
        throw error
    }
}

/// Runs `body` with an open connection, closed afterwards.
func withConnection<T>(
    _ configuration: PostgresConfiguration, _ body: (PostgresConnection) async throws -> T
) async throws -> T {
    let connection = try await PostgresConnection.connect(configuration, logger: testLogger)
    do {
        let value = try await body(connection)
        await connection.close()
        return value
    } catch {
        await connection.close()
        throw error
    }
}

/// Runs `body` with a pool, closed afterwards.
func withPool<T>(
    _ configuration: PostgresConfiguration, size: Int = 4, _ body: (PostgresPool) async throws -> T
) async throws -> T {
    let pool = PostgresPool(configuration: configuration, size: size, logger: testLogger)
    do {
        let value = try await body(pool)
        await pool.close()
        return value
    } catch {
        await pool.close()
        throw error
    }
}

/// Terminates a server process and waits until it is gone from `pg_stat_activity`.
func terminateBackend(_ pid: Int32) async throws {
    try await withConnection(PostgresTestDatabase.configuration()) { admin in
        let rows = try await admin.query("SELECT pg_terminate_backend($1) AS ok", [pid])
        #expect(try rows[0].decode("ok", as: Bool.self))
        for _ in 0..<200 {
            let alive = try await admin.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid])
            if alive.isEmpty { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("backend \(pid) still alive after pg_terminate_backend")
    }
}

/// Runs `body`, cancelling it after `seconds`; its result is whatever it returned by then.
func withDeadline<T: Sendable>(seconds: Double, _ body: @escaping @Sendable () async -> T) async -> T {
    let task = Task { await body() }
    let timer = Task {
        try? await Task.sleep(for: .seconds(seconds))
        task.cancel()
    }
    let value = await task.value
    timer.cancel()
    return value
}

struct Marker: Error, Equatable { let id: Int }
