import Foundation
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

@testable import SagaEngine
@testable import SagaOperations

/// Deadlines in the tracker's read model and the inspector, from `saga-deadline` headers on crafted events
/// (the runtime writes them; these tests write them as it does, so they also pin the header's format).
extension TrackerTests {
    /// A `saga-deadline` header as the runtime writes it (times RFC 3339 UTC with milliseconds).
    static func mark(
        _ op: String, due: Date, event: UUID, at: Date, lateMs: Int? = nil, participant: String = "orders",
        name: String = "order"
    ) -> KafkaHeader {
        var o: [String: JSONValue] = [
            "op": .string(op), "name": .string(name), "participant": .string(participant),
            "dueAt": .string(Timestamp.format(due)), "eventId": .string(event.uuidString.lowercased()),
            "eventType": .string("order.expired"), "at": .string(Timestamp.format(at)),
        ]
        if let lateMs { o["lateMs"] = .integer(Int64(lateMs)) }
        return KafkaHeader(key: "saga-deadline", value: JSONValue.object(o).serialized())
    }

    /// An event of saga `id` that occurred at `at`, caused by `cause`, carrying `headers`.
    static func event<P: EventPayload>(
        _ payload: P, saga id: String, producer: String = "orders", at: Date, cause: UUID? = nil,
        headers: [KafkaHeader], stack: TestStack
    ) throws -> (id: UUID, message: KafkaOutgoingMessage) {
        var event = try OutgoingEvent(payload, sagaId: id, producer: producer, causedBy: nil)
        event.envelope.occurredAt = at
        event.envelope.causationId = cause
        var message = try EventCodec(upcasters: [], topics: stack.topics).encode(event)
        message.headers += headers
        return (event.envelope.id, message)
    }

    static func created(_ id: String, at: Date, headers: [KafkaHeader], stack: TestStack) throws -> (
        id: UUID, message: KafkaOutgoingMessage
    ) {
        try event(
            OrderCreatedV2(
                orderId: id, customerId: "alice", total: Money(amount: 100, currency: "EUR"),
                lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]), saga: id, at: at, headers: headers,
            stack: stack)
    }

    static func cancelled(
        _ id: String, at: Date, cause: UUID?, headers: [KafkaHeader], reason: OrderCancelled.Reason = .paymentDeclined,
        stack: TestStack
    ) throws -> (
        id: UUID, message: KafkaOutgoingMessage
    ) {
        try event(
            OrderCancelled(orderId: id, customerId: "alice", reason: reason, detail: "x"), saga: id, at: at,
            cause: cause, headers: headers, stack: stack)
    }

    static func confirmed(_ id: String, at: Date, headers: [KafkaHeader], stack: TestStack) throws -> (
        id: UUID, message: KafkaOutgoingMessage
    ) {
        try event(
            OrderConfirmed(orderId: id, customerId: "alice", total: Money(amount: 100, currency: "EUR")), saga: id,
            at: at, headers: headers, stack: stack)
    }

    /// Milliseconds since 1970, for comparing dates that went through the database (microseconds) and headers
    /// (milliseconds).
    static func ms(_ date: Date?) -> Int64? { date.map { Int64(($0.timeIntervalSince1970 * 1000).rounded()) } }

    /// The same time to the millisecond the headers carry (formatting one may truncate the last digit).
    static func same(_ a: Date?, _ b: Date?) -> Bool {
        guard let a = ms(a), let b = ms(b) else { return false }
        return abs(a - b) <= 1
    }

    @Test func theTimelineShowsDeadlineTimeLeftAndTheFiredStep() async throws {
        let stack = try await TestStack()
        let (_, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        // Whole milliseconds, as the headers carry them.
        let t0 = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000 - 10)
        // A saga whose deadline is a minute away.
        let pending = UUID().uuidString.lowercased()
        let pendingExpiry = UUID()
        let due = Date().addingTimeInterval(60)
        let p = try Self.created(
            pending, at: t0,
            headers: [
                // This one as the runtime writes it (the others are written by hand, pinning the format).
                Deadline.Mark(
                    op: .scheduled, name: "order", participant: "orders", dueAt: due, eventId: pendingExpiry,
                    eventType: "order.expired", at: t0
                ).header
            ], stack: stack)
        // A saga whose deadline fired 2.1 s after it was placed, 100 ms late, and cancelled it.
        let expired = UUID().uuidString.lowercased()
        let expiry = UUID()
        let firedAt = t0.addingTimeInterval(2.1)
        let e1 = try Self.created(
            expired, at: t0,
            headers: [Self.mark("scheduled", due: t0.addingTimeInterval(2), event: expiry, at: t0)], stack: stack)
        let e2 = try Self.cancelled(
            expired, at: t0.addingTimeInterval(2.15), cause: expiry,
            headers: [Self.mark("fired", due: t0.addingTimeInterval(2), event: expiry, at: firedAt, lateMs: 100)],
            stack: stack)
        try await stack.produce([p.message, e1.message, e2.message])
        var timelines: [String: SagaInspector.Timeline] = [:]
        try await stack.eventually("both sagas recorded") {
            timelines[pending] = try await inspector.timeline(pending)
            timelines[expired] = try await inspector.timeline(expired)
            return timelines[pending] != nil && timelines[expired]?.steps.count == 3
        }
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        let a = try #require(timelines[pending])
        #expect(a.deadlines.count == 1)
        let d = try #require(a.deadlines.first)
        #expect(d.participant == "orders" && d.name == "order" && d.state == "scheduled")
        #expect(Self.same(d.dueAt, due))
        #expect(d.eventId == pendingExpiry.uuidString.lowercased() && d.eventType == "order.expired")
        #expect((50_000...60_000).contains(d.timeLeftMs ?? -1), "\(String(describing: d.timeLeftMs))")
        #expect(d.firedAt == nil && d.lateMs == nil)
        #expect(a.saga?.deadline?.name == "order")
        #expect((50_000...60_000).contains(a.saga?.deadline?.timeLeftMs ?? -1))
        #expect(a.steps.map(\.type) == ["order.created"])

        let b = try #require(timelines[expired])
        #expect(b.steps.map(\.type) == ["order.created", "order.expired", "order.cancelled"])
        #expect(b.steps.map(\.kind) == ["step", "deadline", "outcome"])
        let fired = b.steps[1]
        #expect(fired.eventId == expiry.uuidString.lowercased())
        #expect(fired.producer == "orders" && fired.topic == "(deadline)" && fired.partition == -1)
        #expect(Self.same(fired.occurredAt, firedAt))
        #expect(b.steps[2].causationId == fired.eventId)
        #expect(abs((b.steps[1].sincePreviousMs ?? 0) - 2100) < 2)
        #expect(abs((b.steps[2].sincePreviousMs ?? 0) - 50) < 2)
        #expect(b.deadlines.map(\.state) == ["fired"])
        #expect(b.deadlines.first?.lateMs == 100)
        #expect(Self.same(b.deadlines.first?.firedAt, firedAt))
        #expect(b.deadlines.first?.timeLeftMs == nil)
        #expect(b.saga?.deadline == nil)
        #expect(b.saga?.outcome == "cancelled: payment_declined")
        #expect(b.saga?.events == 2)
    }

    @Test func headersReadOutOfOrderKeepTheLatestState() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let t0 = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000 - 10)
        let due = t0.addingTimeInterval(30)
        let expiry = UUID()
        // The confirmation (which cancelled the deadline) is read before the placement (which scheduled it).
        let id = UUID().uuidString.lowercased()
        let cancelledAt = t0.addingTimeInterval(1)
        let created = try Self.created(
            id, at: t0, headers: [Self.mark("scheduled", due: due, event: expiry, at: t0)], stack: stack)
        let confirmed = try Self.confirmed(
            id, at: cancelledAt, headers: [Self.mark("cancelled", due: due, event: expiry, at: cancelledAt)],
            stack: stack)
        try await stack.produce([confirmed.message])
        try await stack.eventually("the cancellation recorded") {
            try await inspector.timeline(id)?.deadlines.first?.state == "cancelled"
        }
        try await stack.produce([created.message, created.message])  // and the placement again, redelivered
        // A deadline cancelled and scheduled again at one moment (as a transaction may): the cancellation stays.
        let same = UUID().uuidString.lowercased()
        let both = try Self.created(
            same, at: t0,
            headers: [
                Self.mark("cancelled", due: due, event: expiry, at: t0),
                Self.mark("scheduled", due: due, event: expiry, at: t0),
            ], stack: stack)
        // A header that is not a mark is skipped; its event is recorded.
        let garbled = UUID().uuidString.lowercased()
        var bad = try Self.created(garbled, at: t0, headers: [], stack: stack)
        bad.message.headers += [
            KafkaHeader(key: "saga-deadline", string: "{not json"),
            KafkaHeader(key: "saga-deadline", string: #"{"op":"postponed","name":"order","participant":"orders"}"#),
        ]
        try await stack.produce([both.message, bad.message])
        var seen: [String: SagaInspector.Timeline] = [:]
        try await stack.eventually("everything recorded") {
            for saga in [id, same, garbled] { seen[saga] = try await inspector.timeline(saga) }
            return seen[id]?.steps.count == 2 && seen[same] != nil && seen[garbled] != nil
        }
        let rows = try await stack.query("tracker", "SELECT count(*) AS n FROM tracker_deadlines").first?.decode(
            "n", as: Int.self)
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        let t = try #require(seen[id])
        #expect(t.deadlines.count == 1)
        #expect(t.deadlines.first?.state == "cancelled")
        #expect(Self.same(t.deadlines.first?.cancelledAt, cancelledAt))
        #expect(t.saga?.deadline == nil)
        #expect(!t.steps.contains { $0.kind == "deadline" })
        #expect(seen[same]?.deadlines.map(\.state) == ["cancelled"])
        #expect(seen[garbled]?.deadlines.isEmpty == true)
        #expect(seen[garbled]?.steps.count == 1)
        #expect(rows == 2)
        #expect(tracker.stats.skipped == 0)
    }

    /// Marks of one deadline that come in one batch, in any order, leave the state applying them one after the
    /// other would (the batch upserts them in one statement, which may not change a row twice).
    @Test func marksOfOneDeadlineInOneBatchKeepTheLatestState() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        task.cancel()
        _ = await task.result
        let t0 = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000 - 10)
        let due = t0.addingTimeInterval(30)
        let expiry = UUID()
        func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }
        let read = UUID().uuidString.lowercased()  // cancelled, read before the schedule, which comes twice
        let fired = UUID().uuidString.lowercased()  // scheduled, fired, and a stale cancellation read last
        let tie = UUID().uuidString.lowercased()  // scheduled and cancelled at one moment, in two events
        let moved = UUID().uuidString.lowercased()  // scheduled, then scheduled again for later
        let outgoing = [
            try Self.confirmed(
                read, at: at(1), headers: [Self.mark("cancelled", due: due, event: expiry, at: at(1))], stack: stack),
            try Self.created(
                read, at: at(0), headers: [Self.mark("scheduled", due: due, event: expiry, at: at(0))],
                stack: stack),
            try Self.created(
                read, at: at(0), headers: [Self.mark("scheduled", due: due, event: expiry, at: at(0))],
                stack: stack),
            try Self.created(
                fired, at: at(0), headers: [Self.mark("scheduled", due: due, event: expiry, at: at(0))],
                stack: stack),
            try Self.confirmed(
                fired, at: at(2),
                headers: [Self.mark("fired", due: due, event: expiry, at: at(2), lateMs: 7)], stack: stack),
            try Self.confirmed(
                fired, at: at(1), headers: [Self.mark("cancelled", due: due, event: expiry, at: at(1))], stack: stack),
            try Self.created(
                tie, at: at(0), headers: [Self.mark("scheduled", due: due, event: expiry, at: at(0))],
                stack: stack),
            try Self.confirmed(
                tie, at: at(0), headers: [Self.mark("cancelled", due: due, event: expiry, at: at(0))], stack: stack),
            try Self.created(
                moved, at: at(0), headers: [Self.mark("scheduled", due: due, event: expiry, at: at(0))],
                stack: stack),
            try Self.created(
                moved, at: at(3), headers: [Self.mark("scheduled", due: at(60), event: expiry, at: at(3))],
                stack: stack),
        ].map(\.message)
        let batch = outgoing.enumerated().map { offset, m in
            KafkaMessage(
                topic: m.topic, partition: 0, offset: Int64(offset), key: m.key, value: m.value, headers: m.headers,
                timestamp: nil)
        }
        let pool = PostgresPool(configuration: stack.trackerDatabase.configuration, size: 1, logger: stack.logger)
        let recorded = try await pool.withTransaction { connection in try await tracker.record(batch, on: connection) }
        await pool.close()
        var state: [String: (state: String, due: Date, lateMs: Int64?)] = [:]
        for row in try await stack.query("tracker", "SELECT saga_id, state, due_at, late_ms FROM tracker_deadlines") {
            state[try row.decode("saga_id", as: String.self)] = (
                try row.decode("state", as: String.self), try row.decode("due_at", as: Date.self),
                try row.decode("late_ms", as: Int64?.self)
            )
        }
        await stack.stop()

        #expect(state.count == 4)
        #expect(state[read]?.state == "cancelled")
        #expect(state[fired]?.state == "fired")
        #expect(state[fired]?.lateMs == 7)
        #expect(state[tie]?.state == "cancelled")
        #expect(state[moved]?.state == "scheduled")
        #expect(Self.ms(state[moved]?.due) == Self.ms(at(60)))
        #expect(recorded.skipped == 0)
        #expect(recorded.events == batch.count)
    }

    /// A saga whose deadline fell without firing (its participant is down, say) is listed by `--stuck`
    /// once it is `grace` overdue, whatever its age, and leaves the list when the firing is recorded.
    @Test func stuckListsASagaPastItsDeadlineOnlyAfterTheGrace() async throws {
        let stack = try await TestStack()
        let (_, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let now = Date()
        let overdue = UUID().uuidString.lowercased()
        let notYet = UUID().uuidString.lowercased()
        let firedLate = UUID().uuidString.lowercased()
        let expiry = UUID()
        let past = now.addingTimeInterval(-5)
        try await stack.produce([
            try Self.created(
                overdue, at: now.addingTimeInterval(-6),
                headers: [Self.mark("scheduled", due: past, event: expiry, at: now)],
                stack: stack
            ).message,
            try Self.created(
                notYet, at: now,
                headers: [Self.mark("scheduled", due: now.addingTimeInterval(60), event: UUID(), at: now)],
                stack: stack
            ).message,
            try Self.created(
                firedLate, at: now.addingTimeInterval(-6),
                headers: [Self.mark("scheduled", due: past, event: UUID(), at: now)], stack: stack
            ).message,
        ])
        try await stack.eventually("recorded") {
            try await stack.query("tracker", "SELECT 1 FROM tracker_deadlines").count == 3
        }
        // The third one's firing is recorded (here before --stuck asks).
        try await stack.produce([
            try Self.cancelled(
                firedLate, at: now, cause: nil,
                headers: [Self.mark("fired", due: past, event: UUID(), at: now, lateMs: 5000)],
                stack: stack
            ).message
        ])
        try await stack.eventually("the firing recorded") {
            try await inspector.timeline(firedLate)?.deadlines.first?.state == "fired"
        }
        // The sagas are recent: only a deadline lists them.
        let listed = try await inspector.stuck(olderThan: .seconds(3600), grace: .seconds(1))
        let withinGrace = try await inspector.stuck(olderThan: .seconds(3600), grace: .seconds(30))
        try await stack.produce([
            try Self.cancelled(
                overdue, at: Date(), cause: expiry,
                headers: [Self.mark("fired", due: past, event: expiry, at: Date(), lateMs: 6000)], stack: stack
            ).message
        ])
        try await stack.eventually("the late firing recorded") {
            try await inspector.timeline(overdue)?.deadlines.first?.state == "fired"
        }
        let after = try await inspector.stuck(olderThan: .seconds(3600), grace: .seconds(1))
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        #expect(listed.map(\.sagaId) == [overdue])
        let entry = try #require(listed.first)
        #expect(entry.status == "running")
        #expect(entry.deadline?.name == "order" && entry.deadline?.state == "scheduled")
        #expect((-30_000 ... -4_000).contains(entry.deadline?.timeLeftMs ?? 0), "\(String(describing: entry.deadline))")
        #expect(withinGrace.isEmpty)
        #expect(after.isEmpty)
    }

    /// Orders consumes `inventory.released` "until the outcome" (`untilOutcome`): once the saga is cancelled (a
    /// timeout, say), a release read after `order.cancelled` is a compensation nobody waits on, and the saga
    /// finishes with it instead of staying running, waiting on "orders: cancel the order", for ever.
    @Test func aTimedOutSagaFinishesAfterItsCompensations() async throws {
        let stack = try await TestStack()
        var declaration = OrdersService.declaration
        for i in declaration.consumes.indices where declaration.consumes[i].waitingOn != nil {
            declaration.consumes[i].untilOutcome = true
        }
        try await stack.registry.register(OrdersService.name, declaration: declaration, logger: stack.logger)
        let (tracker, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let t0 = Date().addingTimeInterval(-10)
        let id = UUID().uuidString.lowercased()
        let expiry = UUID()
        let due = t0.addingTimeInterval(2)
        let lines = [OrderLine(sku: "widget", quantity: 1)]
        let total = Money(amount: 100, currency: "EUR")
        try await stack.produce([
            try Self.created(
                id, at: t0, headers: [Self.mark("scheduled", due: due, event: expiry, at: t0)], stack: stack
            )
            .message,
            try Self.event(
                InventoryReserved(orderId: id, customerId: "alice", total: total, lines: lines), saga: id,
                producer: "inventory", at: t0.addingTimeInterval(0.1), headers: [], stack: stack
            ).message,
        ])
        try await stack.eventually("the reservation recorded") { try await inspector.timeline(id)?.steps.count == 2 }
        try await stack.produce([
            try Self.cancelled(
                id, at: due.addingTimeInterval(0.2), cause: expiry,
                headers: [Self.mark("fired", due: due, event: expiry, at: due.addingTimeInterval(0.1), lateMs: 100)],
                reason: .timeout, stack: stack
            ).message
        ])
        try await stack.eventually("the cancellation recorded") { try await inspector.timeline(id)?.steps.count == 4 }
        let cancelled = try await inspector.timeline(id)
        try await stack.produce([
            try Self.event(
                InventoryReleased(orderId: id, customerId: "alice", reason: "order cancelled: timeout", lines: lines),
                saga: id, producer: "inventory", at: due.addingTimeInterval(0.5), headers: [], stack: stack
            ).message
        ])
        try await stack.eventually("the release recorded") { try await inspector.timeline(id)?.steps.count == 5 }
        let released = try await inspector.timeline(id)
        let stuck = try await inspector.stuck(olderThan: .milliseconds(1), grace: .seconds(0))
        let model = tracker.model
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        #expect(model.waitingOn["inventory.released"] == "orders: cancel the order")
        #expect(model.waitingAfterOutcome["inventory.released"] == nil)
        #expect(cancelled?.saga?.status == "finished")
        #expect(
            released?.steps.map(\.type) == [
                "order.created", "inventory.reserved", "order.expired", "order.cancelled", "inventory.released",
            ])
        #expect(released?.saga?.status == "finished")
        #expect(released?.saga?.outcome == "cancelled: timeout")
        #expect(released?.saga?.lastEventType == "inventory.released")
        #expect(released?.saga?.compensations == 1)
        #expect(released?.saga?.waitingOn == nil)
        #expect(!stuck.contains { $0.sagaId == id })
    }

    /// The orders worker is down when an order's deadline falls: `--stuck` lists the saga, past its deadline;
    /// once the worker is back it fires the deadline, the order is cancelled (timeout), and the saga leaves
    /// the list, its timeline showing the fired deadline between `order.created` and `order.cancelled`.
    @Test func stuckListsSagasPastAnUnfiredDeadline() async throws {
        let stack = try await TestStack(orderDeadline: nil)
        for s in TestStack.services { stack.startRelay(s) }
        let (_, task) = try await tracker(stack)
        let (inspector, pool) = try await inspector(stack)
        let placed = try await stack.book.place(
            OrderRequest(
                customerId: "alice", currency: "EUR", lines: [OrderLine(sku: "widget", quantity: 1)],
                deadlineSeconds: 1))
        let id = placed.orderId.uuidString.lowercased()
        try await stack.eventually("the placement and its deadline recorded") {
            try await inspector.timeline(id)?.deadlines.first?.state == "scheduled"
        }
        let scheduled = try await inspector.timeline(id)
        try await Task.sleep(for: .milliseconds(1800))
        let listed = try await inspector.stuck(olderThan: .seconds(3600), grace: .milliseconds(500))
        try stack.startWorker("orders")
        try await stack.eventually("the deadline fired and was recorded") {
            try await inspector.timeline(id)?.deadlines.first?.state == "fired"
        }
        let fired = try await inspector.timeline(id)
        let after = try await inspector.stuck(olderThan: .seconds(3600), grace: .milliseconds(500))
        task.cancel()
        _ = await task.result
        await pool.close()
        await stack.stop()

        #expect(Self.same(scheduled?.deadlines.first?.dueAt, placed.deadline))
        #expect(scheduled?.saga?.deadline?.name == OrdersService.deadlineName)
        let entry = try #require(listed.first { $0.sagaId == id })
        #expect((entry.deadline?.timeLeftMs ?? 0) < -500, "\(String(describing: entry.deadline))")
        #expect(entry.waitingOn == "inventory: reserve the stock")
        #expect(!after.contains { $0.sagaId == id })
        let t = try #require(fired)
        #expect(t.steps.map(\.type) == ["order.created", "order.expired", "order.cancelled"])
        #expect(t.steps.map(\.kind) == ["step", "deadline", "outcome"])
        #expect(t.steps[2].causationId == t.steps[1].eventId)
        #expect(t.deadlines.first?.participant == "orders")
        #expect((t.deadlines.first?.lateMs ?? -1) >= 500)
        #expect(t.saga?.outcome == "cancelled: timeout")
        #expect(t.saga?.deadline == nil)
    }
}
