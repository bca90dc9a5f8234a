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
    public var kafka: KafkaSettings
    public var database: ServiceDatabase
    /// Most rows published per round trip.
    public var batchSize: Int = 500
    /// Fallback poll while idle. An idle relay is normally woken by a NOTIFY from the first commit that adds
    /// rows to one of its shards; the poll only covers a commit that raced the relay going idle.
    public var pollInterval: Duration = .seconds(1)
    /// How long a relay that found nothing keeps looking (every `gracePollInterval`) before it flags itself idle.
    /// Under load rows come again within milliseconds; a relay that flagged itself idle between them would make
    /// every writer's commit send a NOTIFY, and PostgreSQL serialises notifying commits cluster-wide.
    public var idleGrace: Duration = .milliseconds(100)
    public var gracePollInterval: Duration = .milliseconds(2)
    /// How often an instance tries to take over shards nobody owns (e.g. after another relay died).
    public var claimInterval: Duration = .seconds(2)
    /// Most shards one instance owns; lower it to spread the shards over several instances.
    public var maxShards: Int = EngineMigrations.shardCount
    /// How often the outbox gauges (backlog, age of the oldest unpublished row, parked rows) are refreshed.
    public var gaugeInterval: Duration = .seconds(5)
    public var retry = RetryPolicy()
    /// The server ends the session holding this relay's shard locks once it has been idle this long (see
    /// ``OutboxRelay/lockSession(_:)``), so a frozen relay's shards go to a standby within about this plus
    /// `claimInterval` (at least three times the longer of `pollInterval` and `claimInterval`: an idle relay
    /// uses the session that often). Waiting longer than this for the broker's acknowledgements ends a live
    /// relay's session too (it starts a new one, and the rows go out again); nil keeps the server's setting.
    public var lockSessionIdleTimeout: Duration? = .seconds(10)
    /// Fault injection for tests: stop after publishing a batch, before marking it published,
    /// as a crash there would.
    public var failpoint: RelayFailpoint? = nil

    public init(name: String, kafka: KafkaSettings, database: ServiceDatabase) {
        self.name = name
        self.kafka = kafka
        self.database = database
    }
}

public enum RelayFailpoint: Sendable, Hashable {
    case crashAfterPublish
}

/// Thrown by `run()` when the `crashAfterPublish` failpoint fired.
public struct RelayCrashed: Error, Sendable {}

public struct RelayStats: Sendable, Hashable {
    public var published = 0
    public var failed = 0
    public var batches = 0
    public var ownedShards: [Int] = []
}

/// Publishes committed outbox rows in id order per shard and deletes each row once the broker acknowledged
/// it (idempotent producer, acks=all).
///
/// - Only committed rows are visible to its query, so nothing is published before its transaction
///   committed. It never tracks a "highest id seen": every read takes the lowest ids of each shard that are
///   not in flight, so a row whose transaction committed late (a lower id committing after a higher one) is
///   not skipped.
/// - A row is deleted only after its acknowledgement; a crash between publish and delete means the rows are
///   published again, and consumers' inboxes absorb that. A row that failed retriably stays for the next
///   round, and so does every later row of the same saga in that batch, even if acknowledged, so the saga's
///   rows go out again in order after it. A row the broker refuses for good is parked (`failed_at`).
/// - While the broker acknowledges a batch, the next one is read (excluding the rows in flight); it is sent
///   only if the whole previous batch succeeded, otherwise it is dropped and read again.
/// - Idle (nothing found for `idleGrace`, looking every `gracePollInterval`): it raises its shards' flag in
///   `saga_outbox_wake`, waits until no inserting transaction is in flight,
///   and reads once more; an insert into a flagged shard notifies at commit, which wakes it. `pollInterval` is
///   only a fallback (a writer transaction open for long, a REPEATABLE READ writer). A lost listening session
///   is re-established (``WakeListener``).
/// - Several instances: each owns outbox shards through session advisory locks held on its connection;
///   a saga's rows are all in one shard, so one saga is only ever published by one instance, in order.
public final class OutboxRelay: Service, Sendable {
    public let configuration: RelayConfiguration
    private let logger: Logger
    private let state = Mutex(RelayStats())
    private let wake = WakeSignal()
    private let metrics: RelayMetrics

    public init(configuration: RelayConfiguration, logger: Logger) {
        self.configuration = configuration
        self.metrics = RelayMetrics(service: configuration.name)
        var logger = logger
        logger[metadataKey: "service"] = .string(configuration.name)
        self.logger = logger
    }

    public var stats: RelayStats { state.withLock { $0 } }

    private var channel: String { "saga_outbox_" + configuration.database.schema }

    /// Runs until graceful shutdown or cancellation; reconnects after database failures (also while the
    /// outbox table does not exist yet: the service's worker or `saga migrate` creates it).
    /// - Throws: `RelayCrashed` when the test failpoint fired; errors creating the producer.
    public func run() async throws {
        defer { logger.info("relay stopped", metadata: ["stats": "\(stats)"]) }
        var attempt = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            // A new producer per session: after a fatal producer error (e.g. the idempotent producer lost its
            // sequence), the next session starts with a fresh one.
            var producerConfiguration = configuration.kafka.producer(clientId: "saga-relay-\(configuration.name)")
            // The relay hands the producer whole batches already: waiting to fill one only adds latency, and a
            // second request in flight gains nothing while it waits for the batch (and costs ~40 ms per batch
            // against the embedded broker). Ordering and idempotence are unchanged.
            producerConfiguration.lingerMs = 1
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
        let db = configuration.database.configuration
        let connection = try await PostgresConnection.connect(lockSession(db), logger: logger)
        let gaugePool = PostgresPool(configuration: db, size: 1, logger: logger)
        let listener: WakeListener
        do {
            listener = try await WakeListener.start(
                db, channel: channel, wake: wake, retry: configuration.retry, logger: logger)
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
        do {
            try await loop(connection: connection, producer: producer)
        } catch {
            gauges.cancel()
            await listener.close()
            await connection.close()
            await gaugePool.close()
            throw error
        }
        gauges.cancel()
        await listener.close()
        await connection.close()
        await gaugePool.close()
    }

    private func loop(connection: PostgresConnection, producer: KafkaProducer) async throws {
        var owned: [Int] = []
        var lastClaim = ContinuousClock.now - configuration.claimInterval
        var failures = 0
        var flagged = false  // this relay's shards are flagged idle in saga_outbox_wake
        var prefetched: Batch?
        // Acknowledged rows of the last clean batch: deleted while the broker acknowledges the next one, or before
        // the relay idles or stops (a crash before that re-publishes them).
        var acknowledged: [Int64] = []
        var round = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if ContinuousClock.now - lastClaim >= configuration.claimInterval {
                lastClaim = .now
                let claimed = try await claimShards(owned: owned, on: connection)
                // Shards taken over carry whatever flag their last owner left: raise them all again when idle.
                if claimed != owned { flagged = false }
                owned = claimed
            }
            if owned.isEmpty {
                await wake.wait(timeout: configuration.claimInterval)
                continue
            }
            round += 1
            var batch: Batch
            if let prefetched { batch = prefetched } else { batch = try await read(owned, round, [], connection) }
            prefetched = nil
            if batch.isEmpty {
                if !acknowledged.isEmpty {
                    try await delete(acknowledged, on: connection)
                    acknowledged = []
                }
                if !flagged {
                    // Keep looking for a while before going idle, so that writers under load never notify.
                    let graceEnd = ContinuousClock.now + configuration.idleGrace
                    while batch.isEmpty && ContinuousClock.now < graceEnd && !Task.isShuttingDownGracefully
                        && !Task.isCancelled
                    {
                        try await Task.sleep(for: configuration.gracePollInterval)
                        batch = try await read(owned, round, [], connection)
                    }
                }
                if batch.isEmpty && !flagged {
                    // Raise the flag, then look once more: a commit the read above missed either shows now or
                    // finds the flag raised and notifies.
                    try await setIdle(true, shards: owned, on: connection)
                    flagged = true
                    try await waitForInsertsInFlight(on: connection)
                    batch = try await read(owned, round, [], connection)
                }
                if batch.isEmpty {
                    await wake.wait(timeout: configuration.pollInterval)
                    continue
                }
            }
            // The flag is lowered while the broker acknowledges the batch, not before sending it.
            let lowerFlag = flagged
            flagged = false
            let previous = acknowledged
            acknowledged = []
            let outcome = try await publish(
                batch, shards: owned, round: round, lowerFlag: lowerFlag, deleting: previous, on: connection,
                producer: producer)
            if outcome.clean {
                failures = 0
                prefetched = outcome.next
                acknowledged = outcome.acknowledged
            } else if outcome.retriable {
                failures += 1
                try? await Task.sleep(for: configuration.retry.delay(attempt: failures))
            }
        }
        // Stopping: delete what the broker acknowledged (if this fails, the rows are published again later).
        if !acknowledged.isEmpty { try? await delete(acknowledged, on: connection) }
    }

    /// Rows read from the outbox, in per-shard id order.
    private struct Batch: Sendable {
        var ids: [Int64] = []
        var sagas: [String] = []
        var waited: [Double] = []
        var messages: [KafkaOutgoingMessage] = []
        var isEmpty: Bool { ids.isEmpty }
    }

    /// The lowest-id rows of each shard that are not parked and not in `excluding` (rows in flight), at most
    /// `batchSize` in all. Each shard costs an index range scan of the rows taken (plus those in flight), never
    /// the backlog; the shards' order rotates with `round` so that a full shard cannot starve the others.
    /// (The row comparison on `(shard, id)` is deliberate: with `shard = s.shard ... ORDER BY id` the planner
    /// may walk the primary key and filter by shard, which reads the whole backlog of the other shards.)
    private func read(_ shards: [Int], _ round: Int, _ excluding: [Int64], _ connection: PostgresConnection)
        async throws -> Batch
    {
        let offset = round % shards.count
        let rotated = Array(shards[offset...] + shards[..<offset])
        let rows = try await connection.query(
            """
            SELECT o.id, o.saga_id, o.topic, o.key, o.headers::text AS headers, o.payload,
                extract(epoch FROM clock_timestamp() - o.created_at)::float8 AS waited
            FROM unnest($1::int[]) AS s(shard)
            CROSS JOIN LATERAL (
                SELECT id, saga_id, topic, key, headers, payload, created_at FROM saga_outbox
                WHERE (saga_outbox.shard, saga_outbox.id) > (s.shard, 0) AND saga_outbox.shard <= s.shard
                    AND failed_at IS NULL AND id <> ALL($3::bigint[])
                ORDER BY saga_outbox.shard, saga_outbox.id LIMIT $2
            ) AS o
            LIMIT $2
            """,
            [PostgresArray(rotated), configuration.batchSize, PostgresArray(excluding)])
        var batch = Batch()
        batch.ids.reserveCapacity(rows.count)
        batch.messages.reserveCapacity(rows.count)
        for row in rows {
            batch.ids.append(try row.decode("id", as: Int64.self))
            batch.sagas.append(try row.decode("saga_id", as: String.self))
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

    /// The whole outbox's backlog (every shard, whoever owns it), its oldest unpublished row's age, and the
    /// parked rows, as gauges.
    private func recordOutboxGauges(on pool: PostgresPool) async throws {
        let rows = try await pool.query(
            """
            SELECT count(*) AS backlog,
                COALESCE(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS oldest,
                (SELECT count(*) FROM saga_outbox WHERE failed_at IS NOT NULL) AS parked
            FROM saga_outbox WHERE failed_at IS NULL
            """)
        guard let row = rows.first else { return }
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
        /// Some row failed retriably: back off before the next round.
        var retriable: Bool
        var next: Batch?
        /// When clean: the acknowledged rows, for the caller to delete (while the next batch is acknowledged).
        var acknowledged: [Int64] = []
    }

    private func delete(_ ids: [Int64], on connection: PostgresConnection) async throws {
        try await connection.execute("DELETE FROM saga_outbox WHERE id = ANY($1::bigint[])", [PostgresArray(ids)])
    }

    /// Sends `batch`; while the acknowledgements are pending, deletes `previous` (the last batch's acknowledged
    /// rows) and reads the next batch. Then, if every row was acknowledged, hands the rows back for deletion in the
    /// next round; otherwise deletes the acknowledged ones now, parks a row refused for good and records the
    /// failures.
    private func publish(
        _ batch: Batch, shards: [Int], round: Int, lowerFlag: Bool, deleting previous: [Int64],
        on connection: PostgresConnection, producer: KafkaProducer
    ) async throws -> Outcome {
        let sending = ContinuousClock.now
        let messages = batch.messages
        let delivery = Task { await producer.send(messages) }
        let next: Batch
        do {
            if !previous.isEmpty { try await delete(previous, on: connection) }
            if lowerFlag { try await setIdle(false, shards: shards, on: connection) }
            next = try await read(shards, round + 1, batch.ids, connection)
        } catch {
            _ = await delivery.value  // nothing is deleted: the batch goes again in the next session
            throw error
        }
        let results = await delivery.value
        let sendSeconds = (ContinuousClock.now - sending).milliseconds / 1000
        metrics.publishDuration.recordSeconds(sendSeconds)
        if configuration.failpoint == .crashAfterPublish {
            logger.warning("failpoint: crashing after publish, before delete", metadata: ["rows": "\(batch.ids.count)"])
            throw RelayCrashed()
        }
        let settled = Settlement(results: results, ids: batch.ids, sagas: batch.sagas)
        for index in settled.doneIndices { metrics.lag.recordSeconds(batch.waited[index] + sendSeconds) }
        let done = settled.doneIndices.map { batch.ids[$0] }
        let (failed, heldBack, refused, firstError, fatal) = (
            settled.failed, settled.heldBack, settled.refused, settled.firstError, settled.fatal
        )
        let clean = done.count == batch.ids.count
        if !clean, !done.isEmpty { try await delete(done, on: connection) }
        if let refused {
            try await connection.execute(
                "UPDATE saga_outbox SET failed_at = now(), attempts = attempts + 1, last_error = $2 WHERE id = $1",
                [refused.id, refused.error.description])
            metrics.parked.increment()
            logger.error(
                "outbox row parked: the broker refused it for good (clear failed_at to retry it)",
                metadata: ["id": "\(refused.id)", "error": "\(refused.error)"])
        }
        if let firstError, !failed.isEmpty {
            try await connection.execute(
                "UPDATE saga_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])",
                [PostgresArray(failed), firstError.description])
            logger.warning(
                "publish failed",
                metadata: ["rows": "\(failed.count)", "heldBack": "\(heldBack)", "error": "\(firstError)"])
        }
        metrics.published.increment(by: done.count)
        metrics.failed.increment(by: failed.count)
        state.withLock {
            $0.published += done.count
            $0.failed += failed.count
            $0.batches += 1
        }
        if let fatal { throw fatal }  // the session ends; run() starts a new one with a new producer
        return Outcome(
            clean: clean, retriable: !failed.isEmpty, next: clean ? next : nil, acknowledged: clean ? done : [])
    }
}

/// What to do with each row of a published batch, given the delivery results in batch order.
struct Settlement {
    /// Acknowledged rows to delete (indices into the batch).
    var doneIndices: [Int] = []
    /// Rows that failed and go again (retriable failures, and the rows after a refused one).
    var failed: [Int64] = []
    /// Acknowledged rows kept because an earlier row of their saga failed and stays: they go out again after it.
    var heldBack = 0
    /// The first row the broker refused for good: parked so it cannot block the rows behind it.
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
                // The rows after a refused one may have failed only because it did, and go again.
                if !error.isRetriable, !error.isFatal, refused == nil {
                    refused = (ids[index], error)
                } else {
                    failed.append(ids[index])
                    blockedSagas.insert(sagas[index])
                }
                firstError = firstError ?? error
            }
        }
    }
}
