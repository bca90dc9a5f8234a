import Foundation
import SagaEngine
import SagaKafka
import Testing

@Suite struct EventCodecTests {
    let topics = TopicNaming(prefix: "p.")
    let upcaster = Upcaster(type: "order.created", from: 1) { v1 in
        guard case .object(var o) = v1, case .integer(let total)? = o["totalAmount"],
            case .string(let currency)? = o["currency"]
        else { throw EventDecodingError("bad v1") }
        o["total"] = .object(["amount": .integer(total), "currency": .string(currency)])
        o["totalAmount"] = nil
        o["currency"] = nil
        return .object(o)
    }

    func message(type: String = "order.created", version: Int, data: JSONValue, topic: String? = nil) -> KafkaMessage {
        let e = EventEnvelope(
            type: type, version: version, sagaId: "s1", causationId: nil, producer: "orders",
            traceparent: TraceParent.root(), data: data)
        return KafkaMessage(
            topic: topic ?? topics.topic(for: type), partition: 0, offset: 7, key: Array("s1".utf8),
            value: e.serialized(), headers: [], timestamp: nil)
    }

    let v1: JSONValue = .object([
        "orderId": .string("0b7e6f6a-8a4e-4a53-9d55-2f1f1b6f8c11"), "customerId": .string("alice"),
        "currency": .string("EUR"),
        "lines": .array([.object(["sku": .string("widget"), "quantity": .integer(2)])]), "totalAmount": .integer(2500),
    ])

    @Test func aV1EventIsValidatedAndUpcastToTheHandlersVersion() throws {
        let codec = EventCodec(upcasters: [upcaster], topics: topics)
        let event = try codec.decode(message(version: 1, data: v1), targetVersion: 2)
        #expect(event.publishedVersion == 1)
        #expect(event.envelope.version == 2)
        #expect(event.envelope.data["total"]?["amount"] == .integer(2500))
        #expect(event.offset == 7)
    }

    @Test func poisonMessagesAreRefusedWithAReason() throws {
        let codec = EventCodec(upcasters: [upcaster], topics: topics)
        func reason(_ m: KafkaMessage, target: Int = 2) -> String {
            do {
                _ = try codec.decode(m, targetVersion: target)
                return "decoded"
            } catch { return error.reason }
        }
        var notJSON = message(version: 1, data: v1)
        notJSON.value = Array("nope".utf8)
        #expect(reason(notJSON).hasPrefix("not JSON"))
        var noSaga = message(version: 1, data: v1)
        if case .object(var o) = try JSONValue(parsing: noSaga.value) {
            o["sagaId"] = nil
            noSaga.value = JSONValue.object(o).serialized()
        }
        #expect(reason(noSaga).hasPrefix("invalid envelope"))
        #expect(reason(message(version: 9, data: v1)).hasPrefix("unknown event version"))
        #expect(reason(message(version: 1, data: .object([:]))).hasPrefix("schema violation"))
        #expect(
            reason(message(version: 1, data: v1, topic: "p.payment.failed")).hasPrefix(
                "event type order.created on topic"))
        // A consumer written for v1 cannot read v2.
        let v2 = try codec.decode(message(version: 1, data: v1), targetVersion: 2).envelope.data
        #expect(reason(message(version: 2, data: v2), target: 1).contains("newer"))
        // Without the upcaster, v1 cannot become v2.
        let bare = EventCodec(upcasters: [], topics: topics)
        #expect(throws: EventDecodingError.self) { try bare.decode(message(version: 1, data: v1), targetVersion: 2) }
    }

    @Test func encodingRefusesAnEventThatBreaksItsSchema() throws {
        let codec = EventCodec(upcasters: [], topics: topics)
        let bad = OutgoingEvent(
            envelope: EventEnvelope(
                type: "order.created", version: 2, sagaId: "s", causationId: nil, producer: "orders", traceparent: nil,
                data: .object([:])))
        #expect(throws: EventEncodingError.self) { try codec.encode(bad) }
        let good = OutgoingEvent(
            envelope: EventEnvelope(
                type: "order.created", version: 1, sagaId: "s", causationId: nil, producer: "orders", traceparent: nil,
                data: v1))
        let m = try codec.encode(good)
        #expect(m.topic == "p.order.created")
        #expect(m.key == Array("s".utf8))
        #expect(m.headers.contains(KafkaHeader(key: SagaHeader.eventVersion, string: "1")))
    }

    @Test func traceContextIsCarriedFromCauseToEffect() {
        let root = TraceParent.root()
        #expect(TraceParent.isValid(root))
        let child = TraceParent.child(of: root)
        #expect(TraceParent.traceId(child) == TraceParent.traceId(root))
        #expect(child != root)
        #expect(TraceParent.isValid(TraceParent.child(of: "garbage")))
        #expect(!TraceParent.isValid("00-00000000000000000000000000000000-0000000000000000-01"))
    }

    @Test func retryDelaysGrowAndAreCapped() {
        let p = RetryPolicy(initialDelay: .milliseconds(100), maxDelay: .seconds(2))
        #expect(p.delay(attempt: 1) <= .milliseconds(120))
        #expect(p.delay(attempt: 3) >= .milliseconds(320))
        #expect(p.delay(attempt: 50) <= .milliseconds(2400))
    }
}
