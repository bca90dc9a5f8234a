import Foundation
import Logging
import SagaKafka
import SagaServices
import SagaTestSupport
import Synchronization
import Testing

@testable import SagaEngine

/// Orders' deadline (issue 13): scheduled in the placing statement, cancelled by the order's outcome, fired on a
/// PENDING order as `order.expired` → CANCELLED with reason timeout and `order.cancelled` v2; late answers change
/// nothing. Real PostgreSQL, workers never run (``ServiceHarness``).
@Suite(.serialized) struct OrdersDeadlineTests {
    final class Fixture: Sendable {
        let harness: ServiceHarness
        let codec: EventCodec

        init() async throws {
            harness = try await ServiceHarness(OrdersService.definition())
            codec = EventCodec(upcasters: sagaUpcasters, topics: harness.topics)
            try await harness.execute("INSERT INTO prices (sku, currency, unit_price) VALUES ('widget', 'EUR', 1250)")
        }

        func book(deadline: Duration? = .seconds(900)) -> OrderBook {
            OrderBook(pool: harness.pool, codec: codec, emitVersion: 2, deadline: deadline)
        }

        static func request(_ customer: String = "alice", deadlineSeconds: Int? = nil) -> OrderRequest {
            OrderRequest(
                customerId: customer, currency: "EUR", lines: [OrderLine(sku: "widget", quantity: 2)],
                deadlineSeconds: deadlineSeconds)
        }

        func place(_ book: OrderBook? = nil, deadlineSeconds: Int? = nil, key: String? = nil) async throws
            -> OrderBook.Placed
        {
            try await (book ?? self.book()).place(
                Self.request(deadlineSeconds: deadlineSeconds), idempotencyKey: key)
        }

        /// The order's deadline falls now (both copies of its due time, as when the time has come).
        func makeDue(_ id: UUID) async throws {
            try await harness.execute(
                "UPDATE saga_deadlines SET due_at = now() - interval '1 s' WHERE saga_id = $1",
                [id.uuidString.lowercased()])
            try await harness.execute("UPDATE orders SET deadline_at = now() - interval '1 s' WHERE id = $1", [id])
        }

        func status(_ id: UUID) async throws -> (status: String, reason: String?) {
            let row = try #require(
                try await harness.query("SELECT status, reason FROM orders WHERE id = $1", [id]).first)
            return (try row.decode("status"), try row.decode("reason", as: String?.self))
        }

        func deadlineCount(_ id: UUID? = nil) async throws -> Int {
            try await harness.query(
                "SELECT count(*)::int AS n FROM saga_deadlines WHERE $1::text IS NULL OR saga_id = $1",
                [id?.uuidString.lowercased()]
            ).first!.decode("n")
        }

        /// The deadline marks on the outbox rows of `type` of order `id`, one list per row.
        func marks(_ id: UUID, _ type: String) async throws -> [[Deadline.Mark]] {
            try await harness.query(
                """
                SELECT coalesce((SELECT jsonb_agg(h->>'v') FROM jsonb_array_elements(o.headers) h
                    WHERE h->>'k' = $3), '[]')::text AS marks
                FROM saga_outbox o WHERE saga_id = $1 AND event_type = $2 ORDER BY id
                """, [id.uuidString.lowercased(), type, SagaHeader.deadline]
            ).map { row in
                guard
                    case .array(let values) = try JSONValue(
                        parsing: Array(try row.decode("marks", as: String.self).utf8))
                else { return [] }
                return try values.map { value in
                    guard case .string(let text) = value else { throw EventDecodingError("not a string") }
                    return try Deadline.Mark(parsing: Array(text.utf8))
                }
            }
        }

        func message<P: EventPayload>(_ payload: P, _ id: UUID, producer: String) throws -> KafkaMessage {
            try harness.message(payload, saga: id.uuidString.lowercased(), producer: producer)
        }

        func paid(_ id: UUID) throws -> KafkaMessage {
            try message(
                PaymentCompleted(
                    orderId: id.uuidString.lowercased(), customerId: "alice", paymentId: UUID().uuidString.lowercased(),
                    amount: Money(amount: 2500, currency: "EUR")), id, producer: "billing")
        }

        func rejected(_ id: UUID) throws -> KafkaMessage {
            try message(
                InventoryRejected(
                    orderId: id.uuidString.lowercased(), customerId: "alice", reason: "out of stock",
                    shortages: [.init(sku: "widget", requested: 2, available: 0)]), id, producer: "inventory")
        }

        func released(_ id: UUID) throws -> KafkaMessage {
            try message(
                InventoryReleased(
                    orderId: id.uuidString.lowercased(), customerId: "alice", reason: "payment declined",
                    lines: [OrderLine(sku: "widget", quantity: 2)]), id, producer: "inventory")
        }

        func tearDown() async { await harness.tearDown() }
    }

    @Test func placingAnOrderSchedulesItsDeadlineInTheSameStatement() async throws {
        let f = try await Fixture()
        let placed = try await f.place(key: "k1")
        let due = try #require(placed.deadline)
        let created = try #require(placed.event)
        let id = placed.orderId
        #expect(abs(due.timeIntervalSinceNow - 900) < 30)
        let row = try #require(
            try await f.harness.query(
                """
                SELECT d.name, d.event_id, d.event_type, d.causation_id, d.data::text AS data,
                    d.due_at = o.deadline_at AS same, d.due_at
                FROM saga_deadlines d JOIN orders o ON o.id::text = d.saga_id WHERE o.id = $1
                """, [id]
            ).first)
        #expect(try row.decode("name", as: String.self) == OrdersService.deadlineName)
        #expect(try row.decode("same", as: Bool.self))
        #expect(try row.decode("event_type", as: String.self) == OrderExpired.eventType)
        #expect(try row.decode("causation_id", as: UUID.self) == created.id)
        let stored: Date = try row.decode("due_at")
        let deadlineEventId: UUID = try row.decode("event_id")
        #expect(abs(stored.timeIntervalSince(due)) < 0.001)
        let expired = try JSONValue(parsing: Array(try row.decode("data", as: String.self).utf8)).decode(
            OrderExpired.self)
        #expect(expired.orderId == id.uuidString.lowercased() && expired.customerId == "alice")
        #expect(
            expired.timeoutSeconds == 900
                && Timestamp.parse(expired.dueAt).map { abs($0.timeIntervalSince(due)) < 0.001 } == true)
        // order.created carries the scheduled mark.
        let marks = try await f.marks(id, OrderCreatedV2.eventType)
        #expect(marks.count == 1 && marks[0].count == 1)
        let mark = try #require(marks.first?.first)
        #expect(mark.op == .scheduled && mark.name == "order" && mark.participant == "orders")
        #expect(mark.eventId == deadlineEventId && mark.eventType == OrderExpired.eventType)
        #expect(abs(mark.dueAt.timeIntervalSince(due)) < 0.001)
        // The view shows it.
        let view = try #require(try await f.book().view(id))
        #expect(view.deadline.flatMap(Timestamp.parse).map { abs($0.timeIntervalSince(due)) < 0.001 } == true)
        // An idempotent retry writes nothing, deadline included.
        let again = try await f.place(key: "k1")
        #expect(!again.created && again.orderId == id && again.deadline == nil)
        #expect(try await f.deadlineCount() == 1)
        // Deadline off (SAGA_ORDER_DEADLINE=0s): none, no header, no deadline_at; a request's own still applies.
        let off = f.book(deadline: nil)
        let none = try await f.place(off)
        #expect(none.deadline == nil)
        #expect(try await f.deadlineCount(none.orderId) == 0)
        #expect(try await f.marks(none.orderId, OrderCreatedV2.eventType) == [[]])
        #expect(try await f.book().view(none.orderId)?.deadline == nil)
        let own = try await f.place(off, deadlineSeconds: 30)
        #expect(try await f.deadlineCount(own.orderId) == 1)
        #expect(own.deadline.map { abs($0.timeIntervalSinceNow - 30) < 10 } == true)
        await f.tearDown()
    }

    @Test func theRequestOverrideIsValidatedAndFingerprinted() async throws {
        func body(_ deadline: String) -> [UInt8] {
            Array(
                #"{"customerId": "alice", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 2}], "deadlineSeconds": \#(deadline)}"#
                    .utf8)
        }
        let notAnInteger = "deadlineSeconds: an integer from 1 to 86400 (no fraction or exponent)"
        for bad in ["1.5", "1e2", #""10""#, "true", "null"] {
            #expect(throws: OrderRequestError(notAnInteger), "\(bad)") { try OrderRequest(body: body(bad)) }
        }
        #expect(throws: OrderRequestError("deadlineSeconds: must be at least 1")) { try OrderRequest(body: body("0")) }
        #expect(throws: OrderRequestError("deadlineSeconds: at most 86400")) { try OrderRequest(body: body("86401")) }
        #expect(try OrderRequest(body: body("86400")).deadlineSeconds == 86400)
        #expect(try OrderRequest(body: body("1")).deadlineSeconds == 1)
        // Without it, the canonical form (and so a key's fingerprint) is what it was before deadlines.
        #expect(
            Fixture.request().canonical
                == #"{"currency":"EUR","customerId":"alice","lines":[{"quantity":2,"sku":"widget"}]}"#)
        #expect(Fixture.request(deadlineSeconds: 10).canonical.contains(#""deadlineSeconds":10"#))
        // The same key with another deadline is another request.
        let f = try await Fixture()
        let first = try await f.place(deadlineSeconds: 10, key: "k")
        await #expect(throws: IdempotencyKeyConflict.self) { try await f.place(deadlineSeconds: 20, key: "k") }
        await #expect(throws: IdempotencyKeyConflict.self) { try await f.place(key: "k") }
        let retry = try await f.place(deadlineSeconds: 10, key: "k")
        #expect(!retry.created && retry.orderId == first.orderId)
        #expect(try await f.deadlineCount() == 1)
        await f.tearDown()
    }

    @Test func aDueDeadlineCancelsAPendingOrderWithReasonTimeout() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        let id = try await f.place(deadlineSeconds: 60).orderId
        let deadlineEvent: UUID = try #require(
            try await f.harness.query(
                "SELECT event_id FROM saga_deadlines WHERE saga_id = $1",
                [
                    id.uuidString.lowercased()
                ]
            ).first
        ).decode("event_id")
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 0)  // not due yet
        #expect(try await f.status(id).status == "PENDING")
        try await f.makeDue(id)
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 1)
        let (status, reason) = try await f.status(id)
        #expect(status == "CANCELLED")
        #expect(reason == "timeout: not confirmed within 60 s")
        #expect(try await f.deadlineCount() == 0)
        let cancelled = try await f.harness.outbox(OrderCancelled.eventType)
        #expect(cancelled.count == 1)
        let event = try #require(cancelled.first)
        #expect(event.version == 2 && event.causationId == deadlineEvent)
        let payload = try event.data.decode(OrderCancelled.self)
        #expect(
            payload.reason == .timeout && payload.customerId == "alice" && payload.detail.hasPrefix("no outcome by "))
        let marks = try await f.marks(id, OrderCancelled.eventType)
        #expect(marks.map { $0.map(\.op) } == [[.fired]])
        #expect(marks.first?.first?.eventId == deadlineEvent && (marks.first?.first?.lateMs ?? -1) >= 900)
        let history = try await f.harness.query(
            "SELECT status, event_type, event_id FROM order_history WHERE order_id = $1 ORDER BY seq", [id])
        #expect(try history.map { try $0.decode("event_type", as: String.self) } == ["order.created", "order.expired"])
        #expect(try history.last?.decode("event_id", as: UUID.self) == deadlineEvent)
        #expect(try history.last?.decode("status", as: String.self) == "CANCELLED")
        #expect(worker.stats.deadlinesFired == 1 && worker.stats.deadLettered == 0)
        await f.tearDown()
    }

    @Test func aConfirmationCancelsTheDeadlineAndItNeverFires() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        let id = try await f.place(deadlineSeconds: 2).orderId
        #expect(await worker.process([try f.paid(id)], pool: f.harness.pool))
        #expect(try await f.status(id).status == "CONFIRMED")
        #expect(try await f.deadlineCount() == 0)
        #expect(worker.stats.deadlinesCancelled == 1)
        #expect(try await f.marks(id, OrderConfirmed.eventType).map { $0.map(\.op) } == [[.cancelled]])
        try await f.harness.execute("UPDATE orders SET deadline_at = now() - interval '1 s' WHERE id = $1", [id])
        try await Task.sleep(for: .seconds(2))
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 0)
        #expect(try await f.status(id).status == "CONFIRMED")
        #expect(try await f.harness.outbox(OrderCancelled.eventType).isEmpty)
        // A rejection cancels the deadline too.
        let other = try await f.place(deadlineSeconds: 60).orderId
        #expect(await worker.process([try f.rejected(other)], pool: f.harness.pool))
        #expect(try await f.status(other).status == "CANCELLED")
        #expect(try await f.deadlineCount() == 0)
        await f.tearDown()
    }

    /// Orders timed out, then the answers come: nothing changes, nothing is emitted, nothing is dead-lettered.
    @Test func aPaymentCompletedAfterTheTimeoutDoesNotResurrectTheOrder() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        let id = try await f.place(deadlineSeconds: 60).orderId
        try await f.makeDue(id)
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 1)
        #expect(await worker.process([try f.paid(id)], pool: f.harness.pool))
        #expect(await worker.process([try f.rejected(id), try f.released(id)], pool: f.harness.pool))
        #expect(try await f.status(id).status == "CANCELLED")
        #expect(try await f.status(id).reason?.hasPrefix("timeout") == true)
        #expect(try await f.harness.outbox(OrderConfirmed.eventType).isEmpty)
        #expect(try await f.harness.outbox(OrderCancelled.eventType).count == 1)
        #expect(worker.stats.deadLettered == 0 && worker.stats.handled == 4)
        await f.tearDown()
    }

    @Test func duplicateAndRepublishedEventsAfterTheTimeoutChangeNothing() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        let id = try await f.place(deadlineSeconds: 60).orderId
        let paid = try f.paid(id)
        try await f.makeDue(id)
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 1)
        #expect(await worker.process([paid, paid], pool: f.harness.pool))  // twice in a batch
        #expect(await worker.process([paid], pool: f.harness.pool))  // redelivered
        #expect(await worker.process([try f.paid(id)], pool: f.harness.pool))  // re-published (a new event id)
        #expect(worker.stats.duplicates == 2)
        #expect(try await f.status(id).status == "CANCELLED")
        #expect(try await f.harness.outbox(OrderConfirmed.eventType).isEmpty)
        #expect(try await f.harness.outbox(OrderCancelled.eventType).count == 1)
        #expect(worker.stats.deadLettered == 0)
        await f.tearDown()
    }

    @Test func aConfirmationRacingTheFiringWaitsAndFindsItCancelled() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        let id = try await f.place(deadlineSeconds: 60).orderId
        let saga = id.uuidString.lowercased()
        // The firing transaction, played by hand: it holds the deadline row, then cancels the order.
        let processPool = f.harness.newPool()
        let holder = f.harness.newPool()
        let payment = try f.paid(id)
        let confirmed = try await holder.withTransaction { connection in
            _ = try await connection.query("SELECT id FROM saga_deadlines WHERE saga_id = $1 FOR UPDATE", [saga])
            let racing = Task { await worker.process([payment], pool: processPool) }
            // The confirmation's transaction waits on the deadline row (lock order: deadline before order).
            var waiting = false
            let until = ContinuousClock.now + .seconds(10)
            while !waiting && ContinuousClock.now < until {
                waiting =
                    try await f.harness.query(
                        """
                        SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                        AND query LIKE 'DELETE FROM saga_deadlines%'
                        """
                    ).count == 1
                if !waiting { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(waiting)
            _ = try await connection.execute(
                "UPDATE orders SET status = 'CANCELLED', reason = 'timeout: by hand' WHERE id = $1", [id])
            _ = try await connection.execute("DELETE FROM saga_deadlines WHERE saga_id = $1", [saga])
            return racing
        }
        #expect(await confirmed.value)
        let raced = try await f.status(id)
        #expect(raced.status == "CANCELLED" && raced.reason == "timeout: by hand")
        #expect(try await f.harness.outbox(OrderConfirmed.eventType).isEmpty)
        await holder.close()
        // 50 orders fired and confirmed at once: each has exactly one outcome, nothing dead-lettered.
        var ids: [UUID] = []
        for _ in 0..<50 { ids.append(try await f.place(deadlineSeconds: 60).orderId) }
        for id in ids { try await f.makeDue(id) }
        let firingPool = f.harness.newPool()
        let firing = Task {
            var total = 0
            while true {
                let n = await worker.fireDueDeadlines(pool: firingPool)
                if n == 0 { return total }
                total += n
            }
        }
        let paying = try ids.map { try f.paid($0) }
        for chunk in stride(from: 0, to: paying.count, by: 5) {
            #expect(await worker.process(Array(paying[chunk..<min(chunk + 5, paying.count)]), pool: processPool))
        }
        let fired = await firing.value
        await firingPool.close()
        await processPool.close()
        let outcomes = try await f.harness.query(
            """
            SELECT saga_id, count(*)::int AS n FROM saga_outbox
            WHERE event_type IN ('order.confirmed', 'order.cancelled') GROUP BY saga_id
            """)
        #expect(outcomes.count == 50)  // the raced order emitted nothing (it was cancelled by hand)
        #expect(try outcomes.allSatisfy { try $0.decode("n", as: Int.self) == 1 })
        let statuses = try await f.harness.query(
            "SELECT status, count(*)::int AS n FROM orders WHERE id = ANY($1::uuid[]) GROUP BY status",
            [PostgresArray(ids)])
        let total = try statuses.reduce(0) { $0 + (try $1.decode("n", as: Int.self)) }
        #expect(total == 50)
        #expect(try statuses.allSatisfy { try $0.decode("status", as: String.self) != "PENDING" })
        let cancelledCount = try await f.harness.outbox(OrderCancelled.eventType).count
        #expect(cancelledCount == fired)
        #expect(try await f.deadlineCount() == 0)
        #expect(worker.stats.deadLettered == 0)
        await f.tearDown()
    }

    @Test func anEarlyOrForgedOrderExpiredDoesNothing() async throws {
        let f = try await Fixture()
        let worker = try f.harness.worker()
        #expect(!worker.subscribedTopics.contains(f.harness.topics.topic(for: OrderExpired.eventType)))
        #expect(worker.subscribedTopics.contains(f.harness.topics.topic(for: PaymentCompleted.eventType)))
        let placed = try await f.place(deadlineSeconds: 60)
        let id = placed.orderId
        // Forged on Kafka: dead-lettered, never handled.
        let forged = try f.message(
            OrderExpired(
                orderId: id.uuidString.lowercased(), customerId: "alice", dueAt: Timestamp.format(Date()),
                timeoutSeconds: 1), id, producer: "mallory")
        #expect(await worker.process([forged], pool: f.harness.pool))
        #expect(worker.stats.deadLettered == 1)
        #expect(try await f.status(id).status == "PENDING")
        // Fired early (its row made due by hand, not the order's deadline_at): the order stays PENDING.
        try await f.harness.execute(
            "UPDATE saga_deadlines SET due_at = now() - interval '1 s' WHERE saga_id = $1", [id.uuidString.lowercased()]
        )
        #expect(await worker.fireDueDeadlines(pool: f.harness.pool) == 1)
        #expect(try await f.status(id).status == "PENDING")
        #expect(try await f.harness.outbox(OrderCancelled.eventType).isEmpty)
        #expect(worker.stats.deadLettered == 1)
        await f.tearDown()
    }

    /// Holds a batch of `order.expired` (after orders' handler wrote, before the commit) while closed.
    final class Gate: Sendable {
        private let state = Mutex((closed: false, entered: 0))
        var entered: Int { state.withLock { $0.entered } }
        func close() { state.withLock { $0.closed = true } }
        func open() { state.withLock { $0.closed = false } }
        func pass() async throws {
            state.withLock { $0.entered += 1 }
            while state.withLock({ $0.closed }) { try await Task.sleep(for: .milliseconds(10)) }
        }
    }

    @Test func aDeadlineSurvivesAnOrdersWorkerCrashAndFiresOnce() async throws {
        let f = try await Fixture()
        let id = try await f.place(deadlineSeconds: 60).orderId
        try await f.makeDue(id)
        let gate = Gate()
        gate.close()
        let gated: BatchHandlerMiddleware = { next in
            { events, context in
                let out = try await next(events, context)
                if events.contains(where: { $0.type == OrderExpired.eventType }) { try await gate.pass() }
                return out
            }
        }
        var configuration = WorkerConfiguration(
            name: OrdersService.name, kafka: KafkaSettings(bootstrapServers: "127.0.0.1:9"),
            database: f.harness.database, topics: f.harness.topics)
        configuration.retry = RetryPolicy(initialDelay: .milliseconds(20), maxDelay: .milliseconds(200))
        let first = try Worker(
            configuration: configuration, definition: OrdersService.definition(), middleware: [],
            batchMiddleware: [gated], logger: f.harness.logger)
        let firingPool = f.harness.newPool()
        let firing = Task { await first.fireDueDeadlines(pool: firingPool) }
        let until = ContinuousClock.now + .seconds(10)
        while gate.entered == 0 && ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(10)) }
        #expect(gate.entered == 1)
        // The order is cancelled inside the firing transaction; the worker dies before the commit.
        firing.cancel()
        #expect(await firing.value == 0)
        await firingPool.close()
        #expect(try await f.status(id).status == "PENDING")
        #expect(try await f.deadlineCount(id) == 1)
        #expect(try await f.harness.outbox(OrderCancelled.eventType).isEmpty)
        // A new worker fires it, once.
        gate.open()
        let restarted = try Worker(
            configuration: configuration, definition: OrdersService.definition(), middleware: [],
            batchMiddleware: [gated], logger: f.harness.logger)
        #expect(await restarted.fireDueDeadlines(pool: f.harness.pool) == 1)
        #expect(await restarted.fireDueDeadlines(pool: f.harness.pool) == 0)
        #expect(gate.entered == 2)
        #expect(try await f.status(id).status == "CANCELLED")
        #expect(try await f.deadlineCount() == 0)
        #expect(try await f.harness.outbox(OrderCancelled.eventType).count == 1)
        await f.tearDown()
    }

    @Test func twoOrdersWorkersFireEachDeadlineOnce() async throws {
        let f = try await Fixture()
        var ids: [UUID] = []
        for _ in 0..<40 { ids.append(try await f.place(deadlineSeconds: 60).orderId) }
        for id in ids { try await f.makeDue(id) }
        let workers = try (0..<2).map { _ in try f.harness.worker() }
        let pools = (0..<2).map { _ in f.harness.newPool() }
        let fired = await withTaskGroup(of: Int.self) { group in
            for (worker, pool) in zip(workers, pools) {
                group.addTask {
                    var total = 0
                    while true {
                        let n = await worker.fireDueDeadlines(pool: pool)
                        if n == 0 { return total }
                        total += n
                    }
                }
            }
            return await group.reduce(0, +)
        }
        for pool in pools { await pool.close() }
        #expect(fired == 40)
        #expect(try await f.deadlineCount() == 0)
        let cancelled = try await f.harness.outbox(OrderCancelled.eventType)
        #expect(cancelled.count == 40 && Set(cancelled.map(\.sagaId)).count == 40)
        #expect(workers.map(\.stats.deadLettered).reduce(0, +) == 0)
        await f.tearDown()
    }
}
