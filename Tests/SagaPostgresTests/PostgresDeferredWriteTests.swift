import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

/// Writes deferred with `executeDeferred`, sent in the round trip of the session's next statement or COMMIT.
@Suite struct PostgresDeferredWriteTests {
    static func names(_ configuration: PostgresConfiguration) async throws -> [String] {
        try await withConnection(configuration) { other in
            try await other.query("SELECT name FROM items ORDER BY id").map { try $0.decode("name", as: String.self) }
        }
    }

    static let table = "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)"

    @Test func deferredWritesRunInTheirOrderAndLaterStatementsSeeThem() async throws {
        try await withTestSchema("deferred_order") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                let seen = try await connection.withTransaction { tx in
                    try tx.executeDeferred("INSERT INTO items (name) SELECT 'saw ' || count(*) FROM items", [])
                    try tx.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["second"])
                    // Carried by this read, before it: it sees both.
                    let n = try await tx.query("SELECT count(*) AS n FROM items")[0].decode("n", as: Int.self)
                    try tx.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["last, with the COMMIT"])
                    return n
                }
                #expect(seen == 2)
                #expect(connection.isHealthy)
            }
            // Seen from another session: committed, in the order they were issued.
            #expect(try await Self.names(configuration) == ["saw 0", "second", "last, with the COMMIT"])
        }
    }

    @Test func aDeferredWriteThatFailsFailsTheStatementCarryingIt() async throws {
        try await withTestSchema("deferred_next") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                do {
                    try await connection.withTransaction { tx in
                        try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["body"])
                        try tx.executeDeferred("INSERT INTO items (name) VALUES ($1::int::text)", ["not a number"])
                        do {
                            try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["carrier"])
                            Issue.record("the statement carrying a failed deferred write succeeded")
                        } catch let error as PostgresError {
                            #expect(error.sqlState == "22P02")
                            #expect(error.message.hasPrefix("deferred write 1 of 1:"), "\(error.message)")
                            throw error
                        }
                    }
                } catch let error as PostgresError {
                    #expect(error.sqlState == "22P02")
                }
                #expect(connection.isHealthy)
            }
            #expect(try await Self.names(configuration) == [])
        }
    }

    @Test func aBodyThatOnlyDefersBeginsAndCommitsInOneRoundTrip() async throws {
        try await withTestSchema("tail_only") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                try await connection.withTransaction(isolation: .repeatableRead) { tx in
                    try tx.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["a"])
                    try tx.executeDeferred(
                        "INSERT INTO items (name) SELECT current_setting('transaction_isolation')", [])
                }
            }
            #expect(try await Self.names(configuration) == ["a", "repeatable read"])
        }
    }

    @Test func aDeferredWriteFailingAtTheCommitRollsEverythingBack() async throws {
        try await withTestSchema("tail_fail") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                do {
                    try await connection.withTransaction { tx in
                        try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["body"])
                        try tx.executeDeferred("INSERT INTO items (name) VALUES ($1::int::text)", ["not a number"])
                        try tx.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["after"])
                    }
                    Issue.record("a transaction whose deferred write failed reported success")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "22P02")
                    #expect(error.message.hasPrefix("COMMIT failed: deferred write 1 of 2:"), "\(error.message)")
                }
                #expect(connection.isHealthy)
                // The session goes on: a later transaction commits, without the failed one's statements.
                try await connection.withTransaction { tx in
                    try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["next"])
                }
            }
            #expect(try await Self.names(configuration) == ["next"])
        }
    }

    @Test func theDeferredWritesOfABodyThatThrowsAreDropped() async throws {
        try await withTestSchema("tail_drop") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                await #expect(throws: Marker(id: 3)) {
                    try await connection.withTransaction { tx in
                        try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["body"])
                        try tx.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["deferred"])
                        throw Marker(id: 3)
                    }
                }
                // Not sent with the next transaction's COMMIT either.
                try await connection.withTransaction { tx in
                    try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["next"])
                }
            }
            #expect(try await Self.names(configuration) == ["next"])
        }
    }

    @Test func outsideATransactionItIsRefused() async throws {
        try await withTestSchema("tail_outside") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript(Self.table)
                do {
                    try connection.executeDeferred("INSERT INTO items (name) VALUES ($1)", ["nowhere"])
                    Issue.record("queued outside a transaction")
                } catch let error as PostgresError {
                    #expect(error.sqlState == "25P01")
                }
                try await connection.withTransaction { tx in
                    try await tx.execute("INSERT INTO items (name) VALUES ($1)", ["inside"])
                }
            }
            #expect(try await Self.names(configuration) == ["inside"])
        }
    }
}
