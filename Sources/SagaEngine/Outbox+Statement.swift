import Foundation
import SagaKafka
import SagaPostgres

extension Outbox {
    /// One outbox row, for a statement that writes it together with a service's own rows.
    public struct Row: Sendable {
        /// The saga of the event: it picks the row's shard, so a saga is published in order.
        public var sagaId: String
        /// The event's id, when the message is an event.
        public var eventId: UUID?
        /// The event's type, when the message is an event.
        public var eventType: String?
        /// The Kafka message to publish.
        public var message: KafkaOutgoingMessage

        /// A row from its fields.
        public init(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage) {
            self.sagaId = sagaId
            self.eventId = eventId
            self.eventType = eventType
            self.message = message
        }

        /// The outbox row of an event encoded by `codec` (validated against its schema).
        /// - Throws: `EventEncodingError` when the event does not validate.
        public init(_ event: OutgoingEvent, codec: EventCodec) throws(EventEncodingError) {
            self.init(
                sagaId: event.envelope.sagaId, eventId: event.envelope.id, eventType: event.envelope.type,
                message: try codec.encode(event))
        }
    }

    /// An `INSERT INTO saga_outbox … SELECT … WHERE <condition>` of `row`, whose bind parameters are numbered from
    /// `firstParameter`: to be a member of a data-modifying `WITH` statement, so that a service's state change and its
    /// event commit in one statement (one round trip, no BEGIN/COMMIT). `condition` refers to the statement's other
    /// members (e.g. `EXISTS (SELECT 1 FROM inserted)`), so the event is written only when the change happened.
    public static func insert(_ row: Row, firstParameter n: Int, where condition: String) -> (
        sql: String, binds: [PostgresBind]
    ) {
        let sql = """
            INSERT INTO saga_outbox (shard, saga_id, event_id, event_type, topic, key, headers, payload)
            SELECT \(shard(of: "$\(n)")), $\(n), $\(n + 1)::uuid, $\(n + 2),
                $\(n + 3), $\(n + 4)::bytea, $\(n + 5)::jsonb, $\(n + 6)::bytea
            WHERE \(condition)
            """
        let binds: [PostgresBind] = [
            row.sagaId, row.eventId, row.eventType, row.message.topic, row.message.key,
            String(decoding: encodeHeaders(row.message.headers), as: UTF8.self), row.message.value,
        ]
        return (sql, binds)
    }
}
