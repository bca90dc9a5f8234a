import Foundation
import SagaKafka
import SagaTestSupport
import Testing

@Suite("Configuration, admin and lifecycle")
struct KafkaClientTests {
    @Test func unknownPropertyIsAKafkaErrorNamingIt() {
        var configuration = KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1")
        configuration.properties = ["no.such.property": "1"]
        let error = #expect(throws: KafkaError.self) {
            try KafkaProducer(configuration: configuration, logger: testLogger("p"))
        }
        #expect(error?.name == "_INVALID_ARG")
        #expect(error?.message.contains("no.such.property") == true)
    }

    @Test func invalidValueIsAKafkaErrorNamingTheProperty() {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: "127.0.0.1:1", groupId: "g")
        configuration.autoOffsetReset = "sometimes"
        let error = #expect(throws: KafkaError.self) {
            try KafkaConsumer(configuration: configuration, logger: testLogger("c"))
        }
        #expect(error?.message.contains("auto.offset.reset") == true)
        #expect(error?.description.contains("auto.offset.reset") == true)
    }

    @Test func sensitiveValuesStayOutOfConfigurationErrors() {
        var configuration = KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1")
        configuration.properties = ["sasl.oauthbearer.method": "hunter2-secret"]
        let error = #expect(throws: KafkaError.self) {
            try KafkaProducer(configuration: configuration, logger: testLogger("p"))
        }
        #expect(error?.message.contains("sasl.oauthbearer.method") == true)
        #expect(error?.description.contains("hunter2-secret") == false)
    }

    @Test func invalidNamedSettingIsAKafkaErrorNamingTheProperty() {
        var configuration = KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1")
        configuration.acks = "banana"
        let error = #expect(throws: KafkaError.self) {
            try KafkaProducer(configuration: configuration, logger: testLogger("p"))
        }
        #expect(error?.name == "_INVALID_ARG")
        #expect(error?.message.contains("\"acks\"") == true)
    }

    @Test func sendAfterShutdownFailsAndShutdownIsIdempotent() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("producer"))
        let topic = KafkaTestBroker.uniqueName("shutdown")
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "v"))
        try await producer.flush(timeout: .seconds(5))
        await producer.shutdown()
        await producer.shutdown()
        let error = await #expect(throws: KafkaError.self) {
            try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "late"))
        }
        #expect(error?.name == "_STATE")
        withExtendedLifetime(broker.cluster) {}
    }

    @Test func adminReportsPartitionCountAndUnknownTopics() async throws {
        let cluster = try KafkaMockCluster(brokers: 1, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("admin")
        try cluster.createTopic(topic, partitions: 5)
        let admin = try KafkaAdmin(bootstrapServers: cluster.bootstrapServers, logger: testLogger("admin"))
        #expect(try await admin.partitionCount(topic: topic, timeout: .seconds(10)) == 5)
        let error = await #expect(throws: KafkaError.self) {
            try await admin.partitionCount(topic: KafkaTestBroker.uniqueName("missing"), timeout: .seconds(10))
        }
        #expect(error?.name == "UNKNOWN_TOPIC_OR_PART")
        withExtendedLifetime(cluster) {}
    }

    @Test func createTopicsOnTheMockClusterTimesOutInsteadOfHanging() async throws {
        let cluster = try KafkaMockCluster(brokers: 1, logger: testLogger("mock"))
        let admin = try KafkaAdmin(bootstrapServers: cluster.bootstrapServers, logger: testLogger("admin"))
        let topic = KafkaTestBroker.uniqueName("create")
        let outcome: KafkaError? = try await withinLimit(seconds: 30, "CreateTopics against the mock cluster") {
            () async throws -> KafkaError? in
            do throws(KafkaError) {
                try await admin.createTopics([(name: topic, partitions: 2, replicationFactor: 1)], timeout: .seconds(2))
                return nil
            } catch {
                return error
            }
        }
        let error = try #require(outcome, "librdkafka 2.0.2's mock cluster does not answer CreateTopics")
        #expect(error.isRetriable)
        withExtendedLifetime(cluster) {}
    }

    @Test(
        .enabled(
            if: KafkaTestBroker.usesRealKafka,
            "needs a real Kafka in SAGA_KAFKA_BOOTSTRAP: the mock cluster does not answer CreateTopics"))
    func createTopicsCreatesAndToleratesExistingTopics() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let admin = try KafkaAdmin(bootstrapServers: broker.servers, logger: testLogger("admin"))
        let topic = KafkaTestBroker.uniqueName("create")
        try await admin.createTopics([(name: topic, partitions: 3, replicationFactor: 1)], timeout: .seconds(30))
        try await admin.createTopics([(name: topic, partitions: 3, replicationFactor: 1)], timeout: .seconds(30))
        #expect(try await admin.partitionCount(topic: topic, timeout: .seconds(10)) == 3)
    }

    @Test func pollOnAnEmptyTopicReturnsNothingAfterTheTimeout() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("empty")
        try await createTopic(topic, partitions: 1, servers: broker.servers, cluster: broker.cluster)
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        #expect(try await consumer.poll(maxMessages: 10, timeout: .milliseconds(300)).isEmpty)
        #expect(try await consumer.poll(maxMessages: 10, timeout: .zero).isEmpty)
        await consumer.close()
        await consumer.close()
        #expect(throws: KafkaError.self) { try consumer.assignment() }
        withExtendedLifetime(broker.cluster) {}
    }

    @Test func headerAndMessageHelpers() {
        let header = KafkaHeader(key: "k", string: "välue")
        #expect(header.value == Array("välue".utf8))
        #expect(header.stringValue == "välue")
        #expect(KafkaHeader(key: "k", value: [0xFF, 0xFE]).stringValue == nil)
        let error = KafkaError(code: -192, name: "_MSG_TIMED_OUT", message: "m", isRetriable: true, isFatal: false)
        #expect(error.description.contains("_MSG_TIMED_OUT"))
        #expect(KafkaError.name(forCode: -192) == "_MSG_TIMED_OUT")
    }
}
