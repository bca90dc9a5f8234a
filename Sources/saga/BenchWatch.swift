import Foundation
import JSONSchema
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import Synchronization

/// Reads the saga's topics from their current end (no consumer group: partitions are assigned at their high
/// watermarks before any order is placed, so nothing of this run is missed and nothing older is read) and
/// records every event in a `SagaTally`.
final class SagaWatch: Sendable {
    /// The topics of one saga's happy path, and its cancellation.
    static let eventTypes = benchHopTypes + [OrderCancelled.eventType]

    let tally = Mutex(SagaTally())
    private let consumer: KafkaConsumer
    private let topics: TopicNaming

    private init(consumer: KafkaConsumer, topics: TopicNaming) {
        self.consumer = consumer
        self.topics = topics
    }

    static func start(kafka: KafkaSettings, topics: TopicNaming, logger: Logger) async throws -> SagaWatch {
        let admin = try KafkaAdmin(
            bootstrapServers: kafka.bootstrapServers, properties: kafka.properties, logger: logger)
        let consumer = try KafkaConsumer(
            configuration: kafka.consumer(
                groupId: "saga-bench-\(UUID().uuidString.prefix(8))", clientId: "saga-bench"),
            logger: logger)
        var offsets: [KafkaTopicPartitionOffset] = []
        for type in eventTypes {
            let topic = topics.topic(for: type)
            let partitions = try await admin.partitionCount(topic: topic, timeout: .seconds(10))
            for p in 0..<partitions {
                let high = try await consumer.watermarks(
                    of: KafkaTopicPartition(topic: topic, partition: p), timeout: .seconds(10)
                ).high
                offsets.append(KafkaTopicPartitionOffset(topic: topic, partition: p, offset: high))
            }
        }
        try await consumer.assign(offsets)
        return SagaWatch(consumer: consumer, topics: topics)
    }

    /// Polls until cancelled.
    func run() async throws {
        while !Task.isCancelled {
            let batch = try await consumer.poll(maxMessages: 2000, timeout: .milliseconds(50))
            guard !batch.isEmpty else { continue }
            let seenAt = Date()
            let seen = ContinuousClock.now
            var sightings: [(type: String, key: String, sighting: SagaTally.Sighting)] = []
            sightings.reserveCapacity(batch.count)
            for m in batch {
                guard let type = topics.eventType(ofTopic: m.topic), let key = m.key else { continue }
                sightings.append(
                    (
                        type, String(decoding: key, as: UTF8.self),
                        SagaTally.Sighting(
                            occurredAt: Self.occurredAt(m.value), recordTime: m.timestamp, seenAt: seenAt, seen: seen)
                    ))
            }
            tally.withLock { t in
                for s in sightings { t.saw(type: s.type, key: s.key, s.sighting) }
            }
        }
    }

    func close() async { await consumer.close() }

    /// The envelope's `occurredAt`, nil when the value is not an envelope.
    static func occurredAt(_ value: [UInt8]) -> Date? {
        guard case .string(let text)? = (try? JSONValue(parsing: value))?["occurredAt"] else { return nil }
        return Timestamp.parse(text)
    }
}
