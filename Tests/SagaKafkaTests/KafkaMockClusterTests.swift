import Foundation
import SagaKafka
import SagaTestSupport
import Testing

/// Tests that control the broker: always an in-process mock cluster.
@Suite("Broker failures (in-process mock cluster)")
struct KafkaMockClusterTests {
    @Test func sendFailsWithARetriableErrorWhenAllBrokersAreDown() async throws {
        let cluster = try KafkaMockCluster(brokers: 3, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("down")
        try cluster.createTopic(topic, partitions: 1)
        var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.messageTimeoutMs = 3000
        let producer = try KafkaProducer(configuration: configuration, logger: testLogger("producer"))
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "before"))

        for broker: Int32 in 1...3 { try cluster.setBrokerDown(broker) }
        let outcome = try await withinLimit(seconds: 20, "send with every broker down") {
            do throws(KafkaError) {
                let report = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "during"))
                return Result<KafkaDeliveryReport, KafkaError>.success(report)
            } catch {
                return .failure(error)
            }
        }
        guard case .failure(let error) = outcome else {
            Issue.record("send succeeded with every broker down")
            return
        }
        #expect(error.isRetriable)
        #expect(!error.isFatal)
        #expect(error.name == "_MSG_TIMED_OUT")
        #expect(!error.description.contains("during"), "the description leaks no payload")
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    @Test func sendSucceedsOnceTheBrokersAreBackUp() async throws {
        let cluster = try KafkaMockCluster(brokers: 3, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("up")
        try cluster.createTopic(topic, partitions: 1)
        var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.messageTimeoutMs = 20000
        let producer = try KafkaProducer(configuration: configuration, logger: testLogger("producer"))
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "before"))

        for broker: Int32 in 1...3 { try cluster.setBrokerDown(broker) }
        let sending = Task { try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "after")) }
        try await Task.sleep(for: .seconds(1))
        for broker: Int32 in 1...3 { try cluster.setBrokerUp(broker) }
        let report = try await withinLimit(seconds: 40, "send after the brokers came back") { try await sending.value }
        #expect(report.topic == topic)
        #expect(report.offset == 1)  // right after "before", nothing lost or duplicated
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    @Test func idempotentProducerRetriesInjectedRetriableProduceErrors() async throws {
        let cluster = try KafkaMockCluster(brokers: 3, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("inject")
        try cluster.createTopic(topic, partitions: 1)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: testLogger("producer"))
        let warmUp = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "0"))

        let notLeader: Int32 = 6
        #expect(KafkaError.name(forCode: notLeader) == "NOT_LEADER_FOR_PARTITION")
        cluster.pushRequestErrors(apiKey: 0, errors: [notLeader, notLeader, notLeader])
        let results = await producer.send((1...5).map { KafkaOutgoingMessage(topic: topic, key: "k", value: "\($0)") })
        let reports = try results.map { try $0.get() }
        #expect(reports.map(\.offset) == (1...5).map { warmUp.offset + Int64($0) })

        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(cluster.bootstrapServers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        var messages = try await poll(consumer, count: 6)
        messages += try await consumer.poll(maxMessages: 10, timeout: .milliseconds(500))
        #expect(messages.map(\.valueString) == (0...5).map { "\($0)" }, "each message once, in order")
        await consumer.close()
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    /// The control for the test above: injected errors do reach the producer.
    @Test func injectedNonRetriableProduceErrorFailsTheSend() async throws {
        let cluster = try KafkaMockCluster(brokers: 3, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("inject-fail")
        try cluster.createTopic(topic, partitions: 1)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: testLogger("producer"))
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "0"))

        let topicAuthorizationFailed: Int32 = 29
        cluster.pushRequestErrors(apiKey: 0, errors: [topicAuthorizationFailed])
        let error = await #expect(throws: KafkaError.self) {
            try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "1"))
        }
        #expect(error?.code == topicAuthorizationFailed)
        #expect(error?.isRetriable == false)
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    @Test func topicsAreAutoCreatedForAConsumerSubscribedBeforeTheyExist() async throws {
        let cluster = try KafkaMockCluster(brokers: 3, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("auto")
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(cluster.bootstrapServers, group: KafkaTestBroker.uniqueName("group")),
            logger: testLogger("consumer"))
        try consumer.subscribe(topics: [topic])
        _ = try await consumer.poll(maxMessages: 1, timeout: .seconds(1))  // the topic does not exist yet
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: testLogger("producer"))
        let report = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "v"))
        let messages = try await poll(consumer, count: 1)
        #expect(messages.map(\.offset) == [report.offset])
        #expect(messages.map(\.partition) == [report.partition])

        let admin = try KafkaAdmin(bootstrapServers: cluster.bootstrapServers, logger: testLogger("admin"))
        let partitions = try await admin.partitionCount(topic: topic, timeout: .seconds(10))
        #expect(partitions == 4, "librdkafka 2.0.2's mock cluster auto-creates topics with 4 partitions")
        await consumer.close()
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    @Test func producerAutoCreatesATopicOnFirstSend() async throws {
        let cluster = try KafkaMockCluster(brokers: 1, logger: testLogger("mock"))
        let topic = KafkaTestBroker.uniqueName("auto-produce")
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: testLogger("producer"))
        let report = try await producer.send(KafkaOutgoingMessage(topic: topic, key: "k", value: "v"))
        #expect(report.offset == 0)
        await producer.shutdown()
        withExtendedLifetime(cluster) {}
    }

    @Test func mockClusterListensOnLoopbackAndShutsDownIdempotently() throws {
        let cluster = try KafkaMockCluster(brokers: 2, logger: testLogger("mock"))
        let addresses = cluster.bootstrapServers.split(separator: ",")
        #expect(addresses.count == 2)
        #expect(addresses.allSatisfy { $0.hasPrefix("127.0.0.1:") })
        try cluster.createTopic(KafkaTestBroker.uniqueName("t"), partitions: 2)
        #expect(throws: KafkaError.self) { try cluster.setBrokerDown(99) }
        cluster.shutdown()
        cluster.shutdown()
        #expect(throws: KafkaError.self) { try cluster.createTopic("after", partitions: 1) }
        cluster.pushRequestErrors(apiKey: 0, errors: [6])  // a no-op after shutdown, not a crash
    }
}
