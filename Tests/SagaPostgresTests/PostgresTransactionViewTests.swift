import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

/// ``PostgresTransaction``: what code that does not own a transaction can and cannot do with it.
@Suite struct PostgresTransactionViewTests {
    @Test func transactionControlIsRefusedBeforeItIsSentAndEverythingElseRuns() async throws {
        try await withTestSchema("tx_view") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript("CREATE TABLE items (name text)")
                let refused = [
                    "COMMIT", "commit;", "  Rollback", "ROLLBACK TO SAVEPOINT x", "-- note\nEND",
                    "/* a /* b */ */ ABORT",
                    "BEGIN", "start transaction", "SAVEPOINT mine", "RELEASE SAVEPOINT mine", "PREPARE TRANSACTION 'x'",
                    "(COMMIT)",
                ]
                var states: [String] = []
                try await connection.withTransaction { owned in
                    let tx = PostgresTransaction(owned)
                    try await tx.execute("INSERT INTO items VALUES ($1)", ["one"])
                    for sql in refused {
                        do {
                            try await tx.execute(sql)
                            states.append("ran: \(sql)")
                        } catch {
                            states.append((error as? PostgresError)?.sqlState ?? "-")
                        }
                    }
                    await #expect(throws: PostgresError.self) {
                        try await tx.pipeline([PostgresStatement("SELECT 1"), PostgresStatement("COMMIT")])
                    }
                    // Words that only start like one, and the words inside a statement, are fine.
                    let rows = try await tx.query(
                        "/* begin */ SELECT 'commit' AS word, (SELECT count(*) FROM items) AS n")
                    #expect(try rows[0].decode("word", as: String.self) == "commit")
                    try await tx.execute(
                        "WITH ending AS (SELECT $1::text AS name) INSERT INTO items SELECT * FROM ending", ["two"])
                }
                let names = try await connection.query("SELECT name FROM items ORDER BY name").map {
                    try $0.decode("name", as: String.self)
                }
                #expect(states == Array(repeating: "2D000", count: refused.count))
                // Nothing refused reached the server: the owner's transaction committed both rows.
                #expect(names == ["one", "two"])
            }
        }
    }
}
