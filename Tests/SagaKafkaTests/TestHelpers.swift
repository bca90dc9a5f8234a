import Foundation
import Logging
import SagaKafka
import SagaTestSupport
import Synchronization
import Testing

func testLogger(_ label: String) -> Logger {
    var logger = Logger(label: "saga.kafka.test.\(label)")
    // librdkafka logs every refused connection (brokers set down, clusters shut down before
    // clients) at error level; SAGA_TEST_LOG_LEVEL=debug shows everything.
    let level = ProcessInfo.processInfo.environment["SAGA_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
    logger.logLevel = level ?? .critical
    return logger
}

struct TimeLimitExceeded: Error, CustomStringConvertible {
    var what: String
    var description: String { "\(what) did not finish in time (hang)" }
}

/// Runs `body` and fails with ``TimeLimitExceeded`` if it has not finished after `seconds`,
/// without waiting for it: a hung call cannot hang the test suite. Not a performance check:
/// the limits are far above the expected durations.
func withinLimit<T: Sendable>(
    seconds: Int, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let slot = Mutex<CheckedContinuation<T, any Error>?>(nil)
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        slot.withLock { $0 = continuation }
        let finish: @Sendable (Result<T, any Error>) -> Void = { result in
            let waiting = slot.withLock { slot in
                defer { slot = nil }
                return slot
            }
            waiting?.resume(with: result)
        }
        Task {
            do { finish(.success(try await body())) } catch { finish(.failure(error)) }
        }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            finish(.failure(TimeLimitExceeded(what: what)))
        }
    }
}

/// Polls until `count` messages arrived or `limit` passed; returns what arrived.
func poll(_ consumer: KafkaConsumer, count: Int, limit: Duration = .seconds(40)) async throws -> [KafkaMessage] {
    var messages: [KafkaMessage] = []
    let deadline = ContinuousClock.now + limit
    while messages.count < count, ContinuousClock.now < deadline {
        messages += try await consumer.poll(maxMessages: count - messages.count, timeout: .milliseconds(200))
    }
    return messages
}

/// Creates `name` with `partitions` partitions on the in-process mock cluster, or through the
/// admin API on a real Kafka. The embedded `saga broker` process answers no CreateTopics: there
/// the topic is auto-created on first use (4 partitions).
func createTopic(
    _ name: String, partitions: Int32, servers: String, cluster: KafkaMockCluster?
) async throws {
    if let cluster {
        try cluster.createTopic(name, partitions: partitions)
    } else if KafkaTestBroker.usesRealKafka {
        let admin = try KafkaAdmin(bootstrapServers: servers, logger: testLogger("admin"))
        try await admin.createTopics(
            [(name: name, partitions: partitions, replicationFactor: 1)], timeout: .seconds(30))
    }
}

func consumerConfiguration(_ servers: String, group: String) -> KafkaConsumerConfiguration {
    KafkaConsumerConfiguration(bootstrapServers: servers, groupId: group)
}

extension KafkaOutgoingMessage {
    init(topic: String, key: String, value: String, headers: [KafkaHeader] = []) {
        self.init(topic: topic, key: Array(key.utf8), value: Array(value.utf8), headers: headers)
    }
}

extension KafkaMessage {
    var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
    var valueString: String { String(decoding: value, as: UTF8.self) }
}
