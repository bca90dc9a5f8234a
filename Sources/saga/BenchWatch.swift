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
    /// The lone loop's wait for each saga's outcome.
    let outcomes = OutcomeWaiters()
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
            outcomes.resume(sightings.lazy.filter { SagaTally.terminal[$0.type] != nil }.map(\.key))
        }
    }

    /// Returns once the saga `id` has ended (its outcome seen) or at `deadline`.
    func waitUntilFinished(_ id: String, deadline: ContinuousClock.Instant) async {
        await outcomes.wait(for: id, until: deadline) { tally.withLock { $0.isFinished(id) } }
    }

    func close() async { await consumer.close() }

    /// The envelope's `occurredAt`, nil when the value is not an envelope. The watch reads every event of the run
    /// on the cores the stack runs on, so it finds the top-level member by scanning the bytes once (tracking strings
    /// and nesting) instead of parsing the whole document; a value it cannot read that way is parsed.
    static func occurredAt(_ value: [UInt8]) -> Date? {
        if let text = topLevelString("occurredAt", in: value) { return Timestamp.parse(text) }
        guard case .string(let text)? = (try? JSONValue(parsing: value))?["occurredAt"] else { return nil }
        return Timestamp.parse(text)
    }

    /// The value of the top-level member `key` of the JSON object `json` when it is a string without escapes (a
    /// timestamp's), else nil.
    static func topLevelString(_ key: String, in json: [UInt8]) -> String? {
        let quote = UInt8(ascii: "\"")
        let backslash = UInt8(ascii: "\\")
        let wanted = Array(key.utf8)
        var depth = 0
        var i = 0
        while i < json.count {
            let b = json[i]
            if b == quote {
                // A string: at depth 1 followed by ':', it is a member name.
                var end = i + 1
                while end < json.count, json[end] != quote { end += json[end] == backslash ? 2 : 1 }
                guard end < json.count else { return nil }
                var next = end + 1
                while next < json.count, json[next] == UInt8(ascii: " ") || json[next] == UInt8(ascii: "\n") {
                    next += 1
                }
                if depth == 1, next < json.count, json[next] == UInt8(ascii: ":"),
                    json[(i + 1)..<end].elementsEqual(wanted)
                {
                    var start = next + 1
                    while start < json.count, json[start] == UInt8(ascii: " ") { start += 1 }
                    guard start < json.count, json[start] == quote else { return nil }
                    guard let close = json[(start + 1)...].firstIndex(where: { $0 == quote || $0 == backslash }),
                        json[close] == quote
                    else { return nil }
                    return String(decoding: json[(start + 1)..<close], as: UTF8.self)
                }
                i = end + 1
                continue
            }
            if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") { depth += 1 }
            if b == UInt8(ascii: "}") || b == UInt8(ascii: "]") { depth -= 1 }
            i += 1
        }
        return nil
    }
}

/// Sagas waited for until their outcome is seen: the watch resumes a waiter when it records the outcome, so the
/// lone loop neither polls the tally (it did, every 200 µs: a quarter of a core on the cores the stack runs on)
/// nor lags behind the outcome.
final class OutcomeWaiters: Sendable {
    private let waiting = Mutex<[String: [CheckedContinuation<Void, Never>]]>([:])

    /// Returns once ``resume(_:)`` named `id`, at once when `finished()` says so after the waiter was registered
    /// (the outcome was recorded before), or at `deadline`.
    func wait(for id: String, until deadline: ContinuousClock.Instant, finished: @Sendable () -> Bool) async {
        let timer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            resume(CollectionOfOne(id))
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiting.withLock { $0[id, default: []].append(continuation) }
            // Registered first, checked second: an outcome recorded before is seen here, one recorded after
            // finds the waiter; so does a timer that fired before (the deadline has passed).
            if finished() || ContinuousClock.now >= deadline { resume(CollectionOfOne(id)) }
        }
        timer.cancel()
    }

    /// Resumes the waiters of `ids`, each once (all waiters of an id together: the lone loop has one per saga).
    func resume<IDs: Sequence<String>>(_ ids: IDs) {
        let resumed = waiting.withLock { waiting in
            waiting.isEmpty ? [] : ids.flatMap { waiting.removeValue(forKey: $0) ?? [] }
        }
        for continuation in resumed { continuation.resume() }
    }

    /// How many waiters wait.
    var count: Int { waiting.withLock { $0.values.reduce(0) { $0 + $1.count } } }
}
