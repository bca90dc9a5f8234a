import ArgumentParser
import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaPostgres
import ServiceLifecycle

struct BenchRelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Time an outbox relay draining a backlog of outbox rows to the broker.",
        discussion: """
            Creates a scratch schema with the engine's migrations (saga_bench_relay_<random>), starts an outbox \
            relay on it in this process (SAGA_RELAY_BATCH_SIZE as configured) against the stack's broker, inserts \
            --rows rows for a bench topic in one statement, and times the relay from that commit until it has \
            published every row and the broker acknowledged them. Then stops the relay and drops the schema. \
            Target: >= 50,000 rows/s. Exits 1 when the backlog is not drained within --timeout.
            """)

    @Option(help: "Outbox rows in the backlog.") var rows = 100_000
    @Option(help: "Bytes of each row's payload.") var payloadBytes = 400
    @Option(help: "Seconds to wait for the relay to drain the backlog.") var timeout = 300
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        guard (1...10_000_000).contains(rows) else { throw ValidationError("--rows must be 1...10000000") }
        guard (0...100_000).contains(payloadBytes) else { throw ValidationError("--payload-bytes must be 0...100000") }
        guard timeout >= 1 else { throw ValidationError("--timeout must be at least 1") }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.bench")
        let env = runtime.env
        let logger = runtime.logger
        let kafka = try env.kafka()
        let database = ServiceDatabase(
            url: env.databaseURL, schema: "saga_bench_relay_" + UUID().uuidString.prefix(8).lowercased())
        let topic = env.topics.topic(for: "saga.bench.drain")

        // The topic exists before the clock starts (the embedded broker creates it on first use).
        let warm = try KafkaProducer(configuration: kafka.producer(clientId: "saga-bench-relay"), logger: logger)
        _ = try await warm.send(KafkaOutgoingMessage(topic: topic, key: Array("warm".utf8), value: []))
        await warm.shutdown()

        try await database.prepare(migrations: [], logger: logger)
        let pool = PostgresPool(configuration: database.configuration, size: 1, logger: logger)
        var configuration = RelayConfiguration(name: "bench-relay", kafka: kafka, database: database)
        configuration.batchSize = env.relayBatchSize
        let relay = OutboxRelay(configuration: configuration, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: relay)], gracefulShutdownSignals: [], logger: logger))
        let running = Task { try await group.run() }
        var watched = [WatchedProcess(name: "bench (relay in process)", pid: getpid())]
        if let postmaster = await CommitProbe.postmaster(url: env.databaseURL, logger: logger) {
            watched.append(WatchedProcess(name: "postgres (all backends)", pid: postmaster, withChildren: true))
        }
        let processes = ProcessWatch(watched)

        var outcome: Result<DrainResult, any Error>
        do {
            outcome = .success(try await drain(relay: relay, pool: pool, topic: topic, processes: processes))
        } catch {
            outcome = .failure(error)
        }
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        _ = try? await pool.execute("DROP SCHEMA \(PostgresConnection.quoteIdentifier(database.schema)) CASCADE")
        await pool.close()

        let result = try outcome.get()
        if json {
            say(String(decoding: result.json.serialized(), as: UTF8.self))
        } else {
            say(result.text)
        }
        guard result.published >= rows else {
            throw BenchFailure(
                description: "the relay published \(result.published) of \(rows) rows within \(timeout) s")
        }
    }

    struct DrainResult {
        var rows: Int
        var payloadBytes: Int
        var insertSeconds: Double
        var published: Int
        var batches: Int
        var failed: Int
        var seconds: Double
        var processes: [ProcessFigures]

        var rowsPerSecond: Double { seconds > 0 ? Double(published) / seconds : 0 }

        var json: JSONValue {
            .object([
                "rows": .integer(Int64(rows)), "payloadBytes": .integer(Int64(payloadBytes)),
                "insertSeconds": .number(round2(insertSeconds)), "published": .integer(Int64(published)),
                "batches": .integer(Int64(batches)), "failed": .integer(Int64(failed)),
                "seconds": .number(round2(seconds)), "rowsPerSecond": .number(round1(rowsPerSecond)),
                "targetRowsPerSecond": .integer(50_000), "processes": .array(processes.map(\.json)),
            ])
        }

        var text: String {
            var lines = [
                "relay drain     \(published)/\(rows) rows of \(payloadBytes) B drained in \(fmt(seconds)) s: "
                    + "\(fmt(rowsPerSecond)) rows/s (target >= 50000), \(batches) batches, \(failed) failed sends",
                "                backlog inserted in one statement in \(fmt(insertSeconds)) s",
            ]
            for p in processes { lines.append("process         \(p.text)") }
            return lines.joined(separator: "\n")
        }
    }

    private func drain(relay: OutboxRelay, pool: PostgresPool, topic: String, processes: ProcessWatch) async throws
        -> DrainResult
    {
        let ready = ContinuousClock.now + .seconds(30)
        while relay.stats.ownedShards.count < EngineMigrations.shardCount && ContinuousClock.now < ready {
            try await Task.sleep(for: .milliseconds(20))
        }
        guard relay.stats.ownedShards.count == EngineMigrations.shardCount else {
            throw BenchFailure(description: "the relay did not take the scratch outbox's shards within 30 s")
        }
        let before = relay.stats
        let inserting = ContinuousClock.now
        try await pool.execute(
            """
            INSERT INTO saga_outbox (shard, saga_id, event_id, event_type, topic, key, headers, payload)
            SELECT \(Outbox.shard(of: "s")), s, gen_random_uuid(), $2, $3,
                convert_to(s, 'UTF8'), '[]'::jsonb, convert_to(rpad('{"sagaId":"' || s || '","data":"', $4, 'x') || '"}', 'UTF8')
            FROM (SELECT 'drain-' || g AS s FROM generate_series(1, $1::int) AS g) AS backlog
            """, [rows, "saga.bench.drain", topic, max(0, payloadBytes - 2)])
        let start = ContinuousClock.now
        let cpu = processes.begin()
        let sampling = Task { await processes.sampleRSS() }
        let deadline = start + .seconds(timeout)
        while relay.stats.published - before.published < rows && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        let seconds = millis(ContinuousClock.now - start) / 1000
        sampling.cancel()
        let after = relay.stats
        return DrainResult(
            rows: rows, payloadBytes: payloadBytes, insertSeconds: millis(start - inserting) / 1000,
            published: after.published - before.published, batches: after.batches - before.batches,
            failed: after.failed - before.failed, seconds: seconds, processes: processes.end(cpu, seconds: seconds))
    }
}
