import Foundation
import Logging
import SagaKafka
import SagaPostgres

/// A dead letter as a worker writes it: a `saga_dead_letters` row and an outbox row for the dead-letter topic,
/// both built from bounded values (``Bounded``), so that whatever the poison message holds, the letter fits.
struct DeadLetter {
    let source: KafkaMessage
    let sagaId: String
    let eventId: UUID?
    let eventType: String?
    let reason: String
    /// The message for the dead-letter topic: the original key and value, bounded original headers and the
    /// `dlq-*` headers.
    let letter: KafkaOutgoingMessage

    /// - Parameters:
    ///   - attempts: how many times the event was tried, when more than once.
    ///   - minimal: only what cannot fail: no saga id from the message, no original headers.
    init(
        _ message: KafkaMessage, envelope: EventEnvelope?, reason: String, attempts: Int?, consumer: String,
        topic: String, minimal: Bool = false
    ) {
        source = message
        sagaId =
            minimal
            ? "unknown"
            : Bounded.sagaId(envelope?.sagaId ?? message.key.map { String(decoding: $0, as: UTF8.self) } ?? "unknown")
        eventId = minimal ? nil : envelope?.id
        eventType = minimal ? nil : (envelope?.type).map { Bounded.text($0, maxBytes: Bounded.headerKeyBytes) }
        self.reason = Bounded.text(reason, maxBytes: Bounded.reasonBytes)
        var headers = minimal ? [] : Bounded.headers(message.headers.filter { !$0.key.hasPrefix("dlq-") })
        headers += [
            KafkaHeader(key: SagaHeader.deadLetterReason, string: self.reason),
            KafkaHeader(key: SagaHeader.deadLetterSourceTopic, string: message.topic),
            KafkaHeader(key: SagaHeader.deadLetterSourcePartition, string: String(message.partition)),
            KafkaHeader(key: SagaHeader.deadLetterSourceOffset, string: String(message.offset)),
            KafkaHeader(key: SagaHeader.deadLetterConsumer, string: consumer),
            KafkaHeader(key: SagaHeader.deadLetteredAt, string: Timestamp.format(Date())),
        ]
        if let attempts, attempts > 1 {
            headers.append(KafkaHeader(key: SagaHeader.deadLetterAttempts, string: String(attempts)))
        }
        letter = KafkaOutgoingMessage(topic: topic, key: message.key, value: message.value, headers: headers)
    }

    /// Writes the dead letter of `message` in the connection's transaction; returns it, or nil when this message
    /// (topic, partition, offset) was dead-lettered before (a redelivery after a crash).
    ///
    /// Its own failure never makes the batch retry forever: the letter is written in a savepoint of its own, and
    /// when that fails for any but a transient reason it is undone and a minimal letter is written instead (saga
    /// id `unknown`, no original headers, the failure added to the reason). One round trip when nothing fails.
    /// - Throws: a transient failure, or the failure of the minimal letter (the database refuses even that).
    static func write(
        _ message: KafkaMessage, envelope: EventEnvelope?, reason: String, attempts: Int?, consumer: String,
        topic: String, on connection: PostgresConnection, logger: Logger
    ) async throws(PostgresError) -> DeadLetter? {
        let full = DeadLetter(
            message, envelope: envelope, reason: reason, attempts: attempts, consumer: consumer, topic: topic)
        do {
            return try await full.insert(on: connection) ? full : nil
        } catch  where !Failure(error).isTransient {
            logger.error(
                "dead letter refused by the database: writing a minimal one",
                metadata: [
                    "error": "\(error)", "topic": .string(message.topic), "partition": "\(message.partition)",
                    "offset": "\(message.offset)",
                ])
            try await connection.pipeline([
                PostgresStatement("ROLLBACK TO SAVEPOINT saga_dead_letter"),
                PostgresStatement("RELEASE SAVEPOINT saga_dead_letter"),
            ])
            let minimal = DeadLetter(
                message, envelope: nil, reason: "\(reason) (minimal dead letter: the full one failed: \(error))",
                attempts: attempts, consumer: consumer, topic: topic, minimal: true)
            return try await minimal.insert(on: connection) ? minimal : nil
        }
    }

    /// The letter's row and outbox row in one statement, in a savepoint: one round trip.
    private func insert(on connection: PostgresConnection) async throws(PostgresError) -> Bool {
        let outbox = Outbox.insert(
            Outbox.Row(sagaId: sagaId, eventId: eventId, eventType: eventType, message: letter), firstParameter: 7,
            where: "EXISTS (SELECT 1 FROM letter)")
        let results = try await connection.pipeline([
            PostgresStatement("SAVEPOINT saga_dead_letter"),
            PostgresStatement(
                """
                WITH letter AS (
                    INSERT INTO saga_dead_letters (source_topic, source_partition, source_offset, saga_id, event_id, reason)
                    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1
                )
                \(outbox.sql)
                """,
                [source.topic, Int(source.partition), source.offset, sagaId, eventId, reason] + outbox.binds),
            PostgresStatement("RELEASE SAVEPOINT saga_dead_letter"),
        ])
        return results[1].affectedRows > 0
    }
}
