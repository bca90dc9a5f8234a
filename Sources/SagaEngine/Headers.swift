/// Kafka header names the engine writes and reads.
public enum SagaHeader {
    /// The event type (``EventEnvelope/type``).
    public static let eventType = "saga-event-type"
    /// The event version (``EventEnvelope/version``), in decimal.
    public static let eventVersion = "saga-event-version"
    /// The event id (``EventEnvelope/id``).
    public static let eventId = "saga-event-id"
    /// The W3C trace context of the event.
    public static let traceparent = "traceparent"
    /// What happened to a deadline of the message's saga in the transaction that wrote the message: one header
    /// per deadline scheduled, cancelled or fired, its value a ``Deadline/Mark`` as JSON
    /// (`{"op","name","participant","dueAt","eventId","eventType","lateMs"?,"at"}`).
    public static let deadline = "saga-deadline"
    // Dead letters keep the original message and say why and where it came from.
    /// On a dead letter: why the event was dead-lettered.
    public static let deadLetterReason = "dlq-reason"
    /// On a dead letter: the topic it was read from.
    public static let deadLetterSourceTopic = "dlq-source-topic"
    /// On a dead letter: the partition it was read from.
    public static let deadLetterSourcePartition = "dlq-source-partition"
    /// On a dead letter: its offset in that partition.
    public static let deadLetterSourceOffset = "dlq-source-offset"
    /// On a dead letter: the participant (consumer) that dead-lettered it.
    public static let deadLetterConsumer = "dlq-consumer"
    /// On a dead letter: when it was dead-lettered (RFC 3339).
    public static let deadLetteredAt = "dlq-at"
    /// How many times the event was tried before it was dead-lettered (set when it failed more than once).
    public static let deadLetterAttempts = "dlq-attempts"
}
