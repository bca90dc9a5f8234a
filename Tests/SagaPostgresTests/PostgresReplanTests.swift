import Foundation
import SagaPostgres
import Testing

/// Prepared statements are prepared again from time to time, so that a plan costed on a small table does not
/// outlive the table's growth (see `PQConnection.firstReplanInterval`).
@Suite struct PostgresReplanTests {
    static let update =
        "UPDATE items i SET name = u.name FROM unnest($1::int[], $2::text[]) AS u(id, name) WHERE i.id = u.id"

    @Test func aStatementPlannedOnASmallTableIsPlannedAgainOnceTheTableGrew() async throws {
        try await withTestSchema("replan") { configuration in
            try await withConnection(configuration) { c in
                // No autovacuum: its ANALYZE would make the server plan again by itself. Generic plans always:
                // the server settles on one after five executions when it costs no more than the custom ones,
                // which depends on the costs; forced, the test does not.
                try await c.executeScript(
                    """
                    SET plan_cache_mode = force_generic_plan;
                    CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL) WITH (autovacuum_enabled = false);
                    INSERT INTO items SELECT i, 'n' || i FROM generate_series(1, 50) i;
                    ANALYZE items;
                    """)
                func update() async throws {
                    try await c.execute(Self.update, [PostgresArray([7, 8]), PostgresArray(["a", "b"])])
                }
                func prepared() async throws -> (name: String, at: Date) {
                    let row = try #require(
                        try await c.query(
                            "SELECT name, prepare_time FROM pg_prepared_statements WHERE statement = $1", [Self.update]
                        ).first)
                    return (try row.decode("name"), try row.decode("prepare_time"))
                }
                func plan() async throws -> String {
                    try await c.query("EXPLAIN EXECUTE \(try await prepared().name)('{7,8}', '{a,b}')")
                        .map { try $0.decode("QUERY PLAN", as: String.self) }.joined(separator: "\n")
                }
                try await update()  // planned for 50 rows
                #expect(try await plan().contains("Seq Scan on items"))
                let first = try await prepared().at
                // The server keeps that plan as the table grows (unless an invalidation of its caches, e.g. by
                // other sessions' DDL, makes it plan again by chance).
                try await c.execute("INSERT INTO items SELECT i, 'n' || i FROM generate_series(51, 200000) i")

                try await Task.sleep(for: .milliseconds(1100))
                try await update()
                #expect(try await prepared().at > first, "prepared again once due")
                let replanned = try await plan()
                #expect(!replanned.contains("Seq Scan on items") && replanned.contains("items_pkey"), "\(replanned)")

                // Due again (after two seconds now), inside a transaction and in a pipeline: prepared again there.
                try await Task.sleep(for: .milliseconds(2100))
                try await c.withTransaction { t in
                    try await t.query("SELECT 1 AS one")  // BEGIN goes with it: the update comes inside the block
                    try await t.execute(Self.update, [PostgresArray([9]), PostgresArray(["in a transaction"])])
                }
                try await Task.sleep(for: .milliseconds(4100))
                _ = try await c.pipeline([
                    PostgresStatement(Self.update, [PostgresArray([10]), PostgresArray(["in a pipeline"])])
                ])
                let names = try await c.query("SELECT name FROM items WHERE id IN (9, 10) ORDER BY id")
                #expect(
                    try names.map { try $0.decode("name", as: String.self) } == ["in a transaction", "in a pipeline"])
                let prepared = try await c.query(
                    "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1", [Self.update])
                #expect(try prepared[0].decode("n", as: Int.self) == 1, "the earlier preparations are deallocated")
            }
        }
    }
}
