import Foundation
import Logging
import SagaKafka
import SagaPostgres
import SagaSchemas
import ServiceLifecycle
import Synchronization

/// How a worker runs.
public struct WorkerConfiguration: Sendable {
    /// The service name: consumer group, producer name in envelopes, dead-letter topic suffix.
    public var name: String
    /// The cluster it consumes from.
    public var kafka: KafkaSettings
    /// The database and schema its transactions run in.
    public var database: ServiceDatabase
    /// How event types map to topics.
    public var topics: TopicNaming
    /// Most messages handled in one database transaction.
    public var batchSize: Int = 200
    /// How long one poll waits for the first message.
    public var pollTimeout: Duration = .milliseconds(200)
    /// The backoff between attempts of a batch that failed retriably.
    public var retry = RetryPolicy()
    /// After this many failed attempts of a batch in a row with the same error that is neither the event's
    /// fault for certain nor transient (an undefined table, a statement timeout, an unexpected error), the
    /// batch runs one event at a time and the events that still fail are dead-lettered with their attempts.
    public var deadLetterAfterAttempts = 10
    /// Inbox rows older than this are deleted; replay past this horizon can no longer be deduplicated.
    public var inboxRetention: Duration = .seconds(7 * 24 * 3600)
    /// How often inbox retention runs (on its own task and connection; each run deletes until caught up).
    public var cleanupInterval: Duration = .seconds(60)
    /// How often the worker looks for tables of its schema that hold rows but were never analyzed, and analyzes
    /// them (``FreshTables``; on the retention task's connection); nil leaves them to autovacuum.
    public var freshTableCheckInterval: Duration? = .seconds(5)
    /// How often the consumer lag gauge is refreshed.
    public var lagInterval: Duration = .seconds(5)
    /// The consumer's `group.instance.id` (static membership), unique among the running workers of this service;
    /// nil (the default): a dynamic member. See `KafkaConsumerConfiguration.groupInstanceId`: a worker fenced by
    /// another with the same id stops with that fatal error.
    public var groupInstanceId: String? = nil
    /// Most due deadlines fired in one database transaction.
    public var deadlineBatchSize = 100
    /// The longest the deadline task sleeps before it looks at the deadline table again (it wakes earlier
    /// for the earliest deadline, and when this worker commits a deadline that falls sooner): the bound
    /// on how late it notices a deadline scheduled by another instance of the service.
    public var deadlinePollInterval: Duration = .seconds(1)

    /// A configuration of the worker of `name`, with the defaults above.
    public init(name: String, kafka: KafkaSettings, database: ServiceDatabase, topics: TopicNaming = TopicNaming()) {
        self.name = name
        self.kafka = kafka
        self.database = database
        self.topics = topics
    }
}

/// Counters a worker keeps, for health, metrics and tests.
public struct WorkerStats: Sendable, Hashable {
    /// Events handled (inbox records written).
    public var handled = 0
    /// Events skipped because the inbox had already seen them.
    public var duplicates = 0
    /// Events dead-lettered.
    public var deadLettered = 0
    /// Batches retried after a failure.
    public var retries = 0
    /// Batches committed.
    public var batches = 0
    /// Batches run one event at a time (each in a savepoint) because a handler failed for good on one.
    public var isolated = 0
    /// Batches run again inbox-first because their optimistic attempt failed (see ``Worker``): a duplicate
    /// event, mostly.
    public var inboxFirstRetries = 0
    /// Deadlines scheduled by committed transactions.
    public var deadlinesScheduled = 0
    /// Deadlines cancelled by committed transactions.
    public var deadlinesCancelled = 0
    /// Deadlines fired (their event handled and committed).
    public var deadlinesFired = 0
}

/// The worker runtime: consume → one transaction (inbox + handlers + outbox rows) → commit → commit the
/// offsets in the background.
///
/// - Set-based: a batch is one transaction with one inbox insert for all its events, one call per batch
///   handler (``BatchHandler``) or one call per event (a plain ``EventHandler``), and one outbox insert.
///   Per saga, events are handled in the order they were consumed, also across handlers.
/// - Effectively once: the inbox rows and the handlers' writes commit together, so a redelivered event
///   (or one delivered twice in a batch) is acknowledged and skipped.
/// - Optimistic inbox: a batch's inbox insert travels with its handlers' first statement, in its round trip,
///   and a duplicate among its events fails the transaction (a unique violation) instead of being skipped;
///   any failure of such a batch runs it again at once inbox-first (the insert in a round trip of its own,
///   whose answer tells the duplicates apart), and so do the batches after it until one finds no duplicate.
/// - Nothing lost: offsets are committed only after the transaction committed (asynchronously: a lost
///   commit means a redelivery, which the inbox absorbs); a retriable failure (database down,
///   serialization failure, deadlock) rolls the batch back and retries it with backoff.
/// - Poison events (undecodable, schema-invalid, unknown version, rejected by the handler) are written
///   as dead letters through the outbox, in the same transaction, and the partition moves on. When a
///   handler fails for good, the batch is rolled back and run again one event at a time, each in its
///   own savepoint, so only the poison event is dead-lettered. Whose fault a failure is, and so whether it
///   is retried, is decided by `Failure`; one that is neither the event's for certain nor transient is
///   retried, but dead-lettered after ``WorkerConfiguration/deadLetterAfterAttempts`` attempts in a row.
///   A dead letter holds only bounded values and is written in a savepoint of its own (`DeadLetter`).
/// - The next poll runs while the transaction does; inbox retention runs on its own task and connection.
/// - Deadlines that handlers scheduled (``HandlerContext/scheduleDeadline(name:at:payload:)``) are fired on a
///   task and connection of their own, in transactions of their own, through the same inbox, handler and
///   outbox path as consumed events.
/// - An operator can pause a worker (``pause(waitingAtMost:)``) and resume it: it stays in its group but handles
///   nothing.
public final class Worker: Service, Sendable {
    /// How it runs.
    public let configuration: WorkerConfiguration
    private let handlers: [String: EventHandler]
    /// The batch forms of the handlers that have one (wrapped in the batch middleware), by identity.
    private let batchHandlers: [ObjectIdentifier: BatchHandler]
    private let codec: EventCodec
    private let migrations: [PostgresMigration]
    /// The participant it runs, registered when it starts (nil: a bare worker, registered nowhere).
    private let definition: ParticipantDefinition?
    /// The event types only the participant's own deadlines deliver (``SagaDeclaration/deadlines``): not
    /// subscribed to, and refused from Kafka.
    let deadlineTypes: Set<String>
    let logger: Logger
    private let state = Mutex(WorkerStats())
    /// Whether the next batch records its inbox rows in a round trip of their own, whose answer tells the
    /// duplicates apart, instead of optimistically with its handlers' first statement: set when an optimistic
    /// batch failed, cleared by a batch that found no duplicate.
    private let inboxFirst = Atomic<Bool>(false)
    private let metrics: WorkerMetrics
    let deadlineMetrics: DeadlineMetrics
    let deadlineAlarm = DeadlineAlarm()
    let pauseControl: PauseControl

    /// A worker of `handlers`, validating with the schemas of this repository (`SchemaRegistry.shared`). It
    /// registers nothing in the ``ParticipantRegistry``: a participant's daemon uses
    /// ``init(configuration:definition:middleware:batchMiddleware:logger:)``.
    /// - Parameters:
    ///   - configuration: how it runs.
    ///   - handlers: one handler per event type it consumes.
    ///   - upcasters: the upcasters of the event types it consumes.
    ///   - migrations: the service's own tables, migrated when it starts.
    ///   - middleware: wraps every per-event call: plain handlers, and batch handlers when a batch is run
    ///     one event at a time after a poison event.
    ///   - batchMiddleware: wraps every call of a batch handler's batch form.
    ///   - logger: the worker's logger.
    public convenience init(
        configuration: WorkerConfiguration, handlers: [EventHandler], upcasters: [Upcaster],
        migrations: [PostgresMigration], middleware: [HandlerMiddleware] = [tracingMiddleware, loggingMiddleware],
        batchMiddleware: [BatchHandlerMiddleware] = [batchTracingMiddleware, batchLoggingMiddleware],
        logger: Logger
    ) {
        self.init(
            configuration: configuration, handlers: handlers, upcasters: upcasters, migrations: migrations,
            registry: .shared, definition: nil, middleware: middleware, batchMiddleware: batchMiddleware,
            logger: logger)
    }

    /// The worker of a participant: `definition`'s handlers, upcasters and migrations, and a codec that
    /// validates with the schemas it supplies plus the runtime's envelope schema. ``run()`` migrates its
    /// database and registers its part of the saga (``ServiceDatabase/prepare(_:logger:)``). It does not
    /// subscribe to the topics of the declaration's deadline types (``SagaDeclaration/deadlines``), and
    /// dead-letters an event of such a type that comes from Kafka: only its own deadlines deliver them.
    /// - Throws: ``DefinitionError`` when one of `definition`'s schemas does not compile, or a deadline type
    ///   of its declaration has no handler or no schema.
    public convenience init(
        configuration: WorkerConfiguration, definition: ParticipantDefinition,
        middleware: [HandlerMiddleware] = [tracingMiddleware, loggingMiddleware],
        batchMiddleware: [BatchHandlerMiddleware] = [batchTracingMiddleware, batchLoggingMiddleware],
        logger: Logger
    ) throws(DefinitionError) {
        let registry: SchemaRegistry
        do { registry = try definition.schemaRegistry() } catch { throw DefinitionError(error.description) }
        for deadline in definition.declaration.deadlines {
            guard let handler = definition.handlers.first(where: { $0.eventType == deadline.type }) else {
                throw DefinitionError(
                    "\(definition.name): deadline \(deadline.name) delivers \(deadline.type), which it has no handler for"
                )
            }
            guard registry.versions(of: deadline.type).contains(handler.version) else {
                throw DefinitionError(
                    "\(definition.name): deadline \(deadline.name) delivers \(deadline.type) v\(handler.version), "
                        + "which has no schema")
            }
        }
        self.init(
            configuration: configuration, handlers: definition.handlers, upcasters: definition.upcasters,
            migrations: definition.migrations, registry: registry, definition: definition,
            middleware: middleware, batchMiddleware: batchMiddleware, logger: logger)
    }

    /// Why a participant's worker cannot be made from its definition.
    public struct DefinitionError: Error, Sendable, CustomStringConvertible {
        /// What is wrong.
        public var reason: String
        /// An error with `reason`.
        public init(_ reason: String) { self.reason = reason }
        public var description: String { reason }
    }

    private init(
        configuration: WorkerConfiguration, handlers: [EventHandler], upcasters: [Upcaster],
        migrations: [PostgresMigration], registry: SchemaRegistry, definition: ParticipantDefinition?,
        middleware: [HandlerMiddleware], batchMiddleware: [BatchHandlerMiddleware], logger: Logger
    ) {
        self.configuration = configuration
        self.definition = definition
        self.deadlineTypes = Set(definition?.declaration.deadlines.map(\.type) ?? [])
        self.handlers = Dictionary(
            handlers.map { ($0.eventType, $0.wrapped(in: middleware)) }, uniquingKeysWith: { a, _ in a })
        var batchHandlers: [ObjectIdentifier: BatchHandler] = [:]
        for handler in self.handlers.values {
            if let batch = handler.batch { batchHandlers[ObjectIdentifier(batch.identity)] = batch }
        }
        self.batchHandlers = batchHandlers.mapValues { $0.wrapped(in: batchMiddleware) }
        self.codec = EventCodec(registry: registry, upcasters: upcasters, topics: configuration.topics)
        self.migrations = migrations
        self.metrics = WorkerMetrics(service: configuration.name)
        self.deadlineMetrics = DeadlineMetrics(service: configuration.name)
        self.pauseControl = PauseControl(service: configuration.name)
        var logger = logger
        logger[metadataKey: "service"] = .string(configuration.name)
        self.logger = logger
    }

    /// Its counters so far.
    public var stats: WorkerStats { state.withLock { $0 } }

    /// The topics this worker consumes: those of its handlers' types, except the deadline types.
    public var subscribedTopics: [String] {
        handlers.keys.sorted().filter { !deadlineTypes.contains($0) }.map(configuration.topics.topic(for:))
    }

    /// The configuration of the session batches are handled on: the database's, with the definition's
    /// ``ParticipantDefinition/genericPlans``.
    var batchSession: PostgresConfiguration {
        var session = configuration.database.configuration.named("worker \(configuration.name)")
        session.genericPlans = definition?.genericPlans ?? false
        return session
    }

    /// Runs until graceful shutdown (SIGTERM/SIGINT through a ServiceGroup) or cancellation. The batch in
    /// flight finishes (or rolls back) first, then offsets are committed and the consumer leaves its group. On
    /// cancellation (a hard stop) the batch's statement in flight is cancelled at the server, so its transaction
    /// rolls back at once instead of running on (the batch is delivered again).
    /// A participant's worker first migrates its database and registers its part of the saga.
    /// - Throws: when the database cannot be prepared or the consumer cannot be created.
    public func run() async throws {
        if let definition {
            try await configuration.database.prepare(definition, logger: logger)
        } else {
            try await configuration.database.prepare(migrations: migrations, logger: logger)
        }
        let pool = PostgresPool(configuration: batchSession, size: 1, logger: logger)
        var consumerConfiguration = configuration.kafka.consumer(
            groupId: configuration.topics.group(configuration.name), clientId: "saga-\(configuration.name)")
        consumerConfiguration.groupInstanceId = configuration.groupInstanceId
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger)
        try consumer.subscribe(topics: subscribedTopics)
        await pauseControl.attach(consumer, logger: logger)
        defer { pauseControl.detach() }
        logger.info("worker started", metadata: ["topics": "\(subscribedTopics)"])
        defer { logger.info("worker stopped", metadata: ["stats": "\(stats)"]) }
        // The lag gauge is refreshed apart from the loop, so it keeps moving while a batch is being retried.
        let lagReporter = Task { [metrics, interval = configuration.lagInterval] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if let lag = try? await consumer.lag() { metrics.recordLag(lag) }
            }
        }
        defer { lagReporter.cancel() }
        // Inbox retention, and statistics for new tables, on their own task and connection: never on the hot loop.
        let retention = Task { [configuration, logger] in
            let retentionPool = PostgresPool(
                configuration: configuration.database.configuration.named("retention \(configuration.name)"), size: 1,
                logger: logger)
            await withTaskGroup { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: configuration.cleanupInterval)
                        if Task.isCancelled { break }
                        await Retention.cleanInbox(
                            pool: retentionPool, olderThan: configuration.inboxRetention, logger: logger)
                    }
                }
                if let interval = configuration.freshTableCheckInterval {
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: interval)
                            if Task.isCancelled { break }
                            await FreshTables.analyze(pool: retentionPool, logger: logger)
                        }
                    }
                }
            }
            await retentionPool.close()
        }
        // Due deadlines are fired on their own task and connection (see `runDeadlines`).
        let deadlines = Task { [configuration, logger] in
            let deadlinePool = PostgresPool(
                configuration: configuration.database.configuration.named("deadlines \(configuration.name)"), size: 1,
                logger: logger)
            await self.runDeadlines(pool: deadlinePool)
            await deadlinePool.close()
        }
        let committer = OffsetCommitter(consumer: consumer, retry: configuration.retry, logger: logger)

        let maxMessages = configuration.batchSize
        let timeout = configuration.pollTimeout
        /// A poll, and when it returned.
        func startPoll() -> Task<(Result<[KafkaMessage], KafkaError>, ContinuousClock.Instant), Never> {
            Task { (await self.pollUnlessPaused(consumer, maxMessages: maxMessages, timeout: timeout), .now) }
        }
        var prefetched: Task<(Result<[KafkaMessage], KafkaError>, ContinuousClock.Instant), Never>? = nil
        var pollFailures = 0
        var failure: (any Error)? = nil
        loop: while !Task.isShuttingDownGracefully && !Task.isCancelled {
            // A poll that returned before this wait (it ran while the last transaction did) has collected only what
            // was there then, so what came since is added below; one that returned while the loop waited for it holds
            // all there was, and looking again would only cost a hand-off to the poll lane.
            let awaited = ContinuousClock.now
            let (polled, returned) = await (prefetched ?? startPoll()).value
            let stale = returned < awaited
            prefetched = nil
            var batch: [KafkaMessage]
            switch polled {
            case .success(let messages):
                batch = messages
                pollFailures = 0
            case .failure(let error) where error.isFatal:
                logger.critical("the consumer failed for good: the worker stops", metadata: ["error": "\(error)"])
                failure = error
                break loop
            case .failure(let error):
                pollFailures += 1
                logger.warning("poll failed", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: configuration.retry.delay(attempt: pollFailures))
                continue loop
            }
            if batch.isEmpty { continue }
            pauseControl.batchStarted()  // polled before a pause held: a pause waits for it
            defer { pauseControl.finished() }
            if stale && batch.count < maxMessages {
                batch += await consumer.pollAvailable(maxMessages: maxMessages - batch.count)
            }
            for message in batch { metrics.type(eventType(of: message)).consumed.increment() }
            prefetched = startPoll()  // runs while the transaction does
            guard await process(batch, pool: pool) else { break }  // shutting down mid-retry: not committed
            committer.handled(batch)
        }
        // Messages a poll prefetched are not handled: their offsets are not committed, so they are redelivered.
        _ = await prefetched?.value
        retention.cancel()
        deadlines.cancel()  // a firing in flight rolls back: its deadlines fire again on the next start
        await committer.flush()
        await consumer.close()
        await pool.close()
        _ = await retention.value
        _ = await deadlines.value
        if let failure { throw failure }
    }

    /// Handles `batch` in one transaction, retrying the whole batch on retriable failures until it commits.
    /// Returns false if shutdown began while retrying (the batch is then left uncommitted, to be redelivered).
    ///
    /// The fast path runs the batch set-based without savepoints. When a handler fails for good, the
    /// transaction is rolled back and the batch runs again one event at a time with a savepoint per event,
    /// so only the poison event is undone and dead-lettered.
    func process(_ batch: [KafkaMessage], pool: PostgresPool) async -> Bool {
        var attempt = 0
        var isolate = false
        var failures = RepeatedFailures(limit: configuration.deadLetterAfterAttempts)
        var optimistic = !inboxFirst.load(ordering: .relaxed)
        while true {
            let started = ContinuousClock.now
            let ledger = deadlineLedger()
            do {
                let outcome = try await pool.withCancellableTransaction {
                    [isolate, optimistic, exhausted = failures.exhausted] connection in
                    isolate
                        ? try await self.handleIsolated(batch, exhausted: exhausted, ledger: ledger, on: connection)
                        : try await self.handle(batch, optimistic: optimistic, ledger: ledger, on: connection)
                }
                if !isolate { inboxFirst.store(outcome.total(\.duplicates) > 0, ordering: .relaxed) }
                record(outcome, isolated: isolate, ledger: ledger)
                metrics.batchDuration.record(duration: ContinuousClock.now - started)
                return true
            } catch let error where optimistic {
                // Whatever failed (a duplicate, a poison event, the database), the batch runs again inbox-first,
                // at once, and that attempt decides as it always has.
                optimistic = false
                inboxFirst.store(true, ordering: .relaxed)
                state.withLock { $0.inboxFirstRetries += 1 }
                logger.debug("optimistic batch failed, running it again inbox-first", metadata: ["error": "\(error)"])
            } catch is NeedsIsolation {
                isolate = true
            } catch let error where !isolate && Self.permanentReason(error) != nil {
                // A write of the fast path deferred to the COMMIT (its outbox rows, a handler's) was refused as
                // data: find the event one at a time.
                isolate = true
            } catch {
                attempt += 1
                state.withLock { $0.retries += 1 }
                metrics.retries.increment()
                // Not retried forever: the events that still fail this way are dead-lettered.
                if failures.record(error) { isolate = true }
                logger.warning(
                    "batch failed, retrying",
                    metadata: ["error": "\(error)", "attempt": "\(attempt)", "size": "\(batch.count)"])
                if Task.isShuttingDownGracefully || Task.isCancelled { return false }
                try? await Task.sleep(for: configuration.retry.delay(attempt: attempt))
            }
        }
    }

    /// Counts what a committed batch did (stats and metrics), and what its handlers did with deadlines;
    /// `deadlinesFired`: how many deadlines the batch fired.
    func record(_ outcome: Outcome, isolated: Bool, ledger: DeadlineLedger, deadlinesFired: Int = 0) {
        let deadlines = ledger.counts
        state.withLock {
            $0.deadlinesScheduled += deadlines.scheduled
            $0.deadlinesCancelled += deadlines.cancelled
            $0.deadlinesFired += deadlinesFired
            $0.handled += outcome.total(\.handled)
            $0.duplicates += outcome.total(\.duplicates)
            $0.deadLettered += outcome.total(\.deadLettered)
            $0.batches += 1
            if isolated { $0.isolated += 1 }
        }
        for (type, counts) in outcome.byType {
            let m = metrics.type(type)
            m.handled.increment(by: counts.handled)
            m.duplicates.increment(by: counts.duplicates)
            m.deadLettered.increment(by: counts.deadLettered)
            for duration in counts.handlerDurations { m.handlerDuration.record(duration: duration) }
        }
        if deadlinesFired > 0 { deadlineMetrics.fired.increment(by: deadlinesFired) }
        if deadlines.scheduled > 0 { deadlineMetrics.scheduled.increment(by: deadlines.scheduled) }
        if deadlines.cancelled > 0 { deadlineMetrics.cancelled.increment(by: deadlines.cancelled) }
        if let due = deadlines.earliest { deadlineAlarm.scheduled(due: due) }
        // Handled or dead-lettered events may have written outbox rows: this process's relay reads them now.
        if outcome.total(\.handled) + outcome.total(\.deadLettered) > 0 { configuration.database.outboxCommitted() }
    }

    /// A ledger for the deadlines one transaction's handlers schedule and cancel.
    func deadlineLedger() -> DeadlineLedger {
        DeadlineLedger(codec: codec, handled: Set(handlers.keys), participant: configuration.name)
    }

    /// The outbox rows of `emitted`, encoded (validated), each message of a saga with deadline marks in `ledger`
    /// carrying them as `saga-deadline` headers (the marks are taken: they go on this transaction's messages).
    private func outboxRows(_ emitted: [OutgoingEvent], ledger: DeadlineLedger) throws(EventEncodingError) -> [(
        sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage
    )] {
        let marks = ledger.takeMarks(for: emitted)
        var rows: [(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage)] = []
        rows.reserveCapacity(emitted.count)
        for out in emitted {
            var message = try codec.encode(out)
            if let marks = marks[out.envelope.sagaId] { message.headers += marks.map(\.header) }
            rows.append((out.envelope.sagaId, out.envelope.id, out.envelope.type, message))
        }
        return rows
    }

    /// A handler failed for good in a batch run without savepoints: run it again with them.
    struct NeedsIsolation: Error {}

    /// What a batch did, per event type.
    struct Outcome: Sendable {
        struct Counts: Sendable {
            var handled = 0
            var duplicates = 0
            var deadLettered = 0
            /// How long each handled event's handler took (recorded only once the batch committed); for a
            /// batch call, its time shared evenly among its events.
            var handlerDurations: [Duration] = []
        }
        var byType: [String: Counts] = [:]

        func total(_ count: KeyPath<Counts, Int>) -> Int { byType.values.reduce(0) { $0 + $1[keyPath: count] } }
    }

    /// The event type a message's topic carries (the topic itself when it names none): the metrics' label.
    private func eventType(of message: KafkaMessage) -> String {
        configuration.topics.eventType(ofTopic: message.topic) ?? message.topic
    }

    /// A decoded message and the handler it goes to.
    private struct Decoded: Sendable {
        let message: KafkaMessage
        let handler: EventHandler
        let event: IncomingEvent
    }

    /// The set-based path: one inbox insert, one call per handler group (see ``schedule(_:)``), one outbox
    /// insert. Any failure for good becomes `NeedsIsolation`. `optimistic`: the inbox insert goes with the
    /// handlers' first statement instead of in a round trip of its own, and a duplicate fails the transaction
    /// (see ``Inbox/recordDeferred(_:on:)``).
    func handle(_ batch: [KafkaMessage], optimistic: Bool, ledger: DeadlineLedger, on connection: PostgresConnection)
        async throws -> Outcome
    {
        var outcome = Outcome()
        var decoded: [Decoded] = []
        decoded.reserveCapacity(batch.count)
        var seen = Set<UUID>()
        for message in batch {
            let handler: EventHandler
            let event: IncomingEvent
            do {
                (handler, event) = try decode(message)
            } catch {
                // Nothing was written for this message: dead-letter it without a savepoint.
                if try await deadLetter(message, reason: error.reason, on: connection) {
                    outcome.byType[eventType(of: message), default: .init()].deadLettered += 1
                }
                continue
            }
            guard seen.insert(event.id).inserted else {
                EventLog.logger(logger, for: event.envelope).debug("duplicate skipped (twice in one batch)")
                outcome.byType[event.type, default: .init()].duplicates += 1
                continue
            }
            decoded.append(Decoded(message: message, handler: handler, event: event))
        }
        guard !decoded.isEmpty else { return outcome }
        do {
            var fresh: [Decoded] = []
            if optimistic {
                try Inbox.recordDeferred(decoded.map { ($0.event, $0.message) }, on: connection)
                fresh = decoded
            } else {
                let new = try await Inbox.record(decoded.map { ($0.event, $0.message) }, on: connection)
                fresh.reserveCapacity(decoded.count)
                for d in decoded {
                    if new.contains(d.event.id) {
                        fresh.append(d)
                    } else {
                        EventLog.logger(logger, for: d.event.envelope).debug("duplicate skipped")
                        outcome.byType[d.event.type, default: .init()].duplicates += 1
                    }
                }
            }
            var emitted: [OutgoingEvent] = []
            for group in Self.schedule(fresh) {
                if let identity = group[0].handler.batch?.identity,
                    let batch = batchHandlers[ObjectIdentifier(identity)]
                {
                    var context = BatchHandlerContext(
                        transaction: PostgresTransaction(connection, defersWrites: true),
                        service: configuration.name, logger: logger)
                    context.deadlineLedger = ledger
                    let started = ContinuousClock.now
                    emitted += try await batch.handle(group.map(\.event), context)
                    let share = (ContinuousClock.now - started) / group.count
                    for d in group {
                        outcome.byType[d.event.type, default: .init()].handled += 1
                        outcome.byType[d.event.type, default: .init()].handlerDurations.append(share)
                    }
                } else {
                    for d in group {
                        let context = HandlerContext(
                            connection: PostgresTransaction(connection, defersWrites: true),
                            service: configuration.name, event: d.event,
                            logger: EventLog.logger(logger, for: d.event.envelope), deadlineLedger: ledger)
                        let started = ContinuousClock.now
                        emitted += try await d.handler.handle(d.event, context)
                        outcome.byType[d.event.type, default: .init()].handled += 1
                        outcome.byType[d.event.type, default: .init()].handlerDurations.append(
                            ContinuousClock.now - started)
                    }
                }
            }
            // Sent with the COMMIT, in its round trip; a failure of it fails the commit (see `process`).
            try Outbox.appendDeferred(try outboxRows(emitted, ledger: ledger), on: connection)
        } catch {
            if case .eventFault = Failure(error) { throw NeedsIsolation() }
            throw error
        }
        return outcome
    }

    /// Who handles an event: a batch handler (all its types together) or a plain handler (its type).
    private enum Unit: Hashable {
        case batch(ObjectIdentifier)
        case single(String)
    }

    /// The handler calls for `events`, in the order to make them: each is one unit's events (in consumption
    /// order). Calls come in waves: an event goes into the wave of its saga's previous event when that went
    /// to the same unit, else into the next wave; within a wave no saga has events in two units, so per
    /// saga events are handled in consumption order however the units are called.
    private static func schedule(_ events: [Decoded]) -> [[Decoded]] {
        var waves: [[(unit: Unit, events: [Decoded])]] = []
        var last: [String: (wave: Int, unit: Unit)] = [:]
        for d in events {
            let unit: Unit =
                d.handler.batch.map { .batch(ObjectIdentifier($0.identity)) } ?? .single(d.handler.eventType)
            var wave = 0
            if let previous = last[d.event.sagaId] { wave = previous.unit == unit ? previous.wave : previous.wave + 1 }
            last[d.event.sagaId] = (wave, unit)
            while waves.count <= wave { waves.append([]) }
            if let i = waves[wave].firstIndex(where: { $0.unit == unit }) {
                waves[wave][i].events.append(d)
            } else {
                waves[wave].append((unit, [d]))
            }
        }
        return waves.flatMap { $0.map(\.events) }
    }

    /// The fallback path after a poison event: one event at a time, each in its own savepoint, so that a
    /// failure for good undoes and dead-letters only its event. Once the batch failed `exhausted.attempts`
    /// times in a row with the same undecided failure, an event failing with it again is dead-lettered too.
    func handleIsolated(
        _ batch: [KafkaMessage], exhausted: (signature: String, attempts: Int)?, ledger: DeadlineLedger,
        on connection: PostgresConnection
    ) async throws -> Outcome {
        var outcome = Outcome()
        for message in batch {
            let decoded: (EventHandler, IncomingEvent)
            do {
                decoded = try decode(message)
            } catch {
                if try await deadLetter(message, reason: error.reason, on: connection) {
                    outcome.byType[eventType(of: message), default: .init()].deadLettered += 1
                }
                continue
            }
            try await connection.execute("SAVEPOINT saga_event")
            let deadlinesBefore = ledger.counts
            do {
                switch try await handleOne(decoded.1, with: decoded.0, from: message, ledger: ledger, on: connection) {
                case .handled(let took):
                    outcome.byType[eventType(of: message), default: .init()].handled += 1
                    outcome.byType[eventType(of: message), default: .init()].handlerDurations.append(took)
                case .duplicate: outcome.byType[eventType(of: message), default: .init()].duplicates += 1
                }
                try await connection.execute("RELEASE SAVEPOINT saga_event")
            } catch let failure {
                let reason: String
                var attempts: Int? = nil
                switch Failure(failure) {
                case .eventFault(let why): reason = why
                case .undecided(let signature, let why) where signature == exhausted?.signature:
                    let tried = (exhausted?.attempts ?? 0) + 1
                    attempts = tried
                    reason = "failed \(tried) times with the same error: \(why)"
                default: throw failure
                }
                try await connection.execute("ROLLBACK TO SAVEPOINT saga_event")
                ledger.restore(deadlinesBefore)
                if try await deadLetter(message, reason: reason, attempts: attempts, on: connection) {
                    outcome.byType[eventType(of: message), default: .init()].deadLettered += 1
                }
                try await connection.execute("RELEASE SAVEPOINT saga_event")
            }
        }
        return outcome
    }

    private enum OneOutcome {
        /// Handled, with how long the handler took.
        case handled(Duration)
        case duplicate
    }

    private func decode(_ message: KafkaMessage) throws(EventDecodingError) -> (EventHandler, IncomingEvent) {
        guard let type = configuration.topics.eventType(ofTopic: message.topic), let handler = handlers[type] else {
            throw EventDecodingError("no handler for topic \(message.topic)")
        }
        guard message.partition == Deadlines.partition || !deadlineTypes.contains(type) else {
            throw EventDecodingError("\(type) is delivered by \(configuration.name)'s deadlines only, not from Kafka")
        }
        return (handler, try codec.decode(message, targetVersion: handler.version))
    }

    private func handleOne(
        _ event: IncomingEvent, with handler: EventHandler, from message: KafkaMessage, ledger: DeadlineLedger,
        on connection: PostgresConnection
    ) async throws -> OneOutcome {
        let logger = EventLog.logger(self.logger, for: event.envelope)
        guard try await !Inbox.record([(event, message)], on: connection).isEmpty else {
            logger.debug("duplicate skipped")
            return .duplicate
        }
        let context = HandlerContext(
            connection: PostgresTransaction(connection), service: configuration.name, event: event, logger: logger,
            deadlineLedger: ledger)
        let started = ContinuousClock.now
        let emitted = try await handler.handle(event, context)
        let took = ContinuousClock.now - started
        try await Outbox.append(try outboxRows(emitted, ledger: ledger), on: connection)
        return .handled(took)
    }

    static func withoutNUL(_ text: String) -> String { Bounded.withoutNUL(text) }

    /// The reason to dead-letter for a failure that is the event's fault (see `Failure`); nil when the
    /// failure is retried.
    static func permanentReason(_ error: any Error) -> String? {
        if case .eventFault(let reason) = Failure(error) { return reason }
        return nil
    }

    /// Writes a dead letter for `message` into the outbox (see ``DeadLetter``). Returns false when this exact
    /// message (topic, partition, offset) was dead-lettered before (a redelivery after a crash).
    private func deadLetter(
        _ message: KafkaMessage, reason: String, attempts: Int? = nil, on connection: PostgresConnection
    ) async throws -> Bool {
        let envelope = (try? JSONValue(parsing: message.value)).flatMap { try? EventEnvelope(validated: $0) }
        guard
            let letter = try await DeadLetter.write(
                message, envelope: envelope, reason: reason, attempts: attempts, consumer: configuration.name,
                topic: configuration.topics.deadLetterTopic(consumer: configuration.name), on: connection,
                logger: logger)
        else { return false }
        var logger = envelope.map { EventLog.logger(self.logger, for: $0) } ?? self.logger
        logger[metadataKey: EventLog.sagaId] = .string(letter.sagaId)
        logger.error(
            "event dead-lettered",
            metadata: [
                "reason": .string(letter.reason), "topic": .string(message.topic),
                "partition": "\(message.partition)", "offset": "\(message.offset)",
                "attempts": "\(attempts ?? 1)",
            ])
        return true
    }
}

/// The undecided failures (see `Failure`) of one batch in a row: once `limit` attempts failed with the same one, the
/// batch runs one event at a time and the events that still fail that way are dead-lettered (``exhausted``).
struct RepeatedFailures {
    let limit: Int
    private var last: (signature: String, attempts: Int)? = nil
    /// The failure that reached `limit`, and the attempts it took.
    private(set) var exhausted: (signature: String, attempts: Int)? = nil

    init(limit: Int) { self.limit = limit }

    /// Counts `error`; true when it has now failed `limit` attempts in a row.
    mutating func record(_ error: any Error) -> Bool {
        guard case .undecided(let signature, _) = Failure(error) else { return false }
        let attempts = last?.signature == signature ? (last?.attempts ?? 0) + 1 : 1
        last = (signature, attempts)
        guard attempts >= limit else { return false }
        exhausted = (signature, attempts)
        return true
    }
}
