import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTesting
import Logging
import SagaEngine
import SagaServices
import SagaTestSupport
import Testing

/// The orders API over HTTP, on a real database (no broker needed: orders only writes its outbox).
@Suite struct OrdersHTTPTests {
    func withAPI(_ body: @escaping @Sendable (any TestClientProtocol, PostgresPool) async throws -> Void) async throws {
        try await Self.withOrdersAPI(.router, body)
    }

    /// The orders API on a fresh schema with one price (widget, 12.50 EUR). `logger` receives the server's
    /// logs; `.live` serves on a real loopback port (for raw-socket tests) with `server`.
    static func withOrdersAPI(
        _ testing: TestingSetup = .router, server: HTTPServerBuilder = .http1(), logger: Logger = Logger(label: "test"),
        _ body: @escaping @Sendable (any TestClientProtocol, PostgresPool) async throws -> Void
    ) async throws {
        let db = ServiceDatabase(
            url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema("http"))
        try await db.prepare(migrations: OrdersService.migrations, logger: logger)
        let pool = PostgresPool(configuration: db.configuration, size: 2, logger: logger)
        try await pool.execute("INSERT INTO prices (sku, currency, unit_price) VALUES ('widget', 'EUR', 1250)")
        let book = OrderBook(
            pool: pool, codec: EventCodec(upcasters: sagaUpcasters, topics: TopicNaming()), emitVersion: 2)
        let app = Application(router: OrdersHTTP.router(book: book), server: server, logger: logger)
        do {
            try await app.test(testing) { client in try await body(client, pool) }
        } catch {
            await pool.close()
            try? await PostgresTestDatabase.dropSchema(db.schema)
            throw error
        }
        await pool.close()
        try await PostgresTestDatabase.dropSchema(db.schema)
    }

    func post(_ client: some TestClientProtocol, _ body: String, key: String? = nil) async throws -> (
        HTTPResponse.Status, JSONValue
    ) {
        try await Self.post(client, body, key: key)
    }

    static func post(
        _ client: some TestClientProtocol, _ body: String, key: String? = nil, contentType: String? = "application/json"
    ) async throws -> (HTTPResponse.Status, JSONValue) {
        var headers: HTTPFields = [:]
        if let contentType { headers[.contentType] = contentType }
        if let key { headers[HTTPField.Name("Idempotency-Key")!] = key }
        return try await client.execute(uri: "/orders", method: .post, headers: headers, body: ByteBuffer(string: body))
        {
            ($0.status, (try? JSONValue(parsing: Array(buffer: $0.body))) ?? .null)
        }
    }

    @Test func aValidOrderIsAcceptedStoredPendingAndWrittenToTheOutbox() async throws {
        try await withAPI { client, pool in
            let (status, json) = try await post(
                client, #"{"customerId": "alice", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 2}]}"#)
            #expect(status == .accepted)
            guard case .string(let id)? = json["orderId"] else {
                Issue.record("no orderId in \(json)")
                return
            }
            let (getStatus, order) = try await client.execute(uri: "/orders/\(id)", method: .get) {
                ($0.status, try JSONValue(parsing: Array(buffer: $0.body)))
            }
            #expect(getStatus == .ok)
            #expect(order["status"] == .string("PENDING"))
            #expect(order["total"]?["amount"] == .integer(2500))
            let outbox = try await pool.query("SELECT topic, saga_id FROM saga_outbox")
            #expect(outbox.count == 1)
            #expect(try outbox.first?.decode("topic", as: String.self) == "order.created")
            #expect(try outbox.first?.decode("saga_id", as: String.self) == id)
        }
    }

    @Test(arguments: [
        ("not json", "body is not valid JSON"),
        ("[1, 2]", "body must be a JSON object"),
        (#"{"currency": "EUR", "lines": [{"sku": "widget", "quantity": 1}]}"#, "customerId"),
        (#"{"customerId": "a", "currency": "euro", "lines": [{"sku": "widget", "quantity": 1}]}"#, "currency"),
        (#"{"customerId": "a", "currency": "EUR"}"#, "lines: required"),
        (#"{"customerId": "a", "currency": "EUR", "lines": []}"#, "lines: must not be empty"),
        (
            #"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 0}]}"#,
            "lines[0].quantity: must be at least 1"
        ),
        (#"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "widget", "quantity": -3}]}"#, "lines[0].quantity"),
        (
            #"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "widget", "quantity": "2"}]}"#,
            "lines[0].quantity: required, an integer"
        ),
        (#"{"customerId": "a", "currency": "EUR", "lines": [{"quantity": 1}]}"#, "lines[0].sku"),
        (#"{"customerId": "a", "currency": "EUR", "lines": [{"sku": "nope", "quantity": 1}]}"#, "unknown SKU 'nope'"),
        (#"{"customerId": "a", "currency": "USD", "lines": [{"sku": "widget", "quantity": 1}]}"#, "no price in USD"),
    ])
    func aBadBodyAnswers400WithAReasonAndStoresNothing(body: String, reason: String) async throws {
        try await withAPI { client, pool in
            let (status, json) = try await post(client, body)
            #expect(status == .badRequest)
            guard case .string(let error)? = json["error"] else {
                Issue.record("no error in \(json)")
                return
            }
            #expect(error.contains(reason), "\(error)")
            #expect(try await pool.query("SELECT 1 FROM orders").isEmpty)
            #expect(try await pool.query("SELECT 1 FROM saga_outbox").isEmpty)
        }
    }

    @Test func anUnknownOrderIs404AndAMalformedIdIs400() async throws {
        try await withAPI { client, _ in
            let unknown = try await client.execute(uri: "/orders/\(UUID().uuidString)", method: .get) { $0.status }
            #expect(unknown == .notFound)
            let malformed = try await client.execute(uri: "/orders/not-a-uuid", method: .get) { $0.status }
            #expect(malformed == .badRequest)
        }
    }

    @Test func concurrentRequestsWithOneIdempotencyKeyPlaceOneOrder() async throws {
        try await withAPI { _, pool in
            let book = OrderBook(pool: pool, codec: EventCodec(upcasters: [], topics: TopicNaming()), emitVersion: 2)
            let request = OrderRequest(
                customerId: "alice", currency: "EUR", lines: [OrderLine(sku: "widget", quantity: 1)])
            let placed = try await withThrowingTaskGroup(of: OrderBook.Placed.self) { group in
                for _ in 0..<2 { group.addTask { try await book.place(request, idempotencyKey: "same") } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(placed.map(\.orderId)).count == 1)
            #expect(placed.filter(\.created).count == 1)
            #expect(try await pool.query("SELECT 1 FROM orders").count == 1)
            #expect(try await pool.query("SELECT 1 FROM saga_outbox").count == 1)
        }
    }

    @Test func aRetryWithTheSameIdempotencyKeyReturnsTheFirstOrder() async throws {
        try await withAPI { client, pool in
            let body = #"{"customerId": "alice", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 1}]}"#
            let (s1, first) = try await post(client, body, key: "k-1")
            let (s2, second) = try await post(client, body, key: "k-1")
            #expect(s1 == .accepted)
            #expect(s2 == .ok)
            #expect(first["orderId"] == second["orderId"])
            #expect(try await pool.query("SELECT 1 FROM orders").count == 1)
            #expect(try await pool.query("SELECT 1 FROM saga_outbox").count == 1)
        }
    }
}
