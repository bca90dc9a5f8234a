import Foundation
import SagaEngine
import SagaKafka
import SagaOperations
import SagaServices
import SagaTestSupport
import Testing

/// `saga worker` as a real process: configured by environment, stopped by SIGTERM.
@Suite(.serialized) struct DaemonProcessTests {
    @Test func aWorkerStopsGracefullyOnSIGTERMAndCommitsItsOffsets() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        stack.startRelay("inventory")
        let opsPort = try SagaProcess.freePort()
        let worker = try SagaProcess(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_LOG_FORMAT": "json", "SAGA_OPS_PORT": String(opsPort),
            ])

        let id = try await stack.place("alice", [("widget", 2)])
        try await stack.eventually("the worker process reserved the stock") {
            try await !stack.query(
                "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
            ).isEmpty
        }
        // Health and metrics over HTTP, from the running process.
        let (healthStatus, health) = try await SagaProcess.get("http://127.0.0.1:\(opsPort)/health/ready")
        let (_, metrics) = try await SagaProcess.get("http://127.0.0.1:\(opsPort)/metrics")
        let status = try await worker.stop()

        // The group's committed offset on order.created is past the handled event.
        let consumer = try KafkaConsumer(
            configuration: stack.kafka.consumer(groupId: stack.topics.group("inventory"), clientId: "test"),
            logger: stack.logger)
        let topic = stack.topics.topic(for: "order.created")
        let committed = try await consumer.committed(
            (0..<4).map { KafkaTopicPartition(topic: topic, partition: $0) }, timeout: .seconds(10))
        await consumer.close()
        await stack.stop()

        #expect(status == 0, "the worker did not exit cleanly within 30 s of SIGTERM: \(worker.output)")
        #expect(worker.output.contains("\"message\":\"worker stopped\""))
        #expect(committed.reduce(0) { $0 + max(0, $1.offset) } == 1)
        #expect(healthStatus == 200)
        #expect(health.contains(#""database:inventory":"ok""#))
        #expect(
            metrics.contains(#"saga_worker_events_total{service="inventory",type="order.created",result="handled"} 1"#))
    }

    /// A relay process frozen with SIGSTOP keeps its TCP connection (its kernel still answers keepalives), so
    /// only the server can free its shards: its lock session ends once idle too long, and a standby takes over
    /// within seconds. Per saga, the first delivery of each row keeps the order the rows were committed in.
    @Test func aFrozenRelayLosesItsShardsAndAStandbyTakesOverInOrder() async throws {
        let stack = try await TestStack()
        let pool = PostgresPool(configuration: stack.databases["orders"]!.configuration, size: 1, logger: stack.logger)
        let topic = stack.topics.topic(for: "order.created")
        func append(_ saga: String, _ seq: Int) async throws {
            try await pool.withTransaction { c in
                try await Outbox.append(
                    [
                        (
                            saga, nil, nil,
                            KafkaOutgoingMessage(
                                topic: topic, key: Array(saga.utf8), value: Array("\(saga):\(seq)".utf8))
                        )
                    ],
                    on: c)
            }
        }
        func unpublished() async throws -> Int {
            try await pool.query("SELECT count(*) AS n FROM saga_outbox").first!.decode("n", as: Int.self)
        }
        let relay = try SagaProcess(
            ["relay", "orders"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_LOG_FORMAT": "json",
                "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
            ])
        let sagas = ["a", "b", "c"]
        var takeover: Duration? = nil
        var ownedBeforeFreeze: [Int] = []
        do {
            for saga in sagas { try await append(saga, 1) }
            try await stack.eventually("the relay process published the first rows", timeout: .seconds(30)) {
                try await unpublished() == 0
            }
            let standby = stack.startRelay("orders")
            try await Task.sleep(for: .seconds(1))
            ownedBeforeFreeze = standby.stats.ownedShards
            kill(relay.process.processIdentifier, SIGSTOP)
            let frozen = ContinuousClock.now
            for seq in 2...5 { for saga in sagas { try await append(saga, seq) } }
            try await stack.eventually("the standby published every row", timeout: .seconds(60)) {
                try await unpublished() == 0
            }
            takeover = ContinuousClock.now - frozen
        } catch {
            Issue.record("\(error)")
        }
        kill(relay.process.processIdentifier, SIGCONT)
        _ = try await relay.stop()
        let published = try await stack.consumeAll([topic], atLeast: sagas.count * 5)
        await pool.close()
        await stack.stop()

        #expect(ownedBeforeFreeze.isEmpty, "the standby owned \(ownedBeforeFreeze) while the process was alive")
        #expect(takeover.map { $0 < .seconds(20) } == true, "took over after \(String(describing: takeover))")
        for saga in sagas {
            var firsts: [String] = []
            for m in published where m.key == Array(saga.utf8) {
                let value = String(decoding: m.value, as: UTF8.self)
                if !firsts.contains(value) { firsts.append(value) }
            }
            #expect(firsts == (1...5).map { "\(saga):\($0)" })
        }
    }

    /// A tracker process frozen with SIGSTOP loses its lock the same way (its lock session ends once idle
    /// too long), and a standby tracker takes over within seconds.
    @Test func aFrozenTrackerLosesItsLockAndAStandbyTakesOver() async throws {
        let stack = try await TestStack()
        try await SagaTracker.prepare(stack.trackerDatabase, logger: stack.logger)
        func recorded(_ saga: String) async throws -> Bool {
            try await !stack.query("tracker", "SELECT 1 FROM tracker_events WHERE saga_id = $1", [saga]).isEmpty
        }
        let tracker = try SagaProcess(
            ["tracker"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_LOG_FORMAT": "json",
                "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
            ])
        var configuration = TrackerConfiguration(
            kafka: stack.kafka, database: stack.trackerDatabase, topics: stack.topics, services: TestStack.services)
        configuration.pollTimeout = .milliseconds(50)
        let standby = SagaTracker(configuration: configuration, logger: stack.logger)
        var standbyTask: Task<Void, any Error>? = nil
        var takeover: Duration? = nil
        var batchesBeforeFreeze = -1
        do {
            let (first, firstMessage) = try stack.orderCreated()
            try await stack.produce([firstMessage])
            try await stack.eventually("the tracker process recorded the first event", timeout: .seconds(60)) {
                try await recorded(first)
            }
            standbyTask = Task { try await standby.run() }
            try await Task.sleep(for: .seconds(1))
            batchesBeforeFreeze = standby.stats.batches
            kill(tracker.process.processIdentifier, SIGSTOP)
            let frozen = ContinuousClock.now
            let (second, secondMessage) = try stack.orderCreated()
            try await stack.produce([secondMessage])
            try await stack.eventually("the standby recorded the event", timeout: .seconds(60)) {
                try await recorded(second)
            }
            takeover = ContinuousClock.now - frozen
        } catch {
            Issue.record("\(error)")
        }
        kill(tracker.process.processIdentifier, SIGCONT)
        _ = try await tracker.stop()
        standbyTask?.cancel()
        _ = await standbyTask?.result
        await stack.stop()

        #expect(batchesBeforeFreeze == 0, "the standby recorded while the process held the lock")
        #expect(takeover.map { $0 < .seconds(25) } == true, "took over after \(String(describing: takeover))")
    }

    /// Two `saga worker inventory` processes in one group split the partitions; after `kill -9` of one, the
    /// survivor takes its partitions over and every saga still finishes. Needs a broker that rebalances
    /// between members: librdkafka's mock cluster does not do so reliably.
    @Test(
        .enabled(
            if: KafkaTestBroker.usesRealKafka,
            "needs a real Kafka in SAGA_KAFKA_BOOTSTRAP: rebalances with several members are unreliable on librdkafka's mock cluster"
        )
    )
    func twoWorkerProcessesSplitThePartitionsAndTheSurvivorTakesOverAfterKill9() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("billing")
        func inventoryProcess() throws -> SagaProcess {
            try SagaProcess(
                ["worker", "inventory"],
                environment: [
                    "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers,
                    "SAGA_DATABASE_URL": PostgresTestDatabase.url, "SAGA_TOPIC_PREFIX": stack.topics.prefix,
                    "SAGA_LOG_FORMAT": "json", "SAGA_LOG_LEVEL": "debug",
                    "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
                ])
        }
        let workers = [try inventoryProcess(), try inventoryProcess()]
        let group = stack.topics.group("inventory")
        let observer = try KafkaConsumer(
            configuration: stack.kafka.consumer(groupId: group, clientId: "observer"), logger: stack.logger)
        func members() async throws -> Int {
            try await observer.describeGroup(group, timeout: .seconds(10)).members.count
        }
        func handledByBoth() -> Bool { workers.allSatisfy { !handledOrders($0).isEmpty } }
        /// The sagas whose order.created `worker` handled.
        func handledOrders(_ worker: SagaProcess) -> Set<String> {
            Set(
                worker.logLines.filter {
                    $0["message"] as? String == "handled" && $0["event_type"] as? String == "order.created"
                }
                .compactMap { $0["saga_id"] as? String })
        }
        func placeAndFinish(_ count: Int) async throws -> Set<String> {
            var ids: [String] = []
            for _ in 0..<count { ids.append(try await stack.place("alice", [("widget", 1)])) }
            for id in ids { _ = try await stack.waitForTerminal(id, timeout: .seconds(90)) }
            return Set(ids)
        }
        do {
            // Orders (keyed by random saga ids, so spread over the 4 partitions) until both processes handled
            // some: the group split the partitions between them. (Not through DescribeGroups: Tansu lists no
            // members in its answer.)
            var before: Set<String> = []
            try await stack.eventually("both worker processes handle order.created", timeout: .seconds(120)) {
                before.formUnion(try await placeAndFinish(4))
                return handledByBoth()
            }
            let handled = workers.map(handledOrders)
            #expect(handled[0].union(handled[1]) == before, "every order.created handled by one of the processes")

            kill(workers[0].process.processIdentifier, SIGKILL)
            let after = try await placeAndFinish(16)
            #expect(
                after.isSubset(of: handledOrders(workers[1])), "the survivor handled every order placed after the kill")
            if !KafkaTestBroker.isTansu {  // Tansu's DescribeGroups lists no members (KafkaOffsetsTests)
                try await stack.eventually("the killed process left the group") { try await members() == 1 }
            }
            #expect(try await workers[1].stop() == 0)
        } catch {
            Issue.record("\(error)\nsurvivor's log tail: \(workers[1].output.suffix(2000))")
        }
        await observer.close()
        for worker in workers { _ = try await worker.stop() }
        await stack.stop()
    }

    /// A worker fenced for its static membership (another process joined its group with the same
    /// SAGA_KAFKA_GROUP_INSTANCE_ID: the broker answers FENCED_INSTANCE_ID, injected here into a heartbeat of the
    /// mock cluster) exits with a clear fatal error naming the id, once, instead of retrying for ever.
    @Test(
        .enabled(
            if: !KafkaTestBroker.usesRealKafka, "injects FENCED_INSTANCE_ID through the mock cluster's request errors")
    )
    func aFencedStaticWorkerExitsWithAClearFatalError() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        stack.startRelay("inventory")
        let worker = try SagaProcess(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_LOG_FORMAT": "json",
                "SAGA_OPS_PORT": String(try SagaProcess.freePort()), "SAGA_KAFKA_GROUP_INSTANCE_ID": "inventory-7",
            ])
        var status: Int32? = nil
        do {
            let id = try await stack.place("alice", [("widget", 1)])
            try await stack.eventually("the static worker process reserved the stock") {
                try await !stack.query(
                    "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
                ).isEmpty
            }
            // The member's next heartbeat (every 3 s) is answered FENCED_INSTANCE_ID (82).
            #expect(KafkaError.name(forCode: 82) == "FENCED_INSTANCE_ID")
            stack.cluster?.pushRequestErrors(apiKey: 12, errors: [82])
            status = try await worker.waitForExit(timeout: .seconds(60))
        } catch {
            Issue.record("\(error)")
        }
        _ = try await worker.stop()
        await stack.stop()

        let fatal = worker.logLines.filter {
            $0["message"] as? String == "the consumer failed for good: the worker stops"
        }
        #expect(
            status != nil && status != 0, "the fenced worker did not exit with an error: \(worker.output.suffix(3000))")
        #expect(fatal.count == 1, "\(worker.output.suffix(3000))")
        let error = fatal.first?["error"] as? String ?? ""
        #expect(error.contains("FENCED_INSTANCE_ID"), "\(error)")
        #expect(error.contains("same group.instance.id 'inventory-7'"), "\(error)")
        #expect(error.contains("group '\(stack.topics.group("inventory"))'"), "\(error)")
    }

    /// Static membership (SAGA_KAFKA_GROUP_INSTANCE_ID) on a broker that supports it: two `saga worker inventory`
    /// processes with ids of their own split the partitions; one is killed with SIGKILL and started again with
    /// the same id 5 s later (a container's restart is not instant either). It gets back exactly the partitions
    /// it had, and the survivor keeps its own: it is never revoked, not even after the dead member's session
    /// would have expired. That takes a static member's default session (30 s, longer than a restart): with a
    /// dynamic member's 6 s the restarted member is too late, its session has ended, the survivor is revoked
    /// and the dead member's partitions wait (a dynamic member in its place makes the group rebalance at once:
    /// the survivor's partitions are revoked within seconds and the group stands still until the dead member
    /// is evicted). The librdkafka mock cluster ignores group.instance.id, so this runs only against a real
    /// broker (Tansu: `scripts/test --tansu`).
    @Test(
        .enabled(
            if: KafkaTestBroker.usesRealKafka,
            "needs a broker with static membership (KIP-345) in SAGA_KAFKA_BOOTSTRAP: librdkafka's mock cluster ignores group.instance.id"
        )
    )
    func aStaticWorkerRestartedAfterKill9GetsItsPartitionsBackWithoutRevokingTheSurvivor() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("billing")
        let session = Duration.milliseconds(KafkaConsumerConfiguration.defaultStaticSessionTimeoutMs)
        let heartbeat = Duration.seconds(2)
        func inventoryProcess(_ instance: String) throws -> SagaProcess {
            try SagaProcess(
                ["worker", "inventory"],
                environment: [
                    "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers,
                    "SAGA_DATABASE_URL": PostgresTestDatabase.url, "SAGA_TOPIC_PREFIX": stack.topics.prefix,
                    "SAGA_LOG_FORMAT": "json", "SAGA_LOG_LEVEL": "debug",
                    "SAGA_OPS_PORT": String(try SagaProcess.freePort()), "SAGA_KAFKA_GROUP_INSTANCE_ID": instance,
                ])
        }
        /// The partitions named by `worker`'s rebalance log lines with this message, in order.
        func rebalances(_ worker: SagaProcess, _ message: String) -> [String] {
            worker.logLines.filter { $0["message"] as? String == message }.compactMap { $0["partitions"] as? String }
        }
        func handledOrders(_ worker: SagaProcess) -> Set<String> {
            Set(
                worker.logLines.filter {
                    $0["message"] as? String == "handled" && $0["event_type"] as? String == "order.created"
                }
                .compactMap { $0["saga_id"] as? String })
        }
        func placeAndFinish(_ count: Int) async throws -> Set<String> {
            var ids: [String] = []
            for _ in 0..<count { ids.append(try await stack.place("alice", [("widget", 1)])) }
            for id in ids { _ = try await stack.waitForTerminal(id, timeout: .seconds(90)) }
            return Set(ids)
        }
        var workers = [try inventoryProcess("inventory-a"), try inventoryProcess("inventory-b")]
        do {
            try await stack.eventually("both worker processes have partitions", timeout: .seconds(120)) {
                workers.allSatisfy { !rebalances($0, "partitions assigned").filter { $0 != "[]" }.isEmpty }
            }
            // Settled: the last assignment of each is the one it keeps (rebalances end within a few seconds).
            var settled: [String] = []
            try await stack.eventually("the group settles", timeout: .seconds(60)) {
                let now = workers.map { rebalances($0, "partitions assigned").last ?? "" }
                defer { settled = now }
                try await Task.sleep(for: .seconds(3))
                return now == settled
            }
            _ = try await placeAndFinish(4)
            let before = rebalances(workers[0], "partitions assigned").last
            let survivorRevocations =
                rebalances(workers[1], "partitions revoked").count
                + rebalances(workers[1], "partitions lost").count

            kill(workers[0].process.processIdentifier, SIGKILL)
            let killed = ContinuousClock.now
            _ = try await workers[0].waitForExit(timeout: .seconds(10))
            try await Task.sleep(until: killed + .seconds(5))
            workers[0] = try inventoryProcess("inventory-a")
            try await stack.eventually("the restarted process gets partitions", timeout: .seconds(60)) {
                !rebalances(workers[0], "partitions assigned").isEmpty
            }
            let back = ContinuousClock.now - killed
            print("static member restarted after kill -9: partitions back after \(back)")
            #expect(rebalances(workers[0], "partitions assigned").first == before, "the same partitions as before")
            // Past the dead member's session (the broker evicts on the survivor's next heartbeat after it, and the
            // last heartbeat of the dead member may have been one interval before the kill), sagas still flow
            // through both.
            let after = try await placeAndFinish(8)
            try await Task.sleep(until: killed + session + heartbeat * 2 + .seconds(1))
            let revoked =
                rebalances(workers[1], "partitions revoked").count
                + rebalances(workers[1], "partitions lost").count
            #expect(revoked == survivorRevocations, "the survivor was revoked: \(workers[1].output.suffix(3000))")
            #expect(
                after.isSubset(of: handledOrders(workers[0]).union(handledOrders(workers[1]))),
                "every order after the restart handled by one of the two")
        } catch {
            Issue.record("\(error)\nlogs: \(workers.map { $0.output.suffix(2000) })")
        }
        for worker in workers { _ = try await worker.stop() }
        await stack.stop()
    }
}
