import Foundation
import JSONSchema
import Logging
import SagaEngine
import SagaPostgres

/// Reads the tracker's read model: one saga's timeline, stuck sagas, counts and latencies.
///
/// Kinds and what a running saga waits on come from ``model``, assembled from the participants' declarations
/// in the `ParticipantRegistry` (``init(pool:registry:logger:)``). A saga is running while it has no outcome
/// or a registered participant waits to act on its latest event (see ``SagaTracker``), so `--stuck` also
/// lists a confirmed order that a participant consuming `order.confirmed` has not handled yet.
public struct SagaInspector: Sendable {
    /// The connections to the tracker's read model.
    public let pool: PostgresPool
    /// The saga's shape: the kind of each event type and what a running saga waits on.
    public let model: SagaModel

    /// An inspector of the read model in `pool` that reads it with `model`.
    public init(pool: PostgresPool, model: SagaModel) {
        self.pool = pool
        self.model = model
    }

    /// An inspector of the read model in `pool` whose model is assembled from every participant registered in
    /// `registry`.
    public init(pool: PostgresPool, registry: ParticipantRegistry, logger: Logger) async throws {
        self.init(pool: pool, model: try await registry.model(logger: logger))
    }

    /// One recorded event of a saga.
    public struct Step: Sendable, Codable, Hashable {
        /// The event's id.
        public var eventId: String
        /// The event type.
        public var type: String
        /// The version it was published in.
        public var version: Int
        /// The participant that emitted it (for a fired deadline: the participant whose deadline it was).
        public var producer: String
        /// What it means for the saga: a `SagaModel.Kind` raw value, or `deadline` for a fired deadline (its
        /// event went from the participant's deadline table to its own handler, never through a topic: its
        /// `topic` is "(deadline)", `partition` and `offset` -1, `version` 0, and `occurredAt` when it fired).
        public var kind: String
        /// When its producer created it.
        public var occurredAt: Date
        /// Milliseconds since the previous step (nil for the first).
        public var sincePreviousMs: Double?
        /// The id of the event that caused it (nil for the first).
        public var causationId: String?
        /// The topic it was read from.
        public var topic: String
        /// The partition it was read from.
        public var partition: Int
        /// Its offset in that partition.
        public var offset: Int64
    }

    /// One dead letter of a saga.
    public struct DeadLetter: Sendable, Codable, Hashable {
        /// The participant that dead-lettered it, when the headers say.
        public var consumer: String?
        /// Why it was dead-lettered.
        public var reason: String
        /// The event type, when known.
        public var eventType: String?
        /// The event id, when known.
        public var eventId: String?
        /// The topic the message was read from.
        public var sourceTopic: String?
        /// The partition the message was read from.
        public var sourcePartition: Int?
        /// The message's offset in that partition.
        public var sourceOffset: Int64?
        /// The dead-letter topic.
        public var topic: String
        /// The partition of the dead-letter topic.
        public var partition: Int
        /// The dead letter's offset in that partition.
        public var offset: Int64
        /// When it was dead-lettered.
        public var deadLetteredAt: Date
    }

    /// A saga's state in the read model.
    public struct Summary: Sendable, Codable, Hashable {
        /// The saga's id.
        public var sagaId: String
        /// `running` until it has an outcome and no registered participant waits on its latest event, then
        /// `finished`.
        public var status: String
        /// The outcome once decided, e.g. "confirmed" (also while a participant still acts after it).
        public var outcome: String?
        /// When its first event occurred.
        public var startedAt: Date
        /// When its latest event occurred.
        public var updatedAt: Date
        /// When the outcome was recorded.
        public var finishedAt: Date?
        /// The type of its latest event.
        public var lastEventType: String
        /// What the saga waits on (nil once finished); once it has an outcome, only what a participant waits on
        /// after it (`SagaModel.waitingAfterOutcome`).
        public var waitingOn: String?
        /// How many events it has.
        public var events: Int
        /// How many of them are compensations.
        public var compensations: Int
        /// How many dead letters it has.
        public var deadLetters: Int
        /// Its earliest deadline still scheduled (not cancelled, not fired), if any.
        public var deadline: Deadline? = nil
    }

    /// A deadline of a saga, as the `saga-deadline` headers of its events told the tracker (a transaction that
    /// emitted no event of the saga is not seen).
    public struct Deadline: Sendable, Codable, Hashable {
        /// The participant whose deadline it is.
        public var participant: String
        /// Its name within the saga, e.g. "order".
        public var name: String
        /// When it falls (or fell).
        public var dueAt: Date
        /// `scheduled` (waiting to fall), `cancelled` (the saga got there first) or `fired`.
        public var state: String
        /// For a scheduled deadline: milliseconds until it falls when read; negative once it is overdue.
        public var timeLeftMs: Double?
        /// The id of the event it delivers (or delivered) to its participant, when known.
        public var eventId: String?
        /// That event's type, e.g. "order.expired".
        public var eventType: String?
        /// When it fired.
        public var firedAt: Date?
        /// When it was cancelled.
        public var cancelledAt: Date?
        /// How late it fired, in milliseconds.
        public var lateMs: Int64?
    }

    /// A saga's state, its events in order and its dead letters.
    public struct Timeline: Sendable, Codable, Hashable {
        /// The state; nil when the tracker saw only dead letters of the saga.
        public var saga: Summary?
        /// Its events, in the order they occurred.
        public var steps: [Step]
        /// Its dead letters, oldest first.
        public var deadLetters: [DeadLetter]
        /// Its deadlines, earliest due first.
        public var deadlines: [Deadline] = []
    }

    /// Every column of `tracker_sagas` (`s`) and its earliest scheduled deadline (``summary(_:)`` reads both).
    private static let summaryColumns = """
        s.*, d.participant AS deadline_participant, d.name AS deadline_name, d.due_at AS deadline_due_at,
            d.deadline_event_id AS deadline_event_id, d.deadline_event_type AS deadline_event_type,
            extract(epoch FROM d.due_at - now())::float8 * 1000 AS deadline_time_left_ms
        """
    private static let earliestScheduled = """
        LEFT JOIN LATERAL (SELECT * FROM tracker_deadlines WHERE saga_id = s.saga_id AND state = 'scheduled'
            ORDER BY due_at LIMIT 1) d ON true
        """

    /// The saga's timeline, read from one snapshot (its summary, steps, dead letters and deadlines agree); nil when
    /// the tracker has seen neither an event nor a dead letter of it.
    public func timeline(_ sagaId: String) async throws -> Timeline? {
        // One snapshot for all its statements: the tracker writes events and summaries together, as it goes.
        try await pool.withTransaction(isolation: .repeatableRead) { c in
            let summary = try await c.query(
                "SELECT \(Self.summaryColumns) FROM tracker_sagas s \(Self.earliestScheduled) WHERE s.saga_id = $1",
                [sagaId]
            ).first.map(summary)
            var previous: Date?
            var steps = try await c.query(
                """
                SELECT event_id, event_type, version, producer, occurred_at, causation_id, topic, partition, "offset"
                FROM tracker_events WHERE saga_id = $1 ORDER BY occurred_at, event_id
                """, [sagaId]
            ).map { r -> Step in
                let at: Date = try r.decode("occurred_at")
                defer { previous = at }
                let type: String = try r.decode("event_type")
                return Step(
                    eventId: try r.decode("event_id", as: UUID.self).lowercasedString, type: type,
                    version: try r.decode("version"), producer: try r.decode("producer"),
                    kind: model.kind(of: type).rawValue, occurredAt: at,
                    sincePreviousMs: previous.map { at.timeIntervalSince($0) * 1000 },
                    causationId: try r.decode("causation_id", as: UUID?.self)?.lowercasedString,
                    topic: try r.decode("topic"), partition: try r.decode("partition"), offset: try r.decode("offset"))
            }
            let letters = try await c.query(
                "SELECT * FROM tracker_dead_letters WHERE saga_id = $1 ORDER BY dead_lettered_at", [sagaId]
            ).map { r in
                DeadLetter(
                    consumer: try r.decode("consumer", as: String?.self), reason: try r.decode("reason"),
                    eventType: try r.decode("event_type", as: String?.self),
                    eventId: try r.decode("event_id", as: UUID?.self)?.lowercasedString,
                    sourceTopic: try r.decode("source_topic", as: String?.self),
                    sourcePartition: try r.decode("source_partition", as: Int?.self),
                    sourceOffset: try r.decode("source_offset", as: Int64?.self), topic: try r.decode("topic"),
                    partition: try r.decode("partition"), offset: try r.decode("offset"),
                    deadLetteredAt: try r.decode("dead_lettered_at"))
            }
            let deadlines = try await c.query(
                """
                SELECT participant, name, due_at, state, deadline_event_id, deadline_event_type, settled_at, late_ms,
                    CASE WHEN state = 'scheduled' THEN extract(epoch FROM due_at - now())::float8 * 1000 END AS left_ms
                FROM tracker_deadlines WHERE saga_id = $1 ORDER BY due_at, participant, name
                """, [sagaId]
            ).map { r in
                let state: String = try r.decode("state")
                let settled = try r.decode("settled_at", as: Date?.self)
                return Deadline(
                    participant: try r.decode("participant"), name: try r.decode("name"),
                    dueAt: try r.decode("due_at"), state: state,
                    timeLeftMs: try r.decode("left_ms", as: Double?.self),
                    eventId: try r.decode("deadline_event_id", as: UUID?.self)?.lowercasedString,
                    eventType: try r.decode("deadline_event_type", as: String?.self),
                    firedAt: state == "fired" ? settled : nil, cancelledAt: state == "cancelled" ? settled : nil,
                    lateMs: try r.decode("late_ms", as: Int64?.self))
            }
            steps = Self.merging(fired: deadlines, into: steps)
            if summary == nil && steps.isEmpty && letters.isEmpty { return nil }
            return Timeline(saga: summary, steps: steps, deadLetters: letters, deadlines: deadlines)
        }
    }

    /// `steps` with a step for each fired deadline (at its firing time), in time order, the time since the
    /// previous step computed again.
    static func merging(fired deadlines: [Deadline], into steps: [Step]) -> [Step] {
        let fired = deadlines.compactMap { d -> Step? in
            guard d.state == "fired", let at = d.firedAt else { return nil }
            return Step(
                eventId: d.eventId ?? "", type: d.eventType ?? "(deadline \(d.name))", version: 0,
                producer: d.participant, kind: "deadline", occurredAt: at, sincePreviousMs: nil, causationId: nil,
                topic: "(deadline)", partition: -1, offset: -1)
        }
        guard !fired.isEmpty else { return steps }
        // A deadline fired at the very time of an event comes before it (both times are to the millisecond); and
        // before the events it caused in any case.
        var merged = (fired + steps).enumerated().sorted {
            ($0.element.occurredAt, $0.offset) < ($1.element.occurredAt, $1.offset)
        }.map(\.element)
        for step in fired where !step.eventId.isEmpty {
            guard let at = merged.firstIndex(where: { $0.kind == "deadline" && $0.eventId == step.eventId }),
                let caused = merged.firstIndex(where: { $0.kind != "deadline" && $0.causationId == step.eventId }),
                caused < at
            else { continue }
            merged.insert(merged.remove(at: at), at: caused)
        }
        for i in merged.indices {
            merged[i].sincePreviousMs =
                i == 0 ? nil : merged[i].occurredAt.timeIntervalSince(merged[i - 1].occurredAt) * 1000
        }
        return merged
    }

    /// Sagas still running (no outcome yet, or a registered participant waits to act on the latest event) that
    /// started more than `olderThan` ago, and sagas with a deadline still scheduled more than `grace` after it
    /// fell (whatever their age or status: its participant has not fired it), oldest first. Each one's
    /// ``Summary/deadline`` is its earliest scheduled deadline (negative ``Deadline/timeLeftMs``: overdue).
    public func stuck(olderThan: Duration, grace: Duration = .seconds(30), limit: Int = 100) async throws
        -> [Summary]
    {
        try await pool.query(
            """
            WITH listed AS (
                SELECT saga_id FROM tracker_sagas WHERE status = 'running' AND started_at < now() - $1::interval
                UNION
                SELECT saga_id FROM tracker_deadlines WHERE state = 'scheduled' AND due_at < now() - $3::interval)
            SELECT \(Self.summaryColumns) FROM tracker_sagas s JOIN listed USING (saga_id) \(Self.earliestScheduled)
            ORDER BY s.started_at, s.saga_id LIMIT $2
            """,
            ["\(olderThan.milliseconds) milliseconds", limit, "\(grace.milliseconds) milliseconds"]
        ).map(summary)
    }

    /// Counts and latencies of the sagas started since a time.
    public struct Stats: Sendable, Codable, Hashable {
        /// The sagas of one outcome.
        public struct Outcome: Sendable, Codable, Hashable {
            /// The outcome, e.g. "confirmed", or "running".
            public var outcome: String
            /// How many sagas.
            public var sagas: Int
            /// End-to-end milliseconds, first event to the outcome (nil for running sagas).
            public var p50Ms: Double?
            /// End-to-end 95th percentile, milliseconds.
            public var p95Ms: Double?
            /// End-to-end 99th percentile, milliseconds.
            public var p99Ms: Double?
        }
        /// The time from one event type to the next within sagas.
        public struct StepLatency: Sendable, Codable, Hashable {
            /// The earlier event's type.
            public var from: String
            /// The type of the event that followed it.
            public var to: String
            /// How many times this pair occurred.
            public var count: Int
            /// Median milliseconds between the two.
            public var p50Ms: Double
            /// 95th percentile, milliseconds.
            public var p95Ms: Double
            /// 99th percentile, milliseconds.
            public var p99Ms: Double
        }
        /// The start of the period.
        public var since: Date
        /// Counts and end-to-end latencies by outcome.
        public var outcomes: [Outcome]
        /// Latencies by pair of consecutive event types.
        public var steps: [StepLatency]
        /// Dead letters of those sagas.
        public var deadLetters: Int
    }

    /// Counts by outcome and latency percentiles per step for sagas started since `since`.
    public func stats(since: Date) async throws -> Stats {
        // One snapshot for all its statements: the tracker writes events and summaries together, as it goes.
        try await pool.withTransaction(isolation: .repeatableRead) { c in
            let outcomes = try await c.query(
                """
                SELECT coalesce(outcome, 'running') AS outcome, count(*) AS sagas,
                    percentile_cont(0.50) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000) AS p50,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000) AS p95,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000) AS p99
                FROM tracker_sagas WHERE started_at >= $1 GROUP BY 1 ORDER BY 2 DESC, 1
                """, [since]
            ).map { r in
                Stats.Outcome(
                    outcome: try r.decode("outcome"), sagas: try r.decode("sagas"),
                    p50Ms: try r.decode("p50", as: Double?.self),
                    p95Ms: try r.decode("p95", as: Double?.self), p99Ms: try r.decode("p99", as: Double?.self))
            }
            let steps = try await c.query(
                """
                WITH s AS (
                    SELECT lag(e.event_type) OVER w AS prev, e.event_type,
                        extract(epoch FROM e.occurred_at - lag(e.occurred_at) OVER w) * 1000 AS ms
                    FROM tracker_events e JOIN tracker_sagas t USING (saga_id)
                    WHERE t.started_at >= $1
                    WINDOW w AS (PARTITION BY e.saga_id ORDER BY e.occurred_at, e.event_id))
                SELECT prev, event_type, count(*) AS n,
                    percentile_cont(0.50) WITHIN GROUP (ORDER BY ms) AS p50,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
                FROM s WHERE prev IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
                """, [since]
            ).map { r in
                Stats.StepLatency(
                    from: try r.decode("prev"), to: try r.decode("event_type"), count: try r.decode("n"),
                    p50Ms: try r.decode("p50"), p95Ms: try r.decode("p95"), p99Ms: try r.decode("p99"))
            }
            let letters: Int =
                try await c.query(
                    "SELECT count(*) AS n FROM tracker_dead_letters WHERE dead_lettered_at >= $1", [since]
                ).first?.decode("n") ?? 0
            return Stats(since: since, outcomes: outcomes, steps: steps, deadLetters: letters)
        }
    }

    private func summary(_ r: PostgresRow) throws -> Summary {
        let status: String = try r.decode("status")
        let last: String = try r.decode("last_event_type")
        let outcome = try r.decode("outcome", as: String?.self)
        return Summary(
            sagaId: try r.decode("saga_id"), status: status, outcome: outcome,
            startedAt: try r.decode("started_at"), updatedAt: try r.decode("updated_at"),
            finishedAt: try r.decode("finished_at", as: Date?.self), lastEventType: last,
            waitingOn: status != "running"
                ? nil : outcome == nil ? model.waitingOn[last] : model.waitingAfterOutcome[last],
            events: try r.decode("events"),
            compensations: try r.decode("compensations"), deadLetters: try r.decode("dead_letters"),
            deadline: try r.decode("deadline_participant", as: String?.self).map { participant in
                Deadline(
                    participant: participant, name: try r.decode("deadline_name"),
                    dueAt: try r.decode("deadline_due_at"), state: "scheduled",
                    timeLeftMs: try r.decode("deadline_time_left_ms", as: Double?.self),
                    eventId: try r.decode("deadline_event_id", as: UUID?.self)?.lowercasedString,
                    eventType: try r.decode("deadline_event_type", as: String?.self))
            })
    }
}
