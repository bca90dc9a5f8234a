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
        insert(rows: [row], firstParameter: n, where: condition)
    }

    /// Like ``insert(_:firstParameter:where:)``, for several rows (always seven bind parameters), written
    /// in their order: `condition` may also refer to a row's saga id as `m.saga_id`, e.g.
    /// `m.saga_id IN (SELECT id::text FROM inserted)`, so that each row is written only when its own change happened.
    public static func insert(rows: [Row], firstParameter n: Int, where condition: String) -> (
        sql: String, binds: [PostgresBind]
    ) {
        appendStatement(
            rows.map { (sagaId: $0.sagaId, eventId: $0.eventId, eventType: $0.eventType, message: $0.message) },
            firstParameter: n, where: condition)
    }
}
