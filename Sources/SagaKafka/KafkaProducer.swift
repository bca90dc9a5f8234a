import CRdKafka
import Logging
import Synchronization

/// A Kafka producer (librdkafka, idempotent by default) whose sends complete with the
/// broker's delivery report.
///
/// Delivery reports are served by a dedicated thread, flushes run on another; no call blocks a
/// thread of Swift's cooperative pool. Call ``shutdown()`` before releasing it to drain
/// outstanding messages; releasing it without shutdown is safe too.
public final class KafkaProducer: Sendable {
    private let client: RDKafkaClient
    private let configuration: KafkaProducerConfiguration
    private let logger: Logger
    private let pollLoop: ProducerPollLoop
    private let lane: BlockingLane
    private let metadataLane: BlockingLane
    /// Topics whose metadata this producer has asked for (see ``send(_:)-([KafkaOutgoingMessage])``).
    private let knownTopics = Mutex<Set<String>>([])

    /// - Throws: ``KafkaError`` with code `_INVALID_ARG` when a property name or value is
    ///   rejected (the message names the property), or when librdkafka cannot create the client.
    public init(configuration: KafkaProducerConfiguration, logger: Logger) throws(KafkaError) {
        self.configuration = configuration
        self.logger = logger
        client = try RDKafkaClient(
            type: RD_KAFKA_PRODUCER,
            properties: configuration.librdkafkaProperties,
            context: ClientContext(logger: logger),
            configure: { conf in rd_kafka_conf_set_dr_msg_cb(conf, rdKafkaDeliveryReportCallback) }
        )
        pollLoop = ProducerPollLoop.start(client: client, logger: logger)
        lane = BlockingLane(name: "kafka-producer-flush")
        metadataLane = BlockingLane(name: "kafka-producer-metadata")
    }

    deinit {
        pollLoop.requestStop(drainTimeout: .milliseconds(configuration.messageTimeoutMs))
        RDKafkaClient.destroyOnDedicatedThread(client, name: "kafka-producer-destroy")
    }

    /// Sends one message and returns where the broker stored it.
    ///
    /// Completes within about `message.timeout.ms`: librdkafka retries transient failures
    /// (without duplicates or reordering when idempotent) until then. Cancelling the task does
    /// not withdraw an enqueued message; the call still waits for its report.
    ///
    /// - Throws: ``KafkaError``: the delivery failure (e.g. `_MSG_TIMED_OUT`, retriable), an
    ///   enqueue failure (e.g. `_QUEUE_FULL` for longer than `message.timeout.ms`, unknown
    ///   partition), or `_STATE` after ``shutdown()``.
    public func send(_ message: KafkaOutgoingMessage) async throws(KafkaError) -> KafkaDeliveryReport {
        let results = await send([message])
        return try results[0].get()
    }

    /// Enqueues all messages in order, then waits for all their delivery reports.
    ///
    /// Results are in input order. Enqueuing in order keeps per-partition order. If a message
    /// cannot be enqueued, the messages after it are not enqueued either and fail with an
    /// error of the same code, so a caller that retries the failed tail cannot reorder a key.
    /// A full local queue is waited out (polling) for up to `message.timeout.ms`.
    ///
    /// The first time a topic appears, its metadata is requested before enqueuing (at most 5 s): librdkafka
    /// 2.0 otherwise looks an unknown topic up only about once a second, so the first message to each
    /// topic would wait up to a second.
    public func send(_ messages: [KafkaOutgoingMessage]) async -> [Result<KafkaDeliveryReport, KafkaError>] {
        await enqueue(messages).results()
    }

    /// Enqueues all messages in order like ``send(_:)-(KafkaOutgoingMessage)`` and returns once they are enqueued (or failed to be),
    /// without waiting for their delivery reports: ``KafkaDeliveries`` shows each report as it arrives, so a
    /// caller can act on the acknowledged messages while others (say, to a partition whose leader is
    /// unreachable) are still pending.
    public func enqueue(_ messages: [KafkaOutgoingMessage]) async -> KafkaDeliveries {
        let batch = DeliveryBatch(count: messages.count)
        guard !messages.isEmpty else { return KafkaDeliveries(batch: batch) }
        await learnTopics(messages)
        let deadline = ContinuousClock.now + .milliseconds(configuration.messageTimeoutMs)
        var firstFailure: KafkaError? = nil
        for (index, message) in messages.enumerated() {
            if let firstFailure {
                var error = firstFailure
                error.message = "not enqueued because an earlier message of the batch was not: \(firstFailure.message)"
                batch.complete(index, with: .failure(error))
                continue
            }
            while true {
                let box = Unmanaged.passRetained(DeliveryBox(batch: batch, index: index))
                let opaque = box.toOpaque()
                let client = self.client
                let outcome = pollLoop.ifAcceptingSends { client.enqueue(message, opaque: opaque) }
                if case .some(.none) = outcome { break }  // enqueued: the report will fill the slot
                box.release()  // no delivery report will come for it
                let error = outcome.flatMap { $0 } ?? KafkaError.state("the producer is shut down")
                if error.code == RD_KAFKA_RESP_ERR__QUEUE_FULL.rawValue, ContinuousClock.now < deadline,
                    !Task.isCancelled
                {
                    rd_kafka_poll(client.handle, 0)  // serve delivery reports here too
                    try? await Task.sleep(for: .milliseconds(2))
                    continue
                }
                firstFailure = error
                batch.complete(index, with: .failure(error))
                break
            }
        }
        return KafkaDeliveries(batch: batch)
    }

    /// Requests the metadata of topics this producer has not sent to yet, once per topic (failures included:
    /// the send then simply takes librdkafka's slower path). Runs on its own thread, never on the pool.
    private func learnTopics(_ messages: [KafkaOutgoingMessage]) async {
        let unknown = knownTopics.withLock { known -> [String] in
            var fresh: [String] = []
            for message in messages where !known.contains(message.topic) {
                known.insert(message.topic)
                fresh.append(message.topic)
            }
            return fresh
        }
        guard !unknown.isEmpty else { return }
        let client = self.client
        let milliseconds = Int32(min(configuration.messageTimeoutMs, 5000))
        await metadataLane.run {
            for topic in unknown {
                guard let handle = rd_kafka_topic_new(client.handle, topic, nil) else { continue }
                var metadata: UnsafePointer<rd_kafka_metadata>?
                if rd_kafka_metadata(client.handle, 0, handle, &metadata, milliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR,
                    let metadata
                {
                    rd_kafka_metadata_destroy(metadata)
                }
                rd_kafka_topic_destroy(handle)
            }
        }
    }

    /// Waits until every outstanding message has its delivery report.
    ///
    /// - Throws: ``KafkaError`` `_TIMED_OUT` (retriable) when messages are still outstanding
    ///   after `timeout`.
    public func flush(timeout: Duration) async throws(KafkaError) {
        if rd_kafka_outq_len(client.handle) == 0 { return }
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        let code = await lane.run { rd_kafka_flush(client.handle, milliseconds) }
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(
                code,
                message:
                    "flush did not complete within \(timeout): \(rd_kafka_outq_len(client.handle)) messages or requests outstanding"
            )
        }
    }

    /// Stops accepting sends (later sends fail with `_STATE`), waits for outstanding messages'
    /// delivery reports for at most `message.timeout.ms` plus one second (purging the rest,
    /// whose senders get `_PURGE_QUEUE`/`_PURGE_INFLIGHT`), and stops the poll thread.
    /// Idempotent; concurrent calls all return once the poll thread has stopped.
    public func shutdown() async {
        pollLoop.requestStop(drainTimeout: .milliseconds(configuration.messageTimeoutMs + 1000))
        await pollLoop.waitUntilFinished()
    }
}
