import CRdKafka
import Logging
import Synchronization

/// librdkafka's built-in mock Kafka cluster (`rdkafka_mock.h`), for development and tests.
///
/// Its brokers speak the Kafka protocol on loopback TCP (127.0.0.1, ephemeral ports) and keep
/// data in memory. Measured on librdkafka 2.0.2: it does not answer CreateTopics (use
/// ``createTopic(_:partitions:replicationFactor:)``), auto-creates topics on first use, keeps
/// only 5 MB per partition, and answers an empty fetch only after `fetch.wait.max.ms`.
public final class KafkaMockCluster: Sendable {
    /// Owns one `rd_kafka_mock_cluster_t` and the `rd_kafka_t` hosting it.
    ///
    /// `@unchecked Sendable`: the pointer is immutable, the `rd_kafka_mock_*` calls made
    /// through it are thread-safe (they are handed to the cluster's own thread), and it is
    /// destroyed only in `deinit`, before its host handle.
    private final class Handle: @unchecked Sendable {
        let cluster: OpaquePointer
        let host: RDKafkaClient

        init(cluster: OpaquePointer, host: RDKafkaClient) {
            self.cluster = cluster
            self.host = host
        }

        deinit {
            rd_kafka_mock_cluster_destroy(cluster)
        }
    }

    private let handle: Mutex<Handle?>

    /// The brokers' addresses, `127.0.0.1:port,...`, for `bootstrap.servers`.
    public let bootstrapServers: String

    /// Starts a cluster of `brokers` brokers with ids `1...brokers`.
    ///
    /// - Throws: ``KafkaError`` when the hosting client or the cluster cannot be created.
    public init(brokers: Int = 3, logger: Logger) throws(KafkaError) {
        let host = try RDKafkaClient(
            type: RD_KAFKA_PRODUCER,
            // The host handle never connects anywhere: silence its "no bootstrap.servers" notice.
            properties: [("client.id", "saga-mock-cluster-host"), ("log_level", "4")],
            context: ClientContext(logger: logger)
        )
        guard let cluster = rd_kafka_mock_cluster_new(host.handle, Int32(clamping: brokers)) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__FAIL, message: "cannot start a mock cluster of \(brokers) brokers")
        }
        let owned = Handle(cluster: cluster, host: host)
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        handle = Mutex(owned)
    }

    /// Creates `name` with `partitions` partitions; creating an existing topic again fails.
    ///
    /// - Throws: ``KafkaError`` from the mock cluster (e.g. `TOPIC_ALREADY_EXISTS`), or
    ///   `_STATE` after ``shutdown()``.
    public func createTopic(_ name: String, partitions: Int32, replicationFactor: Int32 = 1) throws(KafkaError) {
        let cluster = try current()
        let result = rd_kafka_mock_topic_create(cluster.cluster, name, partitions, replicationFactor)
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(
                result, message: "creating mock topic \(name) failed: \(String(cString: rd_kafka_err2str(result)))")
        }
    }

    /// Disconnects broker `id` and refuses new connections (no leader change). `-1` means all brokers.
    ///
    /// - Throws: ``KafkaError`` (e.g. `_UNKNOWN_BROKER`), or `_STATE` after ``shutdown()``.
    public func setBrokerDown(_ id: Int32) throws(KafkaError) {
        let cluster = try current()
        let result = rd_kafka_mock_broker_set_down(cluster.cluster, id)
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(result, message: "setting mock broker \(id) down failed")
        }
    }

    /// Lets broker `id` accept connections again. `-1` means all brokers.
    ///
    /// - Throws: ``KafkaError`` (e.g. `_UNKNOWN_BROKER`), or `_STATE` after ``shutdown()``.
    public func setBrokerUp(_ id: Int32) throws(KafkaError) {
        let cluster = try current()
        let result = rd_kafka_mock_broker_set_up(cluster.cluster, id)
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(result, message: "setting mock broker \(id) up failed")
        }
    }

    /// Moves the leadership of `topic`'s `partition` to broker `broker` (with a broker set down, this makes one
    /// partition unreachable while the others stay up).
    ///
    /// - Throws: ``KafkaError`` (e.g. `_UNKNOWN_PARTITION`), or `_STATE` after ``shutdown()``.
    public func setPartitionLeader(_ topic: String, partition: Int32, broker: Int32) throws(KafkaError) {
        let cluster = try current()
        let result = rd_kafka_mock_partition_set_leader(cluster.cluster, topic, partition, broker)
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(result, message: "moving the leader of mock \(topic)[\(partition)] failed")
        }
    }

    /// Makes the next `errors.count` requests of Kafka protocol API `apiKey` (0 = Produce,
    /// 1 = Fetch, 3 = Metadata, 8 = OffsetCommit...) fail with these error codes, in order.
    /// `_TRANSPORT` (-195) makes the broker disconnect instead. Does nothing after ``shutdown()``.
    public func pushRequestErrors(apiKey: Int16, errors: [Int32]) {
        guard !errors.isEmpty, let cluster = try? current() else { return }
        let codes = errors.map { rd_kafka_resp_err_t(rawValue: $0) }
        codes.withUnsafeBufferPointer { buffer in
            rd_kafka_mock_push_request_errors_array(cluster.cluster, apiKey, buffer.count, buffer.baseAddress)
        }
    }

    /// Stops the brokers and frees the cluster. Idempotent; clients still connected see
    /// transport errors.
    public func shutdown() {
        let owned = handle.withLock { handle -> Handle? in
            defer { handle = nil }
            return handle
        }
        _ = owned  // destroyed here, outside the lock
    }

    private func current() throws(KafkaError) -> Handle {
        guard let cluster = handle.withLock({ $0 }) else { throw KafkaError.state("the mock cluster is shut down") }
        return cluster
    }
}
