import Foundation
import SagaKafka
import SagaTestSupport
import Testing

/// `KafkaConsumer.pause()` / `resume()`: a paused member stays in its group and gets nothing, also after a
/// rebalance, and resumes exactly where it stopped. On a mock cluster of its own, whatever SAGA_KAFKA_BOOTSTRAP says:
/// the tests count partitions, and a shared broker that creates topics on first use gives them its own count.
@Suite("Consumer pause and resume") struct KafkaConsumerPauseTests {
    /// A mock cluster of the test's own, as `KafkaTestBroker.bootstrap()` shapes a broker.
    static func ownCluster() throws -> (servers: String, cluster: KafkaMockCluster?) {
        let cluster = try KafkaMockCluster(brokers: 1, logger: testLogger("mock"))
        return (cluster.bootstrapServers, cluster)
    }

    /// Polls for `duration` and returns everything that arrived.
    static func pollFor(_ consumer: KafkaConsumer, _ duration: Duration) async throws -> [KafkaMessage] {
        var messages: [KafkaMessage] = []
        let end = ContinuousClock.now + duration
        while ContinuousClock.now < end {
            messages += try await consumer.poll(maxMessages: 100, timeout: .milliseconds(100))
        }
        return messages
    }

    static func send(_ producer: KafkaProducer, _ topic: String, _ values: [String]) async throws {
        _ = try await producer.send(values.map { KafkaOutgoingMessage(topic: topic, key: $0, value: $0) }).map {
            try $0.get()
        }
    }

    @Test func aPausedConsumerGetsNothingThenResumesWithoutGapOrDuplicate() async throws {
        let broker = try Self.ownCluster()
        let topic = KafkaTestBroker.uniqueName("pause")
        try await createTopic(topic, partitions: 2, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        try await Self.send(producer, topic, (0..<5).map { "before-\($0)" })
        let first = try await poll(consumer, count: 5)
        try #require(first.count == 5)
        #expect(!consumer.isPaused)

        // Fetched into the local queue but not yet polled when the pause comes: not delivered while paused.
        try await Self.send(producer, topic, (0..<10).map { "queued-\($0)" })
        try await Task.sleep(for: .milliseconds(500))
        try await consumer.pause()
        #expect(consumer.isPaused)
        try await Self.send(producer, topic, (0..<10).map { "paused-\($0)" })
        let whilePaused = try await Self.pollFor(consumer, .seconds(3))
        #expect(whilePaused.map(\.valueString) == [], "nothing arrives while paused")
        #expect(try consumer.assignment().count == 2, "still a member with its partitions")
        try await consumer.pause()  // idempotent

        try await consumer.resume()
        #expect(!consumer.isPaused)
        var rest = try await poll(consumer, count: 20)
        rest += try await consumer.poll(maxMessages: 100, timeout: .milliseconds(500))  // nothing more may come
        let values = rest.map(\.valueString)
        #expect(values.count == 20 && Set(values).count == 20, "each once: \(values)")
        #expect(Set(values) == Set((0..<10).map { "queued-\($0)" } + (0..<10).map { "paused-\($0)" }))
        await consumer.close()
        await #expect(throws: KafkaError.self) { try await consumer.pause() }
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }

    @Test func partitionsAssignedWhilePausedStayPausedUntilResume() async throws {
        let broker = try Self.ownCluster()
        let topic = KafkaTestBroker.uniqueName("pause-a")
        let added = KafkaTestBroker.uniqueName("pause-b")
        try await createTopic(topic, partitions: 2, servers: broker.servers, cluster: broker.cluster)
        try await createTopic(added, partitions: 2, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        try await Self.send(producer, topic, ["first"])
        let first = try await poll(consumer, count: 1)
        try #require(first.count == 1)
        try await consumer.commit(after: first)  // a rebalance restarts from the committed offsets

        try await consumer.pause()
        // A new subscription: the group rebalances and assigns every partition of both topics again.
        try consumer.subscribe(topics: [topic, added])
        try await Self.send(producer, topic, (0..<5).map { "a-\($0)" })
        try await Self.send(producer, added, (0..<5).map { "b-\($0)" })
        var whilePaused: [KafkaMessage] = []
        let end = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < end, try consumer.assignment().filter({ $0.topic == added }).count < 2 {
            whilePaused += try await Self.pollFor(consumer, .milliseconds(200))
        }
        try #require(try consumer.assignment().count == 4, "the rebalance assigned both topics")
        whilePaused += try await Self.pollFor(consumer, .seconds(3))
        #expect(whilePaused.map(\.valueString) == [], "the rebalance did not resume consumption")

        try await consumer.resume()
        let rest = try await poll(consumer, count: 10)
        #expect(Set(rest.map(\.valueString)) == Set((0..<5).map { "a-\($0)" } + (0..<5).map { "b-\($0)" }))
        #expect(rest.count == 10)
        await consumer.close()
        await producer.shutdown()
        withExtendedLifetime(broker.cluster) {}
    }
}
