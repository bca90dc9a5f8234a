import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

/// Prepared statements, binary bytea parameters, the pipeline API and the deferred BEGIN.
@Suite struct PostgresPipelineTests {
    static let table = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, data bytea)"

    @Test func aPipelineReturnsEveryStatementsResultsInOrder() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                let results = try await c.pipeline([
                    PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2) RETURNING id", [1, "a"]),
                    PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2), ($3, $4)", [2, "b", 3, "c"]),
                    PostgresStatement("UPDATE items SET name = upper(name) WHERE id >= $1", [2]),
                    PostgresStatement("SELECT id, name FROM items ORDER BY id"),
                ])
                #expect(results.count == 4)
                #expect(try results[0].rows.map { try $0.decode("id", as: Int.self) } == [1])
                #expect(results[1].affectedRows == 2)
                #expect(results[2].affectedRows == 2)
                #expect(results[2].commandTag == "UPDATE 2")
                #expect(try results[3].rows.map { try $0.decode("name", as: String.self) } == ["a", "B", "C"])
                #expect(try await c.pipeline([]).isEmpty)
            }
        }
    }

    @Test func aFailureMidPipelineStopsTheRestAndOutsideATransactionUndoesAll() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                do {
                    try await c.pipeline([
                        PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [1, "a"]),
                        PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [1, "duplicate"]),
                        PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [3, "c"]),
                    ])
                    Issue.record("a pipeline with a failing statement succeeded")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "23505")
                    #expect(error.kind == .query)
                    #expect(error.message.hasPrefix("statement 2 of 3:"))
                }
                // One implicit transaction: the first insert is undone, the third never ran.
                let count = try await c.query("SELECT count(*) AS n FROM items")
                #expect(try count[0].decode("n", as: Int.self) == 0)
                #expect(c.isHealthy)
                // The connection is back in normal mode, and its prepared statements still work.
                try await c.execute("INSERT INTO items (id, name) VALUES ($1, $2)", [1, "a"])
                #expect(try await c.query("SELECT name FROM items WHERE id = $1", [1])[0].decode("name") == "a")
            }
        }
    }

    @Test func insideATransactionAPipelineIsPartOfIt() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                // Committed together with the statements around it.
                try await c.withTransaction { t in
                    try await t.execute("INSERT INTO items (id, name) VALUES ($1, $2)", [1, "a"])
                    try await t.pipeline([
                        PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [2, "b"]),
                        PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [3, "c"]),
                    ])
                }
                // A failure inside aborts the transaction: the body's earlier work is not committed either.
                do {
                    try await c.withTransaction { t in
                        try await t.pipeline([
                            PostgresStatement("INSERT INTO items (id, name) VALUES ($1, $2)", [4, "d"])
                        ])
                        _ = try? await t.pipeline([PostgresStatement("SELECT 1 / $1 AS x", [0])])
                    }
                    Issue.record("COMMIT of an aborted transaction succeeded")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "25P02")
                }
                let ids = try await c.query("SELECT id FROM items ORDER BY id").map {
                    try $0.decode("id", as: Int.self)
                }
                #expect(ids == [1, 2, 3])
            }
        }
    }

    @Test func aTransactionsBeginTravelsWithItsFirstStatement() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                // The first statement already runs inside the transaction, at its isolation level.
                let inside = try await c.withTransaction(isolation: .repeatableRead) { t in
                    try await t.query("SELECT current_setting('transaction_isolation') AS level")[0].decode(
                        "level", as: String.self)
                }
                #expect(inside == "repeatable read")
                // A body that runs nothing leaves nothing open; a throwing one before any statement neither.
                try await c.withTransaction { _ in }
                await #expect(throws: Marker.self) { try await c.withTransaction { _ in throw Marker(id: 1) } }
                let state = try await c.query("SELECT 1 AS one")
                #expect(try state[0].decode("one", as: Int.self) == 1)
                #expect(c.isHealthy)
            }
        }
    }

    @Test func statementsWithParametersArePreparedOncePerSession() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                let sql = "INSERT INTO items (id, name, data) VALUES ($1, $2, $3)"
                for id in 1...3 { try await c.execute(sql, [id, "n\(id)", [UInt8]([0, 1, 2])]) }
                let prepared = try await c.query("SELECT statement FROM pg_prepared_statements")
                let statements = try prepared.map { try $0.decode("statement", as: String.self) }
                #expect(statements.filter { $0 == sql }.count == 1)
            }
        }
    }

    @Test func preparedStatementsSurviveAReplacedConnection() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withPool(configuration, size: 1) { pool in
                try await pool.withConnection { try await $0.executeScript(Self.table) }
                let sql = "INSERT INTO items (id, name) VALUES ($1, $2) RETURNING pg_backend_pid() AS pid"
                let first = try await pool.query(sql, [1, "a"])[0].decode("pid", as: Int32.self)
                try await terminateBackend(first)
                // The pool replaces the killed session; the statement is prepared again on the new one.
                let second = try await pool.query(sql, [2, "b"])[0].decode("pid", as: Int32.self)
                let pipelined = try await pool.withConnection { c in
                    try await c.pipeline([PostgresStatement(sql, [3, "c"]), PostgresStatement(sql, [4, "d"])])
                }
                #expect(second != first)
                #expect(pipelined.count == 2)
                let count = try await pool.query("SELECT count(*) AS n FROM items")
                #expect(try count[0].decode("n", as: Int.self) == 4)
            }
        }
    }

    @Test func byteaParametersTravelInBinaryWithEveryByteValue() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                let all = [UInt8](0...255)
                let rows = try await c.query(
                    "SELECT octet_length($1::bytea) AS n, $1::bytea = decode($2, 'hex') AS same, $3::bytea AS empty, $4::bytea AS data",
                    [all, all.map { String(format: "%02x", $0) }.joined(), [UInt8](), Data([0, 0, 7])])
                #expect(try rows[0].decode("n", as: Int.self) == 256)
                #expect(try rows[0].decode("same", as: Bool.self))
                #expect(try rows[0].decode("empty", as: [UInt8].self) == [])
                #expect(try rows[0].decode("data", as: Data.self) == Data([0, 0, 7]))
            }
        }
    }
}

extension PostgresPipelineTests {
    /// A prepared `SELECT *` whose table gained a column fails with 0A000 on the server; outside a
    /// transaction the connection prepares it again and the caller sees the new column.
    @Test func aPreparedStatementWhoseResultTypeChangedIsPreparedAgain() async throws {
        try await withTestSchema("pipe") { configuration in
            try await withConnection(configuration) { c in
                try await c.executeScript(Self.table)
                try await c.execute("INSERT INTO items (id, name) VALUES ($1, $2)", [1, "a"])
                let sql = "SELECT * FROM items WHERE id = $1"
                #expect(try await c.query(sql, [1])[0].columns == ["id", "name", "data"])
                try await c.executeScript("ALTER TABLE items ADD COLUMN extra int NOT NULL DEFAULT 7")
                let row = try await c.query(sql, [1])[0]
                #expect(row.columns == ["id", "name", "data", "extra"])
                #expect(try row.decode("extra", as: Int.self) == 7)
            }
        }
    }
}
