import Foundation
import SagaEngine
import SagaKafka
import SagaOperations
import SagaSchemas
import SagaServices
import SagaTestSupport
import Testing

/// `shipment.scheduled` v1: a fourth participant's event, with its own schema (not in `schemas/`).
struct ShipmentScheduled: EventPayload, Hashable {
    static let eventType = "shipment.scheduled"
    static let eventVersion = 1
    var orderId: String
    var carrier: String

    static let schema = EventSchema(
        type: eventType, version: eventVersion,
        json: """
            {
              "$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": "saga:shipment.scheduled/v1",
              "type": "object",
              "additionalProperties": false,
              "required": ["orderId", "carrier"],
              "properties": {
                "orderId": {"type": "string", "format": "uuid"},
                "carrier": {"type": "string", "minLength": 1}
              }
            }
            """)
}

/// A participant defined here only, as an outside team would: it consumes `order.confirmed` (a step after the
/// saga's outcome), keeps its own table, and emits `shipment.scheduled`. Nothing in orders, inventory or billing
/// names it.
enum ShippingParticipant {
    static let name = "shipping"

    static let definition = ParticipantDefinition(
        name: name,
        migrations: [
            PostgresMigration(
                version: 100, name: "shipping: shipments",
                sql: "CREATE TABLE shipments (order_id text PRIMARY KEY, carrier text NOT NULL);")
        ],
        handlers: [
            .on(OrderConfirmed.self) { confirmed, context in
                try await context.connection.execute(
                    "INSERT INTO shipments (order_id, carrier) VALUES ($1, 'post')", [confirmed.orderId])
                return [try context.emit(ShipmentScheduled(orderId: confirmed.orderId, carrier: "post"))]
            }
        ],
        declaration: SagaDeclaration(
            emits: [.step(ShipmentScheduled.self)],
            consumes: [.handles(OrderConfirmed.self, waitingOn: "schedule the shipment")]),
        schemas: EventSchema.embedded(types: [OrderConfirmed.eventType]) + [ShipmentScheduled.schema])
}

/// The saga's shape comes from its participants: one that registers while the tracker runs is tracked (its
/// topic subscribed), shown in timelines, and waited on by `--stuck`, without a restart.
@Suite(.serialized) struct ParticipantJoinTests {
    @Test func aParticipantThatJoinsARunningTrackerIsSubscribedShownAndWaitedOn() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        var c = TrackerConfiguration(
            kafka: stack.kafka, database: stack.trackerDatabase, topics: stack.topics, services: TestStack.services)
        c.pollTimeout = .milliseconds(50)
        c.registryRefreshInterval = .milliseconds(200)
        let tracker = SagaTracker(configuration: c, logger: stack.logger)
        let trackerTask = Task { try await tracker.run() }
        let shippingTopic = stack.topics.topic(for: ShipmentScheduled.eventType)
        try await stack.createTopics([shippingTopic, stack.topics.deadLetterTopic(consumer: ShippingParticipant.name)])
        let pool = PostgresPool(configuration: stack.trackerDatabase.configuration, size: 1, logger: stack.logger)
        var shippingDatabase = ServiceDatabase(
            url: PostgresTestDatabase.url,
            schema: stack.trackerDatabase.schema.replacingOccurrences(
                of: "_tracker", with: "_shipping"))
        shippingDatabase.registry = stack.registry
        var worker: Task<Void, any Error>?
        var relay: Task<Void, any Error>?
        func stopAll() async {
            for task in [worker, relay, trackerTask].compactMap({ $0 }) { task.cancel() }
            for task in [worker, relay, trackerTask].compactMap({ $0 }) { _ = await task.result }
            await pool.close()
            try? await PostgresTestDatabase.dropSchema(shippingDatabase.schema)
            await stack.stop()
        }
        do {
            try await stack.eventually("the tracker read the three participants") {
                tracker.model.participants == TestStack.services.sorted()
            }
            #expect(!tracker.subscribedTopics.contains(shippingTopic))

            // Shipping's worker starts (the runtime migrates its schema and registers it), then stops.
            var workerConfiguration = WorkerConfiguration(
                name: ShippingParticipant.name, kafka: stack.kafka, database: shippingDatabase, topics: stack.topics)
            workerConfiguration.pollTimeout = .milliseconds(50)
            let firstRun = try Worker(
                configuration: workerConfiguration, definition: ShippingParticipant.definition, logger: stack.logger)
            worker = Task { try await firstRun.run() }
            try await stack.eventually("the running tracker subscribed to shipping's topic") {
                tracker.subscribedTopics.contains(shippingTopic)
            }
            worker?.cancel()
            _ = await worker?.result
            worker = nil
            let inspector = try await SagaInspector(pool: pool, registry: stack.registry, logger: stack.logger)
            #expect(inspector.model.waitingOn[OrderConfirmed.eventType] == "shipping: schedule the shipment")

            // A confirmed order now waits on shipping: running, listed by --stuck with what it waits on.
            let id = try await stack.place("alice", [("widget", 1)])
            try await stack.eventually("the confirmation reached the tracker") {
                try await inspector.timeline(id)?.saga?.lastEventType == OrderConfirmed.eventType
            }
            try await Task.sleep(for: .milliseconds(600))
            let waiting = try await inspector.timeline(id)?.saga
            let stuck = try await inspector.stuck(olderThan: .milliseconds(500)).first { $0.sagaId == id }

            // Shipping starts again: the saga passes through it and finishes.
            var relayConfiguration = RelayConfiguration(
                name: ShippingParticipant.name, kafka: stack.kafka, database: shippingDatabase)
            relayConfiguration.pollInterval = .milliseconds(200)
            let outboxRelay = OutboxRelay(configuration: relayConfiguration, logger: stack.logger)
            relay = Task { try await outboxRelay.run() }
            let shippingWorker = try Worker(
                configuration: workerConfiguration, definition: ShippingParticipant.definition, logger: stack.logger)
            worker = Task { try await shippingWorker.run() }
            var finished: SagaInspector.Timeline?
            try await stack.eventually("the saga finished after shipping") {
                finished = try await inspector.timeline(id)
                return finished?.saga?.status == "finished"
            }
            let stuckAfter = try await inspector.stuck(olderThan: .milliseconds(500))
            await stopAll()

            #expect(waiting?.status == "running")
            #expect(waiting?.outcome == "confirmed")
            #expect(waiting?.waitingOn == "shipping: schedule the shipment")
            #expect(stuck?.waitingOn == "shipping: schedule the shipment")
            #expect(stuck?.lastEventType == OrderConfirmed.eventType)
            let t = try #require(finished)
            #expect(
                t.steps.map(\.type) == [
                    "order.created", "inventory.reserved", "payment.completed", "order.confirmed", "shipment.scheduled",
                ])
            #expect(t.steps.last?.producer == ShippingParticipant.name)
            #expect(t.steps.last?.kind == "step")
            #expect(t.steps.last?.causationId == t.steps.dropLast().last?.eventId)
            #expect(t.saga?.outcome == "confirmed")
            #expect(t.saga?.waitingOn == nil)
            #expect(!stuckAfter.contains { $0.sagaId == id })
        } catch {
            await stopAll()
            throw error
        }
    }

    /// Without a fourth participant, nothing waits on an outcome: the saga finishes at `order.confirmed`.
    @Test func theThreeServicesDeclareTheSagaTheyRun() {
        let model = SagaModel(
            declarations: Dictionary(uniqueKeysWithValues: sagaServiceDefinitions.map { ($0.name, $0.declaration) }))
        #expect(model.eventTypes == sagaEventTypes.sorted())
        #expect(model.participants == ["billing", "inventory", "orders"])
        #expect(
            model.kinds == [
                "order.created": .step, "inventory.reserved": .step, "payment.completed": .step,
                "inventory.rejected": .failure, "payment.failed": .failure, "inventory.released": .compensation,
                "order.confirmed": .outcome, "order.cancelled": .outcome, "payment.refunded": .compensation,
            ])
        #expect(
            model.waitingOn == [
                "order.created": "inventory: reserve the stock", "inventory.reserved": "billing: charge the customer",
                "inventory.rejected": "orders: cancel the order", "payment.completed": "orders: confirm the order",
                "payment.failed": "inventory: release the reservation",
                "inventory.released": "orders: cancel the order",
            ])
        #expect(model.outcome(of: "order.confirmed", data: .object([:])) == "confirmed")
        #expect(
            model.outcome(of: "order.cancelled", data: .object(["reason": .string("out_of_stock")]))
                == "cancelled: out_of_stock")
        #expect(model.outcome(of: "order.cancelled", data: .object([:])) == "cancelled")
        #expect(model.outcome(of: "payment.completed", data: .object([:])) == nil)
        for definition in sagaServiceDefinitions {
            let consumed = Set(definition.declaration.consumes.map(\.type))
            let emitted = Set(definition.declaration.emits.map(\.type))
            // Delivered by its own deadlines: handled and with schemas, but not consumed from Kafka.
            let deadlines = Set(definition.declaration.deadlines.map(\.type))
            #expect(consumed.isDisjoint(with: deadlines), "\(definition.name)")
            // It declares what its handlers consume (or its deadlines deliver) and what it emits, and supplies
            // every version's schema.
            #expect(consumed.union(deadlines) == Set(definition.handlers.map(\.eventType)), "\(definition.name)")
            #expect(
                emitted == Set(sagaEmittedEvents.filter { $0.producer == definition.name }.map(\.type)),
                "\(definition.name)")
            #expect(
                Set(definition.schemas.map(\.key))
                    == Set(
                        SchemaRegistry.shared.keys.filter { consumed.union(emitted).union(deadlines).contains($0.type) }
                    ),
                "\(definition.name)")
        }
    }
}
