import Foundation
import Logging
import SagaKafka
import SagaPostgres
import ServiceLifecycle
import Synchronization

/// How an outbox relay runs.
public struct RelayConfiguration: Sendable {
    /// The service whose outbox this relay publishes (for logs and client ids).
    public var name: String
    /// The cluster it publishes to.
    public var kafka: KafkaSettings
    /// The database and schema whose outbox it publishes.
    public var database: ServiceDatabase
    /// Most rows published per round trip. The next batch is read while the broker acknowledges this one, leaving
    /// out the rows in flight (`id <> ALL(...)`, a cost that grows with the square of the batch): 250 drained a
    /// 100,000-row backlog faster than 500, 1,000 or 2,000 on the embedded broker (2026-12-01, `saga bench relay`,
    /// 47–66k against 40–55k rows/s for 500).
    public var batchSize: Int = 250
    /// Fallback poll while idle. An idle relay is normally woken by a NOTIFY from each commit that adds rows to one
    /// of its shards; the poll only covers a commit that raced the relay going idle.
    public var pollInterval: Duration = .seconds(1)
    /// How long a relay that is looking for rows itself (it lowered its flag when rows queued) keeps looking after it
    /// last found some (every `gracePollInterval`) before it flags itself idle again. Under load rows come again
    /// within milliseconds; a relay that flagged itself idle between them would make every writer's commit send a
    /// NOTIFY, and PostgreSQL serialises notifying commits cluster-wide.
    public var idleGrace: Duration = .milliseconds(100)
    /// How often it looks for rows during ``idleGrace``.
    public var gracePollInterval: Duration = .milliseconds(2)
    /// How long acknowledged rows may wait for the relay's next read of the outbox, which deletes them in its
    /// round trip, before they are deleted on their own (an idle relay, woken by each commit, saves a round trip
    /// per batch while commits come closer together than this).
    public var deleteDelay: Duration = .milliseconds(20)
    /// A flagged relay lowers its flag (and looks for rows itself, so that commits stop notifying) once rows have
    /// queued behind the batch it publishes this many rounds in a row. Commits a few milliseconds apart queue a
    /// row behind a batch now and then; a relay that lowered its flag then would poll its outbox every
    /// `gracePollInterval` for as long as rows keep coming.
    public var busyRounds: Int = 8
    /// How long a round waits for a batch's delivery reports. Rows still unacknowledged then (a partition whose
    /// leader is unreachable waits up to `message.timeout.ms`) stay in flight, their sagas are held back, and the
    /// relay goes on with the other sagas' rows; they are settled when their reports arrive.
    public var settleTimeout: Duration = .seconds(1)
    /// Most batches left in flight past `settleTimeout` at once; with this many, the relay waits for the oldest.
    public var maxStragglers: Int = 8
    /// How often an instance tries to take over shards nobody owns (e.g. after another relay died).
    public var claimInterval: Duration = .seconds(2)
    /// Most shards one instance owns; lower it to spread the shards over several instances.
    public var maxShards: Int = EngineMigrations.shardCount
    /// How often the outbox gauges (backlog, age of the oldest unpublished row, parked rows) are refreshed.
    public var gaugeInterval: Duration = .seconds(5)
    /// How often the relay vacuums its outbox table while it deletes rows (`VACUUM (SKIP_LOCKED, TRUNCATE false)`: it
    /// never takes the lock that would block writers to give the table's empty end pages back; on a session
    /// of its own, off the publishing loop); nil leaves the table to autovacuum. The relay deletes each row it
    /// published, from the low end of its shard, and every read of a shard starts there: until a vacuum prunes
    /// them, it steps over the index entries of every row deleted since the last one. Autovacuum visits a table
    /// at most once per `autovacuum_naptime` (a minute by default), while under load the relays delete
    /// thousands of rows a second. Needs the table's owner (or a superuser); otherwise it is skipped, with one
    /// log line.
    public var vacuumInterval: Duration? = .seconds(1)
    /// The backoff after a failed round (database or broker unavailable) and of the sagas of failed rows.
    public var retry = RetryPolicy()
    /// The server ends the session holding this relay's shard locks once it has been idle this long (see
    /// `OutboxRelay.lockSession(_:)`), so a frozen relay's shards go to a standby within about this plus
    /// `claimInterval` (at least three times the longer of `pollInterval` and `claimInterval`: an idle relay
    /// uses the session that often). Waiting longer than this for the broker's acknowledgements ends a live
    /// relay's session too (it starts a new one, and the rows go out again); nil keeps the server's setting.
    public var lockSessionIdleTimeout: Duration? = .seconds(10)
    /// Fault injection for tests: stop after publishing a batch, before marking it published,
    /// as a crash there would.
    public var failpoint: RelayFailpoint? = nil

    /// A configuration of the relay of `name`'s outbox, with the defaults above.
    public init(name: String, kafka: KafkaSettings, database: ServiceDatabase) {
        self.name = name
        self.kafka = kafka
        self.database = database
    }
}

/// A fault a test injects into an ``OutboxRelay`` (``RelayConfiguration/failpoint``).
public enum RelayFailpoint: Sendable, Hashable {
    /// Stop after publishing a batch, before deleting its rows, as a crash there would; ``OutboxRelay/run()`` then
    /// throws ``RelayCrashed``.
    case crashAfterPublish
}

/// Thrown by `run()` when the `crashAfterPublish` failpoint fired.
public struct RelayCrashed: Error, Sendable {}

/// Counters a relay keeps, for health, metrics and tests.
public struct RelayStats: Sendable, Hashable {
    /// Rows published and acknowledged by the broker.
    public var published = 0
    /// Rows whose publication failed (each attempt counts).
    public var failed = 0
    /// Batches settled.
    public var batches = 0
    /// Reads of the outbox (one statement each), those that found nothing included.
    public var reads = 0
    /// The outbox shards this instance owns now.
    public var ownedShards: [Int] = []
}

/// Publishes committed outbox rows in id order per shard and deletes each row once the broker acknowledged
/// it (idempotent producer, acks=all).
///
/// - Only committed rows are visible to its query, so nothing is published before its transaction
///   committed. It never tracks a "highest id seen": every read takes the lowest ids of each shard that are
///   not in flight, so a row whose transaction committed late (a lower id committing after a higher one) is
///   not skipped.
/// - A row is deleted only after its acknowledgement, by the relay's next read in the same round trip (or on its
///   own after `deleteDelay` when no read comes); a crash between publish and delete means the rows are published
///   again, and consumers' inboxes absorb that.
/// - Per-saga order, also through failures: a batch carries at most one row of a saga, and a saga's next row
///   is sent only after its previous one was acknowledged, so a row that failed (even by a time-out, which the
///   idempotent producer does not guard against gaps) never has a later row of its saga delivered before it.
///   A row the broker refuses for good is parked (`failed_at`), and the later rows of its saga wait behind it
///   (gauge `saga_outbox_held`, `saga inspect`) until an operator deletes it or clears `failed_at`.
/// - Failures are isolated per saga: the sagas of rows that failed retriably back off on their own
///   (`retry`), and a batch whose reports take longer than `settleTimeout` (an unreachable partition) is left
///   in flight with its sagas held back, while the rows of every other saga keep flowing.
/// - While the broker acknowledges a batch, the next one is read (excluding the rows in flight); it is sent
///   only if the whole previous batch succeeded, otherwise it is dropped and read again.
/// - Writers in its own process (the worker; a service calling `ServiceDatabase.outboxCommitted()`) wake it
///   directly after their commit, so it reads their rows at once, whether it is polling or idle.
/// - Idle (nothing found for `idleGrace`, looking every `gracePollInterval`): it raises its shards' flag in
///   `saga_outbox_wake`, waits until no inserting transaction is in flight,
///   and reads once more; an insert into a flagged shard notifies at commit, which wakes it. `pollInterval` is
///   only a fallback (a writer transaction open for long, a REPEATABLE READ writer). A lost listening session
///   is re-established (`WakeListener`).
/// - Flagged, it stays flagged while rows come a few batches at a time: each commit wakes it, and it looks for
///   nothing in between (a relay that polled for `idleGrace` after every row of a saga arriving every few
///   milliseconds would read its outbox hundreds of times a second for nothing), not even while the broker
///   acknowledges a batch when its read saw every row and no commit has woken it since. Once rows have queued
///   behind the batch it is publishing (the read made while the broker acknowledges it found rows) `busyRounds`
///   rounds in a row, it lowers the flag and looks for rows itself, so that writers committing faster than it
///   publishes do not notify (one writer committing a batch at a time, like a worker the relay keeps up with,
///   does: one NOTIFY per batch). A wake signalled before its last read started (the NOTIFY of a commit that woke
///   it directly too) is dropped, and the broker's acknowledgement wakes it only for a batch it stopped waiting
///   for.
/// - Several instances: each owns outbox shards through session advisory locks held on its connection;
///   a saga's rows are all in one shard, so one saga is only ever published by one instance, in order.
public final class OutboxRelay: Service, Sendable {
    /// How it runs.
    public let configuration: RelayConfiguration
    private let logger: Logger
    private let state = Mutex(RelayStats())
    private let wake = WakeSignal()
    /// `wake.count` when the last read of the outbox started: a wake signalled before then announced rows that read
    /// saw already.
    private let lastRead = Mutex<UInt64>(0)
    private let metrics: RelayMetrics
    /// Rows deleted since the last vacuum of the outbox table.
    private let deletedSinceVacuum = Mutex(0)

    /// A relay configured by `configuration`; nothing happens until ``run()``.
    public init(configuration: RelayConfiguration, logger: Logger) {
        self.configuration = configuration
        self.metrics = RelayMetrics(service: configuration.name)
        var logger = logger
        logger[metadataKey: "service"] = .string(configuration.name)
        self.logger = logger
    }

    /// Its counters so far.
    public var stats: RelayStats { state.withLock { $0 } }

    private var channel: String { "saga_outbox_" + configuration.database.schema }

    /// Runs until graceful shutdown or cancellation; reconnects after database failures (also while the
    /// outbox table does not exist yet: the service's worker or `saga migrate` creates it).
    /// - Throws: `RelayCrashed` when the test failpoint fired; errors creating the producer.
    public func run() async throws {
        defer { logger.info("relay stopped", metadata: ["stats": "\(stats)"]) }
        LocalOutboxWake.add(wake, for: configuration.database)
        defer { LocalOutboxWake.remove(wake, for: configuration.database) }
        var attempt = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            // A new producer per session: after a fatal producer error (e.g. the idempotent producer lost its
            // sequence), the next session starts with a fresh one.
            var producerConfiguration = configuration.kafka.producer(clientId: "saga-relay-\(configuration.name)")
            // The relay hands the producer whole batches already: waiting to fill one (linger) only adds latency
            // to every hop, and a second request in flight gains nothing while it waits for the batch (and costs
            // ~40 ms per batch against the embedded broker); under load, rows queue while a request is in flight
            // and go out together. Ordering and idempotence are unchanged.
            producerConfiguration.lingerMs = 0
            producerConfiguration.maxInFlightRequestsPerConnection = 1
            let producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
            do {
                try await runConnected(producer: producer)
                attempt = 0
            } catch let crash as RelayCrashed {
                await producer.shutdown()
                throw crash
            } catch {
                attempt += 1
                state.withLock { $0.ownedShards = [] }
                metrics.ownedShards.record(0)
                logger.warning("relay session ended, starting again", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: configuration.retry.delay(attempt: attempt))
            }
            await producer.shutdown()
        }
    }

    /// One database session: owns shards while connected; returns on shutdown, throws on failure.
    private func runConnected(producer: KafkaProducer) async throws {
        let db = configuration.database.configuration.named("relay \(configuration.name)")
        let connection = try await PostgresConnection.connect(lockSession(db), logger: logger)
        let gaugePool = PostgresPool(configuration: db.named("gauges"), size: 1, logger: logger)
        let listener: WakeListener
        do {
            listener = try await WakeListener.start(
                db.named("listen"), channel: channel, wake: wake, retry: configuration.retry, logger: logger)
        } catch {
            await connection.close()
            await gaugePool.close()
            throw error
        }
        // The outbox gauges are refreshed apart from the loop, so they keep moving while a publish waits on
        // the broker.
        let gauges = Task { [interval = configuration.gaugeInterval] in
            while !Task.isCancelled {
                try? await self.recordOutboxGauges(on: gaugePool)
                try? await Task.sleep(for: interval)
            }
        }
        let vacuum = Task { await self.vacuumWhileDeleting(on: gaugePool) }
        do {
            // On the lock session's executor: the loop's statements are plain calls on the session's thread.
            try await withTaskExecutorPreference(connection.executor) {
                try await loop(connection: connection, producer: producer)
            }
        } catch {
            gauges.cancel()
            vacuum.cancel()
            await listener.close()
            await connection.close()
            await gaugePool.close()
            throw error
        }
        gauges.cancel()
        vacuum.cancel()
        await listener.close()
        await connection.close()
        await gaugePool.close()
    }

    private func loop(connection: PostgresConnection, producer: KafkaProducer) async throws {
        var owned: [Int] = []
        var lastClaim = ContinuousClock.now - configuration.claimInterval
        var flagged = false  // this relay's shards are flagged idle in saga_outbox_wake
        var prefetched: OutboxBatch?
        // Acknowledged rows not deleted yet: they go with the relay's next read, in its round trip (while the broker
        // acknowledges the next batch, or when the next commit wakes an idle relay), on their own after
        // `deleteDelay` without one, or when it stops (a crash before that publishes them again).
        var acknowledged: [Int64] = []
        var holds = Holds()
        var round = 0
        var queuedRounds = 0  // rounds in a row whose batch was read while the last one was acknowledged
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if ContinuousClock.now - lastClaim >= configuration.claimInterval {
                lastClaim = .now
                let claimed = try await claimShards(owned: owned, on: connection)
                // Shards taken over carry whatever flag their last owner left: raise them all again when idle.
                if claimed != owned { flagged = false }
                owned = claimed
            }
            if owned.isEmpty {
                if !acknowledged.isEmpty { try await delete(take(&acknowledged), on: connection) }
                await wake.wait(timeout: configuration.claimInterval)
                continue
            }
            try await settleStragglers(
                &holds, wait: holds.stragglers.count >= configuration.maxStragglers,
                on: connection)
            if holds.stragglers.count >= configuration.maxStragglers {
                // As many batches in flight as allowed: send no more until one settles. The lock session is used
                // meanwhile, so that the server does not end it as idle (`lockSessionIdleTimeout`).
                prefetched = nil
                try await connection.execute("SELECT 1")
                continue
            }
            holds.expire()
            metrics.heldSagas.record(holds.heldSagaCount)
            round += 1
            var batch: OutboxBatch
            // Rows that were already there when the last batch went out: they queue behind the publishing.
            let queued = prefetched.map { !$0.isEmpty } ?? false
            queuedRounds = queued ? queuedRounds + 1 : 0
            if let prefetched {
                batch = prefetched
            } else {
                batch = try await read(owned, round, holds, connection, deleting: take(&acknowledged))
            }
            prefetched = nil
            if batch.isEmpty {
                if !flagged {
                    // Keep looking for a while before going idle, so that writers under load never notify.
                    let graceEnd = ContinuousClock.now + configuration.idleGrace
                    while batch.isEmpty && ContinuousClock.now < graceEnd && !Task.isShuttingDownGracefully
                        && !Task.isCancelled
                    {
                        // A commit in this process (`LocalOutboxWake`) ends the wait at once.
                        await wake.wait(timeout: configuration.gracePollInterval)
                        batch = try await read(owned, round, holds, connection, deleting: take(&acknowledged))
                    }
                }
                if batch.isEmpty && !flagged {
                    // Raise the flag, then look once more: a commit the read above missed either shows now or
                    // finds the flag raised and notifies.
                    try await setIdle(true, shards: owned, on: connection)
                    flagged = true
                    try await waitForInsertsInFlight(on: connection)
                    batch = try await read(owned, round, holds, connection, deleting: take(&acknowledged))
                }
                if batch.isEmpty {
                    // Woken by a commit, a straggler's reports, or the end of a held saga's backoff. A wake from
                    // before the last read started is dropped: that read saw what it announced (the NOTIFY of a
                    // commit that woke the relay directly as well, the acknowledgement the relay waited for).
                    // Not while stragglers are out: their reports may have come in after they were last looked at.
                    // Acknowledged rows wait at most `deleteDelay` for a read to carry their deletion.
                    let seen = holds.stragglers.isEmpty ? lastRead.withLock { $0 } : nil
                    let longest = acknowledged.isEmpty ? configuration.pollInterval : configuration.deleteDelay
                    await wake.wait(timeout: holds.wait(atMost: longest), ignoringUpTo: seen)
                    if !acknowledged.isEmpty && holds.heldSagaCount == 0, let seen, wake.count == seen {
                        // No commit came (each would have woken the flagged relay), nor is a saga's backoff over:
                        // there is nothing to read, and the rows are deleted on their own.
                        try await delete(take(&acknowledged), on: connection)
                        prefetched = OutboxBatch(complete: true)
                    }
                    continue
                }
            }
            // A flagged relay stays flagged while rows come a few batches at a time, each woken by its commit; once
            // rows have queued behind the publishing `busyRounds` rounds in a row, it lowers the flag (while the
            // broker acknowledges the batch, not before sending it) and looks for them itself, so that writers
            // committing faster than it publishes do not notify.
            let lowerFlag = flagged && queuedRounds >= configuration.busyRounds
            if lowerFlag { flagged = false }
            let outcome = try await publish(
                batch, shards: owned, round: round, lowerFlag: lowerFlag, flagged: flagged,
                deleting: take(&acknowledged), holds: &holds, on: connection, producer: producer)
            if outcome.clean {
                prefetched = outcome.next
                acknowledged = outcome.acknowledged
            }
        }
        // Stopping: delete what the broker acknowledged (if this fails, the rows are published again later).
        if !acknowledged.isEmpty { try? await delete(acknowledged, on: connection) }
        try? await settleStragglers(&holds, wait: false, on: connection)
    }

    /// The lowest-id rows of each shard, at most `batchSize` in all and one per saga, leaving out parked rows and
    /// the rows of a saga with a parked row, the rows in flight (`holds`, `excluding`) and the sagas `holds` holds
    /// back. Each shard costs an index range scan of the rows taken (plus those left out), never the backlog; the
    /// shards' order rotates with `round` so that a full shard cannot starve the others.
    /// (The row comparison on `(shard, id)` is deliberate: with `shard = s.shard ... ORDER BY id` the planner
    /// may walk the primary key and filter by shard, which reads the whole backlog of the other shards.)
    private func read(
        _ shards: [Int], _ round: Int, _ holds: Holds, _ connection: PostgresConnection, excluding: [Int64] = [],
        deleting acknowledged: [Int64] = []
    ) async throws -> OutboxBatch {
        let offset = round % shards.count
        let rotated = Array(shards[offset...] + shards[..<offset])
        state.withLock { $0.reads += 1 }
        lastRead.withLock { $0 = wake.count }
        let select = PostgresStatement(
            """
            SELECT o.id, o.saga_id, o.topic, o.key, o.headers::text AS headers, o.payload,
                extract(epoch FROM clock_timestamp() - o.created_at)::float8 AS waited
            FROM unnest($1::int[]) AS s(shard)
            CROSS JOIN LATERAL (
                SELECT id, saga_id, topic, key, headers, payload, created_at FROM saga_outbox
                WHERE (saga_outbox.shard, saga_outbox.id) > (s.shard, 0) AND saga_outbox.shard <= s.shard
                    AND failed_at IS NULL AND id <> ALL($3::bigint[]) AND saga_id <> ALL($4::text[])
                    AND NOT EXISTS (
                        SELECT 1 FROM saga_outbox p WHERE p.saga_id = saga_outbox.saga_id AND p.failed_at IS NOT NULL)
                ORDER BY saga_outbox.shard, saga_outbox.id LIMIT $2
            ) AS o
            LIMIT $2
            """,
            [
                PostgresArray(rotated), configuration.batchSize, PostgresArray(holds.inFlightIds + excluding),
                PostgresArray(holds.heldSagas),
            ], binaryResults: true)  // keys and payloads as their bytes, not hex digits
        let rows: [PostgresRow]
        if acknowledged.isEmpty {
            rows = try await connection.query(select.sql, select.binds, binaryResults: select.binaryResults)
        } else {
            // The last batch's acknowledged rows go in the same round trip, deleted before the read.
            rows = try await connection.pipeline([Self.deletion(of: acknowledged), select])[1].rows
            deletedSinceVacuum.withLock { $0 += acknowledged.count }
        }
        var batch = OutboxBatch()
        // Every row there was (to the snapshot): none left for a later round by the limit or by its saga.
        batch.complete = rows.count < configuration.batchSize
        batch.ids.reserveCapacity(rows.count)
        batch.messages.reserveCapacity(rows.count)
        var sagas = Set<String>()
        for row in rows {
            // A saga's later row waits for the next round: it goes out only once this one is acknowledged.
            let saga = try row.decode("saga_id", as: String.self)
            guard sagas.insert(saga).inserted else {
                batch.complete = false
                continue
            }
            batch.ids.append(try row.decode("id", as: Int64.self))
            batch.sagas.append(saga)
            batch.waited.append(try row.decode("waited", as: Double.self))
            batch.messages.append(
                KafkaOutgoingMessage(
                    topic: try row.decode("topic", as: String.self),
                    key: try row.decode("key", as: [UInt8]?.self),
                    value: try row.decode("payload", as: [UInt8].self),
                    headers: Outbox.decodeHeaders(try row.decode("headers", as: String.self))))
        }
        return batch
    }

    /// Waits until no transaction that inserted outbox rows is in flight (the insert trigger holds a shared
    /// advisory lock until it ends): each of them either is visible to the next read or read the raised flag.
    /// `pg_try_advisory_lock` never queues, so writers are never held up behind the relay; after 200 tries (a
    /// long writer transaction) the fallback poll covers it.
    private func waitForInsertsInFlight(on connection: PostgresConnection) async throws {
        for _ in 0..<200 {
            let rows = try await connection.query(
                """
                SELECT CASE WHEN pg_try_advisory_lock(hashtext($1), 0) THEN pg_advisory_unlock(hashtext($1), 0)
                    ELSE false END AS clear
                """, ["saga_outbox_wake:" + configuration.database.schema])
            if try rows.first?.decode("clear", as: Bool.self) == true { return }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Raises or lowers the idle flag of `shards` (only rows that change are written).
    private func setIdle(_ idle: Bool, shards: [Int], on connection: PostgresConnection) async throws {
        try await connection.execute(
            "UPDATE saga_outbox_wake SET idle = $2 WHERE shard = ANY($1::int[]) AND idle <> $2",
            [PostgresArray(shards), idle])
    }

    /// The whole outbox's backlog (every shard, whoever owns it), its oldest unpublished row's age, the parked
    /// rows and the rows held behind them, as gauges.
    private func recordOutboxGauges(on pool: PostgresPool) async throws {
        let rows = try await pool.query(
            """
            SELECT count(*) AS backlog,
                COALESCE(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS oldest,
                (SELECT count(*) FROM saga_outbox WHERE failed_at IS NOT NULL) AS parked,
                (SELECT count(*) FROM saga_outbox o WHERE o.failed_at IS NULL AND EXISTS (
                    SELECT 1 FROM saga_outbox p WHERE p.saga_id = o.saga_id AND p.failed_at IS NOT NULL)) AS held
            FROM saga_outbox WHERE failed_at IS NULL
            """)
        guard let row = rows.first else { return }
        metrics.heldRows.record(try row.decode("held", as: Int64.self))
        metrics.backlog.record(try row.decode("backlog", as: Int64.self))
        metrics.oldestAge.record(try row.decode("oldest", as: Double.self))
        metrics.parkedRows.record(try row.decode("parked", as: Int64.self))
    }

    /// Takes free shards (session advisory locks on this connection) up to `maxShards`.
    private func claimShards(owned: [Int], on connection: PostgresConnection) async throws -> [Int] {
        var owned = owned
        for shard in 0..<EngineMigrations.shardCount where !owned.contains(shard) {
            guard owned.count < configuration.maxShards else { break }
            let rows = try await connection.query(
                "SELECT pg_try_advisory_lock(hashtext($1), $2) AS locked",
                ["saga_outbox:" + configuration.database.schema, shard])
            if try rows.first?.decode("locked", as: Bool.self) == true { owned.append(shard) }
        }
        owned.sort()
        if owned != stats.ownedShards {
            logger.info("relay owns shards", metadata: ["shards": "\(owned)"])
            state.withLock { $0.ownedShards = owned }
            metrics.ownedShards.record(owned.count)
        }
        return owned
    }

    private struct Outcome {
        /// Every row acknowledged: `next` (read while the acknowledgements were pending) may go out.
        var clean: Bool
        var next: OutboxBatch?
        /// When clean: the acknowledged rows not deleted yet, for the caller to delete with a later read.
        var acknowledged: [Int64] = []
    }

    private func delete(_ ids: [Int64], on connection: PostgresConnection) async throws {
        let deletion = Self.deletion(of: ids)
        try await connection.execute(deletion.sql, deletion.binds)
        deletedSinceVacuum.withLock { $0 += ids.count }
    }

    /// `ids`, leaving it empty: rows handed to a statement that deletes them.
    private func take(_ ids: inout [Int64]) -> [Int64] {
        defer { ids = [] }
        return ids
    }

    private static func deletion(of ids: [Int64]) -> PostgresStatement {
        PostgresStatement("DELETE FROM saga_outbox WHERE id = ANY($1::bigint[])", [PostgresArray(ids)])
    }

    /// Every `vacuumInterval` in which rows were deleted, vacuums the outbox table (see
    /// ``RelayConfiguration/vacuumInterval``), until cancelled. `SKIP_LOCKED`: a vacuum already running (another
    /// relay's, autovacuum) is not waited for. A failure is logged and tried again next time.
    private func vacuumWhileDeleting(on pool: PostgresPool) async {
        guard let interval = configuration.vacuumInterval else { return }
        do {
            let rows = try await pool.query(
                """
                SELECT pg_has_role(c.relowner, 'USAGE') OR r.rolsuper AS allowed
                FROM pg_class c, pg_roles r WHERE c.oid = 'saga_outbox'::regclass AND r.rolname = current_user
                """)
            guard try rows.first?.decode("allowed", as: Bool.self) == true else {
                logger.notice("the relay does not vacuum the outbox table (its role does not own it): autovacuum only")
                return
            }
        } catch {
            logger.debug("outbox vacuum: ownership check failed", metadata: ["error": "\(error)"])
        }
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let deleted = deletedSinceVacuum.withLock { count in
                defer { count = 0 }
                return count
            }
            guard deleted > 0, !Task.isCancelled else { continue }
            do {
                try await pool.execute("VACUUM (SKIP_LOCKED, TRUNCATE false) saga_outbox")
            } catch {
                logger.debug("outbox vacuum failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Sends `batch`; while the acknowledgements are pending, reads the next batch, deleting `previous` (rows
    /// acknowledged before) in the same round trip. A `flagged` relay, which every commit wakes, reads nothing when
    /// `batch`'s read saw every row and no commit has woken it since: `previous` then waits for the next read. If
    /// every row was acknowledged, hands the rows back for deletion with a later read. If some were not, settles
    /// the batch now (see ``settle(_:_:sent:holds:on:)``); if the reports take longer than `settleTimeout`, leaves
    /// the batch in flight in `holds` and drops the next batch, which may hold later rows of its sagas.
    private func publish(
        _ batch: OutboxBatch, shards: [Int], round: Int, lowerFlag: Bool, flagged: Bool,
        deleting previous: [Int64], holds: inout Holds,
        on connection: PostgresConnection, producer: KafkaProducer
    ) async throws -> Outcome {
        let sent = ContinuousClock.now
        let delivery = PendingDelivery(batch.messages, producer: producer, wake: wake)
        let next: OutboxBatch
        var undeleted: [Int64] = []
        do {
            if lowerFlag { try await setIdle(false, shards: shards, on: connection) }
            if flagged && batch.complete && holds.stragglers.isEmpty && wake.count == lastRead.withLock({ $0 }) {
                // Any row committed since `batch` was read would have woken the relay: nothing to look for.
                next = OutboxBatch(complete: true)
                undeleted = previous
            } else {
                next = try await read(shards, round + 1, holds, connection, excluding: batch.ids, deleting: previous)
            }
        } catch {
            _ = await delivery.results(within: configuration.settleTimeout)  // the batch goes again next session
            throw error
        }
        guard let results = await delivery.results(within: configuration.settleTimeout) else {
            logger.warning(
                "delivery reports overdue: holding the batch's sagas back, going on with the others",
                metadata: ["rows": "\(batch.ids.count)", "waited": "\(configuration.settleTimeout)"])
            holds.stragglers.append(Straggler(batch: batch, delivery: delivery, sent: sent))
            if !undeleted.isEmpty { try await delete(undeleted, on: connection) }
            return Outcome(clean: false, next: nil)
        }
        if configuration.failpoint == .crashAfterPublish {
            logger.warning("failpoint: crashing after publish, before delete", metadata: ["rows": "\(batch.ids.count)"])
            throw RelayCrashed()
        }
        let done = try await settle(batch, results, sent: sent, holds: &holds, on: connection)
        let clean = done.count == batch.ids.count
        let settled = undeleted + done
        if !clean, !settled.isEmpty { try await delete(settled, on: connection) }
        return Outcome(clean: clean, next: clean ? next : nil, acknowledged: clean ? settled : [])
    }

    /// Settles the rows of stragglers whose reports arrived (with `wait`, first waits up to `pollInterval` for
    /// the oldest straggler's last report): deletes the acknowledged rows and releases their sagas.
    private func settleStragglers(_ holds: inout Holds, wait: Bool, on connection: PostgresConnection) async throws {
        if wait, let oldest = holds.stragglers.first {
            _ = await oldest.delivery.results(within: configuration.pollInterval)
        }
        var index = 0
        while index < holds.stragglers.count {
            let straggler = holds.stragglers[index]
            let reported = straggler.delivery.reported
            let arrived = straggler.pending.filter { reported[$0] != nil }
            if !arrived.isEmpty {
                holds.stragglers[index].pending.removeAll { reported[$0] != nil }
                let done = try await settle(
                    straggler.batch.rows(arrived), arrived.map { reported[$0]! }, sent: straggler.sent,
                    holds: &holds, on: connection)
                if !done.isEmpty { try await delete(done, on: connection) }
            }
            if holds.stragglers[index].pending.isEmpty {
                holds.stragglers.remove(at: index)
            } else {
                index += 1
            }
        }
    }

    /// Records what became of a sent batch: returns the acknowledged rows to delete, parks a row refused for
    /// good, counts the failed rows' attempts and holds their sagas back (per-saga backoff); throws a fatal
    /// producer error (the session ends and starts again with a new producer).
    private func settle(
        _ batch: OutboxBatch, _ results: [Result<KafkaDeliveryReport, KafkaError>], sent: ContinuousClock.Instant,
        holds: inout Holds, on connection: PostgresConnection
    ) async throws -> [Int64] {
        let sendSeconds = (ContinuousClock.now - sent).milliseconds / 1000
        metrics.publishDuration.recordSeconds(sendSeconds)
        let settled = Settlement(results: results, ids: batch.ids, sagas: batch.sagas)
        for index in settled.doneIndices { metrics.lag.recordSeconds(batch.waited[index] + sendSeconds) }
        let done = settled.doneIndices.map { batch.ids[$0] }
        holds.release(settled.doneIndices.map { batch.sagas[$0] })
        holds.backOff(settled.backingOff, policy: configuration.retry)
        if let refused = settled.refused {
            try await connection.execute(
                "UPDATE saga_outbox SET failed_at = now(), attempts = attempts + 1, last_error = $2 WHERE id = $1",
                [refused.id, refused.error.description])
            metrics.parked.increment()
            logger.error(
                "outbox row parked: the broker refused it for good; the later rows of its saga wait behind it (delete the row, or clear failed_at to retry it)",
                metadata: ["id": "\(refused.id)", "error": "\(refused.error)"])
        }
        if let firstError = settled.firstError, !settled.failed.isEmpty {
            try await connection.execute(
                "UPDATE saga_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])",
                [PostgresArray(settled.failed), firstError.description])
            logger.warning(
                "publish failed",
                metadata: [
                    "rows": "\(settled.failed.count)", "heldBack": "\(settled.heldBack)", "error": "\(firstError)",
                ])
        }
        metrics.published.increment(by: done.count)
        metrics.failed.increment(by: settled.failed.count)
        state.withLock {
            $0.published += done.count
            $0.failed += settled.failed.count
            $0.batches += 1
        }
        if let fatal = settled.fatal { throw fatal }
        return done
    }
}

/// Rows read from the outbox, in per-shard id order, at most one per saga.
struct OutboxBatch: Sendable {
    var ids: [Int64] = []
    var sagas: [String] = []
    var waited: [Double] = []
    var messages: [KafkaOutgoingMessage] = []
    /// The read returned every row it saw (none left behind by the batch size or for its saga's later round).
    var complete = false
    var isEmpty: Bool { ids.isEmpty }

    /// The rows at `indices`.
    func rows(_ indices: [Int]) -> OutboxBatch {
        var picked = OutboxBatch()
        for i in indices {
            picked.ids.append(ids[i])
            picked.sagas.append(sagas[i])
            picked.waited.append(waited[i])
            picked.messages.append(messages[i])
        }
        return picked
    }
}

/// A batch handed to the producer; its delivery reports arrive on their own.
final class PendingDelivery: Sendable {
    private struct State {
        var deliveries: KafkaDeliveries?
        var results: [Result<KafkaDeliveryReport, KafkaError>]?
        /// The relay stopped waiting for the reports (``results(within:)`` timed out): it wants a wake when they are in.
        var straggling = false
    }
    private let state = Mutex(State())
    private let arrived = WakeSignal()
    private let count: Int

    /// Sends `messages`; once every report is in, wakes `wake` if the relay stopped waiting for them (a straggler).
    /// Otherwise the relay has them from ``results(within:)``, and a wake would only make it read again for nothing.
    init(_ messages: [KafkaOutgoingMessage], producer: KafkaProducer, wake: WakeSignal) {
        count = messages.count
        Task { [self] in
            let deliveries = await producer.enqueue(messages)
            state.withLock { $0.deliveries = deliveries }
            let results = await deliveries.results()
            let straggling = state.withLock { s in
                s.results = results
                return s.straggling
            }
            arrived.signal()
            if straggling { wake.signal() }
        }
    }

    /// Every report, once all arrived.
    var results: [Result<KafkaDeliveryReport, KafkaError>]? { state.withLock { $0.results } }

    /// The reports that arrived so far, by message (nil: pending).
    var reported: [Result<KafkaDeliveryReport, KafkaError>?] {
        state.withLock { s in
            if let results = s.results { return results.map { $0 } }
            return s.deliveries?.reported ?? Array(repeating: nil, count: count)
        }
    }

    /// Waits up to `timeout` for every report; nil if some are still pending then.
    func results(within timeout: Duration) async -> [Result<KafkaDeliveryReport, KafkaError>]? {
        if let results { return results }
        await arrived.wait(timeout: timeout)
        return state.withLock { s in
            if s.results == nil { s.straggling = true }
            return s.results
        }
    }
}

/// A batch with delivery reports still pending after `settleTimeout`: its rows are settled one by one as their
/// reports arrive (a batch has at most one row per saga, so its rows do not depend on each other).
struct Straggler: Sendable {
    let batch: OutboxBatch
    let delivery: PendingDelivery
    let sent: ContinuousClock.Instant
    /// The rows (indices into `batch`) still waiting for their report.
    var pending: [Int]

    init(batch: OutboxBatch, delivery: PendingDelivery, sent: ContinuousClock.Instant) {
        self.batch = batch
        self.delivery = delivery
        self.sent = sent
        pending = Array(batch.ids.indices)
    }
}

/// What the relay holds back from its reads: the rows and sagas of batches in flight past `settleTimeout`, and
/// the sagas whose rows failed retriably, each until its own backoff ends.
struct Holds {
    var stragglers: [Straggler] = []
    /// Saga → end of its backoff and its failed attempts in a row.
    private(set) var backingOff: [String: (until: ContinuousClock.Instant, attempts: Int)] = [:]

    /// Rows in flight past `settleTimeout`, still without their report.
    var inFlightIds: [Int64] { stragglers.flatMap { s in s.pending.map { s.batch.ids[$0] } } }

    /// Sagas no row of which may be read now.
    var heldSagas: [String] {
        let now = ContinuousClock.now
        return stragglers.flatMap { s in s.pending.map { s.batch.sagas[$0] } }
            + backingOff.compactMap { $0.value.until > now ? $0.key : nil }
    }

    var heldSagaCount: Int { heldSagas.count }

    /// How long an idle relay may wait (at most `limit`): until a held saga's backoff ends, and a quarter second
    /// at most while stragglers may get reports.
    func wait(atMost limit: Duration) -> Duration {
        let now = ContinuousClock.now
        let soonest = backingOff.values.map(\.until).filter { $0 > now }.min()
        let wait = soonest.map { min(limit, $0 - now) } ?? limit
        return stragglers.isEmpty ? wait : min(wait, .milliseconds(250))
    }

    mutating func backOff(_ sagas: [String], policy: RetryPolicy) {
        let now = ContinuousClock.now
        for saga in sagas {
            let attempts = (backingOff[saga]?.attempts ?? 0) + 1
            backingOff[saga] = (now + policy.delay(attempt: attempts), attempts)
        }
    }

    mutating func release(_ sagas: [String]) {
        guard !backingOff.isEmpty else { return }
        for saga in sagas { backingOff[saga] = nil }
    }

    /// Forgets backoffs that ended over a minute ago (a saga whose row was deleted or parked meanwhile), so the
    /// map stays bounded; a saga failing again later starts its backoff anew.
    mutating func expire() {
        guard !backingOff.isEmpty else { return }
        let horizon = ContinuousClock.now - .seconds(60)
        backingOff = backingOff.filter { $0.value.until > horizon }
    }
}

/// What to do with each row of a published batch, given the delivery results in batch order.
struct Settlement {
    /// Acknowledged rows to delete (indices into the batch).
    var doneIndices: [Int] = []
    /// Rows that failed and go again (retriable failures, and the rows after a refused one).
    var failed: [Int64] = []
    /// The sagas of rows that failed retriably on their own (not merely after a refused row): they back off.
    var backingOff: [String] = []
    /// Acknowledged rows kept because an earlier row of their saga failed or was parked: they go out again after
    /// it (only with several rows of a saga in one batch, which the relay does not send).
    var heldBack = 0
    /// The first row the broker refused for good: parked, and the later rows of its saga wait behind it.
    var refused: (id: Int64, error: KafkaError)?
    var firstError: KafkaError?
    var fatal: KafkaError?

    init(results: [Result<KafkaDeliveryReport, KafkaError>], ids: [Int64], sagas: [String]) {
        var blockedSagas: Set<String> = []
        for (index, result) in results.enumerated() {
            switch result {
            case .success:
                if blockedSagas.contains(sagas[index]) {
                    heldBack += 1
                } else {
                    doneIndices.append(index)
                }
            case .failure(let error):
                if error.isFatal { fatal = error }
                if !error.isRetriable, !error.isFatal, refused == nil {
                    refused = (ids[index], error)
                } else {
                    failed.append(ids[index])
                    // The rows after a refused one may have failed only because it did: they go again at once.
                    if refused == nil, blockedSagas.insert(sagas[index]).inserted { backingOff.append(sagas[index]) }
                }
                blockedSagas.insert(sagas[index])
                firstError = firstError ?? error
            }
        }
    }
}
