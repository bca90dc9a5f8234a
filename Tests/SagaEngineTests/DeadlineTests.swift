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
    }
    struct Finished: EventPayload {
        static let eventType = "clock.finished"
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

    static func definition(gate: Gate) -> ParticipantDefinition {
        let name = #""deadline": {"type": "string", "minLength": 1}"#
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
                    return []
                },
                .on(Finished.self) { finished, context in
                    try await context.cancelDeadline(name: finished.deadline)
                    return []
                },
                .on(TimedOut.self) { timedOut, context in
                    try await context.connection.execute(
                        "INSERT INTO fired (saga_id, deadline, event_id) VALUES ($1, $2, $3)",
                        [context.event.sagaId, timedOut.deadline, context.event.id])
                    try await gate.pass()
                    return [try context.emit(Expired(deadline: timedOut.deadline))]
                },
            ],
            schemas: [
                EventSchema(
                    type: Started.eventType, version: 1,
                    json: schema(
                        name
                            + #", "dueInMs": {"type": "integer"}, "absolute": {"type": "boolean"}, "reject": {"type": "boolean"}"#,
                        required: #""deadline", "dueInMs""#)),
                EventSchema(type: Finished.eventType, version: 1, json: schema(name, required: #""deadline""#)),
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

        init() async throws {
            var logger = Logger(label: "deadline-test")
            logger.logLevel = .warning
            self.logger = logger
            database = ServiceDatabase(
                url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema("deadline"))
            definition = DeadlineTests.definition(gate: gate)
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
        let topicNames = [Started.eventType, Finished.eventType, TimedOut.eventType].map(f.topics.topic(for:))
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
        let topicNames = [Started.eventType, Finished.eventType, TimedOut.eventType].map(f.topics.topic(for:))
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
}
