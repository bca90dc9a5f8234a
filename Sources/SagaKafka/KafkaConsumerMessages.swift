/// The messages of a ``KafkaConsumer``'s subscription as an `AsyncSequence`.
///
/// Iteration polls in batches (off the cooperative pool) and ends after
/// ``KafkaConsumer/close()`` or when the iterating task is cancelled; it throws what
/// ``KafkaConsumer/poll(maxMessages:timeout:)`` throws.
public struct KafkaConsumerMessages: AsyncSequence, Sendable {
    public typealias Element = KafkaMessage
    public typealias Failure = KafkaError

    let consumer: KafkaConsumer

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(consumer: consumer)
    }

    /// Polls the consumer in batches of up to 256 messages and hands them out one at a time.
    public struct AsyncIterator: AsyncIteratorProtocol {
        /// A consumed record.
        public typealias Element = KafkaMessage
        public typealias Failure = KafkaError

        let consumer: KafkaConsumer
        private var buffer: [KafkaMessage] = []
        private var index = 0

        init(consumer: KafkaConsumer) {
            self.consumer = consumer
        }

        public mutating func next() async throws(KafkaError) -> KafkaMessage? {
            try await next(isolation: nil)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(KafkaError) -> KafkaMessage? {
            while index == buffer.count {
                if Task.isCancelled { return nil }
                guard let batch = try await consumer.pollIfOpen(maxMessages: 256, timeout: .milliseconds(100)) else {
                    return nil
                }
                buffer = batch
                index = 0
            }
            defer { index += 1 }
            return buffer[index]
        }
    }
}
