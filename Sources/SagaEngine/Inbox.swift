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
            insert + "\nON CONFLICT (event_id) DO NOTHING\nRETURNING event_id", binds(events))
        var inserted = Set<UUID>(minimumCapacity: rows.count)
        for row in rows { inserted.insert(try row.decode("event_id", as: UUID.self)) }
        return inserted
    }

    /// Records `events`, none of which may have been recorded before, with the transaction's next statement (a
    /// deferred write: no round trip of its own). For a batch expected to hold no duplicates: an id recorded
    /// before (committed, or by a transaction that then commits) fails the statement that carries it, or the
    /// `COMMIT`, with a unique violation, and the transaction with it; the batch must then run again through
    /// ``record(_:on:)``.
    /// - Throws: `PostgresError` when not in a transaction.
    static func recordDeferred(
        _ events: [(event: IncomingEvent, message: KafkaMessage)], on connection: PostgresConnection
    ) throws(PostgresError) {
        guard !events.isEmpty else { return }
        try connection.executeDeferred(insert, binds(events))
    }

    private static let insert = """
        INSERT INTO saga_inbox (event_id, event_type, saga_id, source_topic, source_partition, source_offset)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[])
        """

    private static func binds(_ events: [(event: IncomingEvent, message: KafkaMessage)]) -> [PostgresBind] {
        [
            PostgresArray(events.map(\.event.id)), PostgresArray(events.map(\.event.type)),
            PostgresArray(events.map(\.event.sagaId)), PostgresArray(events.map(\.message.topic)),
            PostgresArray(events.map { Int($0.message.partition) }), PostgresArray(events.map(\.message.offset)),
        ]
    }
}
