import Foundation
import Logging
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

@testable import SagaEngine
@testable import SagaOperations

/// The saga tracker and its read model, on real workers, relays and broker.
@Suite(.serialized) struct TrackerTests {
    func tracker(
        _ stack: TestStack, rebuild: Bool = false, groupInstanceId: String? = nil,
        batchWait: Duration? = TrackerConfiguration.defaultBatchWait
    ) async throws -> (SagaTracker, Task<Void, any Error>) {
        try await SagaTracker.prepare(stack.trackerDatabase, logger: stack.logger)
        var c = TrackerConfiguration(
            kafka: stack.kafka, database: stack.trackerDatabase, topics: stack.topics, services: TestStack.services)
        c.pollTimeout = .milliseconds(50)
        c.rebuild = rebuild
        c.registryRefreshInterval = .milliseconds(200)
        c.groupInstanceId = groupInstanceId
        c.batchWait = batchWait
        let tracker = SagaTracker(configuration: c, logger: stack.logger)
        return (tracker, Task { try await tracker.run() })
    }

    @Test func theTrackersFetchesWaitHalfItsBatchWaitAndNeverLessThanConfigured() {
        func fetchWait(broker: Int, batchWait: Duration?) -> Int {
            var c = TrackerConfiguration(
                kafka: KafkaSettings(bootstrapServers: "127.0.0.1:9", fetchWaitMaxMs: broker),
                database: ServiceDatabase(url: "postgresql://127.0.0.1:9/x", schema: "tracker"), topics: TopicNaming(),
                services: [])
            c.batchWait = batchWait
            return SagaTracker(configuration: c, logger: Logger(label: "test")).consumerConfiguration(group: "g")
                .fetchWaitMaxMs
        }
        // The embedded broker's 2 ms: the tracker asks it every 25 ms instead, since it holds a batch 50 ms anyway.
        #expect(fetchWait(broker: 2, batchWait: .milliseconds(50)) == 25)
        #expect(fetchWait(broker: 2, batchWait: .milliseconds(3)) == 2)
        #expect(fetchWait(broker: 2, batchWait: nil) == 2)
        #expect(fetchWait(broker: 100, batchWait: .milliseconds(50)) == 100)
    }

    func inspector(_ stack: TestStack) async throws -> (SagaInspector, PostgresPool) {
        let pool = PostgresPool(configuration: stack.trackerDatabase.configuration, size: 1, logger: stack.logger)
        return (try await SagaInspector(pool: pool, registry: stack.registry, logger: stack.logger), pool)
    }

    /// The saga's timeline once it is finished and every step's cause is recorded too: the events of one saga come
    /// on several topics, and the tracker may read its outcome before its start (the read model then catches up).
    func finished(_ inspector: SagaInspector, _ id: String) async throws -> SagaInspector.Timeline? {
        guard let t = try await inspector.timeline(id), t.saga?.status == "finished" else { return nil }
        let seen = Set(t.steps.map(\.eventId))
        guard t.steps.first?.causationId == nil, t.steps.allSatisfy({ $0.causationId.map(seen.contains) ?? true })
        else { return nil }
        return t
    }

    @Test func aSagasTimelineMatchesWhatHappenedForEachOutcome() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let (_, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let confirmed = try await stack.place("alice", [("widget", 1)])
        let outOfStock = try await stack.place("alice", [("gizmo", 99)])
        let declined = try await stack.place("carol", [("gadget", 1)])
        var timelines: [String: SagaInspector.Timeline] = [:]
        for id in [confirmed, outOfStock, declined] {
            try await stack.eventually("the tracker saw \(id) finish") {
                timelines[id] = try await finished(inspector, id)
                return timelines[id] != nil
            }
        }
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        let c = try #require(timelines[confirmed])
        #expect(c.steps.map(\.type) == ["order.created", "inventory.reserved", "payment.completed", "order.confirmed"])
        #expect(c.saga?.outcome == "confirmed")
        #expect(c.saga?.compensations == 0)
        let o = try #require(timelines[outOfStock])
        #expect(o.steps.map(\.type) == ["order.created", "inventory.rejected", "order.cancelled"])
        #expect(o.saga?.outcome == "cancelled: out_of_stock")
        #expect(o.steps.map(\.kind) == ["step", "failure", "outcome"])
        let d = try #require(timelines[declined])
        #expect(
            d.steps.map(\.type) == [
                "order.created", "inventory.reserved", "payment.failed", "inventory.released", "order.cancelled",
            ])
        #expect(d.steps.map(\.producer) == ["orders", "inventory", "billing", "inventory", "orders"])
        #expect(d.steps.map(\.kind) == ["step", "step", "failure", "compensation", "outcome"])
        #expect(d.saga?.outcome == "cancelled: payment_declined")
        #expect(d.saga?.compensations == 1)
        for t in [c, o, d] {
            // A linear saga: each step was caused by the one before, and the time between them is known.
            #expect(t.steps.first?.causationId == nil)
            for (previous, step) in zip(t.steps, t.steps.dropFirst()) {
                #expect(step.causationId == previous.eventId)
                #expect((step.sincePreviousMs ?? -1) >= 0)
            }
            #expect(t.deadLetters.isEmpty)
            #expect(t.steps.allSatisfy { $0.topic == stack.topics.topic(for: $0.type) })
            // Its order deadline (15 minutes) was scheduled at placement and cancelled by the outcome.
            #expect(t.deadlines.map(\.state) == ["cancelled"])
            #expect(t.deadlines.first?.participant == "orders" && t.deadlines.first?.name == "order")
            #expect(t.deadlines.first?.cancelledAt != nil && t.saga?.deadline == nil)
        }
    }

    @Test func aStuckSagaIsListedAndLeavesTheListWhenBillingReturns() async throws {
        let stack = try await TestStack()
        for s in TestStack.services { stack.startRelay(s) }
        try stack.startWorker("orders")
        try stack.startWorker("inventory")
        let (_, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let id = try await stack.place("alice", [("widget", 1)])
        try await stack.eventually("the reservation reached the tracker") {
            try await inspector.timeline(id)?.saga?.lastEventType == "inventory.reserved"
        }
        try await Task.sleep(for: .milliseconds(600))
        let stuck = try await inspector.stuck(olderThan: .milliseconds(500))
        let entry = stuck.first { $0.sagaId == id }
        try stack.startWorker("billing")
        try await stack.eventually("the saga finished") { try await finished(inspector, id) != nil }
        let after = try await inspector.stuck(olderThan: .milliseconds(500))
        let stats = try await inspector.stats(since: Date().addingTimeInterval(-3600))
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        #expect(entry?.waitingOn == "billing: charge the customer")
        #expect(entry?.status == "running")
        #expect(!after.contains { $0.sagaId == id })
        #expect(stats.outcomes.first { $0.outcome == "confirmed" }?.sagas == 1)
        #expect(
            stats.steps.contains { $0.from == "inventory.reserved" && $0.to == "payment.completed" && $0.count == 1 })
    }

    /// The session holding the tracker's lock ends under it, as when PostgreSQL restarts: the tracker takes the
    /// lock again and goes on recording (it used to stop for good, leaving the read model behind).
    @Test func aTrackerWhoseLockSessionEndsTakesTheLockAgainAndGoesOn() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let (first, firstMessage) = try stack.orderCreated()
        try await stack.produce([firstMessage])
        try await stack.eventually("the first event recorded") { try await inspector.timeline(first) != nil }
        let lock = "saga_tracker:" + stack.trackerDatabase.schema
        // The lock session says whose it is (`pg_stat_activity.application_name`).
        let holder = try await stack.query(
            "tracker",
            """
            SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE l.locktype = 'advisory' AND l.granted AND l.objid::int = hashtext($1) AND l.objsubid = 1
            """, [lock])
        let ended = try await stack.query(
            "tracker",
            """
            SELECT pg_terminate_backend(l.pid) AS ended FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objid::int = hashtext($1) AND l.objsubid = 1
            """, [lock])
        let (second, secondMessage) = try stack.orderCreated()
        try await stack.produce([secondMessage])
        let (third, thirdMessage) = try stack.orderCreated()
        try await Task.sleep(for: .milliseconds(500))
        try await stack.produce([thirdMessage])
        try await stack.eventually("the later events recorded", timeout: .seconds(60)) {
            let seenSecond = try await inspector.timeline(second) != nil
            let seenThird = try await inspector.timeline(third) != nil
            return seenSecond && seenThird
        }
        let stillRunning = tracker.stats.events >= 3
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()
        #expect(ended.count == 1, "the lock session was not found")
        #expect(try holder.first?.decode("application_name", as: String.self) == "saga tracker lock")
        #expect(stillRunning)
    }

    /// Events that trickle in within the tracker's batch wait are recorded in one transaction, not one each.
    @Test func eventsArrivingWithinTheBatchWaitAreRecordedInOneTransaction() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack, batchWait: .seconds(2))
        // A first event, recorded on its own: the tracker's consumer is assigned and reading.
        let (_, first) = try stack.orderCreated(customer: "alice")
        try await stack.produce([first])
        try await stack.eventually("the first event recorded") { tracker.stats.events == 1 }
        let batchesBefore = tracker.stats.batches
        // Two more, 300 ms apart: both within the 2 s wait that the first of them starts.
        let (_, second) = try stack.orderCreated(customer: "bob")
        try await stack.produce([second])
        try await Task.sleep(for: .milliseconds(300))
        let (_, third) = try stack.orderCreated(customer: "carol")
        try await stack.produce([third])
        try await stack.eventually("both recorded") { tracker.stats.events == 3 }
        let batches = tracker.stats.batches - batchesBefore
        task.cancel()
        _ = await task.result
        await stack.stop()
        #expect(batches == 1, "the two events took \(batches) transactions")
    }

    @Test func aMessageTheDatabaseRefusesIsSkippedAndTheRestIsRecorded() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        // jsonb cannot hold \u0000: recording this one fails with a data error, on every attempt.
        let (a, first) = try stack.orderCreated(customer: "alice")
        let (_, poisoned) = try stack.orderCreated(customer: "ali\u{0}ce")
        let (c, last) = try stack.orderCreated(customer: "carol")
        try await stack.produce([first, poisoned, last])
        let (inspector, pool) = try await inspector(stack)
        try await stack.eventually("both good events recorded") {
            let seenA = try await inspector.timeline(a) != nil
            let seenC = try await inspector.timeline(c) != nil
            return seenA && seenC
        }
        try await stack.eventually("the refused one counted") { tracker.stats.skipped == 1 }
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()
        #expect(tracker.stats.events == 2)
    }

    @Test func hugeSagaIdsAndKeysNeverStallTheTracker() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let huge = String((0..<5000).map { _ in alphabet.randomElement()! })
        // An event whose saga id is too large for the read model's saga index, and a dead letter of a
        // non-event whose ~5 KB key is its only saga id (as a worker writes it), then a good event.
        let good = UUID().uuidString.lowercased()
        try await stack.produce([
            try stack.orderCreated(sagaId: huge).message,
            KafkaOutgoingMessage(
                topic: stack.topics.deadLetterTopic(consumer: "inventory"), key: Array(huge.utf8) + [0],
                value: Array("{not json".utf8),
                headers: [
                    KafkaHeader(key: SagaHeader.deadLetterReason, string: "not JSON"),
                    KafkaHeader(key: SagaHeader.deadLetterConsumer, string: "inventory"),
                ]),
            try stack.orderCreated(sagaId: good).message,
        ])
        let (inspector, pool) = try await inspector(stack)
        var recorded = false
        do {
            try await stack.eventually("the good event recorded", timeout: .seconds(20)) {
                try await inspector.timeline(good) != nil
            }
            recorded = true
        } catch {}
        let letters = try await stack.query("tracker", "SELECT saga_id FROM tracker_dead_letters").map {
            try $0.decode("saga_id", as: String.self)
        }
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        #expect(recorded)
        #expect(tracker.stats.events == 1)
        #expect(tracker.stats.skipped == 1)
        #expect(letters.count == 1)
        #expect(letters.allSatisfy { $0.utf8.count <= Bounded.sagaIdBytes && $0.hasPrefix(String(huge.prefix(20))) })
    }

    /// Everything in the read model, as text, in a fixed order.
    func snapshot(_ stack: TestStack) async throws -> [String] {
        var out: [String] = []
        for (table, order) in [
            ("tracker_events", "event_id"), ("tracker_dead_letters", "topic, partition, \"offset\""),
            ("tracker_sagas", "saga_id"), ("tracker_deadlines", "saga_id, participant, name"),
        ] {
            let rows = try await stack.query("tracker", "SELECT t::text AS row FROM \(table) t ORDER BY \(order)")
            out += try rows.map { "\(table) " + (try $0.decode("row", as: String.self)) }
        }
        return out
    }

    @Test func aTrackerRebuiltFromTheLogEqualsTheLiveOne() async throws {
        let stack = try await TestStack()
        try await stack.query(
            "orders", "INSERT INTO prices (sku, currency, unit_price) VALUES ('sprocket', 'EUR', 100)")
        try stack.startAll()
        let (_, live) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let ids = [
            try await stack.place("alice", [("widget", 1)]), try await stack.place("carol", [("widget", 1)]),
            try await stack.place("alice", [("doohickey", 1)]),
        ]
        let poisoned = try await stack.place("alice", [("sprocket", 1)])  // inventory does not stock it: dead letter
        for id in ids { try await stack.eventually("\(id) finished") { try await finished(inspector, id) != nil } }
        try await stack.eventually("the dead letter was tracked") {
            try await inspector.timeline(poisoned)?.deadLetters.count == 1
        }
        let before = try await snapshot(stack)
        live.cancel()
        _ = await live.result

        let (_, rebuilt) = try await tracker(stack, rebuild: true)
        try await stack.eventually("the rebuild started") {
            try await stack.query("tracker", "SELECT 1 FROM tracker_state WHERE rebuilt_at IS NOT NULL").count == 1
        }
        try await stack.eventually("the rebuild caught up", timeout: .seconds(90)) {
            try await snapshot(stack).count == before.count
        }
        try await Task.sleep(for: .milliseconds(500))
        let after = try await snapshot(stack)
        rebuilt.cancel()
        _ = await rebuilt.result
        await pool.close()
        await stack.stop()

        // events: confirmed 4, declined 5, out of stock 3, poisoned 1 (order.created); 1 dead letter; 4 sagas.
        // (Deadlines too, when orders schedules them: they must be rebuilt the same, whatever their number.)
        #expect(before.filter { !$0.hasPrefix("tracker_deadlines ") }.count == 13 + 1 + 4)
        #expect(after == before)
    }

    /// A tracker whose consumer is fenced (static membership: another member joined with its group.instance.id;
    /// FENCED_INSTANCE_ID injected into a heartbeat on the mock cluster) stops with that fatal error instead of
    /// ending as if it had been asked to stop.
    @Test(.enabled(if: !KafkaTestBroker.usesRealKafka, "injects FENCED_INSTANCE_ID through the mock cluster"))
    func aFencedTrackerStopsWithTheFatalError() async throws {
        let stack = try await TestStack()  // no workers: the tracker is the only member of any group
        let (tracker, task) = try await tracker(stack, groupInstanceId: "tracker-1")
        try await stack.produce([try stack.orderCreated().message])
        try await stack.eventually("the tracker recorded the event") { tracker.stats.events > 0 }
        stack.cluster?.pushRequestErrors(apiKey: 12, errors: [82])  // the next Heartbeat: FENCED_INSTANCE_ID
        let ended = Task {
            try await Task.sleep(for: .seconds(60))
            task.cancel()
        }
        let result = await task.result
        ended.cancel()
        await stack.stop()

        #expect(throws: KafkaError.self) { try result.get() }
        if case .failure(let error as KafkaError) = result {
            #expect(error.isFencedInstance && error.isFatal, "\(error)")
            #expect(error.message.contains("'tracker-1'"), "\(error)")
        }
    }
}

extension TrackerTests {
    /// The tracker writes a saga's events and its summary in one transaction; a timeline must show one moment of
    /// them (it read them in separate statements, and once showed three steps beside a summary of one event,
    /// still running: a CI failure).
    @Test func aTimelineIsOneSnapshotWhileTheTrackerWrites() async throws {
        let stack = try await TestStack()
        try await SagaTracker.prepare(stack.trackerDatabase, logger: stack.logger)
        let (inspector, pool) = try await inspector(stack)
        let writer = PostgresPool(configuration: stack.trackerDatabase.configuration, size: 1, logger: stack.logger)
        let saga = UUID().uuidString.lowercased()
        let rounds = 400
        let writing = Task {
            for n in 1...rounds {
                try await writer.withTransaction { c in
                    try await c.execute(
                        """
                        INSERT INTO tracker_events (event_id, saga_id, event_type, version, producer, occurred_at,
                            data, topic, partition, "offset")
                        VALUES ($1, $2, 'order.created', 1, 'orders', now(), '{}', 't', 0, $3)
                        """, [UUID(), saga, n])
                    try await c.execute(
                        """
                        INSERT INTO tracker_sagas (saga_id, status, started_at, updated_at, last_event_type, events,
                            compensations, dead_letters)
                        VALUES ($1, 'running', now(), now(), 'order.created', $2, 0, 0)
                        ON CONFLICT (saga_id) DO UPDATE SET events = $2
                        """, [saga, n])
                }
            }
        }
        var reads = 0
        var torn: [String] = []
        var latest = 0
        // Until the last write is seen (bounded, should the writer fail).
        while latest < rounds && reads < 20_000 {
            guard let t = try await inspector.timeline(saga) else { continue }
            reads += 1
            latest = t.saga?.events ?? 0
            if t.saga?.events != t.steps.count {
                torn.append("summary \(String(describing: t.saga?.events)), steps \(t.steps.count)")
            }
        }
        try await writing.value
        await writer.close()
        await pool.close()
        await stack.stop()
        #expect(reads > 10)
        #expect(torn.count == 0, "\(torn.count) of \(reads) timelines torn, e.g. \(torn.prefix(3))")
    }
}
