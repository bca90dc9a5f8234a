import Foundation
import SagaKafka
import SagaPostgres

/// The inbox: the ids of the events a service handled, written in the transaction that handled them.
enum Inbox {
    /// Records `events` (each with the message it came in) in one statement and returns the ids that were
    /// new. An id already recorded (by an earlier batch, or earlier in `events`) is not returned: its event
    /// is a duplicate, to be acknowledged and skipped.
    /// - Throws: `PostgresError`.
    static func record(_ events: [(event: IncomingEvent, message: KafkaMessage)], on connection: PostgresConnection)
        async throws(PostgresError) -> Set<UUID>
    {
        guard !events.isEmpty else { return [] }
        let rows = try await connection.query(
            """
            INSERT INTO saga_inbox (event_id, event_type, saga_id, source_topic, source_partition, source_offset)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[])
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
            """,
            [
                PostgresArray(events.map(\.event.id)), PostgresArray(events.map(\.event.type)),
                PostgresArray(events.map(\.event.sagaId)), PostgresArray(events.map(\.message.topic)),
                PostgresArray(events.map { Int($0.message.partition) }), PostgresArray(events.map(\.message.offset)),
            ])
        var inserted = Set<UUID>(minimumCapacity: rows.count)
        for row in rows { inserted.insert(try row.decode("event_id", as: UUID.self)) }
        return inserted
    }
}
