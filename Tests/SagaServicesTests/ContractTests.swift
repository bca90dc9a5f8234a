import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import SagaEngine
import SagaKafka
import SagaSchemas
import SagaServices
import Testing

/// Every event the code emits validates against its JSON Schema in schemas/.
@Suite(.serialized) struct ContractTests {
    @Test func everyEmittedEventValidatesAgainstItsSchema() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        _ = try await stack.finishOneOfEachOutcome()
        let events = try await stack.consumeAll(sagaEventTypes.map(stack.topics.topic(for:)), atLeast: 12)
        await stack.stop()

        // Every type but payment.refunded, which needs an order cancelled after its charge: an order that times
        // out (orders' deadline) — its contract is checked by BillingCancellationTests until this run has one.
        #expect(
            Set(events.map(\.topic))
                == Set(sagaEventTypes.filter { $0 != PaymentRefunded.eventType }.map(stack.topics.topic(for:))))
        let registry = SchemaRegistry.shared
        for message in events {
            let json = try JSONValue(parsing: message.value)
            #expect(registry.validateEnvelope(json).isEmpty, "\(message.topic)")
            let envelope = try EventEnvelope(validated: json)
            #expect(registry.validate(type: envelope.type, version: envelope.version, data: envelope.data) == [])
            #expect(message.header(SagaHeader.eventType) == envelope.type)
            #expect(message.header(SagaHeader.eventVersion) == String(envelope.version))
            #expect(message.key.map { String(decoding: $0, as: UTF8.self) } == envelope.sagaId)
            #expect(envelope.traceparent.map(TraceParent.isValid) == true)
            #expect(
                sagaEmittedEvents.contains(
                    EmittedEvent(producer: envelope.producer, type: envelope.type, version: envelope.version)),
                "\(envelope.producer) emitted \(envelope.type) v\(envelope.version), not in sagaEmittedEvents")
        }
        // Causation: every event but order.created names the event that caused it, within its saga.
        let byId = Dictionary(
            uniqueKeysWithValues: try events.map { m in
                let e = try EventEnvelope(validated: try JSONValue(parsing: m.value))
                return (e.id, e)
            })
        for e in byId.values where e.type != "order.created" {
            let cause = try #require(e.causationId.flatMap { byId[$0] }, "\(e.type) has no known cause")
            #expect(cause.sagaId == e.sagaId)
            #expect(TraceParent.traceId(cause.traceparent ?? "") == TraceParent.traceId(e.traceparent ?? ""))
        }
    }

    @Test func theHTTPRequestsTraceparentTravelsInEveryEventOfItsSaga() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let traceId = "0af7651916cd43dd8448eb211c80319c"
        let requestSpan = "b7ad6b7169203331"
        let app = Application(router: OrdersHTTP.router(book: stack.book))
        let orderId = try await app.test(.router) { client in
            try await client.execute(
                uri: "/orders", method: .post,
                headers: [
                    .contentType: "application/json", HTTPField.Name("traceparent")!: "00-\(traceId)-\(requestSpan)-01",
                ],
                body: ByteBuffer(
                    string: #"{"customerId": "alice", "currency": "EUR", "lines": [{"sku": "widget", "quantity": 1}]}"#)
            ) { response -> String? in
                guard case .string(let id)? = try? JSONValue(parsing: Array(buffer: response.body))["orderId"] else {
                    return nil
                }
                return id
            }
        }
        let id = try #require(orderId)
        #expect(try await stack.waitForTerminal(id).status == "CONFIRMED")
        let events = try await stack.consumeAll(sagaEventTypes.map(stack.topics.topic(for:)), atLeast: 4)
        await stack.stop()

        let saga = events.filter { $0.key.map { String(decoding: $0, as: UTF8.self) } == id }
        #expect(
            Set(saga.map(\.topic))
                == Set(
                    ["order.created", "inventory.reserved", "payment.completed", "order.confirmed"].map(
                        stack.topics.topic(for:))))
        for message in saga {
            let envelope = try EventEnvelope(validated: try JSONValue(parsing: message.value))
            let header = try #require(
                message.header(SagaHeader.traceparent), "\(message.topic) has no traceparent header")
            #expect(header == envelope.traceparent)
            #expect(TraceParent.traceId(header) == traceId, "\(message.topic): \(header)")
            #expect(!header.contains(requestSpan), "each hop has its own span id")
        }
    }

    @Test func theUpcasterTurnsEveryV1IntoAValidV2() throws {
        let v1 = OrderCreatedV1(
            orderId: UUID().uuidString.lowercased(), customerId: "alice", currency: "EUR",
            lines: [OrderLine(sku: "widget", quantity: 2), OrderLine(sku: "gadget", quantity: 1)], totalAmount: 5500)
        let v2json = try OrderCreatedV2.upcasterFromV1.transform(try JSONValue(encoding: v1))
        #expect(SchemaRegistry.shared.validate(type: "order.created", version: 2, data: v2json) == [])
        let v2 = try v2json.decode(OrderCreatedV2.self)
        #expect(v2.total == Money(amount: 5500, currency: "EUR"))
        #expect(v2.lines.map(\.sku) == ["widget", "gadget"])
        #expect(v2.lines.allSatisfy { $0.unitPrice == nil })
        #expect(v2.v1 == v1)
    }

    @Test func theOrderCancelledUpcasterKeepsEveryField() throws {
        for reason in [OrderCancelledV1.Reason.outOfStock, .paymentDeclined] {
            let v1 = OrderCancelledV1(
                orderId: UUID().uuidString.lowercased(), customerId: "alice", reason: reason, detail: "widget: 0 left")
            let v2json = try OrderCancelled.upcasterFromV1.transform(try JSONValue(encoding: v1))
            #expect(SchemaRegistry.shared.validate(type: "order.cancelled", version: 2, data: v2json) == [])
            #expect(v2json == (try JSONValue(encoding: v1)), "v2 only adds a reason: the payload is unchanged")
            let v2 = try v2json.decode(OrderCancelled.self)
            #expect(v2.orderId == v1.orderId && v2.customerId == "alice" && v2.detail == "widget: 0 left")
            #expect(v2.reason.rawValue == reason.rawValue)
        }
        #expect(OrderCancelled.eventVersion == 2)
        #expect(sagaEmittedEvents.contains(EmittedEvent(producer: "orders", type: "order.cancelled", version: 2)))
        #expect(!sagaEmittedEvents.contains(EmittedEvent(producer: "orders", type: "order.cancelled", version: 1)))
    }
}
