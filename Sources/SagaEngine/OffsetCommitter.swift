import Logging
import SagaKafka
import Synchronization

/// Commits a worker's consumer offsets in the background, after the transactions that handled the
/// messages committed: the loop hands over a batch once its transaction committed and goes on at once.
///
/// At most one commit is in flight; what batches hand over meanwhile is merged (the highest offset per
/// partition) and committed next, so the number of commits follows the broker's pace, not the batches'.
/// A lost commit only means a redelivery, which the inbox absorbs; an offset is never committed before
/// its transaction committed, because batches are handed over only then.
///
/// Only the partitions assigned to this consumer when the commit goes out are committed: after a rebalance
/// moved a partition to another member, an older offset of ours would rewind the new owner's progress. A
/// commit refused because the group is rebalancing goes again once it is over (for what is assigned then).
final class OffsetCommitter: Sendable {
    private struct State {
        /// Next offset to read per partition, not committed yet.
        var pending: [KafkaTopicPartition: Int64] = [:]
        /// The task committing, while there is one.
        var running: Task<Void, Never>?
    }

    private let consumer: KafkaConsumer
    private let retry: RetryPolicy
    private let logger: Logger
    private let state = Mutex(State())
    /// Consecutive failed attempts after which pending offsets are dropped (a later batch commits past them).
    static let maxAttempts = 5

    init(consumer: KafkaConsumer, retry: RetryPolicy, logger: Logger) {
        self.consumer = consumer
        self.retry = retry
        self.logger = logger
    }

    /// Records that every message of `batch` was handled and its transaction committed, and starts a
    /// commit unless one is in flight.
    func handled(_ batch: [KafkaMessage]) {
        state.withLock { state in
            for message in batch {
                let key = KafkaTopicPartition(topic: message.topic, partition: message.partition)
                state.pending[key] = max(state.pending[key] ?? Int64.min, message.offset + 1)
            }
            if state.running == nil, !state.pending.isEmpty {
                state.running = Task { await self.commitPending() }
            }
        }
    }

    /// Waits until everything handed over is committed (or given up on). Call before closing the consumer.
    func flush() async {
        while let running = state.withLock({ $0.running }) { await running.value }
    }

    /// The offsets of partitions assigned to the consumer now; the others are dropped (their new owner commits).
    private func assigned(_ offsets: [KafkaTopicPartitionOffset]) -> [KafkaTopicPartitionOffset] {
        guard let assignment = try? consumer.assignment() else { return offsets }  // closed: commit fails anyway
        let owned = Set(assignment)
        let kept = offsets.filter { owned.contains(KafkaTopicPartition(topic: $0.topic, partition: $0.partition)) }
        if kept.count < offsets.count {
            logger.debug(
                "not committing offsets of partitions no longer assigned",
                metadata: ["dropped": "\(offsets.count - kept.count)"])
        }
        return kept
    }

    private func commitPending() async {
        var attempt = 0
        while true {
            let pending = state.withLock { state -> [KafkaTopicPartitionOffset]? in
                guard !state.pending.isEmpty else {
                    state.running = nil
                    return nil
                }
                defer { state.pending = [:] }
                return state.pending.map {
                    KafkaTopicPartitionOffset(topic: $0.key.topic, partition: $0.key.partition, offset: $0.value)
                }.sorted { ($0.topic, $0.partition) < ($1.topic, $1.partition) }
            }
            guard let pending else { return }
            let offsets = assigned(pending)
            do {
                try await consumer.commit(offsets)
                attempt = 0
            } catch {
                attempt += 1
                logger.warning("offset commit failed", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                guard error.isRetriable || error.isRebalanceInProgress, attempt < Self.maxAttempts else {
                    attempt = 0
                    continue  // the inbox absorbs the redelivery these offsets mean
                }
                state.withLock { state in
                    for o in offsets {
                        let key = KafkaTopicPartition(topic: o.topic, partition: o.partition)
                        state.pending[key] = max(state.pending[key] ?? Int64.min, o.offset)
                    }
                }
                try? await Task.sleep(for: retry.delay(attempt: attempt))
            }
        }
    }
}
