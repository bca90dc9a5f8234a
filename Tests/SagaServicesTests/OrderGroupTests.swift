import Foundation
import Logging
import SagaEngine
import SagaPostgres
import SagaTestSupport
import Testing

@testable import SagaServices

/// Placements that arrive together are stored together (group commit), each with the outcome it would have had
/// alone.
struct OrderGroupTests {
    static func order(_ customer: String, sku: String = "widget", quantity: Int = 1) throws -> OrderRequest {
        try OrderRequest(
            body: Array(
                #"{"customerId": "\#(customer)", "currency": "EUR", "lines": [{"sku": "\#(sku)", "quantity": \#(quantity)}]}"#
                    .utf8))
    }

    static func withBook(_ body: @escaping @Sendable (OrderBook, PostgresPool) async throws -> Void) async throws {
        let logger = Logger(label: "test")
        let db = ServiceDatabase(
            url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema("group"))
        try await db.prepare(migrations: OrdersService.migrations, logger: logger)
        let pool = PostgresPool(configuration: db.configuration, size: 4, logger: logger)
        try await pool.execute("INSERT INTO prices (sku, currency, unit_price) VALUES ('widget', 'EUR', 1250)")
        let book = OrderBook(
            pool: pool, codec: EventCodec(upcasters: sagaUpcasters, topics: TopicNaming()), emitVersion: 2,
            deadline: .seconds(60))
        do { try await body(book, pool) } catch {
            await pool.close()
            try? await PostgresTestDatabase.dropSchema(db.schema)
            throw error
        }
        await pool.close()
        try await PostgresTestDatabase.dropSchema(db.schema)
    }

    /// Places `requests` at once, each in its own task; the outcomes in the requests' order.
    static func placeAtOnce(_ book: OrderBook, _ requests: [(OrderRequest, String?)]) async -> [Result<
        OrderBook.Placed, any Error
    >] {
        await withTaskGroup(of: (Int, Result<OrderBook.Placed, any Error>).self) { group in
            for (i, (request, key)) in requests.enumerated() {
                group.addTask {
                    do { return (i, .success(try await book.place(request, idempotencyKey: key))) } catch {
                        return (i, .failure(error))
                    }
                }
            }
            var results = [Result<OrderBook.Placed, any Error>?](repeating: nil, count: requests.count)
            for await (i, result) in group { results[i] = result }
            return results.map { $0! }
        }
    }

    static func count(_ pool: PostgresPool, _ sql: String) async throws -> Int {
        try await pool.query(sql).first!.decode("n")
    }

    /// 64 placements at once take fewer groups than placements, and every order has its lines, history, event and
    /// deadline, each its own.
    @Test func placementsArrivingTogetherAreStoredInGroupsWithEverythingOfEach() async throws {
        try await Self.withBook { book, pool in
            let requests = try (0..<64).map { (try Self.order("c\($0)", quantity: $0 + 1), String?.none) }
            let placed = try await Self.placeAtOnce(book, requests).map { try $0.get() }
            let stats = book.queue.stats
            #expect(stats.placements == 64)
            #expect(stats.groups < 64, "\(stats)")
            #expect(Set(placed.map(\.orderId)).count == 64)
            #expect(placed.allSatisfy { $0.created && $0.event?.type == "order.created" && $0.deadline != nil })
            // Each order's own rows: its customer, its total, one line with its quantity, one history step, one
            // outbox row and one deadline of its saga.
            let rows = try await pool.query(
                """
                SELECT o.id, o.customer_id, o.total_amount, o.deadline_at IS NOT NULL AS has_deadline,
                    (SELECT count(*) FROM order_lines l WHERE l.order_id = o.id) AS lines,
                    (SELECT max(quantity) FROM order_lines l WHERE l.order_id = o.id) AS quantity,
                    (SELECT count(*) FROM order_history h WHERE h.order_id = o.id) AS history,
                    (SELECT count(*) FROM saga_outbox x WHERE x.saga_id = o.id::text) AS events,
                    (SELECT count(*) FROM saga_deadlines d WHERE d.saga_id = o.id::text) AS deadlines
                FROM orders o
                """)
            #expect(rows.count == 64)
            for (i, p) in placed.enumerated() {
                let row = try #require(try rows.first { try $0.decode("id", as: UUID.self) == p.orderId })
                #expect(try row.decode("customer_id", as: String.self) == "c\(i)")
                #expect(try row.decode("total_amount", as: Int64.self) == 1250 * Int64(i + 1))
                #expect(try row.decode("quantity", as: Int.self) == i + 1)
                #expect(try row.decode("has_deadline", as: Bool.self))
                for column in ["lines", "history", "events", "deadlines"] {
                    #expect(try row.decode(column, as: Int.self) == 1, "\(column) of c\(i)")
                }
            }
            let payloads = try await pool.query("SELECT convert_from(payload, 'UTF8') AS p FROM saga_outbox")
            for p in placed {
                #expect(
                    try payloads.contains { try $0.decode("p", as: String.self).contains(p.orderId.lowercasedString) })
            }
        }
    }

    /// Among placements arriving together: the same request twice with one key places one order, which both
    /// get; an unknown SKU is refused; the others are placed.
    @Test func eachPlacementOfAGroupHasItsOwnOutcome() async throws {
        try await Self.withBook { book, pool in
            // Something being stored, so that the next ones wait and go together.
            async let first = book.place(try Self.order("warm"))
            let requests: [(OrderRequest, String?)] = [
                (try Self.order("k"), "key-1"), (try Self.order("a"), nil), (try Self.order("k"), "key-1"),
                (try Self.order("b", sku: "gadget"), nil), (try Self.order("c"), nil),
            ]
            let results = await Self.placeAtOnce(book, requests)
            _ = try await first
            let keyed = [try results[0].get(), try results[2].get()]
            #expect(keyed[0].orderId == keyed[1].orderId)
            #expect(keyed.filter(\.created).count == 1)
            #expect(throws: OrderRequestError.self) { try results[3].get() }
            #expect(try results[1].get().created && results[4].get().created)
            #expect(try await Self.count(pool, "SELECT count(*) AS n FROM orders") == 4)
            #expect(try await Self.count(pool, "SELECT count(*) AS n FROM saga_outbox") == 4)
            #expect(book.queue.stats.groups < 6, "\(book.queue.stats)")
        }
    }

    /// Each placement of a group continues its own request's trace: its event and its deadline's event carry that
    /// trace id, whichever task stored the group.
    @Test func eachPlacementOfAGroupContinuesItsOwnTrace() async throws {
        try await Self.withBook { book, pool in
            let traces = (0..<16).map { String(format: "%032x", 0xabc000 + $0) }
            let placed = try await withThrowingTaskGroup(of: (Int, OrderBook.Placed).self) { group in
                for (i, trace) in traces.enumerated() {
                    group.addTask {
                        (
                            i,
                            try await book.place(
                                try Self.order("t\(i)"), traceparent: "00-\(trace)-00f067aa0ba902b7-01")
                        )
                    }
                }
                var placed: [Int: OrderBook.Placed] = [:]
                for try await (i, p) in group { placed[i] = p }
                return placed
            }
            #expect(book.queue.stats.groups < 16, "\(book.queue.stats)")
            for (i, trace) in traces.enumerated() {
                let p = try #require(placed[i])
                #expect(p.event?.traceparent.flatMap(TraceParent.traceId) == trace)
                let deadline: String? = try await pool.query(
                    "SELECT traceparent FROM saga_deadlines WHERE saga_id = $1", [p.orderId.lowercasedString]
                ).first?.decode("traceparent")
                #expect(deadline.flatMap(TraceParent.traceId) == trace)
            }
        }
    }

    /// A group the database refuses is stored placement by placement: only the refused one fails (here a customer
    /// id PostgreSQL cannot hold, which the HTTP API would have refused before).
    @Test func aPlacementTheDatabaseRefusesFailsAloneInItsGroup() async throws {
        try await Self.withBook { book, pool in
            var refused = try Self.order("x")
            refused.customerId = "nul\u{0}"
            let results = await book.store([
                .init(request: try Self.order("a")), .init(request: refused), .init(request: try Self.order("b")),
            ])
            #expect(try results[0].get().created && results[2].get().created)
            #expect(throws: PostgresError.self) { try results[1].get() }
            #expect(try await Self.count(pool, "SELECT count(*) AS n FROM orders") == 2)
            #expect(try await Self.count(pool, "SELECT count(*) AS n FROM saga_outbox") == 2)
        }
    }

    /// A group's statement commits and the session breaks before the answer: every order of the group is found
    /// stored and answered as created.
    @Test func aGroupWhoseSessionIsLostAfterTheCommitIsAnsweredCreated() async throws {
        try await Self.withBook { book, pool in
            var failing = book
            failing.failpoint = .sessionLostAfterCommit
            let results = await failing.store([
                .init(request: try Self.order("a")), .init(request: try Self.order("b")),
                .init(request: try Self.order("c")),
            ])
            let placed = try results.map { try $0.get() }
            #expect(placed.allSatisfy { $0.created })
            #expect(try await Self.count(pool, "SELECT count(*) AS n FROM orders") == 3)
        }
    }
}
