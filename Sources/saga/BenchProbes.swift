import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaPostgres

/// The PostgreSQL limit: single-row INSERT commits on one connection (autocommit, so each is a commit with
/// the server's fsync and synchronous_commit as configured), into a logged table of a scratch schema that is
/// dropped afterwards. Goes through the engine's own libpq layer, as the services do.
enum CommitProbe {
    struct Result: Sendable {
        var commits: Int
        var seconds: Double
        var latency: Distribution
        var fsync: String
        var synchronousCommit: String

        var commitsPerSecond: Double { seconds > 0 ? Double(commits) / seconds : 0 }
        var msPerCommit: Double { commits > 0 ? seconds * 1000 / Double(commits) : 0 }

        var json: JSONValue {
            .object([
                "commits": .integer(Int64(commits)), "commitsPerSecond": .number(round1(commitsPerSecond)),
                "msPerCommit": .number(round2(msPerCommit)), "latencyMs": latency.json, "fsync": .string(fsync),
                "synchronousCommit": .string(synchronousCommit),
            ])
        }

        var text: String {
            "\(fmt(commitsPerSecond)) commits/s, \(String(format: "%.2f", msPerCommit)) ms per commit "
                + "(single-row INSERT, one connection, fsync=\(fsync), synchronous_commit=\(synchronousCommit))"
        }
    }

    static func run(url: String, duration: Duration, logger: Logger) async throws -> Result {
        let schema = "saga_bench_probe_" + UUID().uuidString.prefix(8).lowercased()
        let quoted = PostgresConnection.quoteIdentifier(schema)
        let connection = try await PostgresConnection.connect(
            PostgresConfiguration(url: url, searchPath: schema), logger: logger)
        do {
            let fsync = try await connection.query("SHOW fsync").first?.decode("fsync", as: String.self) ?? "?"
            let sync =
                try await connection.query("SHOW synchronous_commit").first?.decode(
                    "synchronous_commit", as: String.self) ?? "?"
            try await connection.executeScript(
                "CREATE SCHEMA \(quoted); CREATE TABLE \(quoted).probe (id bigserial PRIMARY KEY, n int NOT NULL)")
            var latencies: [Double] = []
            let start = ContinuousClock.now
            var n = 0
            while ContinuousClock.now - start < duration {
                let t = ContinuousClock.now
                _ = try await connection.execute("INSERT INTO probe (n) VALUES ($1)", [n])
                latencies.append(millis(ContinuousClock.now - t))
                n += 1
            }
            let seconds = millis(ContinuousClock.now - start) / 1000
            try await connection.executeScript("DROP SCHEMA \(quoted) CASCADE")
            await connection.close()
            return Result(
                commits: n, seconds: seconds, latency: Distribution(latencies), fsync: fsync, synchronousCommit: sync)
        } catch {
            _ = try? await connection.executeScript("DROP SCHEMA IF EXISTS \(quoted) CASCADE")
            await connection.close()
            throw error
        }
    }

    /// The PostgreSQL server's postmaster when it runs on this machine (for its CPU time): the parent of this
    /// connection's backend, if /proc shows it as a postgres process. Read while the connection is open: once it is
    /// closed the backend exits, and /proc no longer knows it.
    static func postmaster(url: String, logger: Logger) async -> Int32? {
        guard let connection = try? await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger)
        else { return nil }
        let backend = try? await connection.query("SELECT pg_backend_pid() AS pid").first?.decode("pid", as: Int.self)
        let sample = backend.flatMap { ProcessSample.read(Int32($0)) }
        await connection.close()
        guard let sample,
            let comm = try? String(contentsOfFile: "/proc/\(sample.parent)/comm", encoding: .utf8),
            comm.hasPrefix("postgres")
        else { return nil }
        return sample.parent
    }
}

/// The broker limit: one record produced (idempotent producer, acks=all, linger.ms=0) and consumed back by a
/// consumer with the stack's fetch.wait.max.ms, one at a time, on a probe topic.
enum BrokerProbe {
    struct Result: Sendable {
        var roundTrip: Distribution
        var fetchWaitMaxMs: Int

        var json: JSONValue {
            .object(["roundTripMs": roundTrip.json, "fetchWaitMaxMs": .integer(Int64(fetchWaitMaxMs))])
        }

        var text: String {
            "produce → consume \(roundTrip.text) ms (\(roundTrip.count) round trips, acks=all, linger.ms=0, "
                + "fetch.wait.max.ms=\(fetchWaitMaxMs))"
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func run(kafka: KafkaSettings, topic: String, roundTrips: Int, logger: Logger) async throws -> Result {
        var producerConfiguration = kafka.producer(clientId: "saga-bench-probe")
        producerConfiguration.lingerMs = 0
        let producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        let consumer = try KafkaConsumer(
            configuration: kafka.consumer(
                groupId: "saga-bench-probe-\(UUID().uuidString.prefix(8))", clientId: "saga-bench-probe"),
            logger: logger)
        do {
            // The first record creates the topic (auto-creation) and tells which partition to read.
            let first = try await producer.send(KafkaOutgoingMessage(topic: topic, key: Array("probe".utf8), value: []))
            let partition = KafkaTopicPartition(topic: topic, partition: first.partition)
            let high = try await consumer.watermarks(of: partition, timeout: .seconds(10)).high
            try await consumer.assign([
                KafkaTopicPartitionOffset(topic: topic, partition: first.partition, offset: high)
            ])
            var latencies: [Double] = []
            for i in -3..<roundTrips {  // three unmeasured round trips start the fetcher
                let key = Array("probe-\(i)".utf8)
                let sent = ContinuousClock.now
                async let report = producer.send(
                    KafkaOutgoingMessage(topic: topic, key: key, value: [], partition: first.partition))
                var received: ContinuousClock.Instant?
                let deadline = sent + .seconds(10)
                while received == nil && ContinuousClock.now < deadline {
                    for m in try await consumer.poll(maxMessages: 10, timeout: .milliseconds(100)) where m.key == key {
                        received = .now
                    }
                }
                _ = try await report
                guard let received else {
                    throw Failure(
                        description: "broker probe: a record produced to \(topic) was not consumed within 10 s")
                }
                if i >= 0 { latencies.append(millis(received - sent)) }
            }
            await consumer.close()
            await producer.shutdown()
            return Result(roundTrip: Distribution(latencies), fetchWaitMaxMs: kafka.fetchWaitMaxMs)
        } catch {
            await consumer.close()
            await producer.shutdown()
            throw error
        }
    }
}
