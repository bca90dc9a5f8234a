import Foundation
import SagaDaemon
import SagaKafka
import SagaOperations
import Shipping
import Testing

/// Shipping joins the running choreography: a saga placed through orders passes through inventory, billing,
/// orders and shipping, shows the shipping step in the inspector, survives a duplicate delivery, and a poison
/// event to shipping is dead-lettered.
@Suite(.serialized) struct ShippingTests {
    @Test func aSagaPassesThroughShippingOnceEvenWhenItsEventIsDeliveredTwice() async throws {
        let choreography = try await Choreography()
        do {
            try await run(choreography)
        } catch {
            await choreography.stop()
            throw error
        }
        await choreography.stop()
    }

    private func run(_ choreography: Choreography) async throws {
        let topics = choreography.environment.topics
        #expect(choreography.inspector.model.waitingOn["order.confirmed"] == "shipping: schedule the shipment")
        #expect(choreography.inspector.model.kinds["shipment.scheduled"] == .step)

        let id = try await choreography.place("alice", [("widget", 1)])
        var timeline: SagaInspector.Timeline?
        try await choreography.eventually(
            "the saga finished after shipping",
            state:
                "the tracker recorded \(timeline?.steps.map(\.type) ?? []), status \(timeline?.saga?.status ?? "none"); "
                + "\(choreography.tracker.stats)"
        ) {
            timeline = try await choreography.inspector.timeline(id)
            return timeline?.saga?.status == "finished"
        }
        let finished = try #require(timeline)
        #expect(
            finished.steps.map(\.type) == [
                "order.created", "inventory.reserved", "payment.completed", "order.confirmed", "shipment.scheduled",
            ])
        #expect(finished.steps.map(\.producer) == ["orders", "inventory", "billing", "orders", "shipping"])
        #expect(finished.steps.last?.kind == "step")
        #expect(finished.steps.last?.causationId == finished.steps.dropLast().last?.eventId)
        #expect(finished.saga?.outcome == "confirmed")
        #expect(finished.saga?.waitingOn == nil)

        // order.confirmed is delivered again (same bytes, same partition), then a poison event follows it on
        // that partition: once the poison is dead-lettered, shipping has handled the duplicate.
        let confirmedTopic = topics.topic(for: Shipping.OrderConfirmed.eventType)
        let confirmed = try #require(
            try await choreography.consume(confirmedTopic, atLeast: 1).first {
                $0.key.map { String(decoding: $0, as: UTF8.self) } == id
            })
        let poison = Array(#"{"this is": "not an event"}"#.utf8)
        try await choreography.produce([
            KafkaOutgoingMessage(
                topic: confirmedTopic, key: confirmed.key, value: confirmed.value, headers: confirmed.headers,
                partition: confirmed.partition),
            KafkaOutgoingMessage(
                topic: confirmedTopic, key: confirmed.key, value: poison, partition: confirmed.partition),
        ])
        let deadLetterTopic = topics.deadLetterTopic(consumer: ShippingService.name)
        let letters = try await choreography.consume(deadLetterTopic, atLeast: 1)
        #expect(letters.map(\.value) == [poison])
        #expect(letters.first?.header(SagaHeader.deadLetterConsumer) == ShippingService.name)
        #expect(letters.first?.header(SagaHeader.deadLetterSourceTopic) == confirmedTopic)

        let scheduled = try await choreography.consume(
            topics.topic(for: ShipmentScheduled.eventType), atLeast: 1)
        #expect(scheduled.count == 1)
        // Validated against shipping's schemas as any consumer of it would.
        let codec = EventCodec(
            registry: try ShippingService.definition.schemaRegistry(), upcasters: [], topics: topics)
        let event = try codec.decode(try #require(scheduled.first), targetVersion: ShipmentScheduled.eventVersion)
        #expect(event.sagaId == id)
        #expect(event.envelope.producer == ShippingService.name)
        let shipment = try event.decode(ShipmentScheduled.self)
        #expect(shipment.orderId == id)
        #expect(shipment.carrier == ShippingService.carrier)

        let rows = try await choreography.query(
            ShippingService.name, "SELECT shipment_id::text AS shipment_id FROM shipments WHERE order_id = $1", [id])
        #expect(try rows.map { try $0.decode("shipment_id", as: String.self) } == [shipment.shipmentId])

        // The tracker records the dead letter against the saga it names (the message key).
        try await choreography.eventually("the tracker recorded the dead letter") {
            try await choreography.inspector.timeline(id)?.deadLetters.isEmpty == false
        }
        let recorded = try #require(try await choreography.inspector.timeline(id)?.deadLetters)
        #expect(recorded.map(\.consumer) == [ShippingService.name])
    }

    /// The daemon kit creates (or, on the embedded broker, leaves to first use) the topics shipping needs:
    /// those of the events it consumes and emits, and its dead-letter topic.
    @Test func theKitKnowsTheTopicsShippingNeeds() throws {
        let environment = try DaemonEnvironment.load(
            ["SAGA_TOPIC_PREFIX": "p.", "SAGA_KAFKA_BOOTSTRAP": "127.0.0.1:9092"], databases: ["shipping"],
            devFile: nil, brokerFile: nil)
        #expect(
            environment.topics(of: ShippingService.definition) == [
                "p.deadletter.shipping", "p.order.confirmed", "p.shipment.scheduled",
            ])
    }

    /// Shipping declares what its handlers consume, and supplies the schema of every event it consumes or emits.
    @Test func theDeclarationMatchesTheHandlersAndSchemas() throws {
        let definition = ShippingService.definition
        #expect(definition.declaration.consumes.map(\.type) == definition.handlers.map(\.eventType))
        let types = Set(definition.declaration.consumes.map(\.type) + definition.declaration.emits.map(\.type))
        #expect(Set(definition.schemas.map(\.type)) == types)
        let registry = try definition.schemaRegistry()
        #expect(registry.keys.map(\.description).contains("shipment.scheduled/v1"))
        #expect(
            registry.validate(
                type: "shipment.scheduled", version: 1,
                data: .object(["orderId": .string("not-a-uuid"), "shipmentId": .string(""), "carrier": .string("")]))?
                .isEmpty == false)
    }

    /// The embedded schemas are the files in schemas/, and the copy of the producer's contract
    /// (`order.confirmed`) is the engine's own schemas/ file: a change on either side fails here.
    @Test func theEmbeddedSchemasAreTheFilesAndTheProducersContract() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..")
            .standardized
        for schema in ShippingSchemas.all {
            let file = example.appendingPathComponent("schemas/\(schema.type)/v\(schema.version).schema.json")
            let text = try String(contentsOf: file, encoding: .utf8)
            #expect(text == schema.json + "\n", "\(file.path)")
        }
        let ours = example.appendingPathComponent("schemas/order.confirmed/v1.schema.json")
        let producers = example.appendingPathComponent("../../schemas/order.confirmed/v1.schema.json").standardized
        #expect(try Data(contentsOf: ours) == Data(contentsOf: producers))
    }
}
