import Foundation
import Logging
import SagaKafka
import SagaTestSupport
import Synchronization
import Testing

@testable import SagaEngine

/// The outbox relay against a real PostgreSQL and broker.
@Suite(.serialized) struct RelayTests {
    struct Fixture {
        let logger: Logger
        let database: ServiceDatabase
        let kafka: KafkaSettings
        let cluster: KafkaMockCluster?
        let topic: String

        init() async throws {
            var logger = Logger(label: "relay-test")
            logger.logLevel = .warning
            self.logger = logger
            database = ServiceDatabase(
                url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema("relay"))
            try await database.prepare(migrations: [], logger: logger)
            let broker = try KafkaTestBroker.bootstrap()
            cluster = broker.cluster
            kafka = KafkaSettings(bootstrapServers: broker.servers)
            topic = KafkaTestBroker.uniqueName("relay")
            try cluster?.createTopic(topic, partitions: 4)
        }

        /// How many outbox shards are flagged idle (`saga_outbox_wake`).
        static func raisedFlags(_ pool: PostgresPool) async throws -> Int {
            try await pool.query("SELECT count(*) AS n FROM saga_outbox_wake WHERE idle").first!.decode("n")
        }

        /// Waits (up to 30 s) until every outbox shard is flagged idle: the relay found nothing and asked for NOTIFYs.
        static func untilEveryShardIsFlagged(_ pool: PostgresPool) async throws {
            let deadline = ContinuousClock.now + .seconds(30)
            while try await raisedFlags(pool) < EngineMigrations.shardCount && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        /// Waits (up to 30 s) until `relay` has published `count` rows.
        static func until(_ relay: OutboxRelay, published count: Int) async throws {
            let deadline = ContinuousClock.now + .seconds(30)
            while relay.stats.published < count && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
        }

        func relay(
            maxShards: Int = EngineMigrations.shardCount, pollInterval: Duration = .milliseconds(200),
            idleGrace: Duration? = nil, gracePollInterval: Duration? = nil, kafka: KafkaSettings? = nil,
            vacuumInterval: Duration? = .seconds(1), batchSize: Int? = nil, deleteDelay: Duration? = nil
        ) -> (OutboxRelay, Task<Void, any Error>) {
            var c = RelayConfiguration(name: "test", kafka: kafka ?? self.kafka, database: database)
            if let batchSize { c.batchSize = batchSize }
            if let deleteDelay { c.deleteDelay = deleteDelay }
            c.vacuumInterval = vacuumInterval
            c.maxShards = maxShards
            c.pollInterval = pollInterval
            if let idleGrace { c.idleGrace = idleGrace }
            if let gracePollInterval { c.gracePollInterval = gracePollInterval }
            c.claimInterval = .milliseconds(100)
            let relay = OutboxRelay(configuration: c, logger: logger)
            return (relay, Task { try await relay.run() })
        }

        func message(saga: String, seq: Int) -> (
            sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage
        ) {
            (
                saga, nil, nil,
                KafkaOutgoingMessage(
                    topic: topic, key: Array(saga.utf8), value: Array("\(saga):\(seq)".utf8),
                    headers: [KafkaHeader(key: "seq", string: String(seq))])
            )
        }

        func consume(atLeast count: Int, timeout: Duration = .seconds(30)) async throws -> [KafkaMessage] {
            let consumer = try KafkaConsumer(
                configuration: kafka.consumer(groupId: KafkaTestBroker.uniqueName("g"), clientId: "test"),
                logger: logger)
            try consumer.subscribe(topics: [topic])
            var out: [KafkaMessage] = []
            let deadline = ContinuousClock.now + timeout
            while out.count < count && ContinuousClock.now < deadline {
                out += try await consumer.poll(maxMessages: 1000, timeout: .milliseconds(100))
            }
            await consumer.close()
            return out
        }

        func unpublished() async throws -> Int {
            let pool = PostgresPool(configuration: database.configuration, size: 1, logger: logger)
            let n: Int = try await pool.query("SELECT count(*) AS n FROM saga_outbox WHERE failed_at IS NULL").first!
                .decode("n")
            await pool.close()
            return n
        }

        func tearDown(_ tasks: [Task<Void, any Error>]) async {
            for t in tasks { t.cancel() }
            for t in tasks { _ = await t.result }
            try? await PostgresTestDatabase.dropSchema(database.schema)
            cluster?.shutdown()
        }
    }

    @Test func onlyCommittedRowsArePublishedAndALateCommitWithALowerIdIsNotSkipped() async throws {
        let f = try await Fixture()
        let (_, task) = f.relay()
        // Transaction A takes the lower id and stays open; B takes a higher id and commits first.
        let a = try await PostgresConnection.connect(f.database.configuration, logger: f.logger)
        try await a.execute("BEGIN")
        try await Outbox.append([f.message(saga: "a", seq: 1)], on: a)
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        try await pool.withTransaction { try await Outbox.append([f.message(saga: "b", seq: 1)], on: $0) }
        let first = try await f.consume(atLeast: 1)
        #expect(first.map { String(decoding: $0.value, as: UTF8.self) } == ["b:1"])
        // Nothing of the open transaction leaks out while it is open.
        try await Task.sleep(for: .seconds(1))
        #expect(try await f.unpublished() == 0)  // A's row is invisible, so nothing counts as pending yet
        try await a.execute("COMMIT")
        let both = try await f.consume(atLeast: 2)
        await a.close()
        await pool.close()
        await f.tearDown([task])
        #expect(Set(both.map { String(decoding: $0.value, as: UTF8.self) }) == ["a:1", "b:1"])
    }

    /// A writer in the relay's process that says it committed (`ServiceDatabase.outboxCommitted()`, as the worker
    /// does after every batch) has its rows read at once: here the relay would otherwise look again only after 30 s
    /// (it never goes idle, so no NOTIFY either).
    @Test func aCommitInTheRelaysOwnProcessWakesItAtOnce() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(idleGrace: .seconds(3600), gracePollInterval: .seconds(30))
        while relay.stats.ownedShards.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(500))  // its first read found nothing: it waits for its next poll
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        try await pool.withTransaction { try await Outbox.append([f.message(saga: "near", seq: 1)], on: $0) }
        f.database.outboxCommitted()
        let messages = try await f.consume(atLeast: 1, timeout: .seconds(15))
        await pool.close()
        await f.tearDown([task])
        #expect(messages.map { String(decoding: $0.value, as: UTF8.self) } == ["near:1"])
    }

    @Test func perSagaOrderHoldsWithTwoRelayInstances() async throws {
        let f = try await Fixture()
        let (r1, t1) = f.relay(maxShards: 8)
        let (r2, t2) = f.relay(maxShards: 8)
        let pool = PostgresPool(configuration: f.database.configuration, size: 4, logger: f.logger)
        let sagas = (0..<40).map { "saga-\($0)" }
        let steps = 5
        // Each saga's events commit one after another, interleaved with the other sagas', from 4 writers.
        for seq in 0..<steps {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for chunk in stride(from: 0, to: sagas.count, by: 10) {
                    group.addTask {
                        for saga in sagas[chunk..<chunk + 10] {
                            try await pool.withTransaction {
                                try await Outbox.append([f.message(saga: saga, seq: seq)], on: $0)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        let messages = try await f.consume(atLeast: sagas.count * steps)
        let published = (r1.stats.published, r2.stats.published)
        let shards = (r1.stats.ownedShards, r2.stats.ownedShards)
        await pool.close()
        await f.tearDown([t1, t2])

        #expect(messages.count == sagas.count * steps)
        #expect(published.0 > 0 && published.1 > 0, "both relays should publish: \(published)")
        #expect(Set(shards.0).isDisjoint(with: shards.1))
        var seen: [String: [Int]] = [:]
        for m in messages {
            seen[String(decoding: m.key ?? [], as: UTF8.self), default: []].append(Int(m.header("seq") ?? "") ?? -1)
        }
        for saga in sagas { #expect(seen[saga] == Array(0..<steps), "\(saga): \(seen[saga] ?? [])") }
    }

    @Test func aRowTheBrokerRefusesForGoodIsParkedAndTheRowsBehindItFlow() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay()
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        // Larger than the producer's message.max.bytes (1 MB): refused at enqueue, never retriable.
        let big = KafkaOutgoingMessage(
            topic: f.topic, key: Array("big".utf8), value: [UInt8](repeating: 0x61, count: 2_000_000))
        try await pool.withTransaction { c in
            try await Outbox.append([("big", nil, nil, big), f.message(saga: "small", seq: 1)], on: c)
        }
        let published = try await f.consume(atLeast: 1)
        var parked: [PostgresRow] = []
        let deadline = ContinuousClock.now + .seconds(30)
        while parked.isEmpty && ContinuousClock.now < deadline {
            parked = try await pool.query("SELECT saga_id, last_error FROM saga_outbox WHERE failed_at IS NOT NULL")
            try await Task.sleep(for: .milliseconds(100))
        }
        let pending = try await pool.query(
            "SELECT count(*) AS n FROM saga_outbox WHERE failed_at IS NULL")
        await pool.close()
        await f.tearDown([task])

        #expect(published.map { String(decoding: $0.value, as: UTF8.self) } == ["small:1"])
        #expect(try parked.map { try $0.decode("saga_id", as: String.self) } == ["big"])
        #expect(try parked.first?.decode("last_error", as: String?.self)?.isEmpty == false)
        #expect(try pending.first?.decode("n", as: Int.self) == 0)
        #expect(relay.stats.published == 1)
    }

    /// A row the broker refuses for good is parked, and the later rows of its saga wait behind it (they would
    /// otherwise overtake it) while other sagas flow; once an operator deletes the parked row, they go out.
    @Test func aParkedRowHoldsBackTheLaterRowsOfItsSaga() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay()
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let big = KafkaOutgoingMessage(
            topic: f.topic, key: Array("x".utf8), value: [UInt8](repeating: 0x61, count: 2_000_000))
        try await pool.withTransaction { c in
            try await Outbox.append(
                [("x", nil, nil, big), f.message(saga: "x", seq: 2), f.message(saga: "y", seq: 1)], on: c)
        }
        let first = try await f.consume(atLeast: 1)
        try await Task.sleep(for: .seconds(1))  // time for x:2 to overtake, if it could
        let waiting = try await pool.query(
            "SELECT saga_id, failed_at IS NOT NULL AS parked FROM saga_outbox ORDER BY id")
        let shown = try await pool.withConnection { try await Outbox.pending(saga: "x", on: $0) }  // saga inspect
        try await pool.execute("DELETE FROM saga_outbox WHERE failed_at IS NOT NULL")
        var left = -1
        let deadline = ContinuousClock.now + .seconds(30)
        while left != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            left = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
        }
        let all = try await f.consume(atLeast: 2)
        await pool.close()
        await f.tearDown([task])

        #expect(first.map { String(decoding: $0.value, as: UTF8.self) } == ["y:1"])
        #expect(
            try waiting.map { "\(try $0.decode("saga_id", as: String.self)):\(try $0.decode("parked", as: Bool.self))" }
                == ["x:true", "x:false"])
        #expect(shown.map(\.state) == ["parked", "held"])
        #expect(shown.first?.lastError?.isEmpty == false)
        #expect(left == 0)
        #expect(all.map { String(decoding: $0.value, as: UTF8.self) }.sorted() == ["x:2", "y:1"])  // across partitions
        #expect(relay.stats.published == 2)
    }

    /// One partition's leader is unreachable: the relay does not wait `message.timeout.ms` for its row before
    /// going on. Every other saga's rows, committed before and after, are acknowledged and deleted within seconds
    /// while that row stays; once the broker is back, it goes out too.
    @Test func aPartitionWhoseLeaderIsDownHoldsUpOnlyItsOwnSagas() async throws {
        let f = try await Fixture()
        guard let cluster = f.cluster else { return }  // needs the in-process mock cluster to stop a broker
        let stuckTopic = KafkaTestBroker.uniqueName("relay-stuck")
        try cluster.createTopic(stuckTopic, partitions: 1)
        try cluster.setPartitionLeader(stuckTopic, partition: 0, broker: 3)
        for partition in Int32(0)..<4 { try cluster.setPartitionLeader(f.topic, partition: partition, broker: 1) }
        var kafka = f.kafka
        kafka.properties = ["message.timeout.ms": "60000"]
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let (relay, task) = f.relay(kafka: kafka)
        // The relay knows both topics before the broker goes down.
        let warm = KafkaOutgoingMessage(topic: stuckTopic, key: Array("w".utf8), value: Array("w:0".utf8))
        try await pool.withTransaction { c in try await Outbox.append([("w", nil, nil, warm)], on: c) }
        let warmed = ContinuousClock.now + .seconds(30)
        while relay.stats.published < 1 && ContinuousClock.now < warmed { try await Task.sleep(for: .milliseconds(20)) }
        try cluster.setBrokerDown(3)

        let stuck = KafkaOutgoingMessage(topic: stuckTopic, key: Array("stuck".utf8), value: Array("stuck:1".utf8))
        try await pool.withTransaction { c in
            try await Outbox.append(
                [("stuck", nil, nil, stuck)] + (1...5).map { f.message(saga: "a\($0)", seq: 1) }, on: c)
        }
        try await Task.sleep(for: .milliseconds(300))
        try await pool.withTransaction { c in
            try await Outbox.append((1...5).map { f.message(saga: "b\($0)", seq: 1) }, on: c)
        }
        var healthyLeft = -1
        let deadline = ContinuousClock.now + .seconds(10)
        while healthyLeft != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            healthyLeft = try await pool.query("SELECT count(*) AS n FROM saga_outbox WHERE saga_id <> 'stuck'")
                .first!.decode("n")
        }
        let stuckLeft: Int = try await pool.query("SELECT count(*) AS n FROM saga_outbox WHERE saga_id = 'stuck'")
            .first!.decode("n")
        try cluster.setBrokerUp(3)
        var left = -1
        let drained = ContinuousClock.now + .seconds(60)
        while left != 0 && ContinuousClock.now < drained {
            try await Task.sleep(for: .milliseconds(100))
            left = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
        }
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])

        #expect(healthyLeft == 0)
        #expect(stuckLeft == 1)
        #expect(left == 0)
        #expect(published == 12)
    }

    /// Produce requests fail (request-error injection) until rows time out and go again: through the failures
    /// and retries, no saga's later row reaches the topic before an earlier one, and every row is published.
    @Test func perSagaOrderHoldsThroughFailedProduceRequests() async throws {
        let f = try await Fixture()
        guard let cluster = f.cluster else { return }  // request-error injection needs the mock cluster
        var kafka = f.kafka
        kafka.properties = ["message.timeout.ms": "500", "retry.backoff.ms": "50"]
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let (relay, task) = f.relay(kafka: kafka)
        let sagas = (1...4).map { "s\($0)" }
        cluster.pushRequestErrors(apiKey: 0, errors: Array(repeating: 19, count: 100))  // NOT_ENOUGH_REPLICAS
        for seq in 1...3 {
            try await pool.withTransaction { c in
                try await Outbox.append(sagas.map { f.message(saga: $0, seq: seq) }, on: c)
            }
        }
        var left = -1
        let deadline = ContinuousClock.now + .seconds(60)
        while left != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            left = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
        }
        let messages = try await f.consume(atLeast: 12)
        let failed = relay.stats.failed
        await pool.close()
        await f.tearDown([task])

        #expect(left == 0)
        #expect(failed > 0)  // the injected errors did fail rows
        var firstSeen: [String: [Int]] = [:]
        for m in messages {
            let saga = String(decoding: m.key ?? [], as: UTF8.self)
            let seq = Int(m.header("seq") ?? "") ?? -1
            if !(firstSeen[saga] ?? []).contains(seq) { firstSeen[saga, default: []].append(seq) }
        }
        for saga in sagas { #expect(firstSeen[saga] == [1, 2, 3], "\(saga): \(firstSeen[saga] ?? [])") }
    }

    /// The brokers are down for longer than `message.timeout.ms`: nothing is acknowledged, so nothing is
    /// deleted (the rows record the attempt); once the brokers are back, every row goes out and the outbox
    /// empties.
    @Test func rowsTheBrokerDidNotAcknowledgeStayAndGoAgain() async throws {
        let f = try await Fixture()
        guard let cluster = f.cluster else { return }  // needs the in-process mock cluster to stop brokers
        var kafka = f.kafka
        kafka.properties = ["message.timeout.ms": "1000"]
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let (relay, task) = f.relay(kafka: kafka)
        try await pool.withTransaction { try await Outbox.append([f.message(saga: "w", seq: 0)], on: $0) }
        let warm = ContinuousClock.now + .seconds(30)
        while relay.stats.published < 1 && ContinuousClock.now < warm { try await Task.sleep(for: .milliseconds(20)) }
        for broker in Int32(1)...3 { try cluster.setBrokerDown(broker) }
        try await pool.withTransaction { c in
            try await Outbox.append((1...5).map { f.message(saga: "s\($0)", seq: 1) }, on: c)
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while relay.stats.failed == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let failed = relay.stats.failed
        let kept = try await pool.query("SELECT count(*) AS n, min(attempts) AS attempts FROM saga_outbox")
        for broker in Int32(1)...3 { try cluster.setBrokerUp(broker) }
        var left = -1
        let drained = ContinuousClock.now + .seconds(60)
        while left != 0 && ContinuousClock.now < drained {
            try await Task.sleep(for: .milliseconds(100))
            left = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first?.decode("n") ?? -1
        }
        let messages = try await f.consume(atLeast: 6)
        await pool.close()
        await f.tearDown([task])

        #expect(failed > 0)
        #expect(try kept.first?.decode("n", as: Int.self) == 5)
        #expect(try kept.first?.decode("attempts", as: Int.self) ?? 0 >= 1)
        #expect(left == 0)
        #expect(
            Set(messages.map { String(decoding: $0.value, as: UTF8.self) }).isSuperset(of: (1...5).map { "s\($0):1" }))
    }

    /// A relay dying after the broker acknowledged a batch, before deleting it, leaves the rows: the next
    /// relay publishes them again (the consumers' inboxes absorb the duplicate) and deletes them.
    @Test func aCrashBetweenPublishAndDeleteRepublishesInsteadOfLosing() async throws {
        let f = try await Fixture()
        var c = RelayConfiguration(name: "test", kafka: f.kafka, database: f.database)
        c.pollInterval = .milliseconds(200)
        c.claimInterval = .milliseconds(100)
        c.failpoint = .crashAfterPublish
        let crashing = OutboxRelay(configuration: c, logger: f.logger)
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        try await pool.withTransaction { try await Outbox.append([f.message(saga: "a", seq: 1)], on: $0) }
        let crashed: Bool
        do {
            try await crashing.run()
            crashed = false
        } catch is RelayCrashed {
            crashed = true
        }
        let keptAfterCrash: Int = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
        let (relay, task) = f.relay()
        let messages = try await f.consume(atLeast: 2)
        var left = -1
        let deadline = ContinuousClock.now + .seconds(30)
        while left != 0 && ContinuousClock.now < deadline {
            left = try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n")
            try await Task.sleep(for: .milliseconds(50))
        }
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])
        #expect(crashed)
        #expect(keptAfterCrash == 1)
        #expect(messages.map { String(decoding: $0.value, as: UTF8.self) } == ["a:1", "a:1"])
        #expect(left == 0)
        #expect(published == 1)
    }

    /// The relay must be woken by a commit, not find the row at its fallback poll, and the first send to a
    /// topic must not wait for librdkafka's once-a-second lookup of unknown topics: with a one-minute poll,
    /// rows committed right after start, while it idles, and to a topic it never produced to all go out in
    /// far less than a second.
    @Test func rowsCommittedWhileTheRelayIdlesAreWokenForNotPolled() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(pollInterval: .seconds(60))
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let other = KafkaTestBroker.uniqueName("relay-other")
        try f.cluster?.createTopic(other, partitions: 4)
        // 1. Committed right after the relay started (before it first waits).
        var elapsed: [Duration] = []
        let first = ContinuousClock.now
        try await pool.withTransaction { try await Outbox.append([f.message(saga: "a", seq: 1)], on: $0) }
        while relay.stats.published < 1 && ContinuousClock.now - first < .seconds(30) {
            try await Task.sleep(for: .milliseconds(2))
        }
        elapsed.append(ContinuousClock.now - first)
        // 2. Committed while it idles, several times.
        for seq in 2...4 {
            try await Task.sleep(for: .milliseconds(300))
            let start = ContinuousClock.now
            try await pool.withTransaction { try await Outbox.append([f.message(saga: "a", seq: seq)], on: $0) }
            while relay.stats.published < seq && ContinuousClock.now - start < .seconds(30) {
                try await Task.sleep(for: .milliseconds(2))
            }
            elapsed.append(ContinuousClock.now - start)
        }
        // 3. To a topic this relay's producer has not seen yet.
        try await Task.sleep(for: .milliseconds(300))
        let start = ContinuousClock.now
        try await pool.withTransaction { c in
            var m = f.message(saga: "a", seq: 5)
            m.message.topic = other
            try await Outbox.append([m], on: c)
        }
        while relay.stats.published < 5 && ContinuousClock.now - start < .seconds(30) {
            try await Task.sleep(for: .milliseconds(2))
        }
        elapsed.append(ContinuousClock.now - start)
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])
        print("relay wake latencies: \(elapsed)")
        #expect(published == 5)
        // Generous: the point is "woken, and not held up by a first send to a topic" (librdkafka looks unknown
        // topics up about once a second: ~0.75-1 s before), not "fast"; the fallback poll would take 60 s.
        for e in elapsed { #expect(e < .milliseconds(500), "\(elapsed)") }
    }

    @Test func aListenerWhoseBackendIsTerminatedIsReestablishedAndWakesTheRelayAgain() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(pollInterval: .seconds(60))
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        let listen = "LISTEN " + PostgresConnection.quoteIdentifier("saga_outbox_" + f.database.schema)
        func listenerPID() async throws -> Int32? {
            try await pool.query("SELECT pid FROM pg_stat_activity WHERE query = $1", [listen]).first?.decode("pid")
        }
        func publish(_ seq: Int) async throws -> Duration {
            let start = ContinuousClock.now
            try await pool.withTransaction { try await Outbox.append([f.message(saga: "a", seq: seq)], on: $0) }
            while relay.stats.published < seq && ContinuousClock.now - start < .seconds(30) {
                try await Task.sleep(for: .milliseconds(2))
            }
            return ContinuousClock.now - start
        }
        _ = try await publish(1)
        var first: Int32?
        let deadline = ContinuousClock.now + .seconds(10)
        while first == nil && ContinuousClock.now < deadline {
            first = try await listenerPID()
            try await Task.sleep(for: .milliseconds(20))
        }
        let old = try #require(first)
        _ = try await pool.query("SELECT pg_terminate_backend($1)", [old])
        // A new session listens again, and the relay, idle again, is woken by the next commit (the fallback poll
        // would take 60 s).
        var again: Int32?
        let reconnectDeadline = ContinuousClock.now + .seconds(10)
        while (again == nil || again == old) && ContinuousClock.now < reconnectDeadline {
            again = try await listenerPID()
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(500))
        let woken = try await publish(2)
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])

        #expect(again != nil && again != old)
        #expect(published == 2)
        #expect(woken < .seconds(2), "\(woken)")
    }

    /// The relay vacuums the outbox while it deletes rows (autovacuum comes at most once a minute), and not
    /// when told not to.
    @Test func theRelayVacuumsItsOutboxWhileItDeletes() async throws {
        let f = try await Fixture()
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        func vacuums() async throws -> Int {
            try await pool.query(
                "SELECT vacuum_count AS n FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'saga_outbox'",
                [f.database.schema]
            ).first!.decode("n")
        }
        func publish(_ count: Int, by relay: OutboxRelay) async throws {
            let before = relay.stats.published
            try await pool.withTransaction {
                try await Outbox.append((1...count).map { f.message(saga: "v\($0)", seq: $0) }, on: $0)
            }
            let deadline = ContinuousClock.now + .seconds(30)
            while relay.stats.published < before + count && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(relay.stats.published == before + count)
        }
        let (unvacuumed, first) = f.relay(vacuumInterval: nil)
        try await publish(50, by: unvacuumed)
        try await Task.sleep(for: .milliseconds(500))
        first.cancel()
        _ = await first.result
        let withoutVacuum = try await vacuums()

        let (relay, task) = f.relay(vacuumInterval: .milliseconds(100))
        try await publish(50, by: relay)
        let deadline = ContinuousClock.now + .seconds(30)
        while try await vacuums() == withoutVacuum && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let withVacuum = try await vacuums()
        await pool.close()
        await f.tearDown([task])
        #expect(withoutVacuum == 0)
        #expect(withVacuum > withoutVacuum)
    }

    /// Writers pay for a NOTIFY only while the relay idles (notifying commits serialise cluster-wide): a relay that
    /// keeps finding rows within its grace never flags itself idle; once they stop, it does.
    @Test func aRelayThatKeepsFindingRowsNeverFlagsItselfIdle() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(pollInterval: .seconds(60), idleGrace: .seconds(3))
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        func raisedFlags() async throws -> Int { try await Fixture.raisedFlags(pool) }
        var raisedWhileBusy: [Int] = []
        // Rows every 100 ms for 2 s: always within the grace.
        for seq in 1...20 {
            try await pool.withTransaction { try await Outbox.append([f.message(saga: "s\(seq)", seq: seq)], on: $0) }
            try await Task.sleep(for: .milliseconds(100))
            raisedWhileBusy.append(try await raisedFlags())
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while try await raisedFlags() == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let raisedAfter = try await raisedFlags()
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])
        #expect(published == 20)
        #expect(raisedWhileBusy.allSatisfy { $0 == 0 }, "flags raised while rows kept coming: \(raisedWhileBusy)")
        #expect(raisedAfter == EngineMigrations.shardCount, "an idle relay flags every shard it owns")
    }

    /// A flagged relay woken for a row reads once, to find it: every commit wakes it, so while the broker
    /// acknowledges the row there is nothing to look for unless a commit woke it meanwhile, and the acknowledgement it
    /// waited for does not wake it again. (It read twice per row before, the second time for nothing.)
    @Test func aFlaggedRelayReadsOnceForARowCommittedAlone() async throws {
        let f = try await Fixture()
        // The fallback poll is an hour: only the NOTIFYs (or its own looking) can bring it the rows.
        let (relay, task) = f.relay(pollInterval: .seconds(3600), idleGrace: .milliseconds(50))
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        try await Fixture.untilEveryShardIsFlagged(pool)
        // Rows one at a time, each woken by its commit's NOTIFY.
        let before = relay.stats.reads
        let rows = 8
        for seq in 1...rows {
            try await pool.withTransaction {
                try await Outbox.append([f.message(saga: "lone\(seq)", seq: seq)], on: $0)
            }
            try await Fixture.until(relay, published: seq)
            // Whatever wakes are left from this row show up as reads before the next one.
            try await Task.sleep(for: .milliseconds(100))
        }
        let reads = relay.stats.reads - before
        let published = relay.stats.published
        let left = try await f.unpublished()
        await pool.close()
        await f.tearDown([task])
        #expect(published == rows)
        // Each row: the read that finds it. Its deletion, with no commit after it within `deleteDelay`, goes alone.
        #expect(reads == rows, "\(reads) reads for \(rows) rows")
        #expect(left == 0, "acknowledged rows left behind")
    }

    /// An acknowledged row is deleted by the relay's next read, in its round trip (here, with `deleteDelay` an hour,
    /// the read that finds the next commit's row), or when the relay stops; never before its acknowledgement.
    @Test func acknowledgedRowsAreDeletedWithTheNextReadOrWhenTheRelayStops() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(
            pollInterval: .seconds(3600), idleGrace: .milliseconds(50), deleteDelay: .seconds(3600))
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        func left() async throws -> [String] {
            try await pool.query("SELECT saga_id FROM saga_outbox ORDER BY id").map { try $0.decode("saga_id") }
        }
        func publish(_ seq: Int) async throws {
            try await pool.withTransaction { try await Outbox.append([f.message(saga: "row\(seq)", seq: seq)], on: $0) }
            try await Fixture.until(relay, published: seq)
        }
        try await Fixture.untilEveryShardIsFlagged(pool)
        try await publish(1)
        try await Task.sleep(for: .milliseconds(200))
        let afterFirst = try await left()
        try await publish(2)
        let afterSecond = try await left()
        task.cancel()
        _ = await task.result
        let afterStop = try await left()
        await pool.close()
        await f.tearDown([])
        #expect(relay.stats.published == 2)
        #expect(afterFirst == ["row1"], "published, not yet deleted: no read since")
        #expect(afterSecond == ["row2"], "the read that found row2 deleted row1")
        #expect(afterStop == [], "a stopping relay deletes what the broker acknowledged")
    }

    /// Rows queued behind a batch now and then (commits a few milliseconds apart) leave a flagged relay flagged; only
    /// rows queued `busyRounds` rounds in a row (a burst) make it lower its flags and look for rows itself.
    @Test func aFlaggedRelayKeepsItsFlagsWhenRowsQueueOnlyNowAndThen() async throws {
        let f = try await Fixture()
        let (relay, task) = f.relay(pollInterval: .seconds(3600), idleGrace: .seconds(3), batchSize: 1)
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        try await Fixture.untilEveryShardIsFlagged(pool)
        var raisedAfterEach: [Int] = []
        for pair in 1...3 {
            // Two rows in one commit, batches of one: the second queues behind the first, for one round.
            try await pool.withTransaction { connection in
                try await Outbox.append(
                    [f.message(saga: "a\(pair)", seq: 2 * pair - 1), f.message(saga: "b\(pair)", seq: 2 * pair)],
                    on: connection)
            }
            try await Fixture.until(relay, published: 2 * pair)
            raisedAfterEach.append(try await Fixture.raisedFlags(pool))
        }
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])
        #expect(published == 6)
        #expect(
            raisedAfterEach == Array(repeating: EngineMigrations.shardCount, count: 3),
            "flags lowered for a row that queued once: \(raisedAfterEach)")
    }

    @Test func aWakeSignalledBeforeTheCallersLastLookIsDropped() async {
        let wake = WakeSignal()
        func waited(_ timeout: Duration, ignoringUpTo seen: UInt64?) async -> Duration {
            let started = ContinuousClock.now
            await wake.wait(timeout: timeout, ignoringUpTo: seen)
            return ContinuousClock.now - started
        }
        // A signal from before `seen` (the NOTIFY of a commit the caller read already): the wait runs its course.
        wake.signal()
        let seen = wake.count
        #expect(await waited(.milliseconds(100), ignoringUpTo: seen) >= .milliseconds(100))
        // A signal after it wakes the caller at once, as does any signal when nothing is ignored.
        let seenAgain = wake.count
        wake.signal()
        #expect(await waited(.seconds(20), ignoringUpTo: seenAgain) < .seconds(20))
        wake.signal()
        #expect(await waited(.seconds(20), ignoringUpTo: nil) < .seconds(20))
    }

    /// A flagged relay stays flagged while rows come one at a time: each commit notifies and wakes it, and it does
    /// not poll between them. Once rows queue behind the batch it publishes round after round (`busyRounds`), it
    /// lowers its flags and looks for them itself, so that writers under load do not notify.
    @Test func aFlaggedRelayStaysFlaggedForRowsOneAtATimeAndLowersItsFlagsWhenRowsQueue() async throws {
        let f = try await Fixture()
        // The fallback poll is an hour: only the NOTIFYs (or its own looking) can bring it the rows.
        let (relay, task) = f.relay(pollInterval: .seconds(3600), idleGrace: .seconds(3), batchSize: 2)
        let pool = PostgresPool(configuration: f.database.configuration, size: 1, logger: f.logger)
        func raisedFlags() async throws -> Int { try await Fixture.raisedFlags(pool) }
        func waitFor(published count: Int) async throws { try await Fixture.until(relay, published: count) }
        try await Fixture.untilEveryShardIsFlagged(pool)
        // Five rows, one at a time: each is published, and the flags stay raised (the relay lowered them while it
        // published before, and kept them lowered for its 3 s grace).
        var raisedAfterEach: [Int] = []
        for seq in 1...5 {
            try await pool.withTransaction { try await Outbox.append([f.message(saga: "one\(seq)", seq: seq)], on: $0) }
            try await waitFor(published: seq)
            raisedAfterEach.append(try await raisedFlags())
        }
        // Forty rows at once, batches of two: rows queue behind each batch.
        try await pool.withTransaction { connection in
            try await Outbox.append((1...40).map { f.message(saga: "burst\($0)", seq: $0) }, on: connection)
        }
        try await waitFor(published: 45)
        let raisedAfterBurst = try await raisedFlags()
        let published = relay.stats.published
        await pool.close()
        await f.tearDown([task])
        #expect(published == 45)
        #expect(
            raisedAfterEach == Array(repeating: EngineMigrations.shardCount, count: 5),
            "flags lowered by rows that came one at a time: \(raisedAfterEach)")
        #expect(raisedAfterBurst == 0, "rows queued, yet writers are still asked to notify")
    }
}
