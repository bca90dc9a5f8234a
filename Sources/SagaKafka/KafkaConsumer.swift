import CRdKafka
import Foundation
import Logging
import Synchronization

/// A Kafka group consumer with manual offset commits.
///
/// Offsets are never committed automatically: commit after the effects of a message are
/// durable. Blocking librdkafka calls (polls with a timeout, commits, close) run on two
/// dedicated threads, never on Swift's cooperative pool. Call ``close()`` to leave the group
/// cleanly; releasing an unclosed consumer closes it on a dedicated thread.
public final class KafkaConsumer: Sendable {
    private struct State {
        var closed = false
        /// An error met after messages were already collected; thrown by the next poll.
        var pendingError: KafkaError?
    }

    let client: RDKafkaClient  // internal: KafkaConsumer+Offsets.swift
    private let logger: Logger
    private let groupId: String
    private let groupInstanceId: String?
    private let state = Mutex(State())
    /// Polls, close, pause and resume: serial, so close never overlaps a blocking poll, and pausing never
    /// overlaps a rebalance (whose callback runs within a poll).
    let pollLane: BlockingLane  // internal: KafkaConsumer+Pause.swift
    /// Commits and committed-offset queries, so they do not wait behind a poll.
    let controlLane: BlockingLane  // internal: KafkaConsumer+Offsets.swift

    /// Creates the consumer; it joins the group on ``subscribe(topics:)``.
    ///
    /// - Throws: ``KafkaError`` `_INVALID_ARG` when a property name or value is rejected (the
    ///   message names the property), or when librdkafka cannot create the client.
    public init(configuration: KafkaConsumerConfiguration, logger: Logger) throws(KafkaError) {
        self.logger = logger
        groupId = configuration.groupId
        groupInstanceId = configuration.groupInstanceId
        client = try RDKafkaClient(
            type: RD_KAFKA_CONSUMER,
            properties: configuration.librdkafkaProperties,
            context: ClientContext(logger: logger),
            configure: { conf in rd_kafka_conf_set_rebalance_cb(conf, rdKafkaRebalanceCallback) }
        )
        let redirected = rd_kafka_poll_set_consumer(client.handle)
        guard redirected == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(redirected) }
        pollLane = BlockingLane(name: "kafka-consumer-poll")
        controlLane = BlockingLane(name: "kafka-consumer-control")
    }

    deinit {
        let needsClose = state.withLock { state in
            defer { state.closed = true }
            return !state.closed
        }
        let logger = self.logger
        RDKafkaClient.destroyOnDedicatedThread(client, name: "kafka-consumer-destroy") { client in
            guard needsClose else { return }
            let result = rd_kafka_consumer_close(client.handle)
            if result != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("closing the consumer failed", metadata: ["error": "\(KafkaError(result))"])
            }
        }
    }

    /// Replaces the subscription; partitions are assigned by the group as polls proceed.
    /// Topics that do not exist yet are created by brokers that allow auto-creation.
    ///
    /// - Throws: ``KafkaError`` when librdkafka rejects the subscription, or `_STATE` after ``close()``.
    public func subscribe(topics: [String]) throws(KafkaError) {
        try throwIfClosed()
        let result = RDKafkaTopicPartitionList.with(topics.map { ($0, -1, nil) }) { list in
            rd_kafka_subscribe(client.handle, list)
        }
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(result, message: "subscribe failed: \(String(cString: rd_kafka_err2str(result)))")
        }
    }

    /// Waits up to `timeout` for a first message, then adds whatever is immediately available,
    /// up to `maxMessages` (at least one). Returns `[]` when nothing arrived in time.
    ///
    /// Informational conditions (partition EOF, transient broker or transport errors, a
    /// subscribed topic that does not exist yet, an exceeded poll interval) are logged, not thrown.
    ///
    /// - Throws: ``KafkaError`` for other consumer errors (e.g. authorization, fatal errors such as
    ///   ``KafkaError/isFencedInstance``, whose message names the group and the `group.instance.id`),
    ///   or `_STATE` after ``close()``.
    public func poll(maxMessages: Int, timeout: Duration) async throws(KafkaError) -> [KafkaMessage] {
        guard let messages = try await pollIfOpen(maxMessages: maxMessages, timeout: timeout) else {
            throw KafkaError.state("the consumer is closed")
        }
        return messages
    }

    /// The messages already fetched and waiting in the consumer's queue, up to `maxMessages`, without
    /// waiting for more: to top up a batch polled earlier. An error met is not thrown but kept for the next
    /// ``poll(maxMessages:timeout:)``, which throws it. Returns `[]` after ``close()``.
    public func pollAvailable(maxMessages: Int) async -> [KafkaMessage] {
        guard maxMessages > 0 else { return [] }
        return await pollLane.run { [self] () -> [KafkaMessage] in
            let open = state.withLock { !$0.closed && $0.pendingError == nil }
            guard open else { return [] }
            let drained = drain(maxMessages: maxMessages, timeoutMilliseconds: 0)
            if let error = drained.error {
                state.withLock { if $0.pendingError == nil { $0.pendingError = error } }
            }
            return drained.messages
        }
    }

    /// The messages of the subscription, one by one, built on ``poll(maxMessages:timeout:)``.
    /// Iteration ends after ``close()`` or when the iterating task is cancelled, and throws
    /// what `poll` throws.
    public var messages: KafkaConsumerMessages {
        KafkaConsumerMessages(consumer: self)
    }

    /// Commits `offsets` for the group and returns once the coordinator acknowledged them.
    /// Each offset is the next one to read: the last handled message's offset + 1.
    ///
    /// - Throws: ``KafkaError`` when the commit or any partition's commit failed (e.g. the
    ///   partition was revoked in a rebalance), or `_STATE` after ``close()``.
    public func commit(_ offsets: [KafkaTopicPartitionOffset]) async throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        try throwIfClosed()
        let client = self.client
        try await controlLane.run { () -> Result<Void, KafkaError> in
            RDKafkaTopicPartitionList.with(offsets.map { ($0.topic, $0.partition, $0.offset) }) { list in
                let result = rd_kafka_commit(client.handle, list, 0)
                if let failed = RDKafkaTopicPartitionList.elements(list).first(where: {
                    $0.error != RD_KAFKA_RESP_ERR_NO_ERROR
                }) {
                    return .failure(
                        KafkaError(
                            failed.error,
                            message:
                                "commit of \(failed.topic)[\(failed.partition)] failed: \(String(cString: rd_kafka_err2str(failed.error)))"
                        ))
                }
                guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    return .failure(
                        KafkaError(result, message: "commit failed: \(String(cString: rd_kafka_err2str(result)))"))
                }
                return .success(())
            }
        }
    }

    /// Commits, for each partition in `messages`, the highest offset seen + 1.
    ///
    /// - Throws: as ``commit(_:)``.
    public func commit(after messages: [KafkaMessage]) async throws(KafkaError) {
        var highest: [KafkaTopicPartition: Int64] = [:]
        for message in messages {
            let key = KafkaTopicPartition(topic: message.topic, partition: message.partition)
            highest[key] = max(highest[key] ?? Int64.min, message.offset)
        }
        let offsets = highest.map {
            KafkaTopicPartitionOffset(topic: $0.key.topic, partition: $0.key.partition, offset: $0.value + 1)
        }
        try await commit(offsets.sorted { ($0.topic, $0.partition) < ($1.topic, $1.partition) })
    }

    /// The group's committed offsets for `partitions`, in the same order; a partition without
    /// one has offset ``KafkaTopicPartitionOffset/noOffset``.
    ///
    /// - Throws: ``KafkaError`` (e.g. `_TIMED_OUT`, retriable) or `_STATE` after ``close()``.
    public func committed(_ partitions: [KafkaTopicPartition], timeout: Duration) async throws(KafkaError)
        -> [KafkaTopicPartitionOffset]
    {
        guard !partitions.isEmpty else { return [] }
        try throwIfClosed()
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        return try await controlLane.run { () -> Result<[KafkaTopicPartitionOffset], KafkaError> in
            RDKafkaTopicPartitionList.with(partitions.map { ($0.topic, $0.partition, nil) }) { list in
                let result = rd_kafka_committed(client.handle, list, milliseconds)
                return RDKafkaTopicPartitionList.offsets(list, result: result, what: "committed offset")
            }
        }
    }

    /// The partitions currently assigned to this member.
    ///
    /// - Throws: ``KafkaError`` from librdkafka, or `_STATE` after ``close()``.
    public func assignment() throws(KafkaError) -> [KafkaTopicPartition] {
        try throwIfClosed()
        var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>? = nil
        let result = rd_kafka_assignment(client.handle, &list)
        defer { if let list { rd_kafka_topic_partition_list_destroy(list) } }
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(result) }
        guard let list else { return [] }
        return RDKafkaTopicPartitionList.elements(list).map {
            KafkaTopicPartition(topic: $0.topic, partition: $0.partition)
        }
    }

    /// Leaves the group cleanly (revoking the assignment) and ends ``messages``; later calls
    /// other than `close` throw `_STATE`. Waits for a poll in progress to return first.
    /// Idempotent: later and concurrent calls return once the first close is done.
    public func close() async {
        await pollLane.run { [self] in
            let first = state.withLock { state in
                defer { state.closed = true }
                return !state.closed
            }
            guard first else { return }
            let result = rd_kafka_consumer_close(client.handle)
            if result != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("closing the consumer failed", metadata: ["error": "\(KafkaError(result))"])
            }
        }
    }

    func throwIfClosed() throws(KafkaError) {
        if state.withLock({ $0.closed }) { throw KafkaError.state("the consumer is closed") }
    }

    /// `poll`, returning `nil` instead of throwing when the consumer is closed.
    func pollIfOpen(maxMessages: Int, timeout: Duration) async throws(KafkaError) -> [KafkaMessage]? {
        let maxMessages = max(1, maxMessages)
        let milliseconds = timeout.kafkaMilliseconds
        // On the poll lane, never on the calling (cooperative) thread: even a zero-timeout poll can run the
        // rebalance callback, whose assign waits for librdkafka's main thread.
        let result = await pollLane.run { [self] () -> Result<[KafkaMessage], KafkaError>? in
            let pending = state.withLock { state -> KafkaError?? in
                guard !state.closed else { return .none }
                defer { state.pendingError = nil }
                return .some(state.pendingError)
            }
            guard let pending else { return nil }
            if let pending { return .failure(pending) }
            let drained = drain(maxMessages: maxMessages, timeoutMilliseconds: milliseconds)
            return state.withLock { Self.settle(drained, pending: &$0.pendingError) }
        }
        guard let result else { return nil }
        return try result.get()
    }

    /// An error met after some messages were collected is kept for the next poll.
    private static func settle(
        _ drained: (messages: [KafkaMessage], error: KafkaError?), pending: inout KafkaError?
    ) -> Result<[KafkaMessage], KafkaError> {
        guard let error = drained.error else { return .success(drained.messages) }
        if drained.messages.isEmpty { return .failure(error) }
        if pending == nil { pending = error }
        return .success(drained.messages)
    }

    /// Polls until the first message or `timeoutMilliseconds`, then without waiting, up to
    /// `maxMessages`; stops at the first error that is not informational.
    private func drain(maxMessages: Int, timeoutMilliseconds: Int32) -> (messages: [KafkaMessage], error: KafkaError?) {
        let deadline = ContinuousClock.now + .milliseconds(timeoutMilliseconds)
        var messages: [KafkaMessage] = []
        while messages.count < maxMessages {
            let wait = messages.isEmpty ? (deadline - ContinuousClock.now).kafkaMilliseconds : 0
            guard let record = rd_kafka_consumer_poll(client.handle, wait) else {
                if messages.isEmpty, wait > 0 { continue }  // woken early without a message
                break
            }
            defer { rd_kafka_message_destroy(record) }
            if record.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                messages.append(KafkaMessage(record))
                continue
            }
            let error = consumerError(record)
            if record.pointee.err == RD_KAFKA_RESP_ERR__PARTITION_EOF {
                logger.debug("end of partition", metadata: ["error": "\(error)"])
                continue
            }
            if Self.isInformational(record.pointee.err) {
                logger.warning("consumer error (librdkafka recovers by itself)", metadata: ["error": "\(error)"])
                continue
            }
            return (messages, error)
        }
        return (messages, nil)
    }

    private func consumerError(_ record: UnsafeMutablePointer<rd_kafka_message_t>) -> KafkaError {
        if record.pointee.err == RD_KAFKA_RESP_ERR__FATAL {
            var error = client.context.recordFatalError(client.handle)
            if error.isFencedInstance {
                error.message =
                    "fenced: another member joined group '\(groupId)' with the same group.instance.id "
                    + "'\(groupInstanceId ?? "")', so this consumer stops for good (each running member needs an id "
                    + "of its own): \(error.message)"
            }
            return error
        }
        var text = String(cString: rd_kafka_message_errstr(record))
        if let topic = record.pointee.rkt {
            text = "\(String(cString: rd_kafka_topic_name(topic)))[\(record.pointee.partition)]: \(text)"
        }
        return KafkaError(record.pointee.err, message: text)
    }

    private static func isInformational(_ code: rd_kafka_resp_err_t) -> Bool {
        switch code {
        case RD_KAFKA_RESP_ERR__PARTITION_EOF,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
            RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
            RD_KAFKA_RESP_ERR__MAX_POLL_EXCEEDED:
            return true
        default:
            return KafkaError.isRetriableCode(code)
        }
    }
}

extension KafkaMessage {
    /// Copies a consumed record (key, value, headers) out of librdkafka's memory.
    init(_ record: UnsafeMutablePointer<rd_kafka_message_t>) {
        let raw = record.pointee
        var headers: [KafkaHeader] = []
        var headerList: OpaquePointer? = nil
        if rd_kafka_message_headers(record, &headerList) == RD_KAFKA_RESP_ERR_NO_ERROR, let headerList {
            var index = 0
            while true {
                var name: UnsafePointer<CChar>? = nil
                var value: UnsafeRawPointer? = nil
                var size = 0
                guard rd_kafka_header_get_all(headerList, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR
                else { break }
                let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                headers.append(KafkaHeader(key: name.map { String(cString: $0) } ?? "", value: bytes))
                index += 1
            }
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let milliseconds = rd_kafka_message_timestamp(record, &timestampType)
        self.init(
            topic: raw.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "",
            partition: raw.partition,
            offset: raw.offset,
            key: raw.key.map { Array(UnsafeRawBufferPointer(start: $0, count: raw.key_len)) },
            value: raw.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: raw.len)) } ?? [],
            headers: headers,
            timestamp: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || milliseconds < 0
                ? nil : Date(timeIntervalSince1970: Double(milliseconds) / 1000)
        )
    }
}
