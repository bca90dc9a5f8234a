import Foundation
import JSONSchema
import Logging
import SagaEngine
import SagaKafka
import SagaPostgres
import ServiceLifecycle
import Synchronization

/// How a ``SagaTracker`` runs.
public struct TrackerConfiguration: Sendable {
    /// The cluster it reads.
    public var kafka: KafkaSettings
    /// The database and schema of its read model; its `ServiceDatabase.registry` is where it reads the saga's shape.
    public var database: ServiceDatabase
    /// How event types map to topics.
    public var topics: TopicNaming
    /// The services whose dead-letter topics to read, besides those of every registered participant.
    public var services: [String]
    /// Most messages recorded in one transaction. Larger batches cost the tracker less per event (a saga's events
    /// more often share one, and its row is written once for them: 2,000 took up to a fifth off the tracker's
    /// CPU in a rebuild), but under load its transaction then stays open for up to a second, and an open writing
    /// transaction holds back the server's horizon, so the relays' reads walk past deleted outbox rows not yet
    /// pruned (oldest writing transaction under the closed loop, p50 / p90 / max: 140 / 473 / 964 ms at 2,000,
    /// 74 / 177 / 358 ms at 500).
    public var batchSize: Int = 500
    /// How long one poll waits for the first message.
    public var pollTimeout: Duration = .milliseconds(200)
    /// How long the tracker goes on collecting messages after the first of a batch arrived, before it records them
    /// (unless ``batchSize`` is reached first); nil records what one poll returns. The read model lags by up to this
    /// much more, and in exchange events that trickle in (a lone saga's four, each on its own) share one transaction
    /// (four statements) instead of taking one each, which leaves the cores to the sagas. The consumer's fetches
    /// wait half of it (`fetch.wait.max.ms`, unless ``kafka``'s is longer).
    public var batchWait: Duration? = TrackerConfiguration.defaultBatchWait
    /// ``batchWait``'s default: 50 ms.
    public static let defaultBatchWait: Duration? = .milliseconds(50)
    /// The backoff between attempts after a failure.
    public var retry = RetryPolicy()
    /// Drop the read model and read every topic again from the beginning (a new consumer group).
    public var rebuild = false
    /// The server ends the session holding the tracker's lock once it has been idle this long, and the active
    /// tracker keeps it busy (a `SELECT 1` every third of it): a frozen tracker (SIGSTOP, a stuck host whose
    /// kernel still answers keepalives) loses the lock within about this long and a standby takes over. Once
    /// it runs again it finds its session gone and stops. nil keeps the server's setting (and no heartbeat).
    public var lockSessionIdleTimeout: Duration? = .seconds(10)
    /// How often the tracker reads the `ParticipantRegistry` again (`ServiceDatabase.registry` of
    /// ``database``): a participant that registers meanwhile is in the saga's model, and its topics are
    /// subscribed, within about this long.
    public var registryRefreshInterval: Duration = .seconds(5)
    /// The consumer's `group.instance.id` (static membership); nil (the default): a dynamic member. See
    /// `KafkaConsumerConfiguration.groupInstanceId`: a tracker fenced by another with the same id stops with
    /// that fatal error.
    public var groupInstanceId: String? = nil

    /// A configuration with the defaults above.
    public init(kafka: KafkaSettings, database: ServiceDatabase, topics: TopicNaming, services: [String]) {
        self.kafka = kafka
        self.database = database
        self.topics = topics
        self.services = services
    }
}

/// Counters a tracker keeps, for health and tests.
public struct TrackerStats: Sendable, Hashable {
    /// Events recorded.
    public var events = 0
    /// Dead letters recorded.
    public var deadLetters = 0
    /// Messages not recorded: not an event, or data the read model refuses.
    public var skipped = 0
    /// Batches committed.
    public var batches = 0
}

/// The saga tracker: reads every saga topic and the dead-letter topics in its own consumer group and
/// keeps a read model in PostgreSQL — every event of every saga (type, version, producer, time,
/// topic/partition/offset, causation) and each saga's state — and each saga's deadlines, from the
/// `saga-deadline` headers (`SagaHeader.deadline`, a `Deadline.Mark` each) the runtime puts on the events of a
/// transaction that scheduled, cancelled or fired one (the latest state by the carrying event's time, so the
/// order in which the topics are read does not matter).
///
/// Idempotent: events are keyed by saga and event id, dead letters by their position, and only the events recorded
/// for the first time are merged into their saga's state (the earliest start, the latest event and the earliest
/// outcome by time and event id, counts added up), so a redelivered batch changes nothing and the state does not
/// depend on how the events were batched or in which order the topics were read. One instance is active per
/// read model (a session advisory lock); others wait as standbys. The lock's session ends at the server
/// when the active instance stops running (see ``TrackerConfiguration/lockSessionIdleTimeout``), so a
/// frozen instance hands over within seconds; once it runs again, or after the database restarted, it waits for
/// the lock like a standby. `rebuild` empties the read model and reads the log again from the beginning under a
/// new consumer group.
///
/// The saga's shape (`SagaModel`) is assembled from the `ParticipantRegistry` when the tracker starts and
/// again every ``TrackerConfiguration/registryRefreshInterval``: when a participant registers, its event types'
/// topics and its dead-letter topic are subscribed without a restart (a new topic is read from its beginning).
///
/// A saga is `running` until an outcome event was recorded and nothing registered waits on its latest event;
/// then `finished`. So a step that follows an outcome keeps the saga running: once `order.confirmed` is recorded
/// the outcome is "confirmed", but while a registered participant consumes `order.confirmed` with a
/// `SagaDeclaration.Consumption.waitingOn` text (e.g. shipping: "schedule the shipment"), the saga waits on
/// it, is listed by `--stuck`, and finishes when its event (e.g. `shipment.scheduled`, which nobody waits on)
/// is recorded. A consumption declared `SagaDeclaration.Consumption.untilOutcome` waits only until the outcome
/// (`SagaModel.waitingAfterOutcome`): orders cancels the order on `inventory.released`, but a release recorded
/// after the order was cancelled (by its deadline, say) is a compensation that nobody waits on, and the saga
/// finishes with it. `finished_at` stays the outcome's time (the end-to-end latency of ``SagaInspector/stats(since:)``).
/// A saga's state is computed when its events are recorded, with the model of that moment: sagas finished
/// before a participant joined stay finished (`rebuild` computes every saga again).
public final class SagaTracker: Service, Sendable {
    /// How it runs.
    public let configuration: TrackerConfiguration
    private let current: Mutex<SagaModel>
    private let logger: Logger
    private let state = Mutex(TrackerStats())

    /// A tracker whose model comes from the registry of `configuration.database` (read in ``run()``).
    public init(configuration: TrackerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.current = Mutex(SagaModel(declarations: [:]))
        var logger = logger
        logger[metadataKey: "service"] = "tracker"
        self.logger = logger
    }

    /// Its counters so far.
    public var stats: TrackerStats { state.withLock { $0 } }

    /// The saga's model as last read from the registry.
    public var model: SagaModel { current.withLock { $0 } }

    /// The topics of the current model: every event type's, and the dead-letter topics of the configured
    /// services and of every registered participant.
    public var subscribedTopics: [String] { topics(of: model) }

    private func topics(of model: SagaModel) -> [String] {
        model.eventTypes.map(configuration.topics.topic(for:))
            + Set(configuration.services + model.participants).sorted().map {
                configuration.topics.deadLetterTopic(consumer: $0)
            }
    }

    /// Applies the read model's migrations and prepares the participant registry (also done by `run()`).
    public static func prepare(_ database: ServiceDatabase, logger: Logger) async throws {
        try await database.prepare(migrations: [], engine: TrackerMigrations.all, logger: logger)
        try await database.registry.prepare(logger: logger)
    }

    /// Reads the registry into ``model``; returns the topics to subscribe to.
    private func refreshModel() async throws -> [String] {
        let model = try await configuration.database.registry.model(logger: logger)
        let before = current.withLock { previous in
            defer { previous = model }
            return previous
        }
        if before.participants != model.participants || before.eventTypes != model.eventTypes {
            logger.info(
                "saga model assembled from the registry",
                metadata: ["participants": "\(model.participants)", "eventTypes": "\(model.eventTypes)"])
        }
        return topics(of: model)
    }

    /// Runs until graceful shutdown or cancellation. When the session holding the lock ends under it (the
    /// database restarted, or this process was frozen and a standby took over), it stops consuming and waits
    /// for the lock again, as a standby would; database failures are retried with backoff. A fatal consumer error
    /// (e.g. `KafkaError.isFencedInstance`) ends it with that error.
    public func run() async throws {
        try await Self.prepare(configuration.database, logger: logger)
        var attempt = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await runHoldingTheLock()
                return
            } catch let lost as TrackerLockLost {
                attempt = 0
                logger.warning("\(lost): waiting for the lock again")
                try? await Task.sleep(for: configuration.retry.delay(attempt: 1))
            } catch let error as PostgresError where error.isRetriable {
                attempt += 1
                logger.warning(
                    "tracker session failed, starting again", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: configuration.retry.delay(attempt: attempt))
            }
        }
    }

    /// Takes the lock (waiting while another tracker holds it), then records events until shutdown; throws
    /// ``TrackerLockLost`` when the lock session ended under it.
    private func runHoldingTheLock() async throws {
        var lockSession = configuration.database.configuration.named("tracker lock")
        lockSession.idleSessionTimeout = configuration.lockSessionIdleTimeout
        let lock = try await PostgresConnection.connect(lockSession, logger: logger)
        defer { Task { await lock.close() } }
        // One active tracker per read model; a second one waits here until the first is gone.
        while try await
            !(lock.query(
                "SELECT pg_try_advisory_lock(hashtext($1)) AS locked", ["saga_tracker:" + configuration.database.schema]
            ).first?.decode("locked", as: Bool.self) ?? false)
        {
            if Task.isShuttingDownGracefully || Task.isCancelled { return }
            try? await Task.sleep(for: .seconds(1))
        }
        let heartbeat = keepAlive(lock)
        defer { heartbeat?.cancel() }
        let pool = PostgresPool(
            configuration: configuration.database.configuration.named("tracker"), size: 1, logger: logger)
        let group = try await consumerGroup(pool: pool, rebuild: configuration.rebuild)
        var topics = try await refreshModel()
        var nextRefresh = ContinuousClock.now + configuration.registryRefreshInterval
        let consumer = try KafkaConsumer(configuration: consumerConfiguration(group: group), logger: logger)
        /// Stops the tracker: closes the consumer and the pool, then throws `error`.
        func stop(_ error: any Error) async throws -> Never {
            await consumer.close()
            await pool.close()
            throw error
        }
        func failedForGood(_ error: KafkaError) async throws -> Never {
            logger.critical("the consumer failed for good: the tracker stops", metadata: ["error": "\(error)"])
            try await stop(error)
        }
        try consumer.subscribe(topics: topics)
        logger.info("tracker started", metadata: ["group": .string(group), "rebuild": "\(configuration.rebuild)"])
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if ContinuousClock.now >= nextRefresh {
                // Between batches (the last one is recorded and its offsets committed): a new subscription
                // rebalances the group, and what was not committed is delivered again (recording is idempotent).
                nextRefresh = ContinuousClock.now + configuration.registryRefreshInterval
                do {
                    let now = try await refreshModel()
                    if now != topics {
                        try consumer.subscribe(topics: now)
                        logger.info("subscribed to the registry's topics", metadata: ["topics": "\(now)"])
                        topics = now
                    }
                } catch {
                    logger.warning("reading the participant registry failed", metadata: ["error": "\(error)"])
                }
            }
            var batch: [KafkaMessage]
            do {
                batch = try await consumer.poll(
                    maxMessages: configuration.batchSize, timeout: configuration.pollTimeout)
            } catch {
                if error.isFatal { try await failedForGood(error) }
                logger.warning("poll failed", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: configuration.retry.delay(attempt: 1))
                continue
            }
            guard !batch.isEmpty else { continue }
            var failed: KafkaError? = nil
            if let wait = configuration.batchWait {
                let collected = await collect(more: batch.count, for: wait, from: consumer)
                batch += collected.messages
                failed = collected.error
            }
            if heartbeat != nil && !lock.isHealthy {
                // The server ended the lock session (this tracker was frozen or cut off): another may be active.
                logger.error("the tracker lost its lock session: it stops recording (another may be active)")
                try await stop(TrackerLockLost())
            }
            // The same batch until it is recorded: offsets must never move past an unrecorded message.
            guard await recordUntilDone(batch, pool: pool) else { break }
            do { try await consumer.commit(after: batch) } catch {
                logger.warning("offset commit failed", metadata: ["error": "\(error)"])
            }
            if let failed, failed.isFatal { try await failedForGood(failed) }
        }
        await consumer.close()
        await pool.close()
    }

    /// The configuration of the tracker's consumer in `group`. Its fetches wait at least half the batch wait
    /// (`fetch.wait.max.ms`; ``TrackerConfiguration/batchWait``): the tracker holds a batch open that long anyway,
    /// and the embedded broker answers a fetch that finds nothing only when that wait ends, so a short wait made
    /// the tracker ask it ~500 times a second while idle, on the cores the sagas run on.
    func consumerConfiguration(group: String) -> KafkaConsumerConfiguration {
        var consumer = configuration.kafka.consumer(groupId: group, clientId: "saga-tracker")
        consumer.autoOffsetReset = "earliest"
        consumer.groupInstanceId = configuration.groupInstanceId
        if let wait = configuration.batchWait {
            consumer.fetchWaitMaxMs = max(consumer.fetchWaitMaxMs, Int(wait.milliseconds / 2))
        }
        return consumer
    }

    /// What else arrives within `wait` (whole milliseconds), up to the batch size after the `collected` messages
    /// polled already. A failed poll ends the wait and comes back with what was collected, which is recorded, never
    /// dropped: the consumer has moved past those messages, and no offset may be committed past an unrecorded one.
    private func collect(more collected: Int, for wait: Duration, from consumer: KafkaConsumer) async -> (
        messages: [KafkaMessage], error: KafkaError?
    ) {
        let end = ContinuousClock.now + wait
        var more: [KafkaMessage] = []
        while collected + more.count < configuration.batchSize && end - .now >= .milliseconds(1) {
            do {
                more += try await consumer.poll(
                    maxMessages: configuration.batchSize - collected - more.count, timeout: end - .now)
            } catch {
                logger.warning("poll failed while collecting a batch", metadata: ["error": "\(error)"])
                return (more, error)
            }
        }
        return (more, nil)
    }

    /// The consumer group the read model is built from; a rebuild empties the model and starts a new group.
    private func consumerGroup(pool: PostgresPool, rebuild: Bool) async throws -> String {
        try await pool.withTransaction { c in
            let current = try await c.query("SELECT consumer_group FROM tracker_state WHERE id = 1").first
            if let current, !rebuild { return try current.decode("consumer_group", as: String.self) }
            let group = self.configuration.topics.group("saga-tracker-" + UUID().uuidString.prefix(8).lowercased())
            if rebuild {
                try await c.execute(
                    "TRUNCATE tracker_events, tracker_dead_letters, tracker_sagas, tracker_deadlines")
            }
            try await c.execute(
                """
                INSERT INTO tracker_state (id, consumer_group, rebuilt_at) VALUES (1, $1, CASE WHEN $2 THEN now() END)
                ON CONFLICT (id) DO UPDATE SET consumer_group = $1, rebuilt_at = CASE WHEN $2 THEN now() END
                """, [group, rebuild])
            return group
        }
    }

    /// Records `batch`, retrying it with backoff on failures. A message the database refuses as data
    /// (e.g. text it cannot hold) makes the batch run again with a savepoint per message, skipping that one.
    /// Returns false when shutdown began first (the batch stays uncommitted and comes again).
    private func recordUntilDone(_ batch: [KafkaMessage], pool: PostgresPool) async -> Bool {
        var attempt = 0
        var isolate = false
        while true {
            do {
                let recorded = try await pool.withTransaction { [isolate] connection in
                    try await self.record(batch, on: connection, isolate: isolate)
                }
                // Counted once committed: the batch's writes go with its COMMIT, which may still fail.
                state.withLock {
                    $0.events += recorded.events
                    $0.deadLetters += recorded.deadLetters
                    $0.skipped += recorded.skipped
                    $0.batches += 1
                }
                return true
            } catch let error as PostgresError where !isolate && Self.isDataError(error) {
                isolate = true
            } catch {
                attempt += 1
                logger.warning("recording failed, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                if Task.isShuttingDownGracefully || Task.isCancelled { return false }
                try? await Task.sleep(for: configuration.retry.delay(attempt: attempt))
            }
        }
    }

    /// A failure that is the message's (SQLSTATE classes 22, 23 and 54, e.g. a NUL in text or a value too large
    /// for an index row): see `Failure`.
    static func isDataError(_ error: PostgresError) -> Bool {
        if case .eventFault = Failure(error) { return true }
        return false
    }

    /// Records `batch` in the transaction `connection` is in; returns what it counted, for ``stats`` once committed.
    func record(_ batch: [KafkaMessage], on connection: PostgresConnection, isolate: Bool = false) async throws
        -> TrackerStats
    {
        var lettered = Set<String>()
        var recorded = TrackerStats()
        // Set-based, and every write goes deferred with the COMMIT (nothing is read), so a batch takes one round
        // trip and its transaction stays short: an open writing transaction holds back
        // the server's horizon, and with it the pruning of the services' outbox rows their relays scan past.
        // One message at a time (isolated), they run at once, so that a refused one is known.
        let db = PostgresTransaction(connection, defersWrites: !isolate)
        var rows: BatchRows? = isolate ? nil : BatchRows()
        for message in batch {
            guard isolate else {
                try await recordOne(message, on: db, lettered: &lettered, recorded: &recorded, rows: &rows)
                continue
            }
            try await connection.execute("SAVEPOINT tracker_message")
            do {
                try await recordOne(message, on: db, lettered: &lettered, recorded: &recorded, rows: &rows)
            } catch let error as PostgresError where Self.isDataError(error) {
                try await connection.execute("ROLLBACK TO SAVEPOINT tracker_message")
                recorded.skipped += 1
                logger.error(
                    "message not recorded: the database refused it",
                    metadata: [
                        "topic": .string(message.topic), "partition": "\(message.partition)",
                        "offset": "\(message.offset)", "error": "\(error)",
                    ])
            }
            try await connection.execute("RELEASE SAVEPOINT tracker_message")
        }
        try await recordEvents(rows?.events ?? [], on: db)
        try await upsertDeadlines(rows?.deadlines ?? [], on: db)
        try await countDeadLetters(of: lettered, on: db)
        return recorded
    }

    /// The rows a batch writes set-based, after its messages were read.
    private struct BatchRows {
        var events: [(EventEnvelope, KafkaMessage)] = []
        var deadlines: [DeadlineRow] = []
    }

    /// Records one message; its event's row and deadline marks are added to `rows` when given (the batch writes
    /// them set-based), else written now.
    private func recordOne(
        _ message: KafkaMessage, on connection: PostgresTransaction, lettered: inout Set<String>,
        recorded: inout TrackerStats, rows: inout BatchRows?
    ) async throws {
        if configuration.topics.eventType(ofTopic: message.topic) == nil {
            if let saga = try await recordDeadLetter(message, on: connection) { lettered.insert(saga) }
            recorded.deadLetters += 1
            return
        }
        guard let json = try? JSONValue(parsing: message.value), let envelope = try? EventEnvelope(validated: json)
        else {
            recorded.skipped += 1  // not an event: the consumers dead-letter it, and we record that dead letter
            return
        }
        if rows != nil {
            rows?.events.append((envelope, message))
        } else {
            try await recordEvents([(envelope, message)], on: connection)
        }
        var deadlines: [DeadlineRow] = []
        for header in message.headers where header.key == SagaHeader.deadline {
            let mark: Deadline.Mark
            do { mark = try Deadline.Mark(parsing: header.value) } catch {
                logger.warning(
                    "a saga-deadline header that is not a deadline mark: skipped",
                    metadata: [
                        "topic": .string(message.topic), "partition": "\(message.partition)",
                        "offset": "\(message.offset)", "error": "\(error)",
                    ])
                continue
            }
            deadlines.append(DeadlineRow(mark: mark, saga: envelope.sagaId, observedAt: envelope.occurredAt))
        }
        if rows != nil {
            rows?.deadlines += deadlines
        } else {
            try await upsertDeadlines(deadlines, on: connection)
        }
        recorded.events += 1
    }

    /// Records `events` and merges them into their sagas' rows, in one statement (deferred when the transaction
    /// defers writes): the `tracker_events` rows of the events not recorded before, and for each of their sagas the
    /// state those new events add to the row's — events and compensations added up, the earliest start, the latest
    /// event (by time, then event id), the earliest outcome (the same order) — so that a saga's state is the same
    /// however its events were batched, ordered or redelivered, without reading its events again. The outcome's
    /// label and an event's kind come from the ``model`` when it is recorded (see the type's comment).
    private func recordEvents(_ events: [(EventEnvelope, KafkaMessage)], on connection: PostgresTransaction)
        async throws
    {
        struct Key: Hashable {
            var saga: String
            var id: UUID
        }
        var seen = Set<Key>()
        // Once each (the merge counts what is new, and one statement may not write a row twice).
        let events = events.filter { seen.insert(Key(saga: $0.0.sagaId, id: $0.0.id)).inserted }
        guard !events.isEmpty else { return }
        let model = self.model
        try await connection.executeDeferred(
            """
            WITH given AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::bigint[],
                                     $13::text[], $14::text[])
                    AS e(event_id, saga_id, event_type, version, producer, occurred_at, causation_id, traceparent,
                         data, topic, partition, "offset", outcome, kind)
            ), new AS (
                INSERT INTO tracker_events (event_id, saga_id, event_type, version, producer, occurred_at,
                    causation_id, traceparent, data, topic, partition, "offset")
                SELECT e.event_id, e.saga_id, e.event_type, e.version, e.producer, e.occurred_at::timestamptz,
                    NULLIF(e.causation_id, '')::uuid, NULLIF(e.traceparent, ''), e.data::jsonb, e.topic, e.partition,
                    e."offset"
                FROM given e
                ON CONFLICT (saga_id, event_id) DO NOTHING
                RETURNING event_id, saga_id, event_type, occurred_at
            ), summary AS (
                SELECT n.saga_id, count(*)::int AS events, (count(*) FILTER (WHERE g.kind = 'compensation'))::int AS compensations,
                    min(n.occurred_at) AS started_at,
                    (array_agg(n.occurred_at ORDER BY n.occurred_at DESC, n.event_id DESC))[1] AS updated_at,
                    (array_agg(n.event_type ORDER BY n.occurred_at DESC, n.event_id DESC))[1] AS last_event_type,
                    (array_agg(n.event_id ORDER BY n.occurred_at DESC, n.event_id DESC))[1] AS last_event_id,
                    (array_agg(g.outcome ORDER BY n.occurred_at, n.event_id) FILTER (WHERE g.outcome <> ''))[1]
                        AS outcome,
                    (array_agg(n.occurred_at ORDER BY n.occurred_at, n.event_id) FILTER (WHERE g.outcome <> ''))[1]
                        AS finished_at,
                    (array_agg(n.event_id ORDER BY n.occurred_at, n.event_id) FILTER (WHERE g.outcome <> ''))[1]
                        AS outcome_event_id
                FROM new n JOIN given g USING (event_id)
                GROUP BY n.saga_id
            )
            INSERT INTO tracker_sagas AS t (saga_id, status, outcome, started_at, updated_at, finished_at,
                last_event_type, events, compensations, dead_letters, last_event_id, outcome_event_id)
            SELECT s.saga_id,
                CASE WHEN s.finished_at IS NOT NULL AND NOT s.last_event_type = ANY($15::text[])
                    THEN 'finished' ELSE 'running' END,
                s.outcome, s.started_at, s.updated_at, s.finished_at, s.last_event_type, s.events, s.compensations,
                (SELECT count(*) FROM tracker_dead_letters d WHERE d.saga_id = s.saga_id), s.last_event_id,
                s.outcome_event_id
            FROM summary s ORDER BY s.saga_id
            ON CONFLICT (saga_id) DO UPDATE SET
                events = t.events + excluded.events, compensations = t.compensations + excluded.compensations,
                started_at = least(t.started_at, excluded.started_at),
                updated_at = CASE WHEN (excluded.updated_at, excluded.last_event_id) > (t.updated_at, t.last_event_id)
                    THEN excluded.updated_at ELSE t.updated_at END,
                last_event_type = CASE WHEN (excluded.updated_at, excluded.last_event_id) > (t.updated_at, t.last_event_id)
                    THEN excluded.last_event_type ELSE t.last_event_type END,
                last_event_id = CASE WHEN (excluded.updated_at, excluded.last_event_id) > (t.updated_at, t.last_event_id)
                    THEN excluded.last_event_id ELSE t.last_event_id END,
                outcome = CASE WHEN excluded.finished_at IS NOT NULL AND (t.finished_at IS NULL
                        OR (excluded.finished_at, excluded.outcome_event_id) < (t.finished_at, t.outcome_event_id))
                    THEN excluded.outcome ELSE t.outcome END,
                finished_at = CASE WHEN excluded.finished_at IS NOT NULL AND (t.finished_at IS NULL
                        OR (excluded.finished_at, excluded.outcome_event_id) < (t.finished_at, t.outcome_event_id))
                    THEN excluded.finished_at ELSE t.finished_at END,
                outcome_event_id = CASE WHEN excluded.finished_at IS NOT NULL AND (t.finished_at IS NULL
                        OR (excluded.finished_at, excluded.outcome_event_id) < (t.finished_at, t.outcome_event_id))
                    THEN excluded.outcome_event_id ELSE t.outcome_event_id END,
                status = CASE WHEN coalesce(t.finished_at, excluded.finished_at) IS NOT NULL
                        AND NOT (CASE WHEN (excluded.updated_at, excluded.last_event_id) > (t.updated_at, t.last_event_id)
                            THEN excluded.last_event_type ELSE t.last_event_type END) = ANY($15::text[])
                    THEN 'finished' ELSE 'running' END,
                dead_letters = excluded.dead_letters
            """,
            [
                PostgresArray(events.map(\.0.id)), PostgresArray(events.map(\.0.sagaId)),
                PostgresArray(events.map(\.0.type)), PostgresArray(events.map(\.0.version)),
                PostgresArray(events.map(\.0.producer)), PostgresArray(events.map(\.0.occurredAt.postgresText)),
                PostgresArray(events.map { $0.0.causationId?.lowercasedString ?? "" }),
                PostgresArray(events.map { $0.0.traceparent ?? "" }),
                PostgresArray(events.map { String(decoding: $0.0.data.serialized(), as: UTF8.self) }),
                PostgresArray(events.map(\.1.topic)), PostgresArray(events.map { Int($0.1.partition) }),
                PostgresArray(events.map(\.1.offset)),
                PostgresArray(
                    events.map { e in
                        model.kind(of: e.0.type) == .outcome
                            ? model.outcome(of: e.0.type, data: e.0.data) ?? e.0.type : ""
                    }),
                PostgresArray(events.map { model.kind(of: $0.0.type).rawValue }),
                PostgresArray(model.waitingAfterOutcome.keys.sorted()),
            ])
    }

    /// A deadline mark carried by an event of `saga` that occurred at `observedAt`.
    struct DeadlineRow {
        var mark: Deadline.Mark
        var saga: String
        var observedAt: Date

        /// The row's key in `tracker_deadlines`.
        var key: [String] { [saga, mark.participant, mark.name] }

        /// Whether this mark replaces `other`'s state: the upsert's condition, in Swift.
        func supersedes(_ other: DeadlineRow) -> Bool {
            func rank(_ row: DeadlineRow) -> Int { row.mark.op == .scheduled ? 0 : 1 }
            return (observedAt, rank(self)) > (other.observedAt, rank(other))
        }

        /// The marks that change `tracker_deadlines` when applied in this order, one per row, in key order: of
        /// several marks of one deadline, the one that supersedes the others (the first of equals), as upserting
        /// them one after the other would leave it. (One statement may not update a row twice.)
        static func reduced(_ rows: [DeadlineRow]) -> [DeadlineRow] {
            var latest: [[String]: DeadlineRow] = [:]
            for row in rows {
                if let kept = latest[row.key], !row.supersedes(kept) { continue }
                latest[row.key] = row
            }
            return latest.values.sorted {
                ($0.saga, $0.mark.participant, $0.mark.name) < ($1.saga, $1.mark.participant, $1.mark.name)
            }
        }
    }

    /// Upserts the deadlines' states from `rows`, in one statement (deferred when the transaction defers writes).
    /// The newest mark wins whatever order they are read in (events of one saga come on several topics): a row
    /// changes only for a mark observed later, or at the same time and settling it (a schedule never overwrites
    /// a cancellation or a firing of the same moment). A redelivered mark changes nothing.
    private func upsertDeadlines(_ rows: [DeadlineRow], on connection: PostgresTransaction) async throws {
        let rows = DeadlineRow.reduced(rows)
        guard !rows.isEmpty else { return }
        try await connection.executeDeferred(
            """
            INSERT INTO tracker_deadlines AS t (saga_id, participant, name, due_at, state, deadline_event_id,
                deadline_event_type, settled_at, late_ms, observed_at)
            SELECT d.saga_id, d.participant, d.name, d.due_at::timestamptz, d.state, d.event_id, d.event_type,
                NULLIF(d.settled_at, '')::timestamptz, NULLIF(d.late_ms, '')::bigint, d.observed_at::timestamptz
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[],
                        $9::text[], $10::text[])
                AS d(saga_id, participant, name, due_at, state, event_id, event_type, settled_at, late_ms, observed_at)
            ON CONFLICT (saga_id, participant, name) DO UPDATE SET due_at = excluded.due_at, state = excluded.state,
                deadline_event_id = excluded.deadline_event_id, deadline_event_type = excluded.deadline_event_type,
                settled_at = excluded.settled_at, late_ms = excluded.late_ms, observed_at = excluded.observed_at
            WHERE (excluded.observed_at, CASE excluded.state WHEN 'scheduled' THEN 0 ELSE 1 END)
                > (t.observed_at, CASE t.state WHEN 'scheduled' THEN 0 ELSE 1 END)
            """,
            [
                PostgresArray(rows.map(\.saga)), PostgresArray(rows.map(\.mark.participant)),
                PostgresArray(rows.map(\.mark.name)), PostgresArray(rows.map(\.mark.dueAt.postgresText)),
                PostgresArray(rows.map(\.mark.op.rawValue)), PostgresArray(rows.map(\.mark.eventId)),
                PostgresArray(rows.map(\.mark.eventType)),
                PostgresArray(rows.map { $0.mark.op == .scheduled ? "" : $0.mark.at.postgresText }),
                PostgresArray(rows.map { $0.mark.lateMs.map(String.init) ?? "" }),
                PostgresArray(rows.map(\.observedAt.postgresText)),
            ])
    }

    private func recordDeadLetter(_ message: KafkaMessage, on connection: PostgresTransaction) async throws -> String? {
        let envelope = (try? JSONValue(parsing: message.value)).flatMap { try? EventEnvelope(validated: $0) }
        // Bounded as the worker bounds it, so that the saga id is the one the worker wrote, and always fits.
        let saga = Bounded.sagaId(
            envelope?.sagaId ?? message.key.map { String(decoding: $0, as: UTF8.self) } ?? "unknown")
        let at = message.header(SagaHeader.deadLetteredAt).flatMap(Timestamp.parse) ?? message.timestamp ?? Date()
        try await connection.executeDeferred(
            """
            INSERT INTO tracker_dead_letters (topic, partition, "offset", saga_id, event_id, event_type, consumer, reason,
                source_topic, source_partition, source_offset, dead_lettered_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING
            """,
            [
                message.topic, Int(message.partition), message.offset, saga,
                envelope?.id ?? message.header(SagaHeader.eventId).flatMap(UUID.init(parsing:)),
                envelope?.type ?? message.header(SagaHeader.eventType), message.header(SagaHeader.deadLetterConsumer),
                message.header(SagaHeader.deadLetterReason) ?? "unknown",
                message.header(SagaHeader.deadLetterSourceTopic),
                message.header(SagaHeader.deadLetterSourcePartition).flatMap(Int.init),
                message.header(SagaHeader.deadLetterSourceOffset).flatMap(Int64.init), at,
            ])
        return saga
    }

    /// Counts the dead letters of `sagas` again into their rows (deferred when the transaction defers writes), after
    /// the batch recorded some; a saga with dead letters but no event yet has no row, and its first event's row
    /// counts them.
    private func countDeadLetters(of sagas: Set<String>, on connection: PostgresTransaction) async throws {
        guard !sagas.isEmpty else { return }
        try await connection.executeDeferred(
            """
            UPDATE tracker_sagas t SET dead_letters = (SELECT count(*) FROM tracker_dead_letters d WHERE d.saga_id = t.saga_id)
            WHERE t.saga_id = ANY($1::text[])
            """, [PostgresArray(sagas.sorted())])
    }
}
