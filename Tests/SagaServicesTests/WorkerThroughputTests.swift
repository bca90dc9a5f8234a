import Foundation
import Logging
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

@testable import SagaEngine

/// A measuring harness, not a benchmark gate: it hands the inventory worker batches of 200 `order.created`
/// events (as the consumer would) and prints how fast they were handled, and, when the database has
/// pg_stat_statements, how many statements a batch ran. Nothing here asserts a duration; it asserts that
/// every event was handled.
@Suite(.serialized) struct WorkerThroughputTests {
    static let batchSize = 200
    static let rounds = 10

    @Test func inventoryHandlesBatchesOf200OrderCreatedEvents() async throws {
        let stack = try await TestStack()
        let definition = InventoryService.definition()
        let worker = Worker(
            configuration: stack.workerConfiguration("inventory"), handlers: definition.handlers,
            upcasters: definition.upcasters, migrations: definition.migrations, logger: stack.logger)
        let pool = PostgresPool(
            configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        try await pool.execute("UPDATE stock SET available = 1000000")
        let codec = EventCodec(upcasters: [], topics: stack.topics)
        var offset: Int64 = 0
        func batch() throws -> [KafkaMessage] {
            try (0..<Self.batchSize).map { i in
                let id = UUID().uuidString.lowercased()
                let lines: [OrderCreatedV2.Line] =
                    i % 2 == 0
                    ? [.init(sku: "widget", quantity: 1, unitPrice: nil)]
                    : [
                        .init(sku: "widget", quantity: 1, unitPrice: nil),
                        .init(sku: "gadget", quantity: 2, unitPrice: nil),
                    ]
                let message = try codec.encode(
                    try OutgoingEvent(
                        OrderCreatedV2(
                            orderId: id, customerId: "alice", total: Money(amount: 1250, currency: "EUR"), lines: lines),
                        sagaId: id, producer: "orders", causedBy: nil))
                offset += 1
                return KafkaMessage(
                    topic: message.topic, partition: Int32(i % 4), offset: offset, key: message.key,
                    value: message.value, headers: message.headers, timestamp: nil)
            }
        }
        let batches = try (0...Self.rounds).map { _ in try batch() }
        #expect(await worker.process(batches[0], pool: pool))  // warm-up: connection, plans, caches

        let statements =
            try await pool.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").isEmpty == false
        if statements { try await pool.query("SELECT public.pg_stat_statements_reset()") }
        let started = ContinuousClock.now
        for b in batches.dropFirst() { #expect(await worker.process(b, pool: pool)) }
        let took = ContinuousClock.now - started
        var perStatement: [(calls: Int, query: String)] = []
        if statements {
            perStatement = try await pool.query(
                """
                SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query FROM public.pg_stat_statements
                WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC
                """
            ).map { (try $0.decode("calls"), try $0.decode("query")) }
        }
        let reserved: Int = try await pool.query("SELECT count(*) AS n FROM reservations WHERE status = 'RESERVED'")
            .first!.decode("n")
        await pool.close()
        await stack.stop()

        let events = Self.batchSize * Self.rounds
        let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
        print(
            "worker throughput: inventory, \(Self.rounds) batches of \(Self.batchSize) order.created: "
                + "\(Int(Double(events) / seconds)) events/s, "
                + "\(String(format: "%.1f", seconds * 1000 / Double(Self.rounds))) ms per batch")
        if statements {
            let total = perStatement.map(\.calls).reduce(0, +)
            print(
                "worker statements: \(total) in \(Self.rounds) batches: \(Double(total) / Double(Self.rounds)) per batch, "
                    + "\(String(format: "%.2f", Double(total) / Double(events))) per event")
            for s in perStatement { print("  \(s.calls)\t\(s.query)") }
        }
        #expect(reserved == events + Self.batchSize)
        #expect(worker.stats.handled == events + Self.batchSize)
    }
}
