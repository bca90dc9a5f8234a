import Foundation
import JSONSchema
import Logging
import Metrics
import SagaKafka
import SagaPostgres
import Synchronization

// Durable deadlines: "if this saga has not reached X by T, deliver Y to me".
//
// A handler schedules a deadline in its event's transaction (`saga_deadlines`, in the service's own schema),
// together with its state change and outbox rows, and cancels it in a later one. The worker fires due
// deadlines in transactions of their own (``Worker``'s deadline task): it claims them with
// `FOR UPDATE SKIP LOCKED`, hands their events to the service's handlers through the inbox and outbox path
// of any consumed event (validated against the schema, upcast, deduplicated, dead-lettered when poison), and
// deletes the rows in that same transaction. A crash before the commit leaves the rows to be fired again; after
// it, they are gone.

extension HandlerContext {
    /// Schedules the deadline `name` of this event's saga: unless it is cancelled first, `payload` is delivered
    /// to this service's handler of its type at `due` (at once if `due` is past), as an event of this saga
    /// caused by the event being handled. Written in this event's transaction: it exists only if the
    /// transaction commits. A saga has one deadline per name: scheduling it again replaces it.
    /// - Throws: `EventEncodingError` when the payload breaks its schema or this service has no handler for
    ///   its type (the event being handled is then dead-lettered, like for an invalid emitted event);
    ///   `PostgresError`.
    public func scheduleDeadline<P: EventPayload>(name: String, at due: Date, payload: P) async throws {
        try await Deadlines.schedule(
            name: name, due: .at(due), payload: payload, causedBy: event.envelope, service: service,
            ledger: deadlineLedger, on: connection)
    }

    /// Schedules the deadline `name` of this event's saga to fall `delay` from now (by the database's clock);
    /// see ``scheduleDeadline(name:at:payload:)``.
    public func scheduleDeadline<P: EventPayload>(name: String, after delay: Duration, payload: P) async throws {
        try await Deadlines.schedule(
            name: name, due: .after(delay), payload: payload, causedBy: event.envelope, service: service,
            ledger: deadlineLedger, on: connection)
    }

    /// Cancels the deadline `name` of this event's saga, in this event's transaction. Returns false when there
    /// was none (never scheduled, cancelled before, or already fired).
    /// - Throws: `PostgresError`.
    @discardableResult
    public func cancelDeadline(name: String) async throws -> Bool {
        try await Deadlines.cancel(sagaId: event.sagaId, name: name, ledger: deadlineLedger, on: connection)
    }
}

extension BatchHandlerContext {
    /// Schedules the deadline `name` of `event`'s saga, caused by `event`; see
    /// ``HandlerContext/scheduleDeadline(name:at:payload:)``.
    public func scheduleDeadline<P: EventPayload>(name: String, for event: IncomingEvent, at due: Date, payload: P)
        async throws
    {
        try await Deadlines.schedule(
            name: name, due: .at(due), payload: payload, causedBy: event.envelope, service: service,
            ledger: deadlineLedger, on: connection)
    }

    /// Schedules the deadline `name` of `event`'s saga to fall `delay` from now; see
    /// ``HandlerContext/scheduleDeadline(name:at:payload:)``.
    public func scheduleDeadline<P: EventPayload>(
        name: String, for event: IncomingEvent, after delay: Duration, payload: P
    ) async throws {
        try await Deadlines.schedule(
            name: name, due: .after(delay), payload: payload, causedBy: event.envelope, service: service,
            ledger: deadlineLedger, on: connection)
    }

    /// Cancels the deadline `name` of `event`'s saga; see ``HandlerContext/cancelDeadline(name:)``.
    @discardableResult
    public func cancelDeadline(name: String, for event: IncomingEvent) async throws -> Bool {
        try await Deadlines.cancel(sagaId: event.sagaId, name: name, ledger: deadlineLedger, on: connection)
    }

    /// Cancels the deadline `name` of the sagas of `events`, in one statement of this batch's transaction.
    /// Returns the saga ids whose deadline it cancelled (the others had none: never scheduled, cancelled
    /// before, or already fired).
    /// - Throws: `PostgresError`.
    @discardableResult
    public func cancelDeadlines(name: String, for events: [IncomingEvent]) async throws -> Set<String> {
        try await Deadlines.cancel(
            sagaIds: Set(events.map(\.sagaId)), name: name, ledger: deadlineLedger, on: connection)
    }

    /// Like ``cancelDeadlines(name:for:)``, then runs `next` in the same round trip (after the cancellation, so
    /// it sees it and takes its locks after the deadlines'); returns `next`'s rows.
    /// - Throws: `PostgresError`; neither statement has effect when either fails (the transaction fails).
    public func cancelDeadlines(name: String, for events: [IncomingEvent], then next: PostgresStatement)
        async throws -> [PostgresRow]
    {
        let sagaIds = Set(events.map(\.sagaId))
        guard !sagaIds.isEmpty else { return try await connection.query(next) }
        let results = try await connection.pipeline([Deadlines.cancellation(sagaIds: sagaIds, name: name), next])
        try Deadlines.cancelled(results[0].rows, name: name, ledger: deadlineLedger)
        return results[1].rows
    }
}

/// What the handlers of one worker transaction did with deadlines, known to the worker once it committed:
/// counted then (a rolled-back transaction scheduled nothing), and the deadline task is woken when one falls
/// before it would wake anyway. It also lets the handlers check a deadline's payload before it is stored, and
/// keeps the ``Deadline/Mark``s the worker adds as `saga-deadline` headers to the transaction's messages of
/// each marked saga.
final class DeadlineLedger: Sendable {
    struct Counts: Sendable {
        var scheduled = 0
        var cancelled = 0
        /// The earliest due time scheduled (by this process's clock).
        var earliest: Date? = nil
        /// By saga id, what happened to its deadlines in this transaction and is not yet on one of its messages.
        var marks: [String: [Deadline.Mark]] = [:]
    }

    let codec: EventCodec
    /// The event types the worker has handlers for.
    let handled: Set<String>
    /// The participant (the `participant` of the marks).
    let participant: String
    private let state = Mutex(Counts())

    init(codec: EventCodec, handled: Set<String>, participant: String) {
        self.codec = codec
        self.handled = handled
        self.participant = participant
    }

    var counts: Counts { state.withLock { $0 } }

    /// Back to `counts` (a savepoint rolled back the event that recorded what came after).
    func restore(_ counts: Counts) { state.withLock { $0 = counts } }

    func scheduled(sagaId: String, name: String, due: Date, event: EventEnvelope) {
        let mark = Deadline.Mark(
            op: .scheduled, name: name, participant: participant, dueAt: due, eventId: event.id,
            eventType: event.type, at: Date())
        state.withLock {
            $0.scheduled += 1
            $0.earliest = min($0.earliest ?? due, due)
            $0.marks[sagaId, default: []].append(mark)
        }
    }

    func cancelled(_ rows: [Deadlines.Cancelled], name: String) {
        guard !rows.isEmpty else { return }
        let now = Date()
        state.withLock {
            $0.cancelled += rows.count
            for row in rows {
                $0.marks[row.sagaId, default: []].append(
                    Deadline.Mark(
                        op: .cancelled, name: name, participant: participant, dueAt: row.dueAt, eventId: row.eventId,
                        eventType: row.eventType, at: now))
            }
        }
    }

    /// The firing transaction claimed `claimed`.
    func fired(_ claimed: [Deadlines.Claimed]) {
        state.withLock {
            for c in claimed {
                $0.marks[c.sagaId, default: []].append(
                    Deadline.Mark(
                        op: .fired, name: c.name, participant: participant, dueAt: c.dueAt, eventId: c.eventId,
                        eventType: c.eventType, lateMs: Int64((max(0, c.lateness) * 1000).rounded()), at: c.claimedAt
                    ))
            }
        }
    }

    /// The marks of the sagas of `emitted`, removed: they go onto those sagas' messages about to be written.
    func takeMarks(for emitted: [OutgoingEvent]) -> [String: [Deadline.Mark]] {
        state.withLock { counts in
            guard !counts.marks.isEmpty else { return [:] }  // the common case: no deadline in this transaction
            var taken: [String: [Deadline.Mark]] = [:]
            for event in emitted {
                if let marks = counts.marks.removeValue(forKey: event.envelope.sagaId) {
                    taken[event.envelope.sagaId] = marks
                }
            }
            return taken
        }
    }
}

/// The deadline table's statements.
enum Deadlines {
    enum Due {
        case at(Date)
        case after(Duration)
    }

    /// How a deadline's event is read from the inbox and the dead letters: source partition -1, source offset
    /// the deadline row's id.
    static let partition: Int32 = -1

    static func schedule<P: EventPayload>(
        name: String, due: Due, payload: P, causedBy cause: EventEnvelope, service: String,
        ledger: DeadlineLedger?, on connection: PostgresTransaction
    ) async throws {
        let event = try OutgoingEvent(payload, sagaId: cause.sagaId, producer: service, causedBy: cause).envelope
        if let ledger {
            guard ledger.handled.contains(event.type) else {
                throw EventEncodingError("deadline \(name): \(service) has no handler for \(event.type)")
            }
            try validate(event, name: name, codec: ledger.codec)
        }
        let dueSQL: String
        let dueBind: any PostgresEncodable
        switch due {
        case .at(let date):
            dueSQL = "$3::timestamptz"
            dueBind = date
        case .after(let delay):
            dueSQL = "clock_timestamp() + $3::float8 * interval '1 second'"
            dueBind = delay.milliseconds / 1000
        }
        let rows = try await connection.query(
            """
            INSERT INTO saga_deadlines
                (saga_id, name, due_at, event_id, event_type, event_version, data, causation_id, traceparent)
            VALUES ($1, $2, \(dueSQL), $4::uuid, $5, $6, $7::jsonb, $8::uuid, NULLIF($9, ''))
            \(onConflict)
            RETURNING due_at
            """,
            [
                cause.sagaId, name, dueBind, event.id.lowercasedString, event.type, event.version,
                String(decoding: event.data.serialized(), as: UTF8.self), cause.id.lowercasedString,
                event.traceparent ?? "",
            ])
        let dueAt: Date = try rows[0].decode("due_at")
        ledger?.scheduled(sagaId: cause.sagaId, name: name, due: dueAt, event: event)
    }

    /// Replaces the deadline of the same saga and name (a new id: it is a new deadline).
    static let onConflict = """
        ON CONFLICT (saga_id, name) DO UPDATE SET
            id = nextval(pg_get_serial_sequence('saga_deadlines', 'id')), due_at = excluded.due_at,
            event_id = excluded.event_id, event_type = excluded.event_type,
            event_version = excluded.event_version, data = excluded.data,
            causation_id = excluded.causation_id, traceparent = excluded.traceparent,
            created_at = clock_timestamp()
        """

    /// Checks a deadline's event against its schema, as the outbox checks an emitted event.
    static func validate(_ event: EventEnvelope, name: String, codec: EventCodec) throws(EventEncodingError) {
        guard let violations = codec.registry.validate(type: event.type, version: event.version, data: event.data)
        else { throw EventEncodingError("deadline \(name): no schema for \(event.type) v\(event.version)") }
        guard violations.isEmpty else {
            throw EventEncodingError(
                "deadline \(name): \(event.type) v\(event.version) breaks its schema: "
                    + EventCodec.describe(violations))
        }
    }

    /// A deleted (cancelled) deadline.
    struct Cancelled: Sendable {
        let sagaId: String
        let dueAt: Date
        let eventId: UUID
        let eventType: String
    }

    static func cancel(sagaId: String, name: String, ledger: DeadlineLedger?, on connection: PostgresTransaction)
        async throws -> Bool
    {
        !(try await cancel(sagaIds: [sagaId], name: name, ledger: ledger, on: connection)).isEmpty
    }

    /// Deletes the deadline `name` of each of `sagaIds`, in one statement; returns the saga ids that had one.
    static func cancel(
        sagaIds: Set<String>, name: String, ledger: DeadlineLedger?, on connection: PostgresTransaction
    ) async throws -> Set<String> {
        guard !sagaIds.isEmpty else { return [] }
        return try cancelled(
            try await connection.query(cancellation(sagaIds: sagaIds, name: name)), name: name, ledger: ledger)
    }

    /// The statement that deletes the deadline `name` of each of `sagaIds`, returning what ``cancelled(_:name:ledger:)``
    /// reads.
    static func cancellation(sagaIds: Set<String>, name: String) -> PostgresStatement {
        PostgresStatement(
            """
            DELETE FROM saga_deadlines WHERE name = $1 AND saga_id = ANY($2::text[])
            RETURNING saga_id, due_at, event_id, event_type
            """, [name, PostgresArray(sagaIds.sorted())])
    }

    /// Records the deadlines ``cancellation(sagaIds:name:)`` deleted (`rows`) in `ledger`; returns their saga ids.
    @discardableResult
    static func cancelled(_ rows: [PostgresRow], name: String, ledger: DeadlineLedger?) throws -> Set<String> {
        var cancelled: [Cancelled] = []
        cancelled.reserveCapacity(rows.count)
        for row in rows {
            cancelled.append(
                Cancelled(
                    sagaId: try row.decode("saga_id"), dueAt: try row.decode("due_at"),
                    eventId: try row.decode("event_id"), eventType: try row.decode("event_type")))
        }
        ledger?.cancelled(cancelled, name: name)
        return Set(cancelled.map(\.sagaId))
    }

    /// A claimed due deadline.
    struct Claimed: Sendable {
        let id: Int64
        let sagaId: String
        let name: String
        /// When it was due.
        let dueAt: Date
        /// When it was claimed, by the database's clock.
        let claimedAt: Date
        /// Its event's id and type.
        let eventId: UUID
        let eventType: String
        /// How late it is being fired, in seconds.
        let lateness: Double
        /// Its event as a consumed message of its type's topic (partition -1, offset the row's id).
        let message: KafkaMessage
    }

    /// Locks up to `limit` due deadlines (earliest first) that no other transaction holds.
    static func claimDue(limit: Int, service: String, topics: TopicNaming, on connection: PostgresConnection)
        async throws -> [Claimed]
    {
        let rows = try await connection.query(
            """
            SELECT id, saga_id, name, due_at, event_id, event_type, event_version, data::text AS data, causation_id,
                   traceparent, EXTRACT(EPOCH FROM clock_timestamp() - due_at)::float8 AS lateness,
                   clock_timestamp() AS now
            FROM saga_deadlines WHERE due_at <= clock_timestamp()
            ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
            """, [limit])
        var claimed: [Claimed] = []
        claimed.reserveCapacity(rows.count)
        for row in rows {
            let id: Int64 = try row.decode("id")
            let sagaId: String = try row.decode("saga_id")
            let type: String = try row.decode("event_type")
            let version: Int = try row.decode("event_version")
            let dataText: String = try row.decode("data")
            let data = try JSONValue(parsing: Array(dataText.utf8))
            let envelope = EventEnvelope(
                id: try row.decode("event_id"), type: type, version: version, sagaId: sagaId,
                causationId: try row.decode("causation_id", as: UUID?.self), occurredAt: try row.decode("now"),
                producer: service, traceparent: try row.decode("traceparent", as: String?.self), data: data)
            var headers = [
                KafkaHeader(key: SagaHeader.eventType, string: type),
                KafkaHeader(key: SagaHeader.eventVersion, string: String(version)),
                KafkaHeader(key: SagaHeader.eventId, string: envelope.id.lowercasedString),
            ]
            if let t = envelope.traceparent { headers.append(KafkaHeader(key: SagaHeader.traceparent, string: t)) }
            claimed.append(
                Claimed(
                    id: id, sagaId: sagaId, name: try row.decode("name"), dueAt: try row.decode("due_at"),
                    claimedAt: envelope.occurredAt, eventId: envelope.id, eventType: type,
                    lateness: try row.decode("lateness"),
                    message: KafkaMessage(
                        topic: topics.topic(for: type), partition: partition, offset: id, key: Array(sagaId.utf8),
                        value: envelope.serialized(), headers: headers, timestamp: nil)))
        }
        return claimed
    }

    static func delete(_ claimed: [Claimed], on connection: PostgresConnection) async throws(PostgresError) {
        guard !claimed.isEmpty else { return }
        try await connection.execute(
            "DELETE FROM saga_deadlines WHERE id = ANY($1::bigint[])", [PostgresArray(claimed.map(\.id))])
    }

    /// Seconds until the earliest deadline falls by the database's clock (negative: overdue), nil when none.
    static func secondsUntilNext(on pool: PostgresPool) async throws -> Double? {
        let rows = try await pool.query(
            "SELECT EXTRACT(EPOCH FROM min(due_at) - clock_timestamp())::float8 AS wait FROM saga_deadlines")
        return try rows.first?.decode("wait", as: Double?.self)
    }
}

/// The deadline metrics of a worker: scheduled, cancelled and fired deadlines, and how late they fire.
public struct DeadlineMetrics: Sendable {
    let scheduled: Counter
    let cancelled: Counter
    let fired: Counter
    /// From a deadline's due time to the moment the transaction that fired it claimed it (recorded once that
    /// transaction committed).
    let lag: Metrics.Timer

    init(service: String) {
        let d = [("service", service)]
        scheduled = Counter(label: "saga_worker_deadlines_scheduled_total", dimensions: d)
        cancelled = Counter(label: "saga_worker_deadlines_cancelled_total", dimensions: d)
        fired = Counter(label: "saga_worker_deadlines_fired_total", dimensions: d)
        lag = Metrics.Timer(label: "saga_worker_deadline_lag_seconds", dimensions: d, preferredDisplayUnit: .seconds)
    }

    /// Counts `count` deadlines of `service` scheduled outside its worker (``Deadline/insert(_:firstParameter:where:)``),
    /// once their transaction committed, in the worker's `saga_worker_deadlines_scheduled_total` series.
    public static func recordScheduled(service: String, count: Int = 1) {
        guard count > 0 else { return }
        Counter(label: "saga_worker_deadlines_scheduled_total", dimensions: [("service", service)])
            .increment(by: count)
    }
}

/// Wakes the worker's deadline task when a committed transaction scheduled a deadline that falls before the
/// task would wake anyway.
final class DeadlineAlarm: Sendable {
    private let signal = WakeSignal()
    /// When the task will look next; `.distantPast` while it is working (then every scheduling wakes it).
    private let plannedWake = Mutex(Date.distantPast)

    /// After a commit: wakes the task if `due` falls before its next look.
    func scheduled(due: Date) {
        if plannedWake.withLock({ due < $0 }) { signal.signal() }
    }

    /// Sleeps for `duration` or until a deadline due earlier is scheduled.
    func sleep(for duration: Duration) async {
        plannedWake.withLock { $0 = Date().addingTimeInterval(duration.milliseconds / 1000) }
        await signal.wait(timeout: duration)
        plannedWake.withLock { $0 = .distantPast }
    }
}
