import Foundation
import Logging
import SagaKafka
import SagaServices
import SagaTestSupport
import Synchronization
import Testing

@testable import SagaEngine

/// The worker's set-based path: what one batch (one transaction) does when it mixes outcomes, sagas,
/// duplicates and poison. The events travel through the broker (produced, then consumed back), and the
/// batch is handed to the inventory worker exactly as composed, so what shares a transaction is known.
@Suite(.serialized) struct WorkerBatchTests {
    /// An inventory worker (not running its loop) and a pool on inventory's database.
    struct Inventory {
        let worker: Worker
        let pool: PostgresPool

        init(_ stack: TestStack) {
            let definition = InventoryService.definition()
            worker = Worker(
                configuration: stack.workerConfiguration("inventory"), handlers: definition.handlers,
                upcasters: definition.upcasters, migrations: definition.migrations, logger: stack.logger)
            pool = PostgresPool(
                configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        }

        func process(_ batch: [KafkaMessage]) async -> Bool { await worker.process(batch, pool: pool) }
    }

    /// `worker.process(batch)`, cancelled after `limit`: a batch that would retry forever returns false
    /// instead of hanging the test.
    static func process(
        _ batch: [KafkaMessage], with worker: Worker, pool: PostgresPool, within limit: Duration = .seconds(30)
    ) async -> Bool {
        let task = Task { await worker.process(batch, pool: pool) }
        let timer = Task {
            try await Task.sleep(for: limit)
            task.cancel()
        }
        let result = await task.value
        timer.cancel()
        return result
    }

    /// Random letters and digits: text PostgreSQL cannot compress below its index row limit.
    static func incompressible(_ count: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        return String((0..<count).map { _ in alphabet.randomElement()! })
    }

    static func orderCreated(_ stack: TestStack, customer: String = "alice", _ lines: [(String, Int)]) throws
        -> (orderId: String, message: KafkaOutgoingMessage)
    {
        let id = UUID().uuidString.lowercased()
        let event = try OutgoingEvent(
            OrderCreatedV2(
                orderId: id, customerId: customer,
                total: Money(amount: 100 * Int64(lines.map(\.1).reduce(0, +)), currency: "EUR"),
                lines: lines.map { .init(sku: $0.0, quantity: $0.1, unitPrice: nil) }), sagaId: id, producer: "orders",
            causedBy: nil)
        return (id, try EventCodec(upcasters: [], topics: stack.topics).encode(event))
    }

    static func payment(_ stack: TestStack, orderId: String, completed: Bool) throws -> KafkaOutgoingMessage {
        let amount = Money(amount: 100, currency: "EUR")
        let event =
            completed
            ? try OutgoingEvent(
                PaymentCompleted(
                    orderId: orderId, customerId: "alice", paymentId: UUID().uuidString.lowercased(), amount: amount),
                sagaId: orderId, producer: "billing", causedBy: nil)
            : try OutgoingEvent(
                PaymentFailed(orderId: orderId, customerId: "alice", reason: .insufficientCredit, amount: amount),
                sagaId: orderId, producer: "billing", causedBy: nil)
        return try EventCodec(upcasters: [], topics: stack.topics).encode(event)
    }

    /// Produces `messages` to the broker, reads them back, and returns the consumed records in the order of
    /// `messages` (the same bytes produced twice come back as two records, at two offsets).
    static func throughBroker(_ stack: TestStack, _ messages: [KafkaOutgoingMessage]) async throws -> [KafkaMessage] {
        try await stack.produce(messages)
        var consumed = try await stack.consumeAll(
            Array(Set(messages.map(\.topic))), atLeast: messages.count, timeout: .seconds(30))
        consumed.sort { ($0.topic, $0.partition, $0.offset) < ($1.topic, $1.partition, $1.offset) }
        var batch: [KafkaMessage] = []
        for m in messages {
            let i = try #require(consumed.firstIndex { $0.topic == m.topic && $0.value == m.value })
            batch.append(consumed.remove(at: i))
        }
        return batch
    }

    /// inventory's outbox as (saga id, event type), in id order (the order the relay publishes a saga's rows in).
    static func outbox(_ stack: TestStack) async throws -> [(saga: String, type: String)] {
        try await stack.query(
            "inventory",
            """
            SELECT saga_id, CASE WHEN topic = $1 THEN 'dead letter' ELSE event_type END AS type
            FROM saga_outbox ORDER BY id
            """, [stack.topics.deadLetterTopic(consumer: "inventory")]
        ).map { (try $0.decode("saga_id"), try $0.decode("type")) }
    }

    static func reservations(_ stack: TestStack) async throws -> [String: String] {
        var out: [String: String] = [:]
        for row in try await stack.query("inventory", "SELECT order_id::text AS id, status FROM reservations") {
            out[try row.decode("id")] = try row.decode("status")
        }
        return out
    }

    static func stock(_ stack: TestStack, _ sku: String) async throws -> [Int] {
        let row = try #require(
            try await stack.query("inventory", "SELECT available, reserved, sold FROM stock WHERE sku = $1", [sku])
                .first)
        return [try row.decode("available"), try row.decode("reserved"), try row.decode("sold")]
    }

    @Test func oneBatchMixingEveryOutcomeIsOneTransactionWithEachOutcome() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let reserved = try Self.orderCreated(stack, [("widget", 2)])
        let rejected = try Self.orderCreated(stack, [("widget", 1), ("doohickey", 1)])
        let released = try Self.orderCreated(stack, [("gadget", 3)])
        let sold = try Self.orderCreated(stack, [("widget", 1), ("gizmo", 2)])
        let poison = KafkaOutgoingMessage(
            topic: stack.topics.topic(for: "order.created"), key: Array("poison".utf8), value: Array("{oops".utf8),
            headers: [])
        let batch = try await Self.throughBroker(
            stack,
            [
                reserved.message, rejected.message, released.message, poison,
                try Self.payment(stack, orderId: released.orderId, completed: false), sold.message,
                reserved.message,  // the same event again: a duplicate inside the batch
                try Self.payment(stack, orderId: sold.orderId, completed: true),
            ])
        #expect(await inventory.process(batch))
        let stats = inventory.worker.stats
        let reservations = try await Self.reservations(stack)
        let outbox = try await Self.outbox(stack)
        let widget = try await Self.stock(stack, "widget")
        let gadget = try await Self.stock(stack, "gadget")
        let gizmo = try await Self.stock(stack, "gizmo")
        let inbox = try await stack.query("inventory", "SELECT count(*) AS n FROM saga_inbox").first!.decode(
            "n", as: Int.self)

        // The relay publishes what the batch wrote, the poison to the dead-letter topic with its reason.
        stack.startRelay("inventory")
        let published = try await stack.consumeAll(
            ["inventory.reserved", "inventory.rejected", "inventory.released"].map(stack.topics.topic(for:)),
            atLeast: 5)
        let letters = try await stack.consumeAll([stack.topics.deadLetterTopic(consumer: "inventory")], atLeast: 1)
        await inventory.pool.close()
        await stack.stop()

        #expect(stats.batches == 1)
        #expect(stats.handled == 6)
        #expect(stats.duplicates == 1)
        #expect(stats.deadLettered == 1)
        #expect(stats.retries == 0)
        #expect(stats.isolated == 0)
        #expect(inbox == 6)
        #expect(
            reservations == [
                reserved.orderId: "RESERVED", rejected.orderId: "REJECTED", released.orderId: "RELEASED",
                sold.orderId: "SOLD",
            ])
        #expect(widget == [1000 - 2 - 1, 2, 1])
        #expect(gadget == [500, 0, 0])
        #expect(gizmo == [5 - 2, 0, 2])
        let rows = outbox.map { "\($0.saga) \($0.type)" }
        #expect(
            rows == [
                "poison dead letter", "\(reserved.orderId) inventory.reserved",
                "\(rejected.orderId) inventory.rejected", "\(released.orderId) inventory.reserved",
                "\(released.orderId) inventory.released", "\(sold.orderId) inventory.reserved",
            ])
        #expect(published.count == 5)
        #expect(letters.count == 1)
        #expect(letters.first?.value == Array("{oops".utf8))
        #expect(letters.first?.header(SagaHeader.deadLetterReason)?.hasPrefix("not JSON") == true)
    }

    @Test func twoEventsOfOneSagaInOneBatchAreHandledInTheirOrder() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        // Reserved, then released, in one batch.
        let first = try Self.orderCreated(stack, [("gadget", 4)])
        // gizmo has 5: the first order in the batch gets 3, the next one finds 2 and is rejected.
        let gizmoFirst = try Self.orderCreated(stack, [("gizmo", 3)])
        let gizmoSecond = try Self.orderCreated(stack, [("gizmo", 3)])
        #expect(
            await inventory.process(
                try await Self.throughBroker(
                    stack,
                    [
                        first.message, gizmoFirst.message,
                        try Self.payment(stack, orderId: first.orderId, completed: false), gizmoSecond.message,
                    ])))
        let setBased = inventory.worker.stats
        // The other way round: the payment failure comes before its order, finds no reservation and is
        // dead-lettered; the order after it is reserved (and stays so).
        let second = try Self.orderCreated(stack, [("gadget", 1)])
        #expect(
            await inventory.process(
                try await Self.throughBroker(
                    stack, [try Self.payment(stack, orderId: second.orderId, completed: false), second.message])))
        let stats = inventory.worker.stats
        let reservations = try await Self.reservations(stack)
        let outbox = try await Self.outbox(stack).filter { $0.type != "dead letter" }.map { "\($0.saga) \($0.type)" }
        let gadget = try await Self.stock(stack, "gadget")
        let gizmo = try await Self.stock(stack, "gizmo")
        let reasons = try await stack.query("inventory", "SELECT saga_id, reason FROM saga_dead_letters").map {
            "\(try $0.decode("saga_id", as: String.self)) \(try $0.decode("reason", as: String.self))"
        }
        await inventory.pool.close()
        await stack.stop()

        #expect(setBased.handled == 4)
        #expect(setBased.isolated == 0)
        #expect(
            reservations == [
                first.orderId: "RELEASED", second.orderId: "RESERVED", gizmoFirst.orderId: "RESERVED",
                gizmoSecond.orderId: "REJECTED",
            ])
        #expect(
            outbox == [
                "\(first.orderId) inventory.reserved", "\(gizmoFirst.orderId) inventory.reserved",
                "\(first.orderId) inventory.released", "\(gizmoSecond.orderId) inventory.rejected",
                "\(second.orderId) inventory.reserved",
            ])
        #expect(gadget == [500 - 1, 1, 0])
        #expect(gizmo == [2, 3, 0])
        #expect(reasons == ["\(second.orderId) rejected: no reservation for order \(second.orderId)"])
        #expect(stats.handled == 5)
        #expect(stats.deadLettered == 1)
    }

    @Test func aDuplicateInsideOneBatchIsHandledOnce() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let order = try Self.orderCreated(stack, [("widget", 5)])
        let other = try Self.orderCreated(stack, [("widget", 1)])
        let batch = try await Self.throughBroker(stack, [order.message, other.message, order.message])
        #expect(batch.count == 3)
        #expect(await inventory.process(batch))
        // Delivered again in a later batch: a duplicate against the inbox.
        #expect(await inventory.process([batch[0]]))
        let stats = inventory.worker.stats
        let widget = try await Self.stock(stack, "widget")
        let outbox = try await Self.outbox(stack).map { "\($0.saga) \($0.type)" }
        let lines = try await stack.query("inventory", "SELECT count(*) AS n FROM reservation_lines").first!.decode(
            "n", as: Int.self)
        await inventory.pool.close()
        await stack.stop()

        #expect(stats.handled == 2)
        #expect(stats.duplicates == 2)
        #expect(stats.deadLettered == 0)
        #expect(widget == [1000 - 6, 6, 0])
        #expect(lines == 2)
        #expect(outbox == ["\(order.orderId) inventory.reserved", "\(other.orderId) inventory.reserved"])
    }

    /// The optimistic inbox: a batch of new events sends its inbox insert with the handlers' first statement. A
    /// batch holding a redelivered event fails that way and runs again inbox-first, which skips the duplicate;
    /// the batches after it run inbox-first too until one finds no duplicate, and the next is optimistic again.
    @Test func aBatchWithARedeliveredEventRunsAgainInboxFirstUntilABatchFindsNoDuplicate() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let orders = try (0..<5).map { _ in try Self.orderCreated(stack, [("widget", 1)]) }
        let m = try await Self.throughBroker(stack, orders.map(\.message))
        var retries: [Int] = []
        for batch in [[m[0]], [m[0], m[1]], [m[1], m[2]], [m[3]], [m[3], m[4]]] {
            #expect(await inventory.process(batch))
            retries.append(inventory.worker.stats.inboxFirstRetries)
        }
        let stats = inventory.worker.stats
        let widget = try await Self.stock(stack, "widget")
        let outbox = try await Self.outbox(stack).map { "\($0.saga) \($0.type)" }
        await inventory.pool.close()
        await stack.stop()

        // new (optimistic) / m[0] again (fails, inbox-first) / m[1] again (inbox-first: no failure) / new
        // (inbox-first, finds no duplicate) / m[3] again (optimistic again: fails, inbox-first).
        #expect(retries == [0, 1, 1, 1, 2])
        #expect(stats.handled == 5)
        #expect(stats.duplicates == 3)
        #expect(stats.batches == 5)
        #expect(stats.retries == 0)
        #expect(widget == [1000 - 5, 5, 0])
        #expect(outbox == orders.map { "\($0.orderId) inventory.reserved" })
    }

    @Test func aPoisonEventInTheMiddleOfABatchIsDeadLetteredAlone() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let before = try Self.orderCreated(stack, [("widget", 1)])
        // Valid events the handler refuses for good: a SKU inventory does not know, and a NUL that
        // PostgreSQL text cannot hold. Each fails the set-based statements of the whole batch.
        let unknownSku = try Self.orderCreated(stack, [("widget", 1), ("sprocket", 1)])
        let nul = try Self.orderCreated(stack, customer: "ali\u{0}ce", [("widget", 1)])
        let after = try Self.orderCreated(stack, [("widget", 2)])
        let batch = try await Self.throughBroker(
            stack, [before.message, unknownSku.message, nul.message, after.message])
        #expect(await inventory.process(batch))
        let stats = inventory.worker.stats
        let reservations = try await Self.reservations(stack)
        let widget = try await Self.stock(stack, "widget")
        let letters = try await stack.query(
            "inventory", "SELECT saga_id, reason FROM saga_dead_letters ORDER BY source_offset")
        let inbox = try await stack.query("inventory", "SELECT event_id::text AS id FROM saga_inbox").map {
            try $0.decode("id", as: String.self)
        }
        await inventory.pool.close()
        await stack.stop()

        #expect(stats.batches == 1)
        #expect(stats.isolated == 1)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 2)
        #expect(reservations == [before.orderId: "RESERVED", after.orderId: "RESERVED"])
        #expect(widget == [1000 - 3, 3, 0])
        let reasons = try letters.map { try $0.decode("reason", as: String.self) }
        #expect(reasons.contains { $0.hasPrefix("rejected: unknown SKU 'sprocket'") }, "\(reasons)")
        #expect(reasons.contains { $0.hasPrefix("database rejected the event") }, "\(reasons)")
        #expect(reasons.count == 2)
        // A dead-lettered event leaves no inbox row: redriven once fixed, it is handled, not skipped.
        #expect(inbox.count == 2)
    }

    @Test func aPoisonWithAHugeKeyHugeHeadersAndNULsIsDeadLetteredWithBoundedValues() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let before = try Self.orderCreated(stack, [("widget", 1)])
        let after = try Self.orderCreated(stack, [("widget", 2)])
        // Not JSON, a ~5 KB key (too large for the outbox's saga index as a saga id) with a NUL in it, a
        // 200 KB header and a header holding NUL bytes.
        let key = Array(Self.incompressible(5000).utf8) + [0] + Array("tail".utf8)
        let poison = KafkaOutgoingMessage(
            topic: stack.topics.topic(for: "order.created"), key: key, value: Array("{not json\u{0}".utf8),
            headers: [
                KafkaHeader(key: "x-huge", string: Self.incompressible(200_000)),
                KafkaHeader(key: "x-nul", value: [0x41, 0, 0x42]),
            ])
        let batch = try await Self.throughBroker(stack, [before.message, poison, after.message])
        let processed = await Self.process(batch, with: inventory.worker, pool: inventory.pool, within: .seconds(20))
        let stats = inventory.worker.stats
        let letters = try await stack.query("inventory", "SELECT saga_id, reason FROM saga_dead_letters")
        let rows = try await stack.query(
            "inventory", "SELECT saga_id, key, headers::text AS headers FROM saga_outbox WHERE topic = $1",
            [stack.topics.deadLetterTopic(consumer: "inventory")])
        let reservations = try await Self.reservations(stack)
        await inventory.pool.close()
        await stack.stop()

        #expect(processed)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 1)
        #expect(reservations == [before.orderId: "RESERVED", after.orderId: "RESERVED"])
        #expect(letters.count == 1)
        #expect(rows.count == 1)
        let sagaId = try letters.first?.decode("saga_id", as: String.self) ?? ""
        #expect(sagaId.utf8.count <= Bounded.sagaIdBytes)
        #expect(!sagaId.utf8.contains(0))
        #expect(sagaId.hasPrefix(String(decoding: key.prefix(20), as: UTF8.self)))
        #expect(try rows.first?.decode("saga_id", as: String.self) == sagaId)
        #expect(try letters.first?.decode("reason", as: String.self).hasPrefix("not JSON") == true)
        // The dead letter keeps the original key (a redrive goes to the same partition); header values are
        // bounded, with a marker saying how much was cut.
        #expect(try rows.first?.decode("key", as: [UInt8].self) == key)
        let headers = Outbox.decodeHeaders(try rows.first?.decode("headers", as: String.self) ?? "")
        let huge = try #require(headers.first { $0.key == "x-huge" })
        #expect(huge.value.count <= Bounded.headerValueBytes + 64)
        #expect(huge.stringValue?.contains("…[cut ") == true)
        #expect(headers.first { $0.key == "x-nul" }?.value == [0x41, 0, 0x42])
    }

    @Test func aDeadLetterTheDatabaseRefusesIsWrittenInMinimalFormInsteadOfLooping() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        // The database refuses every dead letter but a minimal one (saga id "unknown").
        try await stack.query(
            "inventory",
            """
            CREATE FUNCTION refuse_full_letters() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.saga_id <> 'unknown' THEN RAISE EXCEPTION 'dead letter refused'; END IF;
                RETURN NEW;
            END $$
            """)
        try await stack.query(
            "inventory",
            """
            CREATE TRIGGER refuse_full_letters BEFORE INSERT ON saga_dead_letters
                FOR EACH ROW EXECUTE FUNCTION refuse_full_letters()
            """)
        let before = try Self.orderCreated(stack, [("widget", 1)])
        let poison = KafkaOutgoingMessage(
            topic: stack.topics.topic(for: "order.created"), key: Array("poison-key".utf8),
            value: Array("{not json".utf8), headers: [KafkaHeader(key: "x-custom", string: "kept only in full")])
        let after = try Self.orderCreated(stack, [("widget", 2)])
        let batch = try await Self.throughBroker(stack, [before.message, poison, after.message])
        let processed = await Self.process(batch, with: inventory.worker, pool: inventory.pool, within: .seconds(20))
        let stats = inventory.worker.stats
        let letters = try await stack.query("inventory", "SELECT saga_id, reason FROM saga_dead_letters")
        let rows = try await stack.query(
            "inventory", "SELECT saga_id, key, payload, headers::text AS headers FROM saga_outbox WHERE topic = $1",
            [stack.topics.deadLetterTopic(consumer: "inventory")])
        let reservations = try await Self.reservations(stack)
        await inventory.pool.close()
        await stack.stop()

        #expect(processed)
        #expect(stats.retries == 0)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 1)
        #expect(reservations == [before.orderId: "RESERVED", after.orderId: "RESERVED"])
        #expect(try letters.map { try $0.decode("saga_id", as: String.self) } == ["unknown"])
        let reason = try letters.first?.decode("reason", as: String.self) ?? ""
        #expect(reason.hasPrefix("not JSON"), "\(reason)")
        #expect(reason.contains("minimal dead letter") && reason.contains("dead letter refused"), "\(reason)")
        #expect(rows.count == 1)
        #expect(try rows.first?.decode("key", as: [UInt8].self) == Array("poison-key".utf8))
        #expect(try rows.first?.decode("payload", as: [UInt8].self) == Array("{not json".utf8))
        let headers = Outbox.decodeHeaders(try rows.first?.decode("headers", as: String.self) ?? "")
        #expect(headers.allSatisfy { $0.key.hasPrefix("dlq-") }, "\(headers.map(\.key))")
        #expect(headers.first { $0.key == SagaHeader.deadLetterSourceOffset }?.stringValue == String(batch[1].offset))
    }

    @Test func aHandlerFailingAgainAndAgainWithTheSameErrorIsDeadLetteredWithItsAttempts() async throws {
        let stack = try await TestStack()
        let poisonSaga = "fails-" + UUID().uuidString.lowercased()
        // 42P01 (undefined table) is neither the event's fault for certain nor transient: retried, but not
        // forever.
        let handler = EventHandler(eventType: OrderCreatedV2.eventType, version: 2) { event, context in
            if event.sagaId == poisonSaga {
                try await context.connection.execute("SELECT * FROM saga_no_such_table")
            }
            return []
        }
        var configuration = stack.workerConfiguration("inventory")
        configuration.retry = RetryPolicy(initialDelay: .milliseconds(10), maxDelay: .milliseconds(50))
        configuration.deadLetterAfterAttempts = 3
        let worker = Worker(
            configuration: configuration, handlers: [handler], upcasters: sagaUpcasters, migrations: [],
            logger: stack.logger)
        let pool = PostgresPool(
            configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        let codec = EventCodec(upcasters: [], topics: stack.topics)
        func order(_ saga: String) throws -> KafkaOutgoingMessage {
            try codec.encode(
                OutgoingEvent(
                    OrderCreatedV2(
                        orderId: UUID().uuidString.lowercased(), customerId: "alice",
                        total: Money(amount: 1, currency: "EUR"),
                        lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]),
                    sagaId: saga, producer: "orders", causedBy: nil))
        }
        let batch = try await Self.throughBroker(stack, [try order("A"), try order(poisonSaga), try order("B")])
        let processed = await Self.process(batch, with: worker, pool: pool, within: .seconds(20))
        let stats = worker.stats
        let letters = try await stack.query("inventory", "SELECT saga_id, reason FROM saga_dead_letters")
        let rows = try await stack.query(
            "inventory", "SELECT headers::text AS headers FROM saga_outbox WHERE topic = $1",
            [stack.topics.deadLetterTopic(consumer: "inventory")])
        let inbox = try await stack.query("inventory", "SELECT saga_id FROM saga_inbox ORDER BY saga_id").map {
            try $0.decode("saga_id", as: String.self)
        }
        await pool.close()
        await stack.stop()

        #expect(processed)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 1)
        #expect(stats.retries == 3)
        #expect(inbox == ["A", "B"])
        #expect(try letters.map { try $0.decode("saga_id", as: String.self) } == [poisonSaga])
        let reason = try letters.first?.decode("reason", as: String.self) ?? ""
        #expect(reason.hasPrefix("failed 4 times"), "\(reason)")
        #expect(reason.contains("42P01"), "\(reason)")
        let headers = Outbox.decodeHeaders(try rows.first?.decode("headers", as: String.self) ?? "")
        #expect(headers.first { $0.key == SagaHeader.deadLetterAttempts }?.stringValue == "4")
    }

    @Test func aHandlerCannotCommitOrRollBackTheBatchTransaction() async throws {
        let stack = try await TestStack()
        try await stack.query("inventory", "CREATE TABLE handler_marks (saga text PRIMARY KEY)")
        let refusals = Mutex<[String]>([])
        // Each event writes a mark, then tries to end the batch's transaction; the one of saga "bad" is then
        // rejected, so its mark must be undone with it, whatever the handler tried.
        let handler = EventHandler(eventType: OrderCreatedV2.eventType, version: 2) { event, context in
            try await context.connection.execute("INSERT INTO handler_marks (saga) VALUES ($1)", [event.sagaId])
            for sql in ["COMMIT", "  rollback", "/* sneaky */ END", "SAVEPOINT mine", "RELEASE SAVEPOINT saga_event"] {
                do {
                    try await context.connection.execute(sql)
                } catch let error as PostgresError {
                    refusals.withLock { $0.append("\(error.sqlState ?? "-") \(sql)") }
                }
            }
            if event.sagaId == "bad" { throw HandlerRejection("bad saga") }
            return []
        }
        let batchCommits = BatchHandler(versions: [PaymentFailed.eventType: 1]) { events, context in
            do {
                try await context.connection.execute("COMMIT")
            } catch let error as PostgresError {
                refusals.withLock { $0.append("\(error.sqlState ?? "-") batch COMMIT") }
            }
            return []
        }
        let worker = Worker(
            configuration: stack.workerConfiguration("inventory"), handlers: [handler] + batchCommits.eventHandlers,
            upcasters: sagaUpcasters, migrations: [], logger: stack.logger)
        let pool = PostgresPool(
            configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        let codec = EventCodec(upcasters: [], topics: stack.topics)
        func order(_ saga: String) throws -> KafkaOutgoingMessage {
            try codec.encode(
                OutgoingEvent(
                    OrderCreatedV2(
                        orderId: UUID().uuidString.lowercased(), customerId: "alice",
                        total: Money(amount: 1, currency: "EUR"),
                        lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]),
                    sagaId: saga, producer: "orders", causedBy: nil))
        }
        let batch = try await Self.throughBroker(
            stack,
            [
                try order("good"), try order("bad"),
                try Self.payment(stack, orderId: UUID().uuidString.lowercased(), completed: false),
            ])
        let processed = await Self.process(batch, with: worker, pool: pool, within: .seconds(20))
        let stats = worker.stats
        let marks = try await stack.query("inventory", "SELECT saga FROM handler_marks ORDER BY saga").map {
            try $0.decode("saga", as: String.self)
        }
        await pool.close()
        await stack.stop()

        #expect(processed)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 1)
        #expect(marks == ["good"])
        let seen = refusals.withLock { $0 }
        for sql in ["COMMIT", "  rollback", "/* sneaky */ END", "SAVEPOINT mine", "RELEASE SAVEPOINT saga_event"] {
            #expect(seen.contains("2D000 \(sql)"), "\(sql) was not refused: \(seen)")
        }
        #expect(seen.contains("2D000 batch COMMIT"), "\(seen)")
    }

    @Test func perSagaOrderHoldsAcrossHandlersOfOneBatch() async throws {
        let stack = try await TestStack()
        // A per-event handler for order.created and a batch handler for the payment events: the worker calls
        // them in waves so that no saga's event is handled before an earlier one of the same saga.
        let calls = Mutex<[String]>([])
        let created = EventHandler(eventType: OrderCreatedV2.eventType, version: 2) { event, _ in
            calls.withLock { $0.append("created \(event.sagaId)") }
            return []
        }
        let payments = BatchHandler(
            versions: [PaymentFailed.eventType: 1, PaymentCompleted.eventType: 1]
        ) { events, _ in
            calls.withLock { $0.append("payments " + events.map { "\($0.type) \($0.sagaId)" }.joined(separator: ", ")) }
            return []
        }
        let worker = Worker(
            configuration: stack.workerConfiguration("inventory"), handlers: [created] + payments.eventHandlers,
            upcasters: sagaUpcasters, migrations: [], logger: stack.logger)
        let pool = PostgresPool(
            configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        let codec = EventCodec(upcasters: [], topics: stack.topics)
        func order(_ saga: String) throws -> KafkaOutgoingMessage {
            try codec.encode(
                OutgoingEvent(
                    OrderCreatedV2(
                        orderId: UUID().uuidString.lowercased(), customerId: "alice",
                        total: Money(amount: 1, currency: "EUR"),
                        lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]),
                    sagaId: saga, producer: "orders", causedBy: nil))
        }
        func payment(_ saga: String, completed: Bool) throws -> KafkaOutgoingMessage {
            let amount = Money(amount: 1, currency: "EUR")
            let id = UUID().uuidString.lowercased()
            return try codec.encode(
                completed
                    ? OutgoingEvent(
                        PaymentCompleted(orderId: id, customerId: "alice", paymentId: id, amount: amount), sagaId: saga,
                        producer: "billing", causedBy: nil)
                    : OutgoingEvent(
                        PaymentFailed(orderId: id, customerId: "alice", reason: .unknownCustomer, amount: amount),
                        sagaId: saga, producer: "billing", causedBy: nil))
        }
        let batch = try await Self.throughBroker(
            stack,
            [
                try order("A"), try payment("B", completed: false), try order("B"), try payment("A", completed: true),
                try order("C"),
            ])
        #expect(await worker.process(batch, pool: pool))
        let handled = worker.stats.handled
        await pool.close()
        await stack.stop()

        #expect(handled == 5)
        #expect(
            calls.withLock { $0 } == [
                "created A", "created C", "payments payment.failed B", "created B", "payments payment.completed A",
            ])
    }

    @Test func offsetsAreCommittedInTheBackgroundOnlyOnceTheTransactionCommitted() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        try stack.startWorker("inventory")
        // Another session holds a lock the inventory batch needs, so its transaction cannot commit.
        let blocker = PostgresPool(
            configuration: stack.databases["inventory"]!.configuration, size: 1, logger: stack.logger)
        let (release, releaser) = AsyncStream<Void>.makeStream()
        let (locked, lockedSignal) = AsyncStream<Void>.makeStream()
        let holding = Task {
            try await blocker.withTransaction { c in
                try await c.execute("LOCK TABLE stock IN ACCESS EXCLUSIVE MODE")
                lockedSignal.yield()
                for await _ in release { break }
            }
        }
        for await _ in locked { break }
        let id = try await stack.place("alice", [("widget", 1)])
        let topic = stack.topics.topic(for: "order.created")
        let partitions = (0..<4).map { KafkaTopicPartition(topic: topic, partition: Int32($0)) }
        func committed() async throws -> Int64 {
            let offsets = try await Self.committed(stack, partitions)
            return offsets.reduce(0) { $0 + max(0, $1) }
        }
        try await stack.eventually("the inventory batch waits for the lock") {
            try await !stack.query(
                "inventory",
                "SELECT 1 FROM pg_locks WHERE relation = 'stock'::regclass AND NOT granted"
            ).isEmpty
        }
        try await Task.sleep(for: .milliseconds(500))
        let whileBlocked = try await committed()
        releaser.yield()
        try await holding.value
        try await stack.eventually("inventory reserved the order") {
            try await !stack.query(
                "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
            )
            .isEmpty
        }
        // Committed in the background while the worker keeps running (not only when it stops).
        var afterCommit: Int64 = 0
        try await stack.eventually("the offset is committed", timeout: .seconds(20)) {
            afterCommit = try await committed()
            return afterCommit == 1
        }
        let running = stack.worker("inventory") != nil
        await blocker.close()
        await stack.stop()

        #expect(whileBlocked == 0)
        #expect(afterCommit == 1)
        #expect(running)
    }

    /// The group's committed offsets (next offset to read; negative when none), read from outside the group.
    static func committed(_ stack: TestStack, _ partitions: [KafkaTopicPartition]) async throws -> [Int64] {
        let client = try KafkaConsumer(
            configuration: stack.kafka.consumer(groupId: stack.topics.group("inventory"), clientId: "test"),
            logger: stack.logger)
        let offsets = try await client.committed(partitions, timeout: .seconds(10))
        await client.close()
        return offsets.map(\.offset)
    }
}

extension WorkerBatchTests {
    /// The batch's outbox rows travel with its COMMIT: when the database refuses one of them as data, the batch is
    /// run again one event at a time at once (not retried as a failure), and only that event is dead-lettered.
    @Test func anOutboxRowRefusedAtCommitDeadLettersOnlyItsEvent() async throws {
        let stack = try await TestStack()
        let inventory = Inventory(stack)
        let poison = try Self.orderCreated(stack, [("widget", 3)])
        // 22023 (class 22, a data exception): the event's fault, as a value PostgreSQL cannot hold would be.
        try await stack.query(
            "inventory",
            """
            CREATE FUNCTION refuse_one_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.saga_id = '\(poison.orderId)' AND NEW.topic NOT LIKE '%dead%' THEN
                    RAISE EXCEPTION 'outbox row refused' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$
            """)
        try await stack.query(
            "inventory",
            "CREATE TRIGGER refuse_one_row BEFORE INSERT ON saga_outbox FOR EACH ROW EXECUTE FUNCTION refuse_one_row()")
        let before = try Self.orderCreated(stack, [("widget", 1)])
        let after = try Self.orderCreated(stack, [("widget", 2)])
        let batch = try await Self.throughBroker(stack, [before.message, poison.message, after.message])
        let processed = await Self.process(batch, with: inventory.worker, pool: inventory.pool, within: .seconds(20))
        let stats = inventory.worker.stats
        let letters = try await stack.query("inventory", "SELECT saga_id, reason FROM saga_dead_letters")
        let emitted = try await stack.query(
            "inventory", "SELECT saga_id FROM saga_outbox WHERE event_type = 'inventory.reserved' ORDER BY id")
        let reservations = try await Self.reservations(stack)
        await inventory.pool.close()
        await stack.stop()

        #expect(processed)
        #expect(stats.retries == 0)
        #expect(stats.handled == 2)
        #expect(stats.deadLettered == 1)
        #expect(reservations == [before.orderId: "RESERVED", after.orderId: "RESERVED"])
        #expect(try emitted.map { try $0.decode("saga_id", as: String.self) } == [before.orderId, after.orderId])
        #expect(try letters.map { try $0.decode("saga_id", as: String.self) } == [poison.orderId])
        let reason = try letters.first?.decode("reason", as: String.self) ?? ""
        #expect(reason.contains("22023") && reason.contains("outbox row refused"), "\(reason)")
    }
}
