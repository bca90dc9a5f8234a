import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

/// Duplicates, crashes between publish and mark, poison events: nothing lost, nothing applied twice.
@Suite(.serialized) struct DeliveryGuaranteeTests {
    /// Snapshot of every state a saga touches, to compare before and after re-deliveries.
    func state(_ stack: TestStack) async throws -> [String] {
        var out: [String] = []
        for r in try await stack.query("orders", "SELECT id::text, status FROM orders ORDER BY id") {
            out.append("order \(try r.decode("id", as: String.self)) \(try r.decode("status", as: String.self))")
        }
        for r in try await stack.query("inventory", "SELECT sku, available, reserved, sold FROM stock ORDER BY sku") {
            out.append(
                "stock \(try r.decode("sku", as: String.self)) \(try r.decode("available", as: Int.self)) "
                    + "\(try r.decode("reserved", as: Int.self)) \(try r.decode("sold", as: Int.self))")
        }
        for r in try await stack.query("billing", "SELECT customer_id, used FROM accounts ORDER BY customer_id") {
            out.append(
                "account \(try r.decode("customer_id", as: String.self)) \(try r.decode("used", as: Int64.self))")
        }
        for s in TestStack.services {
            // Published rows are deleted, so the outbox holds only what is unpublished; the events a service
            // received (its inbox) show whether a re-delivery made anything emit again.
            let n = try await stack.query(s, "SELECT count(*) AS n FROM saga_outbox").first!.decode("n", as: Int.self)
            out.append("outbox \(s) \(n)")
            let handled = try await stack.query(s, "SELECT count(*) AS n FROM saga_inbox").first!.decode(
                "n", as: Int.self)
            out.append("inbox \(s) \(handled)")
        }
        return out
    }

    @Test func deliveringEveryEventTwiceChangesNothing() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        _ = try await stack.finishOneOfEachOutcome()
        // Inventory and billing consume order.cancelled too (after orders committed the outcome).
        try await stack.waitUntilConsumed(OrderCancelled.eventType, count: 2, by: ["inventory", "billing"])
        let before = try await state(stack)

        // Every event of these sagas, read back from the broker and delivered a second time.
        // confirmed: 4 events; declined: 5 (created, reserved, failed, released, cancelled); out of stock: 3.
        let all = try await stack.consumeAll(sagaEventTypes.map(stack.topics.topic(for:)), atLeast: 12)
        #expect(all.count == 12)
        try await stack.produce(
            all.map { KafkaOutgoingMessage(topic: $0.topic, key: $0.key, value: $0.value, headers: $0.headers) })
        try await stack.eventually("duplicates skipped") {
            let d = ["orders", "inventory", "billing"].compactMap { stack.worker($0)?.stats.duplicates }.reduce(0, +)
            // All but order.confirmed, which no service consumes: 10, and the two order.cancelled are consumed by
            // inventory and billing (2 × 2).
            return d >= 14
        }
        try await Task.sleep(for: .seconds(1))
        let after = try await state(stack)
        let deadLettered = ["orders", "inventory", "billing"].compactMap { stack.worker($0)?.stats.deadLettered }
            .reduce(0, +)
        await stack.stop()
        #expect(before == after)
        #expect(deadLettered == 0)
    }

    @Test func aRelayCrashingBetweenPublishAndMarkLosesNothingAndAppliesNothingTwice() async throws {
        let stack = try await TestStack()
        let crashing = stack.startRelay("orders") { $0.failpoint = .crashAfterPublish }
        for s in ["inventory", "billing"] { stack.startRelay(s) }
        for s in TestStack.services { try stack.startWorker(s) }
        let id = try await stack.place("alice", [("widget", 1)])
        // The crashing relay publishes order.created, then dies before marking it.
        let firstDelivery = try await stack.consumeAll([stack.topics.topic(for: "order.created")], atLeast: 1)
        #expect(firstDelivery.count == 1)
        #expect(crashing.stats.published == 0)
        let unmarked = try await stack.query(
            // Rows are deleted once acknowledged: the crashed relay's row is still there. (With hops now taking
            // milliseconds, orders may already have written its next event, which no relay publishes yet.)
            "orders", "SELECT count(*) AS n FROM saga_outbox WHERE event_type = 'order.created'")
        #expect(try unmarked.first?.decode("n", as: Int.self) == 1)
        // A new relay publishes the same row again.
        stack.startRelay("orders")
        let view = try await stack.waitForTerminal(id)
        let created = try await stack.consumeAll([stack.topics.topic(for: "order.created")], atLeast: 2)
        try await stack.eventually("inventory skipped the re-published event") {
            (stack.worker("inventory")?.stats.duplicates ?? 0) >= 1
        }
        let reservations = try await stack.query("inventory", "SELECT count(*) AS n FROM reservations")
        let charges = try await stack.query("billing", "SELECT count(*) AS n FROM charges")
        let widget = try await stack.query("inventory", "SELECT available, sold FROM stock WHERE sku = 'widget'")
        await stack.stop()

        #expect(view.status == "CONFIRMED")
        #expect(created.count == 2)
        #expect(Set(created.compactMap { $0.header(SagaHeader.eventId) }).count == 1)
        #expect(try reservations.first?.decode("n", as: Int.self) == 1)
        #expect(try charges.first?.decode("n", as: Int.self) == 1)
        #expect(try widget.first?.decode("available", as: Int.self) == 999)
        #expect(try widget.first?.decode("sold", as: Int.self) == 1)
    }

    @Test func poisonEventsAreDeadLetteredAndTheWorkerKeepsGoing() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let topic = stack.topics.topic(for: "order.created")
        let valid = try #require(try await validOrderCreated(stack))
        func envelope(_ mutate: (inout [String: JSONValue]) -> Void) -> [UInt8] {
            guard case .object(var o) = valid else { return [] }
            mutate(&o)
            return JSONValue.object(o).serialized()
        }
        let poison: [(String, [UInt8])] = [
            ("not JSON", Array("{not json".utf8)),
            ("invalid envelope", envelope { $0["sagaId"] = nil }),
            (
                "schema violation",
                envelope { o in
                    o["id"] = .string(UUID().uuidString.lowercased())
                    o["data"] = .object(["orderId": .string("x")])
                }
            ),
            (
                "unknown event version",
                envelope { o in
                    o["id"] = .string(UUID().uuidString.lowercased())
                    o["version"] = .integer(9)
                }
            ),
        ]
        try await stack.produce(
            poison.map { KafkaOutgoingMessage(topic: topic, key: Array("poison".utf8), value: $0.1, headers: []) })
        // NUL bytes, which PostgreSQL text cannot hold: in the key and a header of a non-event, and inside a
        // valid event's field. Each must still be dead-lettered rather than retried forever.
        try await stack.produce([
            KafkaOutgoingMessage(
                topic: topic, key: [0x61, 0, 0x62], value: Array("{nul".utf8),
                headers: [KafkaHeader(key: "x-binary", value: [0x41, 0, 0x42])]),
            KafkaOutgoingMessage(
                topic: topic, key: Array("nul-field".utf8),
                value: envelope { o in
                    o["id"] = .string(UUID().uuidString.lowercased())
                    if case .object(var data)? = o["data"] {
                        data["customerId"] = .string("ali\u{0}ce")
                        o["data"] = .object(data)
                    }
                }),
        ])
        // A payment.failed for an order inventory never reserved: the handler rejects it.
        let orphan = try OutgoingEvent(
            PaymentFailed(
                orderId: UUID().uuidString.lowercased(), customerId: "alice", reason: .insufficientCredit,
                amount: Money(amount: 1, currency: "EUR")), sagaId: "orphan", producer: "billing", causedBy: nil)
        try await stack.produce([try EventCodec(upcasters: [], topics: stack.topics).encode(orphan)])

        // The partition moves on: a good order placed afterwards completes.
        let id = try await stack.place("alice", [("widget", 1)])
        let view = try await stack.waitForTerminal(id)
        let letters = try await stack.consumeAll([stack.topics.deadLetterTopic(consumer: "inventory")], atLeast: 7)
        await stack.stop()

        #expect(view.status == "CONFIRMED")
        #expect(letters.count == 7)
        let reasons = letters.compactMap { $0.header(SagaHeader.deadLetterReason) }
        #expect(letters.contains { $0.key == [0x61, 0, 0x62] && $0.header("x-binary") != nil })
        #expect(reasons.contains { $0.hasPrefix("database rejected the event") })
        for (expected, _) in poison {
            #expect(reasons.contains { $0.hasPrefix(expected) }, "no dead letter for \(expected): \(reasons)")
        }
        #expect(reasons.contains { $0.hasPrefix("rejected: no reservation") })
        for letter in letters {
            #expect(letter.header(SagaHeader.deadLetterSourceTopic) != nil)
            #expect(letter.header(SagaHeader.deadLetterSourcePartition).flatMap(Int32.init) != nil)
            #expect(letter.header(SagaHeader.deadLetterSourceOffset).flatMap(Int64.init) != nil)
        }
        // The original bytes travel unchanged.
        #expect(letters.contains { $0.value == Array("{not json".utf8) })
    }

    @Test func aPoisonWithAHugeKeyHugeHeadersAndNULsStallsNoPartition() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let topic = stack.topics.topic(for: "order.created")
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        func incompressible(_ count: Int) -> String { String((0..<count).map { _ in alphabet.randomElement()! }) }
        // One poison per partition: not JSON, a ~5 KB key with a NUL, a 100 KB header and NUL bytes in a header.
        let poison = (0..<4).map { partition in
            KafkaOutgoingMessage(
                topic: topic, key: Array(incompressible(5000).utf8) + [0], value: Array("{not json\u{0}".utf8),
                headers: [
                    KafkaHeader(key: "x-huge", string: incompressible(100_000)),
                    KafkaHeader(key: "x-nul", value: [0, 1, 0]),
                ], partition: Int32(partition))
        }
        try await stack.produce(poison)
        // Later orders, on every partition, complete.
        var ids: [String] = []
        for _ in 0..<32 { ids.append(try await stack.place("alice", [("widget", 1)])) }
        var statuses: [String] = []
        for id in ids { statuses.append(try await stack.waitForTerminal(id, timeout: .seconds(30)).status) }
        let created = try await stack.consumeAll([topic], atLeast: 36)
        let partitions = Set(
            created.filter { ids.contains($0.key.map { String(decoding: $0, as: UTF8.self) } ?? "") }.map(\.partition))
        let letters = try await stack.consumeAll([stack.topics.deadLetterTopic(consumer: "inventory")], atLeast: 4)
        let deadLettered = stack.worker("inventory")?.stats.deadLettered
        await stack.stop()

        #expect(statuses == Array(repeating: "CONFIRMED", count: ids.count))
        #expect(partitions == [0, 1, 2, 3])
        #expect(letters.count == 4)
        #expect(deadLettered == 4)
        #expect(Set(letters.compactMap { $0.header(SagaHeader.deadLetterSourcePartition) }) == ["0", "1", "2", "3"])
        for letter in letters {
            #expect(letter.header(SagaHeader.deadLetterReason)?.hasPrefix("not JSON") == true)
            #expect(letter.key?.count == 5001)
        }
    }

    /// A well-formed order.created envelope, as the orders service writes it.
    func validOrderCreated(_ stack: TestStack) async throws -> JSONValue? {
        let id = UUID().uuidString.lowercased()
        let event = try OutgoingEvent(
            OrderCreatedV2(
                orderId: id, customerId: "alice", total: Money(amount: 1250, currency: "EUR"),
                lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]), sagaId: id, producer: "orders",
            causedBy: nil)
        return event.envelope.json
    }
}
