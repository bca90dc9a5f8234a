import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import ServiceLifecycle
import Synchronization
import Testing

@testable import saga

/// `saga chaos check` against a real stack in this process (PostgreSQL, a mock cluster, the three workers, the
/// relays, the tracker and the orders API): the invariants hold after orders of every outcome and poison records,
/// and each deliberately corrupted table makes the check it guards fail.
@Suite struct ChaosCheckTests {
    @Test func invariantsHoldAndEachCorruptionIsCaught() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let prefix = KafkaTestBroker.uniqueName("cc") + "."
        let running = try await InProcessStack(
            prefix: prefix, tracker: true, logger: logger, prepare: { try await $0.seed(ChaosPlan.catalogue) })
        let env = running.env
        let pools = (Stack.services + ["tracker"]).map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: logger)
        }
        do {
            let client = ChaosClient(base: running.base)
            var entries: [ChaosLedger] = []
            for i in 0..<20 {
                let o = ChaosPlan.order(i)
                entries.append(
                    await client.place(
                        key: "test-\(i)", customer: o.customer, lines: o.lines, expected: o.expected, probe: false,
                        giveUp: .seconds(10)))
            }
            #expect(Set(entries.map(\.answer)) == ["accepted", "refused"])
            #expect(Set(entries.map(\.expected)) == ["CONFIRMED", "out_of_stock", "payment_declined", "refused"])

            // Poison the checker must find dead-lettered (kinds every worker survives today).
            let producer = try KafkaProducer(configuration: try env.kafka().producer(clientId: "test"), logger: logger)
            let poison = ChaosPoison.records(
                topic: env.topics.topic(for: OrderCreatedV2.eventType), type: OrderCreatedV2.eventType,
                otherType: InventoryReserved.eventType, tag: "poison-test"
            ).filter { ["not-json", "bad-envelope", "schema-violation"].contains($0.0) }
            var letters: [PoisonRecord] = []
            for (kind, message) in poison {
                let r = try await producer.send(message)
                letters.append(
                    PoisonRecord(
                        kind: kind, topic: r.topic, partition: r.partition, offset: r.offset, consumers: ["inventory"]))
            }
            await producer.shutdown()

            let snapshot = ChaosCheckCommand.Snapshot(entries: entries, letters: letters)
            func evaluate() async throws -> [ChaosCheckCommand.Check] {
                try await snapshot.evaluate(orders: pools[0], inventory: pools[1], billing: pools[2], tracker: pools[3])
            }
            func failing() async throws -> [String] { try await evaluate().filter { !$0.ok }.map(\.name) }
            let deadline = ContinuousClock.now + .seconds(60)
            var failed = try await failing()
            while !failed.isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                failed = try await failing()
            }
            #expect(failed.isEmpty)
            #expect(try await evaluate().count == 16)

            // Stock sold out of nowhere.
            try await pools[1].execute("UPDATE stock SET sold = sold + 1 WHERE sku = $1", [ChaosPlan.plenty])
            #expect(
                try await failing() == [
                    "stock conserved (available + reserved + sold = seeded), nothing left reserved",
                    "units sold = units in confirmed orders (\(soldConfirmed(entries)))",
                ])
            try await pools[1].execute("UPDATE stock SET sold = sold - 1 WHERE sku = $1", [ChaosPlan.plenty])

            // A confirmed order whose charge is gone (and the credit no longer matches).
            let confirmed = entries.first { $0.expected == "CONFIRMED" }!.orderId!
            try await pools[2].execute("UPDATE charges SET status = 'DECLINED' WHERE order_id::text = $1", [confirmed])
            #expect(
                try await failing() == [
                    "each confirmed order charged exactly once, no other order charged",
                    "credit used = sum of charges, per customer",
                ])
            try await pools[2].execute("UPDATE charges SET status = 'CHARGED' WHERE order_id::text = $1", [confirmed])

            // An order nobody placed, a refused order stored, an order back to PENDING.
            try await pools[0].execute(
                """
                INSERT INTO orders (id, customer_id, currency, total_amount, status, idempotency_key)
                VALUES (gen_random_uuid(), 'x', 'EUR', 1, 'CANCELLED', $1)
                """, [entries.first { $0.answer == "refused" }!.key])
            try await pools[0].execute("UPDATE orders SET status = 'PENDING' WHERE id::text = $1", [confirmed])
            #expect(
                try await failing() == [
                    "every accepted order reached a terminal state (\(entries.filter { $0.orderId != nil }.count))",
                    "no refused order stored (1 refused), no order nobody placed",
                    "the tracker agrees with the orders table",
                ])
            try await pools[0].execute("UPDATE orders SET status = 'CONFIRMED' WHERE id::text = $1", [confirmed])
            try await pools[0].execute("DELETE FROM orders WHERE customer_id = 'x'")

            // A dead letter lost, another that is not poison; a row left in an outbox, parked.
            try await pools[1].execute(
                "DELETE FROM saga_dead_letters WHERE source_offset = $1 AND source_partition = $2",
                [letters[0].offset, Int(letters[0].partition)])
            try await pools[2].execute(
                "INSERT INTO saga_dead_letters (source_topic, source_partition, source_offset, reason) VALUES ('t', 0, 0, 'x')"
            )
            try await pools[0].execute(
                """
                INSERT INTO saga_outbox (shard, saga_id, topic, payload, failed_at)
                VALUES (0, 'x', 'nowhere', '\\x00', now())
                """)
            #expect(
                try await failing() == [
                    "every outbox drained", "no outbox row parked",
                    "every poison record dead-lettered once by each consumer (\(letters.count))",
                    "nothing dead-lettered that is not poison",
                ])
            // An ambiguous answer recorded by a client.
            var ambiguous = entries
            ambiguous[0].ambiguous = 1
            #expect(
                try await ChaosCheckCommand.Snapshot(entries: ambiguous, letters: letters).evaluate(
                    orders: pools[0], inventory: pools[1], billing: pools[2], tracker: pools[3]
                ).filter { !$0.ok }.map(\.name).contains("every order answered: accepted or refused, no ambiguous 5xx"))
        } catch {
            Issue.record(error)
        }
        for p in pools { await p.close() }
        await running.stop()
    }

    private func soldConfirmed(_ entries: [ChaosLedger]) -> Int {
        entries.filter { $0.expected == "CONFIRMED" && $0.orderId != nil }.reduce(0) {
            $0 + $1.lines.reduce(0) { $0 + $1.quantity }
        }
    }
}
