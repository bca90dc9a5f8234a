import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresConnectionTests {
    @Test func aTaskOnTheConnectionsExecutorRunsStatementsThereAndOthersStillShareTheSession() async throws {
        try await withConnection(PostgresTestDatabase.configuration()) { connection in
            #expect(!connection.isCurrentExecutor)
            let pid = try await connection.query("SELECT pg_backend_pid() AS pid")[0].decode("pid", as: Int32.self)
            try await withTaskExecutorPreference(connection.executor) {
                #expect(connection.isCurrentExecutor)
                try await connection.execute("CREATE TEMP TABLE seen (n int)")
                // A task that is not on the executor hands its statement over while the preferring one runs its own.
                let other = Task.detached {
                    #expect(!connection.isCurrentExecutor)
                    for n in 0..<20 { try await connection.execute("INSERT INTO seen VALUES ($1)", [n]) }
                }
                for n in 20..<40 {
                    try await connection.execute("INSERT INTO seen VALUES ($1)", [n])
                    #expect(connection.isCurrentExecutor)
                }
                try await other.value
                // Child tasks keep the preference.
                async let child = connection.query("SELECT count(*)::int AS n, pg_backend_pid() AS pid FROM seen")
                let rows = try await child
                #expect(try rows[0].decode("n", as: Int32.self) == 40)
                #expect(try rows[0].decode("pid", as: Int32.self) == pid)
            }
            #expect(!connection.isCurrentExecutor)
        }
    }

    @Test func everySupportedTypeRoundTripsAsBindParameters() async throws {
        try await withTestSchema("conn_types") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(
                    """
                    CREATE TABLE sample (
                        id int PRIMARY KEY, s text, i bigint, i32 integer, i64 bigint, i16 smallint, b boolean,
                        d double precision, u uuid, t timestamptz, bytes bytea
                    );
                    """)
                let tricky = "O'Reilly said \"hi\"; DROP TABLE sample; -- $1 \\x00 Grüße 🌍 日本語"
                let uuid = UUID()
                let date = Date(timeIntervalSince1970: 1_795_239_000.123456)
                let bytes: [UInt8] = [0, 39, 92, 255, 1]
                let inserted = try await connection.execute(
                    "INSERT INTO sample VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    [1, tricky, Int.max, Int32.min, Int64(-42), Int16(7), true, 0.1, uuid, date, bytes])
                #expect(inserted == 1)
                let nothing: String? = nil
                try await connection.execute(
                    "INSERT INTO sample VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    [2, nothing, nil, nil, nil, nil, false, -Double.infinity, nil, nil, nil])

                let rows = try await connection.query("SELECT * FROM sample ORDER BY id")
                #expect(rows.count == 2)
                let row = rows[0]
                #expect(try row.decode("s", as: String.self) == tricky)
                #expect(try row.decode("i", as: Int.self) == Int.max)
                #expect(try row.decode("i32", as: Int32.self) == Int32.min)
                #expect(try row.decode("i64", as: Int64.self) == -42)
                #expect(try row.decode("i16", as: Int16.self) == 7)
                #expect(try row.decode("b", as: Bool.self) == true)
                #expect(try row.decode("d", as: Double.self) == 0.1)
                #expect(try row.decode("u", as: UUID.self) == uuid)
                #expect(abs(try row.decode("t", as: Date.self).timeIntervalSince(date)) < 0.000_001)
                #expect(try row.decode("bytes", as: [UInt8].self) == bytes)
                #expect(try row.decode("bytes", as: Data.self) == Data(bytes))
                #expect(try row.decode("s", as: String?.self) == tricky)

                let empty = rows[1]
                #expect(empty.isNull("s") && empty.isNull("i") && empty.isNull("u") && empty.isNull("t"))
                #expect(try empty.decode("s", as: String?.self) == nil)
                #expect(try empty.decode("u", as: UUID?.self) == nil)
                #expect(try empty.decode("b", as: Bool.self) == false)
                #expect(try empty.decode("d", as: Double.self) == -.infinity)
                #expect(throws: PostgresError.self) { try empty.decode("s", as: String.self) }
                #expect(throws: PostgresError.self) { try empty.decode("no_such_column", as: String?.self) }

                // The server saw the same values: the parameters were not spliced or mangled.
                let check = try await connection.query(
                    "SELECT s = $1 AS same_text, extract(epoch FROM t) AS epoch, length(bytes) AS n FROM sample WHERE id = 1",
                    [tricky])
                #expect(try check[0].decode("same_text", as: Bool.self))
                #expect(check[0]["epoch"] == "1795239000.123456")
                #expect(try check[0].decode("n", as: Int.self) == 5)
            }
        }
    }

    @Test func serverTimestampsDecodeInUTC() async throws {
        try await withConnection(PostgresTestDatabase.configuration()) { connection in
            let rows = try await connection.query(
                "SELECT '2026-11-21 07:30:00.123456+02'::timestamptz AS t, current_setting('TimeZone') AS tz")
            #expect(rows[0]["tz"] == "UTC")
            #expect(rows[0]["t"] == "2026-11-21 05:30:00.123456+00")
            let date = try rows[0].decode("t", as: Date.self)
            #expect(abs(date.timeIntervalSince1970 - 1_795_239_000.123456) < 0.000_001)
        }
    }

    @Test func searchPathIsSetPerConnection() async throws {
        try await withTestSchema("conn_path") { configuration in
            try await withConnection(configuration) { connection in
                let rows = try await connection.query("SELECT current_schema() AS s")
                #expect(rows[0]["s"] == configuration.searchPath)
            }
        }
    }

    @Test func malformedURLIsAnInvalidConfigurationWithoutThePassword() async {
        let configuration = PostgresConfiguration(url: "postgresql://user:s3cret-pw@[::1/db")
        do {
            _ = try await PostgresConnection.connect(configuration, logger: testLogger)
            Issue.record("connected with a malformed URL")
        } catch {
            #expect(error.kind == .invalidConfiguration)
            #expect(error.message.contains("invalid database URL"))
            #expect(!error.message.contains("s3cret-pw"))
            #expect(!error.description.contains("s3cret-pw"))
        }
        await #expect(throws: PostgresError.self) {
            _ = try await PostgresConnection.connect(
                PostgresConfiguration(url: "mysql://localhost/db"), logger: testLogger)
        }
    }

    @Test func unreachableServerIsARetriableConnectionError() async {
        let configuration = PostgresConfiguration(url: "postgresql://postgres:s3cret-pw@127.0.0.1:1/saga")
        do {
            _ = try await PostgresConnection.connect(configuration, logger: testLogger)
            Issue.record("connected to port 1")
        } catch {
            #expect(error.kind == .connection)
            #expect(error.isRetriable)
            #expect(error.message.contains("127.0.0.1"))
            #expect(error.message.contains("refused"))
            #expect(!error.message.contains("s3cret-pw"))
        }
    }

    @Test func badSQLReportsItsSQLStateAndLeavesTheConnectionUsable() async throws {
        try await withConnection(PostgresTestDatabase.configuration()) { connection in
            do {
                try await connection.query("SELEC 1")
                Issue.record("bad syntax accepted")
            } catch let error as PostgresError {
                #expect(error.kind == .query)
                #expect(error.sqlState == "42601")
                #expect(error.message.contains("syntax error"))
                #expect(!error.isRetriable)
            }
            do {
                try await connection.query("SELECT * FROM table_that_does_not_exist")
                Issue.record("missing table accepted")
            } catch let error as PostgresError {
                #expect(error.sqlState == "42P01")
                #expect(error.message.contains("table_that_does_not_exist"))
            }
            #expect(connection.isHealthy)
            #expect(try await connection.query("SELECT 1 AS one")[0].decode("one", as: Int.self) == 1)
        }
    }

    @Test func uniqueViolationIs23505AndNotRetriable() async throws {
        try await withTestSchema("conn_unique") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript("CREATE TABLE inbox (event_id uuid PRIMARY KEY)")
                let id = UUID()
                try await connection.execute("INSERT INTO inbox VALUES ($1)", [id])
                do {
                    try await connection.execute("INSERT INTO inbox VALUES ($1)", [id])
                    Issue.record("duplicate accepted")
                } catch let error as PostgresError {
                    #expect(error.kind == .query)
                    #expect(error.sqlState == "23505")
                    #expect(error.isRetriable == false)
                    #expect(error.constraintName == "inbox_pkey")
                    #expect(error.detail?.contains(id.postgresText) == true)
                    #expect(!error.description.contains(id.postgresText))
                }
            }
        }
    }

    @Test func closeIsIdempotentAndLaterCallsThrowClosed() async throws {
        let connection = try await PostgresConnection.connect(PostgresTestDatabase.configuration(), logger: testLogger)
        #expect(connection.isHealthy)
        await connection.close()
        await connection.close()
        #expect(!connection.isHealthy)
        do {
            try await connection.query("SELECT 1")
            Issue.record("query on a closed connection")
        } catch {
            #expect(error.kind == .closed)
        }
    }

    @Test func nulCharacterInAParameterIsRejectedNotTruncated() async throws {
        try await withConnection(PostgresTestDatabase.configuration()) { connection in
            do {
                try await connection.query("SELECT $1::text AS v", ["abc\u{0}def"])
                Issue.record("NUL accepted")
            } catch let error as PostgresError {
                #expect(error.kind == .query)
                #expect(error.message.contains("$1"))
            }
        }
    }
}
