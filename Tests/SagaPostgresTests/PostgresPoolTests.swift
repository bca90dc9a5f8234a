import Foundation
import SagaPostgres
import SagaTestSupport
import Synchronization
import Testing

@Suite struct PostgresPoolTests {
    @Test func moreConcurrentTasksThanConnectionsAllSucceed() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 2) { pool in
            let pids = try await withThrowingTaskGroup(of: Int32.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        try await pool.query("SELECT pg_backend_pid() AS pid, pg_sleep(0.05)")[0].decode(
                            "pid", as: Int32.self)
                    }
                }
                return try await group.reduce(into: [Int32]()) { $0.append($1) }
            }
            #expect(pids.count == 8)
            #expect(Set(pids).count <= 2)
        }
    }

    @Test func aLentConnectionRunsItsBorrowersCodeOnItsExecutor() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 1) { pool in
            for _ in 0..<2 {  // a new session, then the same one from the pool
                try await pool.withTransaction { connection in
                    #expect(connection.isCurrentExecutor)
                    try await connection.execute("SELECT 1")
                    try await Task.sleep(for: .milliseconds(1))
                    #expect(connection.isCurrentExecutor)
                }
            }
        }
    }

    @Test func recoversAfterAnIdleConnectionIsKilledServerSide() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 1) { pool in
            let pid = try await pool.query("SELECT pg_backend_pid() AS pid")[0].decode("pid", as: Int32.self)
            try await terminateBackend(pid)
            let next = try await pool.query("SELECT pg_backend_pid() AS pid")[0].decode("pid", as: Int32.self)
            #expect(next != pid)
        }
    }

    @Test func operationFailingWithAConnectionErrorDiscardsTheConnection() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 1) { pool in
            let killed = try await pool.withConnection { connection in
                try await terminateBackend(connection.backendPID)
                do {
                    try await connection.query("SELECT 1")
                    Issue.record("query on a killed session succeeded")
                } catch let error as PostgresError {
                    #expect(error.kind == .connection)
                    #expect(error.isRetriable)
                }
                #expect(!connection.isHealthy)
                return connection.backendPID
            }
            let next = try await pool.query("SELECT pg_backend_pid() AS pid")[0].decode("pid", as: Int32.self)
            #expect(next != killed)
        }
    }

    @Test func transactionLeftOpenIsNotReused() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 1) { pool in
            let pid = try await pool.withConnection { connection in
                try await connection.execute("BEGIN")
                return connection.backendPID
            }
            let status = try await pool.query("SELECT pg_backend_pid() AS pid, now() = statement_timestamp() AS fresh")
            #expect(try status[0].decode("pid", as: Int32.self) != pid)
        }
    }

    @Test func poolTransactionCommitsAndRollsBack() async throws {
        try await withTestSchema("pool_tx") { configuration in
            try await withPool(configuration, size: 2) { pool in
                try await pool.execute("CREATE TABLE t (v int)")
                try await pool.withTransaction { try await $0.execute("INSERT INTO t VALUES ($1)", [1]) }
                await #expect(throws: Marker(id: 2)) {
                    try await pool.withTransaction { tx in
                        try await tx.execute("INSERT INTO t VALUES ($1)", [2])
                        throw Marker(id: 2)
                    }
                }
                let values = try await pool.query("SELECT v FROM t").map { try $0.decode("v", as: Int.self) }
                #expect(values == [1])
            }
        }
    }

    @Test func cancelledWaiterLeavesTheQueue() async throws {
        try await withPool(PostgresTestDatabase.configuration(), size: 1) { pool in
            let holding = Mutex(false)
            let holder = Task {
                try await pool.withConnection { _ in
                    holding.withLock { $0 = true }
                    try await Task.sleep(for: .milliseconds(500))
                }
            }
            while !holding.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
            let waiter = Task { try await pool.query("SELECT 1") }
            try await Task.sleep(for: .milliseconds(50))
            waiter.cancel()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            try await holder.value
            #expect(try await pool.query("SELECT 1 AS one").count == 1)
        }
    }

    @Test func closedPoolRejectsOperations() async throws {
        let pool = PostgresPool(configuration: PostgresTestDatabase.configuration(), size: 1, logger: testLogger)
        try await pool.query("SELECT 1")
        await pool.close()
        do {
            try await pool.query("SELECT 1")
            Issue.record("closed pool served a query")
        } catch let error as PostgresError {
            #expect(error.kind == .closed)
        }
    }

    @Test func unreachableServerSurfacesTheConnectionError() async {
        let pool = PostgresPool(
            configuration: PostgresConfiguration(url: "postgresql://postgres@127.0.0.1:1/saga"), size: 1,
            logger: testLogger)
        for _ in 0..<2 {
            do {
                try await pool.query("SELECT 1")
                Issue.record("query through an unreachable server")
            } catch let error as PostgresError {
                #expect(error.kind == .connection)
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        await pool.close()
    }
}
