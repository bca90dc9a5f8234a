import Foundation
import SagaKafka
import SagaPostgres

/// Deadlines written outside a handler, and what the runtime tells the tracker about deadlines.
///
/// A service that starts sagas in a statement of its own (e.g. orders placing an order over HTTP) schedules
/// the saga's deadline as one more member of that statement's data-modifying `WITH`, next to its rows and its
/// outbox row (``Outbox/insert(_:firstParameter:where:)``): ``insert(_:firstParameter:where:)``. It is then
/// fired by the service's worker like a deadline a handler scheduled.
///
/// The tracker learns of deadlines from the `saga-deadline` header (``SagaHeader/deadline``, one ``Mark``
/// each): the worker adds it to every message of saga S written in a transaction that scheduled, cancelled or
/// fired a deadline of S. A transaction that emits nothing for S is not seen.
public enum Deadline {
    /// What happened to a deadline, as carried by a `saga-deadline` header:
    /// `{"op","name","participant","dueAt","eventId","eventType","lateMs"?,"at"}` (dates RFC 3339, UTC,
    /// milliseconds).
    public struct Mark: Sendable, Hashable {
        /// What happened to it.
        public enum Op: String, Sendable, Hashable, CaseIterable {
            /// A transaction scheduled it (or scheduled it again, replacing it).
            case scheduled
            /// A transaction cancelled it before it fell.
            case cancelled
            /// The worker fired it: its event was handled.
            case fired
        }

        /// What happened.
        public var op: Op
        /// The deadline's name.
        public var name: String
        /// The participant whose deadline it is.
        public var participant: String
        /// When it falls (fell).
        public var dueAt: Date
        /// The id of the event it delivers (delivered, when fired).
        public var eventId: UUID
        /// The type of that event.
        public var eventType: String
        /// For ``Op/fired``: how late it fired, in milliseconds.
        public var lateMs: Int64?
        /// When it happened (by the clock of the process or database that did it).
        public var at: Date

        /// A mark from its fields.
        public init(
            op: Op, name: String, participant: String, dueAt: Date, eventId: UUID, eventType: String,
            lateMs: Int64? = nil, at: Date
        ) {
            self.op = op
            self.name = name
            self.participant = participant
            self.dueAt = dueAt
            self.eventId = eventId
            self.eventType = eventType
            self.lateMs = lateMs
            self.at = at
        }

        /// The mark as JSON.
        public var json: JSONValue {
            var o: [String: JSONValue] = [
                "op": .string(op.rawValue), "name": .string(name), "participant": .string(participant),
                "dueAt": .string(Timestamp.format(dueAt)), "eventId": .string(eventId.lowercasedString),
                "eventType": .string(eventType), "at": .string(Timestamp.format(at)),
            ]
            if let lateMs { o["lateMs"] = .integer(lateMs) }
            return .object(o)
        }

        /// The `saga-deadline` header carrying it.
        public var header: KafkaHeader {
            KafkaHeader(key: SagaHeader.deadline, value: json.serialized())
        }

        /// Reads a mark from a `saga-deadline` header's value.
        /// - Throws: `EventDecodingError` when it is not such JSON.
        public init(parsing value: [UInt8]) throws(EventDecodingError) {
            let json: JSONValue
            do { json = try JSONValue(parsing: value) } catch { throw EventDecodingError("saga-deadline: not JSON") }
            guard case .object(let o) = json else { throw EventDecodingError("saga-deadline: not an object") }
            func string(_ key: String) throws(EventDecodingError) -> String {
                guard case .string(let s)? = o[key] else { throw EventDecodingError("saga-deadline: no '\(key)'") }
                return s
            }
            func date(_ key: String) throws(EventDecodingError) -> Date {
                guard let d = Timestamp.parse(try string(key)) else {
                    throw EventDecodingError("saga-deadline: '\(key)' is not an RFC 3339 date-time")
                }
                return d
            }
            guard let op = Op(rawValue: try string("op")) else {
                throw EventDecodingError("saga-deadline: unknown op")
            }
            guard let eventId = UUID(parsing: try string("eventId")) else {
                throw EventDecodingError("saga-deadline: 'eventId' is not a UUID")
            }
            var lateMs: Int64? = nil
            switch o["lateMs"] {
            case nil, .null?: break
            case .integer(let ms)?: lateMs = ms
            default: throw EventDecodingError("saga-deadline: 'lateMs' is not an integer")
            }
            self.init(
                op: op, name: try string("name"), participant: try string("participant"), dueAt: try date("dueAt"),
                eventId: eventId, eventType: try string("eventType"), lateMs: lateMs, at: try date("at"))
        }
    }

    /// One deadline row, for a statement that writes it together with a service's own rows.
    public struct Row: Sendable {
        /// The deadline's name (one per saga: writing it again replaces it).
        public var name: String
        /// When it falls.
        public var due: Date
        /// The event it delivers to the service's handler of its type; its saga is the deadline's saga.
        public var event: EventEnvelope

        /// A deadline `name` of `event`'s saga, falling at `due`, whose payload is validated by `codec` (as a
        /// handler's scheduled deadline is). That the service has a handler for its type is checked by its
        /// worker when it starts (a deadline type declared in ``SagaDeclaration/deadlines`` must have one).
        /// - Throws: `EventEncodingError` when the payload has no schema or breaks it.
        public init(name: String, due: Date, event: OutgoingEvent, codec: EventCodec) throws(EventEncodingError) {
            try Deadlines.validate(event.envelope, name: name, codec: codec)
            self.name = name
            self.due = due
            self.event = event.envelope
        }

        /// The ``Mark`` of this row being scheduled by `participant` at `at`: add its ``Mark/header`` to the
        /// outbox row of the saga written in the same statement, so the tracker sees the deadline.
        public func scheduledMark(participant: String, at: Date = Date()) -> Mark {
            Mark(
                op: .scheduled, name: name, participant: participant, dueAt: due, eventId: event.id,
                eventType: event.type, at: at)
        }
    }

    /// An `INSERT INTO saga_deadlines … SELECT … WHERE <condition> ON CONFLICT (saga_id, name) DO UPDATE` of
    /// `row`, whose bind parameters are numbered from `firstParameter`: a member of a data-modifying `WITH`
    /// statement, like ``Outbox/insert(_:firstParameter:where:)``, so that the deadline commits with the
    /// service's state change (or not at all). `condition` refers to the statement's other members. A deadline of
    /// the same saga and name is replaced. The caller counts it once committed
    /// (``DeadlineMetrics/recordScheduled(service:count:)``).
    public static func insert(_ row: Row, firstParameter n: Int, where condition: String) -> (
        sql: String, binds: [PostgresBind]
    ) {
        insert(rows: [row], firstParameter: n, where: condition)
    }

    /// Like ``insert(_:firstParameter:where:)``, for several rows (always nine bind parameters), at
    /// most one per saga and name: `condition` may also refer to a row's saga id as `d.saga_id`, e.g.
    /// `d.saga_id IN (SELECT id::text FROM inserted)`, so that each is written only when its own change happened.
    public static func insert(rows: [Row], firstParameter n: Int, where condition: String) -> (
        sql: String, binds: [PostgresBind]
    ) {
        let sql = """
            INSERT INTO saga_deadlines
                (saga_id, name, due_at, event_id, event_type, event_version, data, causation_id, traceparent)
            SELECT d.saga_id, d.name, d.due_at::timestamptz, d.event_id::uuid, d.event_type, d.event_version,
                d.data::jsonb, NULLIF(d.causation_id, '')::uuid, NULLIF(d.traceparent, '')
            FROM unnest($\(n)::text[], $\(n + 1)::text[], $\(n + 2)::text[], $\(n + 3)::text[], $\(n + 4)::text[],
                        $\(n + 5)::int[], $\(n + 6)::text[], $\(n + 7)::text[], $\(n + 8)::text[])
                AS d(saga_id, name, due_at, event_id, event_type, event_version, data, causation_id, traceparent)
            WHERE \(condition)
            \(Deadlines.onConflict)
            """
        let binds: [PostgresBind] = [
            PostgresArray(rows.map(\.event.sagaId)), PostgresArray(rows.map(\.name)),
            PostgresArray(rows.map(\.due.postgresText)), PostgresArray(rows.map(\.event.id)),
            PostgresArray(rows.map(\.event.type)), PostgresArray(rows.map(\.event.version)),
            PostgresArray(rows.map { String(decoding: $0.event.data.serialized(), as: UTF8.self) }),
            PostgresArray(rows.map { $0.event.causationId?.lowercasedString ?? "" }),
            PostgresArray(rows.map { $0.event.traceparent ?? "" }),
        ]
        return (sql, binds)
    }
}
