import Foundation
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

@testable import SagaEngine
@testable import SagaOperations

/// A saga's state in the read model does not depend on how its events were split into batches, on the order
/// they were read in, or on redeliveries.
extension TrackerTests {
    /// The events of four sagas, each with its time; `tie` has two events of one moment.
    struct Story {
        var messages: [KafkaMessage] = []
        let confirmed = UUID().uuidString.lowercased()  // four steps, then the outcome
        let late = UUID().uuidString.lowercased()  // cancelled by its deadline; a late failure, then the release
        let twice = UUID().uuidString.lowercased()  // two outcomes: the earlier one decides
        let tie = UUID().uuidString.lowercased()  // its last two events share their time
    }

    static func story(_ stack: TestStack) throws -> Story {
        var story = Story()
        let t0 = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000 - 60)
        func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }
        let money = Money(amount: 100, currency: "EUR")
        let line = [OrderLine(sku: "widget", quantity: 1)]
        func reserved(_ id: String) -> InventoryReserved {
            InventoryReserved(orderId: id, customerId: "alice", total: money, lines: line)
        }
        func paid(_ id: String) -> PaymentCompleted {
            PaymentCompleted(orderId: id, customerId: "alice", paymentId: UUID().uuidString.lowercased(), amount: money)
        }
        var outgoing: [KafkaOutgoingMessage] = []
        func add(_ e: (id: UUID, message: KafkaOutgoingMessage)) { outgoing.append(e.message) }
        add(try Self.created(story.confirmed, at: at(0), headers: [], stack: stack))
        add(
            try Self.event(
                reserved(story.confirmed), saga: story.confirmed, producer: "inventory", at: at(1), headers: [],
                stack: stack))
        add(
            try Self.event(
                paid(story.confirmed), saga: story.confirmed, producer: "billing", at: at(2), headers: [], stack: stack)
        )
        add(try Self.confirmed(story.confirmed, at: at(3), headers: [], stack: stack))

        add(try Self.created(story.late, at: at(0), headers: [], stack: stack))
        add(try Self.cancelled(story.late, at: at(5), cause: nil, headers: [], reason: .timeout, stack: stack))
        add(
            try Self.event(
                PaymentFailed(orderId: story.late, customerId: "alice", reason: .insufficientCredit, amount: money),
                saga: story.late, producer: "billing", at: at(6), headers: [], stack: stack))
        add(
            try Self.event(
                InventoryReleased(orderId: story.late, customerId: "alice", reason: "payment failed", lines: line),
                saga: story.late, producer: "inventory", at: at(7), headers: [], stack: stack))

        add(try Self.created(story.twice, at: at(0), headers: [], stack: stack))
        add(try Self.cancelled(story.twice, at: at(4), cause: nil, headers: [], stack: stack))
        add(try Self.confirmed(story.twice, at: at(2), headers: [], stack: stack))

        add(try Self.created(story.tie, at: at(0), headers: [], stack: stack))
        add(
            try Self.event(
                reserved(story.tie), saga: story.tie, producer: "inventory", at: at(1), headers: [], stack: stack))
        add(try Self.event(paid(story.tie), saga: story.tie, producer: "billing", at: at(1), headers: [], stack: stack))
        story.messages = outgoing.enumerated().map { offset, m in
            KafkaMessage(
                topic: m.topic, partition: 0, offset: Int64(offset), key: m.key, value: m.value, headers: m.headers,
                timestamp: nil)
        }
        return story
    }

    /// Some columns of every saga's row, as text, by saga; `early`: whether it finished 2 s after it started.
    func states(_ stack: TestStack) async throws -> [String: [String: String]] {
        var byId: [String: [String: String]] = [:]
        for row in try await stack.query(
            "tracker",
            """
            SELECT saga_id, status, coalesce(outcome, '') AS outcome, events::text AS events,
                compensations::text AS compensations, last_event_type AS last,
                coalesce((finished_at = started_at + interval '2 seconds')::text, '') AS early
            FROM tracker_sagas
            """)
        {
            var columns: [String: String] = [:]
            for name in ["status", "outcome", "events", "compensations", "last", "early"] {
                columns[name] = try row.decode(name, as: String.self)
            }
            byId[try row.decode("saga_id")] = columns
        }
        return byId
    }

    @Test func aSagasStateIsTheSameHoweverItsEventsAreBatchedOrderedOrRedelivered() async throws {
        let stack = try await TestStack()
        let (tracker, task) = try await tracker(stack)
        try await stack.eventually("the tracker read the saga's model") { !tracker.model.participants.isEmpty }
        task.cancel()
        _ = await task.result
        let story = try Self.story(stack)
        let pool = PostgresPool(configuration: stack.trackerDatabase.configuration, size: 1, logger: stack.logger)
        func record(_ batches: [[KafkaMessage]]) async throws -> [String] {
            try await stack.query("tracker", "TRUNCATE tracker_events, tracker_sagas")
            for batch in batches {
                let recorded = try await pool.withTransaction { connection in
                    try await tracker.record(batch, on: connection)
                }
                #expect(recorded.skipped == 0)
            }
            return try await snapshot(stack).filter { $0.hasPrefix("tracker_sagas ") }
        }
        let m = story.messages
        let whole = try await record([m])
        let oneByOneBackwards = try await record(m.reversed().map { [$0] })
        // A batch that holds a new event twice, then pairs (redelivering those two), then the first message again.
        let pairs = stride(from: 0, to: m.count, by: 2).map { Array(m[$0..<min($0 + 2, m.count)]) }
        let redelivered = try await record([[m[5], m[5], m[1]]] + pairs + [[m[0]]])
        // The late saga before its release: decided, but billing's late failure is waited on.
        let untilFailure = try await record([Array(m[4...6])])
        let afterUntilFailure = try await states(stack)[story.late]
        _ = try await record([m])
        let byId = try await states(stack)
        await pool.close()
        await stack.stop()

        #expect(whole.count == 4)
        #expect(oneByOneBackwards == whole)
        #expect(redelivered == whole)
        #expect(untilFailure.count == 1)
        #expect(afterUntilFailure?["status"] == "running")
        #expect(afterUntilFailure?["outcome"] == "cancelled: timeout")
        #expect(afterUntilFailure?["last"] == "payment.failed")
        #expect(byId[story.confirmed]?["status"] == "finished")
        #expect(byId[story.confirmed]?["outcome"] == "confirmed")
        #expect(byId[story.confirmed]?["events"] == "4")
        #expect(byId[story.late]?["status"] == "finished")
        #expect(byId[story.late]?["compensations"] == "1")
        #expect(byId[story.late]?["events"] == "4")
        #expect(byId[story.twice]?["outcome"] == "confirmed")
        #expect(byId[story.twice]?["early"] == "true")
        #expect(byId[story.twice]?["last"] == "order.cancelled")
        #expect(byId[story.tie]?["status"] == "running")
        #expect(byId[story.tie]?["events"] == "3")
    }
}
