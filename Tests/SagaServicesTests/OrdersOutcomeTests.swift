import Foundation
import HTTPTypes
import HummingbirdTesting
import JSONSchema
import Logging
import SagaEngine
import SagaPostgres
import SagaServices
import SagaTestSupport
import Testing

/// What `POST /orders` answers when the database fails while the order is being stored: never a bare 500 for
/// an order that may exist.
struct OrdersOutcomeTests {
    static let order = #"{"customerId": "victim", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 1}]}"#

    /// Posts `order` while the session storing it is ended on the server: its statement is held at the outbox
    /// trigger's lock (taken here), and the backend waiting there is terminated. Returns the answer.
    static func postWhileTheSessionIsKilled(_ client: some TestClientProtocol, _ pool: PostgresPool) async throws -> (
        HTTPResponse.Status, JSONValue
    ) {
        let schema: String = try await pool.query("SELECT current_schema() AS s").first!.decode("s")
        let blocker = try await PostgresConnection.connect(
            PostgresConfiguration(url: PostgresTestDatabase.url), logger: Logger(label: "blocker"))
        let lock = "saga_outbox_wake:" + schema
        try await blocker.query("SELECT pg_advisory_lock(hashtext($1), 0)", [lock])
        let killer = Task { () throws -> Bool in
            for _ in 0..<500 {
                // Only the placement this lock holds up: other tests' placements may wait on their own schema's
                // lock at the same moment (a relay checking for inserts in flight takes it briefly).
                let waiting = try await blocker.query(
                    """
                    SELECT pid FROM pg_stat_activity
                    WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)) AND query LIKE '%WITH placed AS%'
                    """)
                if let pid: Int32 = try waiting.first?.decode("pid") {
                    try await blocker.query("SELECT pg_terminate_backend($1)", [pid])
                    return true
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            return false
        }
        let answer = try await OrdersHTTPTests.post(client, order)
        let killed = try await killer.value
        try await blocker.query("SELECT pg_advisory_unlock(hashtext($1), 0)", [lock])
        await blocker.close()
        #expect(killed, "the order's session was never seen waiting")
        return answer
    }

    /// The session storing the order dies before its commit: the server finds the order absent and says so
    /// (503, `not_stored`, Retry-After): placing it again is safe. (It used to answer a bare 500.)
    @Test func aSessionKilledBeforeTheCommitAnswers503NotStored() async throws {
        try await OrdersHTTPTests.withOrdersAPI { client, pool in
            let (status, body) = try await Self.postWhileTheSessionIsKilled(client, pool)
            let stored: Int = try await pool.query(
                "SELECT count(*) AS n FROM orders WHERE customer_id = 'victim'"
            ).first!.decode("n")
            #expect(status == .serviceUnavailable)
            #expect(body["outcome"] == .string("not_stored"))
            #expect(stored == 0)
            // The database is back: the same order goes through.
            let (again, _) = try await OrdersHTTPTests.post(client, Self.order)
            #expect(again == .accepted)
        }
    }

    /// The order's statement commits and the session breaks before the answer arrives: the order exists, so the
    /// caller gets it (created, with its event), not an error it would retry into a second order.
    @Test func aSessionLostAfterTheCommitIsAnsweredWithTheStoredOrder() async throws {
        try await OrdersHTTPTests.withOrdersAPI { _, pool in
            var book = OrderBook(
                pool: pool, codec: EventCodec(upcasters: sagaUpcasters, topics: TopicNaming()), emitVersion: 2)
            book.failpoint = .sessionLostAfterCommit
            let placed = try await book.place(try OrderRequest(body: Array(Self.order.utf8)))
            let rows: Int = try await pool.query("SELECT count(*) AS n FROM orders WHERE id = $1", [placed.orderId])
                .first!.decode("n")
            let outbox: Int = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
            #expect(placed.created)
            #expect(placed.event?.type == "order.created")
            #expect(rows == 1)
            #expect(outbox == 1)
        }
    }
}
