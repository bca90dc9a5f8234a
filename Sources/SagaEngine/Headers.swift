/// Kafka header names the engine writes and reads.
public enum SagaHeader {
    public static let eventType = "saga-event-type"
    public static let eventVersion = "saga-event-version"
    public static let eventId = "saga-event-id"
    public static let traceparent = "traceparent"
    // Dead letters keep the original message and say why and where it came from.
    public static let deadLetterReason = "dlq-reason"
    public static let deadLetterSourceTopic = "dlq-source-topic"
    public static let deadLetterSourcePartition = "dlq-source-partition"
    public static let deadLetterSourceOffset = "dlq-source-offset"
    public static let deadLetterConsumer = "dlq-consumer"
    public static let deadLetteredAt = "dlq-at"
    /// How many times the event was tried before it was dead-lettered (set when it failed more than once).
    public static let deadLetterAttempts = "dlq-attempts"
}
