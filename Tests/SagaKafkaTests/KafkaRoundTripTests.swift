import Foundation
import SagaKafka
import SagaTestSupport
import Testing

@Suite("Produce and consume (mock cluster or SAGA_KAFKA_BOOTSTRAP)")
struct KafkaRoundTripTests {
    @Test func consumedMessageHasKeyHeadersAndTheDeliveryReportsPartitionAndOffset() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("roundtrip")
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let headers = [
            KafkaHeader(key: "event-type", string: "order.created"),
            KafkaHeader(key: "version", string: "1"),
            KafkaHeader(key: "version", string: "2"),
            KafkaHeader(key: "binary", value: [0, 255, 7]),
        ]
        let first = try await producer.send(
            KafkaOutgoingMessage(topic: topic, key: "saga-1", value: "hello", headers: headers))
        let second = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "saga-1", value: "world"))
        #expect(first.topic == topic)
        #expect(first.offset >= 0)
        #expect(second.partition == first.partition)  // same key, same partition
        #expect(second.offset == first.offset + 1)

        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        let messages = try await poll(consumer, count: 2)
        try #require(messages.count == 2)
        let message = messages[0]
        #expect(message.topic == topic)
        #expect(message.partition == first.partition)
        #expect(message.offset == first.offset)
        #expect(message.keyString == "saga-1")
        #expect(message.valueString == "hello")
        #expect(message.headers == headers)
        #expect(message.header("event-type") == "order.created")
        #expect(message.header("version") == "2")  // the last header with that key
        #expect(message.header("missing") == nil)
        #expect(message.timestamp != nil)
        #expect(messages[1].offset == second.offset)
        #expect(messages[1].headers.isEmpty)
        #expect(messages[1].valueString == "world")

        await consumer.close()
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }

    @Test func batchSendKeepsPerPartitionOrder() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("batch-order")
        try await createTopic(topic, partitions: 3, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let keys = (0..<10).map { "saga-\($0)" }
        let perKey = 40
        var outgoing: [KafkaOutgoingMessage] = []
        for sequence in 0..<perKey {
            for key in keys {
                outgoing.append(KafkaOutgoingMessage(topic: topic, key: key, value: "\(key):\(sequence)"))
            }
        }
        let results = await producer.send(outgoing)
        let reports = try results.map { try $0.get() }
        #expect(reports.count == outgoing.count)
        #expect(Set(reports.map(\.partition)).count > 1)  // the keys spread over partitions
        var lastOffset: [Int32: Int64] = [:]
        for report in reports {
            #expect(
                report.offset > lastOffset[report.partition, default: -1], "offsets follow input order per partition")
            lastOffset[report.partition] = report.offset
        }

        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        let messages = try await poll(consumer, count: outgoing.count)
        try #require(messages.count == outgoing.count)
        var sequences: [String: [Int]] = [:]
        for message in messages {
            let parts = message.valueString.split(separator: ":")
            #expect(String(parts[0]) == message.keyString)
            sequences[String(parts[0]), default: []].append(Int(parts[1])!)
        }
        for key in keys {
            #expect(sequences[key] == Array(0..<perKey), "messages of \(key) arrive in send order")
        }
        await consumer.close()
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }
}
