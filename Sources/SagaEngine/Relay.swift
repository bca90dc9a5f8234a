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
    /// Fallback poll when no NOTIFY arrives (the relay normally wakes on LISTEN/NOTIFY).
    public var pollInterval: Duration = .seconds(1)
    /// How often an instance tries to take over shards nobody owns (e.g. after another relay died).
    public var claimInterval: Duration = .seconds(2)
    /// Most shards one instance owns; lower it to spread the shards over several instances.
    public var maxShards: Int = EngineMigrations.shardCount
    /// Published rows are kept this long (for inspection), then deleted by a bounded job.
    public var retention: Duration = .seconds(3600)
    public var cleanupInterval: Duration = .seconds(60)
    /// How often the outbox gauges (backlog, age of the oldest unpublished row, parked rows) are refreshed.
    public var gaugeInterval: Duration = .seconds(5)
    public var retry = RetryPolicy()
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

/// Publishes committed outbox rows in id order per shard, marking each row published only after the
/// broker acknowledged it (idempotent producer, acks=all).
///
/// - Only committed rows are visible to its query, so nothing is published before its transaction
///   committed. It never tracks a "highest id seen": every round selects all unpublished rows, so a
///   row whose transaction committed late (a lower id committing after a higher one) is not skipped.
/// - A crash between publish and mark means the rows are published again; consumers' inboxes absorb that.
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
            let producer = try KafkaProducer(
                configuration: configuration.kafka.producer(clientId: "saga-relay-\(configuration.name)"),
                logger: logger)
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
        let connection = try await PostgresConnection.connect(db, logger: logger)
        let cleanupPool = PostgresPool(configuration: db, size: 1, logger: logger)
        let listener = try await PostgresListener.start(db, channels: [channel], logger: logger)
        let listening = Task { [wake] in
            for await _ in listener.notifications { wake.signal() }
        }
        // The outbox gauges are refreshed apart from the loop, so they keep moving while a publish waits on
        // the broker.
        let gauges = Task { [interval = configuration.gaugeInterval] in
            while !Task.isCancelled {
                try? await self.recordOutboxGauges(on: cleanupPool)
                try? await Task.sleep(for: interval)
            }
        }
        defer { listening.cancel() }
        do {
            try await loop(connection: connection, producer: producer, cleanupPool: cleanupPool)
        } catch {
            gauges.cancel()
            await listener.close()
            await connection.close()
            await cleanupPool.close()
            throw error
        }
        gauges.cancel()
        await listener.close()
        await connection.close()
        await cleanupPool.close()
    }

    private func loop(connection: PostgresConnection, producer: KafkaProducer, cleanupPool: PostgresPool) async throws {
        var owned: [Int] = []
        var lastClaim = ContinuousClock.now - configuration.claimInterval
        var lastCleanup = ContinuousClock.now
        var failures = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if ContinuousClock.now - lastClaim >= configuration.claimInterval {
                lastClaim = .now
                owned = try await claimShards(owned: owned, on: connection)
            }
            if owned.isEmpty {
                await wake.wait(timeout: configuration.claimInterval)
                continue
            }
            let (published, failed, full) = try await publishBatch(shards: owned, on: connection, producer: producer)
            if failed > 0 {
                failures += 1
                try? await Task.sleep(for: configuration.retry.delay(attempt: failures))
                continue
            }
            failures = 0
            if ContinuousClock.now - lastCleanup >= configuration.cleanupInterval {
                lastCleanup = .now
                await Retention.cleanOutbox(pool: cleanupPool, olderThan: configuration.retention, logger: logger)
            }
            if full || published > 0 && published == configuration.batchSize { continue }
            await wake.wait(timeout: configuration.pollInterval)
        }
    }

    /// The whole outbox's backlog (every shard, whoever owns it), its oldest unpublished row's age, and the
    /// parked rows, as gauges.
    private func recordOutboxGauges(on pool: PostgresPool) async throws {
        let rows = try await pool.query(
            """
            SELECT count(*) AS backlog,
                COALESCE(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS oldest,
                (SELECT count(*) FROM saga_outbox WHERE failed_at IS NOT NULL) AS parked
            FROM saga_outbox WHERE published_at IS NULL AND failed_at IS NULL
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

    /// Publishes the oldest unpublished rows of `shards` and marks the acknowledged ones.
    private func publishBatch(shards: [Int], on connection: PostgresConnection, producer: KafkaProducer)
        async throws -> (published: Int, failed: Int, full: Bool)
    {
        let rows = try await connection.query(
            """
            SELECT id, topic, key, headers::text AS headers, payload,
                extract(epoch FROM clock_timestamp() - created_at) AS waited FROM saga_outbox
            WHERE published_at IS NULL AND failed_at IS NULL AND shard = ANY($1::int[]) ORDER BY id LIMIT $2
            """,
            [PostgresArray(shards), configuration.batchSize])
        guard !rows.isEmpty else { return (0, 0, false) }
        var ids: [Int64] = []
        var waited: [Double] = []
        var messages: [KafkaOutgoingMessage] = []
        for row in rows {
            ids.append(try row.decode("id", as: Int64.self))
            waited.append(try row.decode("waited", as: Double.self))
            messages.append(
                KafkaOutgoingMessage(
                    topic: try row.decode("topic", as: String.self),
                    key: try row.decode("key", as: [UInt8]?.self),
                    value: try row.decode("payload", as: [UInt8].self),
                    headers: Outbox.decodeHeaders(try row.decode("headers", as: String.self))))
        }
        var fatal: KafkaError?
        let sending = ContinuousClock.now
        let results = await producer.send(messages)
        let sendSeconds = (ContinuousClock.now - sending).milliseconds / 1000
        metrics.publishDuration.recordSeconds(sendSeconds)
        if configuration.failpoint == .crashAfterPublish {
            logger.warning("failpoint: crashing after publish, before mark", metadata: ["rows": "\(ids.count)"])
            throw RelayCrashed()
        }
        var done: [Int64] = []
        var failed: [Int64] = []
        var firstError: KafkaError?
        var refused: (id: Int64, error: KafkaError)?
        for ((id, result), wait) in zip(zip(ids, results), waited) {
            switch result {
            case .success:
                done.append(id)
                metrics.lag.recordSeconds(wait + sendSeconds)
            case .failure(let error):
                if error.isFatal { fatal = error }
                // The first row the broker refuses for good (e.g. too large) is parked so it cannot block
                // the rows behind it; the rows after it may have failed only because it did, and go again.
                if !error.isRetriable, !error.isFatal, refused == nil {
                    refused = (id, error)
                } else {
                    failed.append(id)
                }
                firstError = firstError ?? error
            }
        }
        if !done.isEmpty {
            try await connection.execute(
                "UPDATE saga_outbox SET published_at = now() WHERE id = ANY($1::bigint[])", [PostgresArray(done)])
        }
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
            logger.warning("publish failed", metadata: ["rows": "\(failed.count)", "error": "\(firstError)"])
        }
        metrics.published.increment(by: done.count)
        metrics.failed.increment(by: failed.count)
        state.withLock {
            $0.published += done.count
            $0.failed += failed.count
            $0.batches += 1
        }
        if let fatal { throw fatal }  // the session ends; run() starts a new one with a new producer
        return (done.count, failed.count, rows.count == configuration.batchSize)
    }
}
