import Logging
import SagaKafka
import SagaTestSupport
import Testing

@testable import SagaEngine

/// The worker's background offset commits against a real broker.
struct OffsetCommitterTests {
    /// After a rebalance took a partition away, the offsets handled for it before are not committed: the new
    /// owner commits its own progress, and an older offset of ours would rewind it.
    @Test func onlyPartitionsStillAssignedAreCommitted() async throws {
        var logger = Logger(label: "committer-test")
        logger.logLevel = .warning
        // The topic exists before anything uses it (the embedded `saga broker` of scripts/test would create it
        // on first use, racing the commit: "Unknown topic or partition" under load).
        let topic = KafkaTestBroker.uniqueName("committer")
        let broker = try await KafkaTestBroker.withTopics([topic], partitions: 2)
        let kafka = KafkaSettings(bootstrapServers: broker.servers)
        let consumer = try KafkaConsumer(
            configuration: kafka.consumer(groupId: KafkaTestBroker.uniqueName("g"), clientId: "test"), logger: logger)
        // Partition 0 is this consumer's; partition 1 is not (any more).
        try await consumer.assign([KafkaTopicPartitionOffset(topic: topic, partition: 0, offset: 0)])
        func message(_ partition: Int32, _ offset: Int64) -> KafkaMessage {
            KafkaMessage(
                topic: topic, partition: partition, offset: offset, key: nil, value: [], headers: [], timestamp: nil)
        }
        let committer = OffsetCommitter(consumer: consumer, retry: RetryPolicy(), logger: logger)
        committer.handled([message(0, 4), message(1, 7)])
        await committer.flush()
        let committed = try await consumer.committed(
            [KafkaTopicPartition(topic: topic, partition: 0), KafkaTopicPartition(topic: topic, partition: 1)],
            timeout: .seconds(10))
        await consumer.close()
        broker.cluster?.shutdown()

        #expect(committed.map(\.offset) == [5, KafkaTopicPartitionOffset.noOffset])
    }
}
