import Foundation
import SagaPostgres
import SagaTestSupport
import Testing

@Suite struct PostgresTransactionTests {
    @Test func throwingBodyRollsBackAndRethrowsItsError() async throws {
        try await withTestSchema("tx_rollback") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript("CREATE TABLE items (name text)")
                await #expect(throws: Marker(id: 7)) {
                    try await connection.withTransaction { tx in
                        try await tx.execute("INSERT INTO items VALUES ($1)", ["lost"])
                        throw Marker(id: 7)
                    }
                }
                #expect(connection.isHealthy)
                let count = try await connection.query("SELECT count(*) AS n FROM items")[0].decode("n", as: Int.self)
                #expect(count == 0)
            }
        }
    }

    @Test func returningBodyCommits() async throws {
        try await withTestSchema("tx_commit") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript("CREATE TABLE items (name text)")
                let value = try await connection.withTransaction(isolation: .repeatableRead) { tx in
                    try await tx.execute("INSERT INTO items VALUES ($1)", ["kept"])
                }
                #expect(value == 1)
            }
            // Seen from another session, so it really committed.
            try await withConnection(configuration) { other in
                let rows = try await other.query("SELECT name FROM items")
                #expect(rows.map { $0["name"] } == ["kept"])
            }
        }
    }

    @Test func commitOfAnAbortedTransactionIsAnError() async throws {
        try await withTestSchema("tx_aborted") { configuration in
            try await withConnection(configuration) { connection in
                try await connection.executeScript("CREATE TABLE items (name text)")
                do {
                    try await connection.withTransaction { tx in
                        try await tx.execute("INSERT INTO items VALUES ($1)", ["lost"])
                        _ = try? await tx.query("SELECT * FROM missing_table")
                    }
                    Issue.record("an aborted transaction reported success")
                } catch let error as PostgresError {
                    #expect(error.message.hasPrefix("COMMIT failed"))
                    #expect(error.sqlState == "25P02")
                }
                #expect(connection.isHealthy)
                let count = try await connection.query("SELECT count(*) AS n FROM items")[0].decode("n", as: Int.self)
                #expect(count == 0)
            }
        }
    }

    @Test func conflictingSerializableTransactionsReport40001() async throws {
        try await withTestSchema("tx_serial") { configuration in
            try await withConnection(configuration) { first in
                try await withConnection(configuration) { second in
                    try await first.executeScript(
                        "CREATE TABLE account (id int PRIMARY KEY, balance int); INSERT INTO account VALUES (1, 100)")
                    do {
                        try await first.withTransaction(isolation: .serializable) { tx in
                            // The snapshot is taken here, before the other transaction commits.
                            _ = try await tx.query("SELECT balance FROM account WHERE id = $1", [1])
                            try await second.withTransaction(isolation: .serializable) { other in
                                try await other.execute("UPDATE account SET balance = balance - 10 WHERE id = $1", [1])
                            }
                            try await tx.execute("UPDATE account SET balance = balance - 20 WHERE id = $1", [1])
                        }
                        Issue.record("conflicting serializable transactions both committed")
                    } catch let error as PostgresError {
                        #expect(error.sqlState == "40001")
                        #expect(error.isRetriable)
                    }
                    let balance = try await second.query("SELECT balance FROM account WHERE id = 1")[0].decode(
                        "balance", as: Int.self)
                    #expect(balance == 90)
                }
            }
        }
    }
}
