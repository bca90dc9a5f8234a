import CRdKafka
import Logging

/// Topic administration for real Kafka clusters. (librdkafka's mock cluster does not answer
/// CreateTopics; use ``KafkaMockCluster/createTopic(_:partitions:replicationFactor:)`` there.)
/// Every blocking request runs on a dedicated thread.
public final class KafkaAdmin: Sendable {
    private let client: RDKafkaClient
    private let lane: BlockingLane

    /// An admin client of the cluster.
    /// - Parameters:
    ///   - bootstrapServers: `host:port[,host:port…]`.
    ///   - properties: raw librdkafka properties (TLS, SASL...), applied last.
    ///   - logger: receives librdkafka's log lines.
    /// - Throws: ``KafkaError`` `_INVALID_ARG` when a property is rejected (the message names it).
    public init(bootstrapServers: String, properties: [String: String] = [:], logger: Logger) throws(KafkaError) {
        var all: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("client.id", "saga-admin"),
            // Metadata lookups must not create the topics they ask about.
            ("allow.auto.create.topics", "false"),
        ]
        all += properties.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value) }
        client = try RDKafkaClient(type: RD_KAFKA_PRODUCER, properties: all, context: ClientContext(logger: logger))
        lane = BlockingLane(name: "kafka-admin")
    }

    deinit {
        RDKafkaClient.destroyOnDedicatedThread(client, name: "kafka-admin-destroy")
    }

    /// Creates the topics; a topic that already exists is not an error (its partition count
    /// is left as it is).
    ///
    /// - Throws: ``KafkaError`` for the first topic that could not be created, or
    ///   `_TIMED_OUT` (retriable) when the cluster did not answer within `timeout`.
    public func createTopics(
        _ topics: [(name: String, partitions: Int32, replicationFactor: Int16)], timeout: Duration
    ) async throws(KafkaError) {
        guard !topics.isEmpty else { return }
        let client = self.client
        let topics = topics.map {
            TopicSpec(name: $0.name, partitions: $0.partitions, replicationFactor: $0.replicationFactor)
        }
        let milliseconds = timeout.kafkaMilliseconds
        try await lane.run { () -> Result<Void, KafkaError> in
            Self.createTopicsBlocking(client.handle, topics, milliseconds: milliseconds)
        }
    }

    /// The number of partitions of `topic`, from cluster metadata.
    ///
    /// - Throws: ``KafkaError`` `UNKNOWN_TOPIC_OR_PART` when the topic does not exist, or
    ///   `_TIMED_OUT` / transport errors (retriable) when the cluster did not answer in time.
    public func partitionCount(topic: String, timeout: Duration) async throws(KafkaError) -> Int32 {
        // All-topics metadata: asking for one topic by name would let brokers (and the
        // mock cluster) auto-create it.
        try await metadata(allTopics: true, timeout: timeout) { metadata throws(KafkaError) -> Int32 in
            let topics = UnsafeBufferPointer(start: metadata.topics, count: Int(metadata.topic_cnt))
            guard let entry = topics.first(where: { String(cString: $0.topic) == topic }) else {
                throw KafkaError(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, message: "topic \(topic) does not exist")
            }
            guard entry.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw KafkaError(entry.err, message: "topic \(topic): \(String(cString: rd_kafka_err2str(entry.err)))")
            }
            return entry.partition_cnt
        }
    }

    /// How many brokers the cluster reports, asked of a broker now (never from a cache): a reachability
    /// check for health endpoints.
    ///
    /// - Throws: ``KafkaError`` `_TIMED_OUT` / `_TRANSPORT` (retriable) when no broker answered in time.
    public func brokerCount(timeout: Duration) async throws(KafkaError) -> Int {
        try await metadata(allTopics: false, timeout: timeout) { metadata throws(KafkaError) -> Int in
            Int(metadata.broker_cnt)
        }
    }

    /// Runs a metadata request on the lane and reads the answer with `read` before it is freed.
    private func metadata<T: Sendable>(
        allTopics: Bool, timeout: Duration, _ read: @escaping @Sendable (rd_kafka_metadata) throws(KafkaError) -> T
    ) async throws(KafkaError) -> T {
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        return try await lane.run { () -> Result<T, KafkaError> in
            var metadata: UnsafePointer<rd_kafka_metadata>? = nil
            let result = rd_kafka_metadata(client.handle, allTopics ? 1 : 0, nil, &metadata, milliseconds)
            defer { if let metadata { rd_kafka_metadata_destroy(metadata) } }
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
                return .failure(
                    KafkaError(result, message: "metadata request failed: \(String(cString: rd_kafka_err2str(result)))")
                )
            }
            do throws(KafkaError) { return .success(try read(metadata.pointee)) } catch { return .failure(error) }
        }
    }

    private struct TopicSpec: Sendable {
        var name: String
        var partitions: Int32
        var replicationFactor: Int16
    }

    private static func createTopicsBlocking(
        _ handle: OpaquePointer, _ topics: [TopicSpec], milliseconds: Int32
    ) -> Result<Void, KafkaError> {
        var errorBuffer = [CChar](repeating: 0, count: 512)
        var newTopics: [OpaquePointer?] = []
        defer { for topic in newTopics { rd_kafka_NewTopic_destroy(topic) } }
        for topic in topics {
            guard
                let newTopic = rd_kafka_NewTopic_new(
                    topic.name, topic.partitions, Int32(topic.replicationFactor), &errorBuffer, errorBuffer.count)
            else {
                return .failure(
                    KafkaError(
                        RD_KAFKA_RESP_ERR__INVALID_ARG,
                        message: "invalid topic \(topic.name): \(RDKafkaClient.string(errorBuffer))"))
            }
            newTopics.append(newTopic)
        }
        let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds, &errorBuffer, errorBuffer.count)
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds, &errorBuffer, errorBuffer.count)
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        newTopics.withUnsafeMutableBufferPointer { buffer in
            rd_kafka_CreateTopics(handle, buffer.baseAddress, buffer.count, options, queue)
        }
        // The request itself times out after `milliseconds`; allow a little for the reply.
        guard let event = rd_kafka_queue_poll(queue, milliseconds &+ 1000) else {
            return .failure(KafkaError(RD_KAFKA_RESP_ERR__TIMED_OUT, message: "CreateTopics got no answer in time"))
        }
        defer { rd_kafka_event_destroy(event) }
        let eventError = rd_kafka_event_error(event)
        guard eventError == RD_KAFKA_RESP_ERR_NO_ERROR else {
            let text = rd_kafka_event_error_string(event).map { String(cString: $0) } ?? ""
            return .failure(KafkaError(eventError, message: "CreateTopics failed: \(text)"))
        }
        guard let result = rd_kafka_event_CreateTopics_result(event) else {
            return .failure(KafkaError(RD_KAFKA_RESP_ERR__FAIL, message: "CreateTopics returned no result"))
        }
        var count = 0
        guard let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return .success(()) }
        for index in 0..<count {
            let topicResult = results[index]
            let code = rd_kafka_topic_result_error(topicResult)
            guard code != RD_KAFKA_RESP_ERR_NO_ERROR, code != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS else { continue }
            let name = String(cString: rd_kafka_topic_result_name(topicResult))
            let text = rd_kafka_topic_result_error_string(topicResult).map { String(cString: $0) } ?? ""
            return .failure(KafkaError(code, message: "creating topic \(name) failed: \(text)"))
        }
        return .success(())
    }
}
