import Foundation
import Logging
import SagaKafka

/// Where tests find a Kafka broker.
public enum KafkaTestBroker {
    /// `SAGA_KAFKA_BOOTSTRAP` when set (a real broker, or the `saga broker` process a test
    /// script started), else a fresh in-process `KafkaMockCluster` that the caller must keep
    /// alive for as long as it uses `servers`.
    ///
    /// - Throws: `KafkaError` when the mock cluster cannot start.
    public static func bootstrap() throws -> (servers: String, cluster: KafkaMockCluster?) {
        if let servers = ProcessInfo.processInfo.environment["SAGA_KAFKA_BOOTSTRAP"], !servers.isEmpty {
            return (servers, nil)
        }
        let cluster = try KafkaMockCluster(brokers: 3, logger: Logger(label: "saga.kafka.test-broker"))
        return (cluster.bootstrapServers, cluster)
    }

    /// Whether tests run against a real Kafka: `SAGA_KAFKA_BOOTSTRAP` is set and is not the embedded
    /// `saga broker` that scripts/test starts (which it marks with `SAGA_KAFKA_EMBEDDED=1`).
    public static var usesRealKafka: Bool {
        let env = ProcessInfo.processInfo.environment
        return !(env["SAGA_KAFKA_BOOTSTRAP"] ?? "").isEmpty && env["SAGA_KAFKA_EMBEDDED"] != "1"
    }

    /// Whether `SAGA_KAFKA_BOOTSTRAP` is Tansu, the independently written Kafka-protocol broker that
    /// `scripts/test --tansu` starts (it sets `SAGA_TEST_BROKER=tansu`). Tests use it to state what
    /// they skip there and why: Tansu's high watermark is the last batch's base offset + 1 (too low
    /// when that batch holds several records), its offsets for times are approximate, and its
    /// ListGroups lists only groups that have committed offsets.
    public static var isTansu: Bool {
        usesRealKafka && ProcessInfo.processInfo.environment["SAGA_TEST_BROKER"] == "tansu"
    }

    /// A broker on which `topics` exist with `partitions` partitions each: the real Kafka in
    /// `SAGA_KAFKA_BOOTSTRAP` (topics created through the admin API), else a fresh in-process mock cluster
    /// that the caller must keep alive. The embedded `saga broker` process is not used here: the mock
    /// cluster answers no CreateTopics, so it cannot create topics on request.
    ///
    /// - Throws: `KafkaError` when the cluster cannot start or the topics cannot be created.
    public static func withTopics(_ topics: [String], partitions: Int32) async throws -> (
        servers: String, cluster: KafkaMockCluster?
    ) {
        if usesRealKafka, let servers = ProcessInfo.processInfo.environment["SAGA_KAFKA_BOOTSTRAP"] {
            let admin = try KafkaAdmin(bootstrapServers: servers, logger: Logger(label: "saga.kafka.test-admin"))
            try await admin.createTopics(
                topics.map { (name: $0, partitions: partitions, replicationFactor: 1) }, timeout: .seconds(30))
            return (servers, nil)
        }
        let cluster = try KafkaMockCluster(brokers: 3, logger: Logger(label: "saga.kafka.test-broker"))
        for topic in topics { try cluster.createTopic(topic, partitions: partitions) }
        return (cluster.bootstrapServers, cluster)
    }

    /// `prefix` plus a random suffix: a topic or group name no other test uses.
    public static func uniqueName(_ prefix: String) -> String {
        "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
    }
}
