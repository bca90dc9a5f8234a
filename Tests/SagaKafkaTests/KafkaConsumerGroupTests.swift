import Foundation
import SagaKafka
import SagaTestSupport
import Testing

@Suite("Consumer groups (mock cluster or SAGA_KAFKA_BOOTSTRAP)")
struct KafkaConsumerGroupTests {
    @Test func newMemberResumesExactlyAfterTheCommittedOffsets() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("resume")
        let group = KafkaTestBroker.uniqueName("group")
        try await createTopic(topic, partitions: 3, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let outgoing = (0..<60).map { KafkaOutgoingMessage(topic: topic, key: "saga-\($0 % 7)", value: "\($0)") }
        let reports = try await producer.send(outgoing).map { try $0.get() }
        let all = Set(
            reports.map { KafkaTopicPartitionOffset(topic: $0.topic, partition: $0.partition, offset: $0.offset) })

        // The mock cluster lets a new member in only once the previous member's session has
        // expired, even after a clean LeaveGroup: keep the session at Kafka's minimum (6 s).
        var configuration = consumerConfiguration(broker.servers, group: group)
        configuration.sessionTimeoutMs = 6000
        let first = try KafkaConsumer(configuration: configuration, logger: testLogger("first"))
        try first.subscribe(topics: [topic])
        let handled = try await poll(first, count: 20)
        try #require(handled.count == 20)
        try await first.commit(after: handled)
        var highest: [KafkaTopicPartition: Int64] = [:]
        for message in handled {
            let partition = KafkaTopicPartition(topic: message.topic, partition: message.partition)
            highest[partition] = max(highest[partition] ?? -1, message.offset)
        }
        let committed = try await first.committed(Array(highest.keys), timeout: .seconds(10))
        for entry in committed {
            #expect(entry.offset == highest[KafkaTopicPartition(topic: entry.topic, partition: entry.partition)]! + 1)
        }
        await first.close()
        await #expect(throws: KafkaError.self) { try await first.poll(maxMessages: 1, timeout: .zero) }

        let second = try KafkaConsumer(configuration: configuration, logger: testLogger("second"))
        try second.subscribe(topics: [topic])
        var rest = try await poll(second, count: all.count - handled.count)
        rest += try await second.poll(maxMessages: 100, timeout: .milliseconds(500))  // nothing more may come
        let firstSet = Set(
            handled.map { KafkaTopicPartitionOffset(topic: $0.topic, partition: $0.partition, offset: $0.offset) })
        let restList = rest.map {
            KafkaTopicPartitionOffset(topic: $0.topic, partition: $0.partition, offset: $0.offset)
        }
        #expect(restList.count == Set(restList).count, "no message twice")
        #expect(firstSet.isDisjoint(with: restList), "nothing before the committed offsets again")
        #expect(firstSet.union(restList) == all, "no gap")
        await second.close()
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }

    @Test(
        .enabled(
            if: KafkaTestBroker.usesRealKafka,
            "needs a real Kafka in SAGA_KAFKA_BOOTSTRAP: rebalances with several members are unreliable on librdkafka's mock cluster"
        )
    )
    func twoMembersOfOneGroupSplitThePartitions() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("split")
        let group = KafkaTestBroker.uniqueName("group")
        try await createTopic(topic, partitions: 4, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let outgoing = (0..<40).map {
            KafkaOutgoingMessage(topic: topic, key: nil, value: Array("\($0)".utf8), partition: Int32($0 % 4))
        }
        _ = try await producer.send(outgoing).map { try $0.get() }

        let members = try (0..<2).map { index in
            try KafkaConsumer(
                configuration: consumerConfiguration(broker.servers, group: group), logger: testLogger("member\(index)")
            )
        }
        for member in members { try member.subscribe(topics: [topic]) }
        var received: [[KafkaMessage]] = [[], []]
        var assignments: [[KafkaTopicPartition]] = [[], []]
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            for index in 0..<2 {
                received[index] += try await members[index].poll(maxMessages: 50, timeout: .milliseconds(100))
                assignments[index] = try members[index].assignment()
            }
            let total = received[0].count + received[1].count
            if total >= outgoing.count, !assignments[0].isEmpty, !assignments[1].isEmpty,
                Set(assignments[0]).isDisjoint(with: assignments[1]),
                assignments[0].count + assignments[1].count == 4
            {
                break
            }
        }
        #expect(!assignments[0].isEmpty && !assignments[1].isEmpty, "both members got partitions")
        #expect(Set(assignments[0]).isDisjoint(with: assignments[1]))
        #expect(Set(assignments[0] + assignments[1]).count == 4)
        let values = Set((received[0] + received[1]).map(\.valueString))
        #expect(values == Set((0..<40).map { "\($0)" }), "the two members together read every message")
        for member in members { await member.close() }
        await producer.shutdown()
    }

    @Test func messagesSequenceEndsAfterClose() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("sequence")
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "a", value: "one"))
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        let iteration = Task {
            var values: [String] = []
            for try await message in consumer.messages { values.append(message.valueString) }
            return values
        }
        // Let the sequence deliver the message, then close while it waits for more.
        let deadline = ContinuousClock.now + .seconds(30)
        while try consumer.assignment().isEmpty, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(1))
        await consumer.close()
        let values = try await withinLimit(seconds: 20, "the messages sequence after close") {
            try await iteration.value
        }
        #expect(values == ["one"])
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }
}
