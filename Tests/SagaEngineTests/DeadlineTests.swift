import Foundation
import Logging
import SagaKafka
import SagaPostgres
import SagaSchemas
import SagaTestSupport
import Synchronization
import Testing

@testable import SagaEngine

/// Durable deadlines on a real PostgreSQL: scheduled and cancelled in handlers' transactions, fired by the
/// worker in transactions of their own through the inbox/handler/outbox path.
@Suite(.serialized) struct DeadlineTests {
    // A small participant: `started` schedules the deadline it names, `finished` cancels it, and the deadline's
    // event (`timed_out`) is recorded in `fired` and answered with `expired` (an outbox row).
    struct Started: EventPayload {
        static let eventType = "clock.started"
        static let eventVersion = 1
        var deadline: String
        /// When the deadline falls, from now (negative: in the past).
        var dueInMs: Int
        /// Schedule with `at:` (a date) instead of `after:`.
        var absolute: Bool = false
        /// The handler schedules, then rejects the event.
        var reject: Bool = false
        /// The handler emits an `Acked` of the saga.
        var ack: Bool = false
    }
    struct Finished: EventPayload {
        static let eventType = "clock.finished"
        static let eventVersion = 1
        var deadline: String
        /// The handler emits an `Acked` of the saga.
        var ack: Bool = false
    }
    /// Handled by a batch handler that cancels the deadline it names for the whole batch at once
    /// (`cancelDeadlines`) and acks the events whose saga had one.
    struct Stopped: EventPayload {
        static let eventType = "clock.stopped"
        static let eventVersion = 1
        var deadline: String
    }
    /// Emitted when a handler is asked to ack: the message that carries the transaction's deadline marks.
    struct Acked: EventPayload {
        static let eventType = "clock.acked"
        static let eventVersion = 1
        var deadline: String
    }
    struct TimedOut: EventPayload {
        static let eventType = "clock.timedout"
        static let eventVersion = 1
        var deadline: String
    }
    struct Expired: EventPayload {
        static let eventType = "clock.expired"
        static let eventVersion = 1
        var deadline: String
    }

    /// Holds the `timed_out` handler (inside its transaction, after its write) while closed.
    final class Gate: Sendable {
        private let state = Mutex((closed: false, entered: 0))
        var entered: Int { state.withLock { $0.entered } }
        func close() { state.withLock { $0.closed = true } }
        func open() { state.withLock { $0.closed = false } }
        func pass() async throws {
            state.withLock { $0.entered += 1 }
            while state.withLock({ $0.closed }) { try await Task.sleep(for: .milliseconds(10)) }
        }
    }

    static func schema(_ properties: String, required: String) -> String {
        #"{"type": "object", "additionalProperties": false, "required": [\#(required)], "properties": {\#(properties)}}"#
    }

    /// The participant; with `declared`, its declaration names `timed_out` as the deadline "timeout"'s type.
    static func definition(gate: Gate, declared: Bool = false) -> ParticipantDefinition {
        let name = #""deadline": {"type": "string", "minLength": 1}"#
        let ack = #", "ack": {"type": "boolean"}"#
        let stopped = BatchHandler(versions: [Stopped.eventType: 1]) { events, context in
            let deadline = try events[0].decode(Stopped.self).deadline
            let cancelled = try await context.cancelDeadlines(name: deadline, for: events)
            return try events.filter { cancelled.contains($0.sagaId) }.map {
                try context.emit(Acked(deadline: deadline), causedBy: $0)
            }
        }
        return ParticipantDefinition(
            name: "clock",
            migrations: [
                PostgresMigration(
                    version: 100, name: "clock: fired deadlines",
                    sql: """
                        CREATE TABLE fired (
                            saga_id  text NOT NULL, deadline text NOT NULL, event_id uuid NOT NULL,
                            fired_at timestamptz NOT NULL DEFAULT clock_timestamp()
                        );
                        """)
            ],
            handlers: [
                .on(Started.self) { started, context in
                    if started.absolute {
                        try await context.scheduleDeadline(
                            name: started.deadline, at: Date().addingTimeInterval(Double(started.dueInMs) / 1000),
                            payload: TimedOut(deadline: started.deadline))
                    } else {
                        try await context.scheduleDeadline(
                            name: started.deadline, after: .milliseconds(started.dueInMs),
                            payload: TimedOut(deadline: started.deadline))
                    }
                    if started.reject { throw HandlerRejection("rejected after scheduling") }
                    return started.ack ? [try context.emit(Acked(deadline: started.deadline))] : []
                },
                .on(Finished.self) { finished, context in
                    try await context.cancelDeadline(name: finished.deadline)
                    return finished.ack ? [try context.emit(Acked(deadline: finished.deadline))] : []
                },
                .on(TimedOut.self) { timedOut, context in
                    try await context.connection.execute(
                        "INSERT INTO fired (saga_id, deadline, event_id) VALUES ($1, $2, $3)",
                        [context.event.sagaId, timedOut.deadline, context.event.id])
                    try await gate.pass()
                    return [try context.emit(Expired(deadline: timedOut.deadline))]
                },
            ] + stopped.eventHandlers,
            declaration: SagaDeclaration(
                emits: [.step(Acked.self), .step(Expired.self)],
                consumes: [.handles(Started.self), .handles(Finished.self), .handles(Stopped.self)],
                deadlines: declared ? [.deadline(TimedOut.self, name: "timeout")] : []),
            schemas: [
                EventSchema(
                    type: Started.eventType, version: 1,
                    json: schema(
                        name
                            + #", "dueInMs": {"type": "integer"}, "absolute": {"type": "boolean"}, "reject": {"type": "boolean"}"#
                            + ack,
                        required: #""deadline", "dueInMs""#)),
                EventSchema(type: Finished.eventType, version: 1, json: schema(name + ack, required: #""deadline""#)),
                EventSchema(type: Stopped.eventType, version: 1, json: schema(name, required: #""deadline""#)),
                EventSchema(type: Acked.eventType, version: 1, json: schema(name, required: #""deadline""#)),
                EventSchema(type: TimedOut.eventType, version: 1, json: schema(name, required: #""deadline""#)),
                EventSchema(type: Expired.eventType, version: 1, json: schema(name, required: #""deadline""#)),
            ])
    }

    final class Fixture: Sendable {
        let logger: Logger
        let database: ServiceDatabase
        let topics = TopicNaming(prefix: KafkaTestBroker.uniqueName("dl") + ".")
        let gate = Gate()
        let definition: ParticipantDefinition
        let pool: PostgresPool
        let codec: EventCodec
        let offsets = Mutex<Int64>(0)

        init(declared: Bool = false) async throws {
            var logger = Logger(label: "deadline-test")
            logger.logLevel = .warning
            self.logger = logger
            database = ServiceDatabase(
                url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema("deadline"))
            definition = DeadlineTests.definition(gate: gate, declared: declared)
            try await database.prepare(migrations: definition.migrations, logger: logger)
            pool = PostgresPool(configuration: database.configuration, size: 1, logger: logger)
            codec = EventCodec(registry: try definition.schemaRegistry(), upcasters: [], topics: topics)
        }

        func configuration(kafka: KafkaSettings = KafkaSettings(bootstrapServers: "127.0.0.1:9")) -> WorkerConfiguration
        {
            var c = WorkerConfiguration(name: "clock", kafka: kafka, database: database, topics: topics)
            c.retry = RetryPolicy(initialDelay: .milliseconds(20), maxDelay: .milliseconds(200))
            return c
        }

        func worker(_ configure: (inout WorkerConfiguration) -> Void = { _ in }) throws -> Worker {
            var c = configuration()
            configure(&c)
            return try Worker(
                configuration: c, definition: definition, middleware: [], batchMiddleware: [], logger: logger)
        }

        func outgoing<P: EventPayload>(_ payload: P, saga: String) throws -> KafkaOutgoingMessage {
            try codec.encode(try OutgoingEvent(payload, sagaId: saga, producer: "test", causedBy: nil))
        }

        /// `payload` as a consumed message (the worker's `process` is handed it directly).
        func message<P: EventPayload>(_ payload: P, saga: String) throws -> KafkaMessage {
            let out = try outgoing(payload, saga: saga)
            let offset = offsets.withLock {
                $0 += 1
                return $0
            }
            return KafkaMessage(
                topic: out.topic, partition: 0, offset: offset, key: out.key, value: out.value, headers: out.headers,
                timestamp: nil)
        }

        func count(_ sql: String, _ binds: [PostgresBind] = []) async throws -> Int {
            try await pool.query(sql, binds).first!.decode("n")
        }

        func deadlines() async throws -> [String] {
            try await pool.query("SELECT saga_id || '/' || name AS d FROM saga_deadlines ORDER BY 1").map {
                try $0.decode("d")
            }
        }

        func expiredInOutbox() async throws -> [String] {
            try await pool.query(
                "SELECT saga_id FROM saga_outbox WHERE event_type = $1 ORDER BY saga_id", [Expired.eventType]
            ).map { try $0.decode("saga_id") }
        }

        /// The deadline marks (`saga-deadline` headers) on the outbox rows of `saga` of `type`, one list per row.
        func marks(saga: String, type: String) async throws -> [[Deadline.Mark]] {
            let rows = try await pool.query(
                """
                SELECT id, coalesce((SELECT jsonb_agg(h->>'v' ORDER BY n) FROM jsonb_array_elements(o.headers)
                    WITH ORDINALITY AS e(h, n) WHERE h->>'k' = $3), '[]')::text AS marks
                FROM saga_outbox o WHERE saga_id = $1 AND event_type = $2 ORDER BY id
                """, [saga, type, SagaHeader.deadline])
            return try rows.map { row in
                guard
                    case .array(let values) = try JSONValue(
                        parsing: Array(try row.decode("marks", as: String.self).utf8))
                else { return [] }
                return try values.map { value in
                    guard case .string(let text) = value else { throw EventDecodingError("not a string") }
                    return try Deadline.Mark(parsing: Array(text.utf8))
                }
            }
        }

        /// Every `saga-deadline` header in the outbox, of any row.
        func markCount() async throws -> Int {
            try await count(
                """
                SELECT count(*)::int AS n FROM saga_outbox o, jsonb_array_elements(o.headers) h WHERE h->>'k' = $1
                """, [SagaHeader.deadline])
        }

        /// The saga's deadline row: due time, event id and type.
        func deadlineRow(_ saga: String, _ name: String) async throws -> (due: Date, eventId: UUID, type: String)? {
            guard
                let row = try await pool.query(
                    "SELECT due_at, event_id, event_type FROM saga_deadlines WHERE saga_id = $1 AND name = $2",
                    [saga, name]
                ).first
            else { return nil }
            return (try row.decode("due_at"), try row.decode("event_id"), try row.decode("event_type"))
        }

        func tearDown() async {
            await pool.close()
            try? await PostgresTestDatabase.dropSchema(database.schema)
        }
    }

    @Test func aDeadlineScheduledInATransactionThatRollsBackDoesNotExist() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        // One batch: saga a schedules and commits; saga b schedules, then its handler rejects the event, so its
        // savepoint (and the deadline with it) is rolled back and the event dead-lettered.
        let batch = [
            try f.message(Started(deadline: "timeout", dueInMs: 60_000), saga: "a"),
            try f.message(Started(deadline: "timeout", dueInMs: -1000, reject: true), saga: "b"),
        ]
        #expect(await worker.process(batch, pool: f.pool))
        #expect(worker.stats.deadLettered == 1)
        #expect(try await f.deadlines() == ["a/timeout"])
        #expect(worker.stats.deadlinesScheduled == 1)  // b's was undone with its savepoint
        // A transaction that rolls back as a whole (here: the caller's, after the handler scheduled).
        let event = try f.codec.decode(
            try f.message(Started(deadline: "late", dueInMs: -1000), saga: "c"), targetVersion: 1)
        await #expect(throws: HandlerRejection.self) {
            try await f.pool.withTransaction { connection in
                let context = HandlerContext(
                    connection: PostgresTransaction(connection), service: "clock", event: event, logger: f.logger,
                    deadlineLedger: worker.deadlineLedger())
                try await context.scheduleDeadline(name: "late", after: .zero, payload: TimedOut(deadline: "late"))
                #expect(try await connection.query("SELECT 1 FROM saga_deadlines WHERE saga_id = 'c'").count == 1)
                throw HandlerRejection("roll back")
            }
        }
        #expect(try await f.deadlines() == ["a/timeout"])
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 0)
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 0)
        await f.tearDown()
    }

    @Test func aDueDeadlineFiresOnceAndItsHandlersOutboxRowIsWritten() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        #expect(
            await worker.process(
                [
                    try f.message(Started(deadline: "timeout", dueInMs: -500), saga: "due"),
                    try f.message(Started(deadline: "timeout", dueInMs: 60_000), saga: "later"),
                ], pool: f.pool))
        #expect(try await f.deadlines() == ["due/timeout", "later/timeout"])
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 1)
        #expect(try await f.deadlines() == ["later/timeout"])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired WHERE saga_id = 'due'") == 1)
        #expect(try await f.expiredInOutbox() == ["due"])
        // The delivered event is of the saga, went through the inbox (partition -1), and was caused by the
        // event that scheduled it.
        let inbox = try #require(
            try await f.pool.query(
                "SELECT saga_id, source_partition, event_id FROM saga_inbox WHERE event_type = $1",
                [TimedOut.eventType]
            ).first)
        #expect(try inbox.decode("saga_id", as: String.self) == "due")
        #expect(try inbox.decode("source_partition", as: Int.self) == -1)
        let firedId: UUID = try #require(try await f.pool.query("SELECT event_id FROM fired").first).decode("event_id")
        #expect(try inbox.decode("event_id", as: UUID.self) == firedId)
        let expired = try #require(
            try await f.pool.query("SELECT payload FROM saga_outbox WHERE event_type = $1", [Expired.eventType]).first)
        let envelope = try EventEnvelope(
            validated: try JSONValue(parsing: try expired.decode("payload", as: [UInt8].self)))
        #expect(envelope.causationId == firedId)
        #expect(envelope.sagaId == "due")
        // Never again.
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 0)
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 1)
        #expect(worker.stats.handled == 3)
        #expect(worker.stats.deadlinesScheduled == 2)
        #expect(worker.stats.deadlinesFired == 1)
        await f.tearDown()
    }

    @Test func aCancelledDeadlineNeverFiresAndReschedulingReplacesIt() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        #expect(
            await worker.process(
                [
                    try f.message(Started(deadline: "timeout", dueInMs: 200), saga: "cancelled"),
                    try f.message(Started(deadline: "timeout", dueInMs: 200), saga: "moved"),
                    try f.message(Started(deadline: "other", dueInMs: 60_000), saga: "cancelled"),
                ], pool: f.pool))
        #expect(
            await worker.process(
                [
                    try f.message(Finished(deadline: "timeout"), saga: "cancelled"),
                    try f.message(Started(deadline: "timeout", dueInMs: 60_000), saga: "moved"),
                ], pool: f.pool))
        #expect(try await f.deadlines() == ["cancelled/other", "moved/timeout"])
        try await Task.sleep(for: .milliseconds(400))
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 0)
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 0)
        #expect(try await f.expiredInOutbox() == [])
        // Cancelling what is not there (cancelled before) is no error.
        #expect(await worker.process([try f.message(Finished(deadline: "timeout"), saga: "cancelled")], pool: f.pool))
        #expect(worker.stats.deadLettered == 0)
        #expect(worker.stats.deadlinesScheduled == 4)
        #expect(worker.stats.deadlinesCancelled == 1)  // not the second time: there was none
        #expect(worker.stats.deadlinesFired == 0)
        await f.tearDown()
    }

    @Test func twoWorkerInstancesFireEachDeadlineOnce() async throws {
        let f = try await Fixture()
        let sagas = (0..<60).map { "saga-\($0)" }
        let scheduler = try f.worker()
        #expect(
            await scheduler.process(
                try sagas.map { try f.message(Started(deadline: "timeout", dueInMs: -100), saga: $0) }, pool: f.pool))
        let pools = (0..<2).map { _ in PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        }
        let workers = try (0..<2).map { _ in try f.worker { $0.deadlineBatchSize = 7 } }
        let fired = try await withThrowingTaskGroup(of: Int.self) { group in
            for (worker, pool) in zip(workers, pools) {
                group.addTask {
                    var total = 0
                    while true {
                        let n = await worker.fireDueDeadlines(pool: pool)
                        if n == 0 { return total }
                        total += n
                    }
                }
            }
            return try await group.reduce(0, +)
        }
        for pool in pools { await pool.close() }
        #expect(fired == sagas.count)
        #expect(workers.map(\.stats.deadlinesFired).reduce(0, +) == sagas.count)
        #expect(try await f.deadlines() == [])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == sagas.count)
        #expect(try await f.count("SELECT count(DISTINCT saga_id)::int AS n FROM fired") == sagas.count)
        #expect(try await f.expiredInOutbox() == sagas.sorted())
        await f.tearDown()
    }

    @Test func aCrashBetweenFireAndCommitFiresAgainAfterRestartExactlyOnceInEffect() async throws {
        let f = try await Fixture()
        let first = try f.worker()
        #expect(
            await first.process([try f.message(Started(deadline: "timeout", dueInMs: -100), saga: "s")], pool: f.pool))
        f.gate.close()
        let firingPool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let firing = Task { await first.fireDueDeadlines(pool: firingPool) }
        let until = ContinuousClock.now + .seconds(10)
        while f.gate.entered == 0 && ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(10)) }
        #expect(f.gate.entered == 1)
        // Inside the firing transaction, the handler wrote its row: the worker stops before the commit.
        firing.cancel()
        #expect(await firing.value == 0)
        await firingPool.close()
        #expect(try await f.deadlines() == ["s/timeout"])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 0)
        #expect(try await f.expiredInOutbox() == [])
        // After a restart (a new worker), it fires again, once.
        f.gate.open()
        let restarted = try f.worker()
        #expect(await restarted.fireDueDeadlines(pool: f.pool) == 1)
        #expect(await restarted.fireDueDeadlines(pool: f.pool) == 0)
        #expect(f.gate.entered == 2)
        #expect(try await f.deadlines() == [])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 1)
        #expect(try await f.expiredInOutbox() == ["s"])
        // The firing session dies before the commit (its backend is terminated, as when the process is killed):
        // the transaction is gone, the deadline stays, and the worker fires it on a new session, once.
        #expect(
            await restarted.process(
                [try f.message(Started(deadline: "timeout", dueInMs: -100), saga: "k")], pool: f.pool))
        f.gate.close()
        let killedPool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let killed = Task { await restarted.fireDueDeadlines(pool: killedPool) }
        while f.gate.entered == 2 && ContinuousClock.now < until + .seconds(10) {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(f.gate.entered == 3)
        let terminated = try await f.pool.query(
            """
            SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
            WHERE state = 'idle in transaction' AND query LIKE 'INSERT INTO fired%'
            """)
        #expect(terminated.count == 1)
        #expect(try await f.deadlines() == ["k/timeout"])
        f.gate.open()
        #expect(await killed.value == 1)
        await killedPool.close()
        #expect(f.gate.entered == 4)
        #expect(try await f.deadlines() == [])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired WHERE saga_id = 'k'") == 1)
        #expect(try await f.expiredInOutbox() == ["k", "s"])
        await f.tearDown()
    }

    @Test func aRunningWorkerFiresADeadlineScheduledInThePastPromptly() async throws {
        let f = try await Fixture()
        let topicNames = [Started.eventType, Finished.eventType, TimedOut.eventType, Stopped.eventType].map(
            f.topics.topic(for:))
        let broker = try await KafkaTestBroker.withTopics(topicNames, partitions: 2)
        let kafka = KafkaSettings(bootstrapServers: broker.servers)
        var c = f.configuration(kafka: kafka)
        // Far longer than the test allows: the worker must be woken by its own commit, not by this bound.
        c.deadlinePollInterval = .seconds(60)
        let worker = try Worker(
            configuration: c, definition: f.definition, middleware: [], batchMiddleware: [], logger: f.logger)
        let running = Task { try await worker.run() }
        let producer = try KafkaProducer(configuration: kafka.producer(clientId: "test"), logger: f.logger)
        let sent = ContinuousClock.now
        for r in await producer.send([
            try f.outgoing(Started(deadline: "timeout", dueInMs: -5000, absolute: true), saga: "past"),
            try f.outgoing(Started(deadline: "timeout", dueInMs: -1, absolute: false), saga: "now"),
        ]) { _ = try r.get() }
        await producer.shutdown()
        var firedAfter: Duration? = nil
        while ContinuousClock.now - sent < .seconds(20) {
            if try await f.count("SELECT count(*)::int AS n FROM fired") == 2 {
                firedAfter = ContinuousClock.now - sent
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        running.cancel()
        _ = await running.result
        broker.cluster?.shutdown()
        let took = try #require(firedAfter)
        #expect(took < .seconds(15), "fired \(took) after the events were produced")
        // From handling the event that scheduled it (in the inbox) to firing: the worker's own commit woke it.
        let late: Double = try #require(
            try await f.pool.query(
                """
                SELECT EXTRACT(EPOCH FROM max(f.fired_at - i.handled_at))::float8 AS s
                FROM fired f JOIN saga_inbox i ON i.saga_id = f.saga_id AND i.event_type = $1
                """, [Started.eventType]
            ).first
        ).decode("s")
        #expect(late < 2, "fired \(late) s after the event that scheduled it was handled")
        #expect(try await f.deadlines() == [])
        #expect(try await f.expiredInOutbox() == ["now", "past"])
        await f.tearDown()
    }
    @Test func aRunningWorkerWakesForTheEarliestDeadlineAndSeesOtherInstancesWithinItsPollInterval() async throws {
        let f = try await Fixture()
        let topicNames = [Started.eventType, Finished.eventType, TimedOut.eventType, Stopped.eventType].map(
            f.topics.topic(for:))
        let broker = try await KafkaTestBroker.withTopics(topicNames, partitions: 2)
        let kafka = KafkaSettings(bootstrapServers: broker.servers)
        func running(poll: Duration) throws -> Task<Void, any Error> {
            var c = f.configuration(kafka: kafka)
            c.deadlinePollInterval = poll
            let worker = try Worker(
                configuration: c, definition: f.definition, middleware: [], batchMiddleware: [], logger: f.logger)
            return Task { try await worker.run() }
        }
        /// Seconds from handling the `started` event of `saga` to firing its deadline, once fired.
        func firedAfterHandling(_ saga: String) async throws -> Double? {
            let until = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < until {
                let rows = try await f.pool.query(
                    """
                    SELECT EXTRACT(EPOCH FROM f.fired_at - i.handled_at)::float8 AS s
                    FROM fired f JOIN saga_inbox i ON i.saga_id = f.saga_id AND i.event_type = $1
                    WHERE f.saga_id = $2
                    """, [Started.eventType, saga])
                if let row = rows.first { return try row.decode("s") }
                try await Task.sleep(for: .milliseconds(20))
            }
            return nil
        }
        // Another instance (not running) schedules a deadline 1.5 s ahead; this one, polling only every minute,
        // sleeps until it falls.
        let other = try f.worker()
        #expect(
            await other.process([try f.message(Started(deadline: "t", dueInMs: 1500), saga: "ahead")], pool: f.pool))
        let first = try running(poll: .seconds(60))
        let ahead = try #require(try await firedAfterHandling("ahead"))
        #expect(ahead >= 1.5 && ahead < 3, "fired \(ahead) s after it was scheduled 1.5 s ahead")
        first.cancel()
        _ = await first.result
        // A deadline another instance schedules while this one sleeps is seen within its poll interval.
        let second = try running(poll: .milliseconds(300))
        try await Task.sleep(for: .seconds(1))
        #expect(
            await other.process([try f.message(Started(deadline: "t", dueInMs: -1), saga: "elsewhere")], pool: f.pool))
        let elsewhere = try #require(try await firedAfterHandling("elsewhere"))
        #expect(elsewhere < 1.5, "fired \(elsewhere) s after another instance scheduled it")
        second.cancel()
        _ = await second.result
        broker.cluster?.shutdown()
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 2)
        await f.tearDown()
    }

    /// `a` within a millisecond of `b` (the header carries milliseconds).
    static func close(_ a: Date, _ b: Date) -> Bool { abs(a.timeIntervalSince(b)) < 0.001 }

    /// The same mark, up to the header's millisecond precision.
    static func same(_ a: Deadline.Mark, _ b: Deadline.Mark) -> Bool {
        a.op == b.op && a.name == b.name && a.participant == b.participant && close(a.dueAt, b.dueAt)
            && a.eventId == b.eventId && a.eventType == b.eventType && a.lateMs == b.lateMs && close(a.at, b.at)
    }

    @Test func deadlineMarksRideOnTheSagasMessagesOfTheTransactionThatScheduledCancelledOrFiredThem() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        // Set-based path: a schedules and emits (its message carries the mark), quiet schedules and emits nothing.
        #expect(
            await worker.process(
                [
                    try f.message(Started(deadline: "t", dueInMs: 60_000, ack: true), saga: "a"),
                    try f.message(Started(deadline: "t", dueInMs: 60_000), saga: "quiet"),
                ], pool: f.pool))
        let scheduledA = try #require(try await f.deadlineRow("a", "t"))
        let onA = try await f.marks(saga: "a", type: Acked.eventType)
        #expect(onA.count == 1 && onA[0].count == 1)
        let scheduled = try #require(onA.first?.first)
        #expect(scheduled.op == .scheduled && scheduled.name == "t" && scheduled.participant == "clock")
        #expect(scheduled.eventId == scheduledA.eventId && scheduled.eventType == TimedOut.eventType)
        #expect(Self.close(scheduled.dueAt, scheduledA.due), "\(scheduled.dueAt) vs \(scheduledA.due)")
        #expect(scheduled.lateMs == nil)
        #expect(try await f.markCount() == 1)
        // One event at a time (after a rejected one): the rejected event's deadline and mark are rolled back with
        // its savepoint; b's message carries b's mark only.
        #expect(
            await worker.process(
                [
                    try f.message(Started(deadline: "t", dueInMs: 60_000, reject: true, ack: true), saga: "r"),
                    try f.message(Started(deadline: "t", dueInMs: 60_000, ack: true), saga: "b"),
                ], pool: f.pool))
        #expect(worker.stats.deadLettered == 1 && worker.stats.isolated == 1)
        #expect(try await f.deadlines() == ["a/t", "b/t", "quiet/t"])
        let onB = try await f.marks(saga: "b", type: Acked.eventType)
        #expect(onB.count == 1 && onB[0].map(\.op) == [.scheduled])
        let scheduledB = try #require(try await f.deadlineRow("b", "t"))
        #expect(onB.first?.first?.eventId == scheduledB.eventId)
        #expect(try await f.markCount() == 2)  // none on r's dead letter
        // Cancelled: the mark names the deadline that was deleted.
        #expect(await worker.process([try f.message(Finished(deadline: "t", ack: true), saga: "a")], pool: f.pool))
        let cancelledOnA = try await f.marks(saga: "a", type: Acked.eventType)
        #expect(cancelledOnA.count == 2)
        let cancelled = try #require(cancelledOnA.last?.first)
        #expect(cancelledOnA.last?.count == 1)
        #expect(cancelled.op == .cancelled && cancelled.name == "t" && cancelled.eventId == scheduledA.eventId)
        #expect(Self.close(cancelled.dueAt, scheduledA.due))
        // Cancelling nothing marks nothing.
        #expect(await worker.process([try f.message(Finished(deadline: "t", ack: true), saga: "a")], pool: f.pool))
        #expect(try await f.marks(saga: "a", type: Acked.eventType).last == [])
        // A transaction that rolls back as a whole: its deadline and its message are gone, and so is the mark.
        #expect(
            await worker.process([try f.message(Started(deadline: "late", dueInMs: -600), saga: "f")], pool: f.pool))
        let due = try #require(try await f.deadlineRow("f", "late"))
        f.gate.close()
        let firingPool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let firing = Task { await worker.fireDueDeadlines(pool: firingPool) }
        let until = ContinuousClock.now + .seconds(10)
        while f.gate.entered == 0 && ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(10)) }
        firing.cancel()
        #expect(await firing.value == 0)
        await firingPool.close()
        #expect(try await f.marks(saga: "f", type: Expired.eventType) == [])
        // Fired: the deadline event's handler emits, and its message carries the fired mark.
        f.gate.open()
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 1)
        let onF = try await f.marks(saga: "f", type: Expired.eventType)
        #expect(onF.count == 1 && onF[0].count == 1)
        let fired = try #require(onF.first?.first)
        #expect(fired.op == .fired && fired.name == "late" && fired.participant == "clock")
        #expect(fired.eventId == due.eventId && fired.eventType == TimedOut.eventType)
        #expect(Self.close(fired.dueAt, due.due))
        #expect((fired.lateMs ?? -1) >= 500, "late \(fired.lateMs ?? -1) ms")
        #expect(fired.at >= fired.dueAt)
        let handled: UUID = try #require(
            try await f.pool.query("SELECT event_id FROM saga_inbox WHERE event_type = $1", [TimedOut.eventType]).first
        ).decode("event_id")
        #expect(handled == fired.eventId)
        #expect(try await f.markCount() == 4)
        await f.tearDown()
    }

    @Test func cancelDeadlinesCancelsTheDeadlinesOfABatchsSagasAtOnce() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        #expect(
            await worker.process(
                try ["s1", "s2", "s3"].map { try f.message(Started(deadline: "t", dueInMs: 60_000), saga: $0) }
                    + [try f.message(Started(deadline: "other", dueInMs: 60_000), saga: "s4")], pool: f.pool))
        let s1 = try #require(try await f.deadlineRow("s1", "t"))
        // One call for the batch: s1 and s2 had a deadline "t", s4 had none of that name, s5 none at all.
        #expect(
            await worker.process(
                try ["s1", "s2", "s4", "s5"].map { try f.message(Stopped(deadline: "t"), saga: $0) }, pool: f.pool))
        #expect(try await f.deadlines() == ["s3/t", "s4/other"])
        #expect(worker.stats.deadlinesCancelled == 2)
        #expect(
            try await f.pool.query(
                "SELECT saga_id FROM saga_outbox WHERE event_type = $1 ORDER BY saga_id", [Acked.eventType]
            ).map { try $0.decode("saga_id", as: String.self) } == ["s1", "s2"])
        let onS1 = try await f.marks(saga: "s1", type: Acked.eventType)
        #expect(onS1.count == 1 && onS1[0].map(\.op) == [.cancelled])
        #expect(onS1.first?.first?.eventId == s1.eventId)
        #expect(onS1.first.map { Self.close($0[0].dueAt, s1.due) } == true)
        #expect(try await f.marks(saga: "s2", type: Acked.eventType).map { $0.map(\.op) } == [[.cancelled]])
        // Again: nothing left to cancel, nothing acked.
        #expect(
            await worker.process([try f.message(Stopped(deadline: "t"), saga: "s1")], pool: f.pool))
        #expect(worker.stats.deadlinesCancelled == 2)
        #expect(try await f.count("SELECT count(*)::int AS n FROM saga_outbox WHERE event_type = 'clock.acked'") == 2)
        await f.tearDown()
    }

    @Test func aDeadlineInsertedByAStatementsWithFiresLikeAScheduledOne() async throws {
        let f = try await Fixture()
        let worker = try f.worker()
        let cause = try OutgoingEvent(Acked(deadline: "placed"), sagaId: "w", producer: "clock", causedBy: nil)
        func row(_ payload: TimedOut, due: Date) throws(EventEncodingError) -> Deadline.Row {
            try Deadline.Row(
                name: "timeout", due: due,
                event: try OutgoingEvent(payload, sagaId: "w", producer: "clock", causedBy: cause.envelope),
                codec: f.codec)
        }
        // The payload is validated like an emitted event's.
        #expect(throws: EventEncodingError.self) { try row(TimedOut(deadline: ""), due: Date()) }
        #expect(throws: EventEncodingError.self) {
            try Deadline.Row(
                name: "timeout", due: Date(),
                event: try OutgoingEvent(
                    Started(deadline: "x", dueInMs: 0), sagaId: "w", producer: "clock", causedBy: nil),
                codec: EventCodec(registry: try SchemaRegistry(schemas: []), upcasters: [], topics: f.topics))
        }
        // In one statement with the service's row and the outbox row (carrying the scheduled mark); written only
        // when the condition holds.
        let due = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000 + 60)
        let deadline = try row(TimedOut(deadline: "placed"), due: due)
        var outboxRow = try Outbox.Row(cause, codec: f.codec)
        let mark = deadline.scheduledMark(participant: "clock")
        outboxRow.message.headers.append(mark.header)
        func place(_ really: Bool, _ deadline: Deadline.Row) async throws {
            let d = Deadline.insert(deadline, firstParameter: 2, where: "EXISTS (SELECT 1 FROM placed)")
            let o = Outbox.insert(outboxRow, firstParameter: 2 + d.binds.count, where: "EXISTS (SELECT 1 FROM placed)")
            try await f.pool.withTransaction { connection in
                _ = try await connection.execute(
                    """
                    WITH placed AS (SELECT 1 AS x WHERE $1::bool),
                         deadline AS (\(d.sql)),
                         event AS (\(o.sql))
                    SELECT 1
                    """, [really as PostgresBind] + d.binds + o.binds)
            }
        }
        try await place(false, deadline)
        #expect(try await f.deadlines() == [])
        #expect(try await f.count("SELECT count(*)::int AS n FROM saga_outbox") == 0)
        try await place(true, deadline)
        let stored = try #require(try await f.deadlineRow("w", "timeout"))
        #expect(Self.close(stored.due, due) && stored.eventId == deadline.event.id && stored.type == TimedOut.eventType)
        let onW = try await f.marks(saga: "w", type: Acked.eventType)
        #expect(onW.count == 1 && onW[0].count == 1 && onW.first.map { Self.same($0[0], mark) } == true)
        #expect(mark.dueAt == due && mark.eventId == deadline.event.id && mark.op == .scheduled)
        // Written again: it replaces the saga's deadline of that name.
        let sooner = try row(TimedOut(deadline: "sooner"), due: Date().addingTimeInterval(-1))
        try await place(true, sooner)
        #expect(try await f.deadlines() == ["w/timeout"])
        #expect(try await f.deadlineRow("w", "timeout")?.eventId == sooner.event.id)
        // Fired by the worker like a handler's deadline: through the inbox, caused by the placing event.
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 1)
        #expect(try await f.deadlines() == [])
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired WHERE deadline = 'sooner'") == 1)
        let expired = try #require(
            try await f.pool.query("SELECT payload FROM saga_outbox WHERE event_type = $1", [Expired.eventType]).first)
        let envelope = try EventEnvelope(
            validated: try JSONValue(parsing: try expired.decode("payload", as: [UInt8].self)))
        #expect(envelope.causationId == sooner.event.id)
        #expect(sooner.event.causationId == cause.envelope.id)
        #expect(try await f.marks(saga: "w", type: Expired.eventType).map { $0.map(\.op) } == [[.fired]])
        // The mark's JSON reads back as it was written.
        #expect(Self.same(try Deadline.Mark(parsing: mark.header.value), mark))
        #expect(throws: EventDecodingError.self) { try Deadline.Mark(parsing: Array(#"{"op":"scheduled"}"#.utf8)) }
        #expect(throws: EventDecodingError.self) { try Deadline.Mark(parsing: Array("not json".utf8)) }
        await f.tearDown()
    }

    @Test func deadlineTypesAreNotSubscribedNorAcceptedFromKafkaAndOldDeclarationsDecode() async throws {
        let f = try await Fixture(declared: true)
        let worker = try f.worker()
        #expect(!worker.subscribedTopics.contains(f.topics.topic(for: TimedOut.eventType)))
        #expect(worker.subscribedTopics.contains(f.topics.topic(for: Started.eventType)))
        #expect(worker.subscribedTopics.contains(f.topics.topic(for: Stopped.eventType)))
        // A deadline event from Kafka (forged, or published by mistake) is dead-lettered, never handled.
        #expect(await worker.process([try f.message(TimedOut(deadline: "timeout"), saga: "forged")], pool: f.pool))
        #expect(worker.stats.deadLettered == 1)
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired") == 0)
        let reason: String = try #require(
            try await f.pool.query(
                """
                SELECT h->>'v' AS reason FROM saga_outbox o, jsonb_array_elements(o.headers) h
                WHERE h->>'k' = $1
                """, [SagaHeader.deadLetterReason]
            ).first
        ).decode("reason")
        #expect(reason.contains("deadlines only"), "\(reason)")
        // Its own deadline delivers it.
        #expect(
            await worker.process([try f.message(Started(deadline: "timeout", dueInMs: -100), saga: "s")], pool: f.pool))
        #expect(await worker.fireDueDeadlines(pool: f.pool) == 1)
        #expect(try await f.count("SELECT count(*)::int AS n FROM fired WHERE saga_id = 's'") == 1)
        // A declared deadline type needs a handler (and a schema).
        var noHandler = f.definition
        noHandler.handlers.removeAll { $0.eventType == TimedOut.eventType }
        #expect(throws: Worker.DefinitionError.self) {
            try Worker(configuration: f.configuration(), definition: noHandler, logger: f.logger)
        }
        var noSchema = f.definition
        noSchema.schemas.removeAll { $0.type == TimedOut.eventType }
        #expect(throws: Worker.DefinitionError.self) {
            try Worker(configuration: f.configuration(), definition: noSchema, logger: f.logger)
        }
        // The declaration round-trips through the registry's JSON, and a row an older runtime wrote (no
        // deadlines, no untilOutcome) still decodes.
        let declaration = SagaDeclaration(
            emits: [.outcome(Expired.self, "expired")],
            consumes: [.handles(Started.self, waitingOn: "start", untilOutcome: true), .handles(Finished.self)],
            deadlines: [.deadline(TimedOut.self, name: "timeout")])
        let json = try JSONEncoder().encode(declaration)
        #expect(try JSONDecoder().decode(SagaDeclaration.self, from: json) == declaration)
        let old =
            #"{"emits": [{"type": "clock.expired", "kind": "outcome"}], "consumes": [{"type": "clock.started", "waitingOn": "start"}]}"#
        let decoded = try JSONDecoder().decode(SagaDeclaration.self, from: Data(old.utf8))
        #expect(decoded.deadlines == [] && decoded.consumes.map(\.untilOutcome) == [false])
        #expect(decoded.consumes.first?.waitingOn == "start")
        // The model knows whose deadline a type is, and what is still waited on once an outcome is known.
        let model = SagaModel(declarations: ["clock": declaration, "old": decoded])
        #expect(model.deadlines[TimedOut.eventType] == SagaModel.DeadlineOwner(participant: "clock", name: "timeout"))
        #expect(!model.eventTypes.contains(TimedOut.eventType))
        #expect(model.waitingOn[Started.eventType] == "clock: start; old: start")
        #expect(model.waitingAfterOutcome[Started.eventType] == "old: start")
        await f.tearDown()
    }
}
