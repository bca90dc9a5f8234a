import Foundation
import Logging
import SagaDaemon
import SagaKafka
import SagaServices
import SagaTestSupport
import ServiceLifecycle
import Synchronization
import Testing

/// The daemon kit over a participant it knows nothing of but its definition.
struct ParticipantDaemonTests {
    /// A participant named as no service of the saga reads its own database variable, and only that one.
    @Test func anyParticipantReadsItsOwnDatabaseVariable() throws {
        let env = try DaemonEnvironment.load(
            ["SAGA_LATE_FEES_DATABASE_URL": "postgresql://fees@db/fees", "SAGA_DATABASE_URL": "postgresql://x@db/all"],
            databases: ["late-fees"], devFile: nil, brokerFile: nil)
        #expect(DaemonEnvironment.databaseVariable("late-fees") == "SAGA_LATE_FEES_DATABASE_URL")
        #expect(env.database("late-fees").url == "postgresql://fees@db/fees")
        #expect(env.database("late-fees").schema == "late-fees")
        #expect(env.database("other").url == "postgresql://x@db/all")
        #expect {
            _ = try DaemonEnvironment.load(
                ["SAGA_LATE_FEES_DATABASE_URL": "fees-db"], databases: ["late-fees"], devFile: nil, brokerFile: nil)
        } throws: { "\($0)".contains("SAGA_LATE_FEES_DATABASE_URL") }
        let known = DaemonEnvironment.knownVariables(databases: ["late-fees"])
        #expect(
            DaemonEnvironment.unknownVariables(
                ["SAGA_LATE_FEES_DATABASE_URL": "x", "SAGA_ORDERS_DATABASE_URL": "y", "SAGA_OPS_PORT": "1"],
                known: known)
                == ["SAGA_ORDERS_DATABASE_URL"])
    }

    /// What the kit builds from a definition follows the environment: batch sizes, retention, shards, topic
    /// prefix, the checks of the ops server.
    @Test func theKitBuildsTheParticipantsServicesFromTheEnvironment() throws {
        let env = try DaemonEnvironment.load(
            [
                "SAGA_KAFKA_BOOTSTRAP": "kafka:9092", "SAGA_TOPIC_PREFIX": "t1.", "SAGA_WORKER_BATCH_SIZE": "17",
                "SAGA_RELAY_BATCH_SIZE": "33", "SAGA_RELAY_MAX_SHARDS": "3", "SAGA_INBOX_RETENTION": "2h",
                "SAGA_RELAY_VACUUM_INTERVAL": "5s",
            ], databases: ["inventory"], devFile: nil, brokerFile: nil)
        let logger = Logger(label: "test")
        let worker = try env.worker(InventoryService.definition(), logger: logger)
        #expect(worker.configuration.name == "inventory")
        #expect(worker.configuration.batchSize == 17)
        #expect(worker.configuration.inboxRetention == .seconds(7200))
        #expect(worker.configuration.database.schema == "t1_inventory")
        #expect(worker.subscribedTopics.allSatisfy { $0.hasPrefix("t1.") } && !worker.subscribedTopics.isEmpty)
        let relay = try env.relay("inventory", logger: logger)
        #expect(relay.configuration.batchSize == 33)
        #expect(relay.configuration.maxShards == 3)
        #expect(relay.configuration.vacuumInterval == .seconds(5))
        let defaults = try DaemonEnvironment.load(
            ["SAGA_KAFKA_BOOTSTRAP": "kafka:9092"], databases: [], devFile: nil, brokerFile: nil)
        #expect(try defaults.relay("inventory", logger: logger).configuration.vacuumInterval == .seconds(1))
        let off = try DaemonEnvironment.load(
            ["SAGA_KAFKA_BOOTSTRAP": "kafka:9092", "SAGA_RELAY_VACUUM_INTERVAL": "0s"], databases: [], devFile: nil,
            brokerFile: nil)
        #expect(try off.relay("inventory", logger: logger).configuration.vacuumInterval == nil)
        #expect {
            _ = try DaemonEnvironment.load(
                ["SAGA_RELAY_VACUUM_INTERVAL": "often"], databases: [], devFile: nil, brokerFile: nil)
        } throws: { "\($0)".contains("SAGA_RELAY_VACUUM_INTERVAL='often'") }
        let ops = try env.ops(["inventory"], logger: logger)
        #expect(ops.health.checks.map(\.name) == ["database:inventory", "kafka"])
        #expect {
            _ = try DaemonEnvironment.load([:], databases: ["inventory"], devFile: nil, brokerFile: nil)
                .worker(InventoryService.definition(), logger: logger)
        } throws: { "\($0)".contains("no Kafka broker") }
    }

    /// One call runs a participant: its schema is migrated first, its worker handles what arrives, its relay
    /// publishes what the worker wrote; a service run alongside that ends stops the rest gracefully.
    @Test func oneCallMigratesAndRunsTheWorkerAndTheRelay() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let prefix = KafkaTestBroker.uniqueName("pd") + "."
        let topics = TopicNaming(prefix: prefix)
        let broker = try await KafkaTestBroker.withTopics(sagaTopics(topics), partitions: 1)
        defer { broker.cluster?.shutdown() }
        let env = try DaemonEnvironment.load(
            [
                "SAGA_DATABASE_URL": PostgresTestDatabase.url, "SAGA_KAFKA_BOOTSTRAP": broker.servers,
                "SAGA_TOPIC_PREFIX": prefix, "SAGA_OPS_PORT": "0",
            ], databases: [InventoryService.name], devFile: nil, brokerFile: nil)
        let daemon = try Daemon(
            environment: env, label: "test", knownVariables: DaemonEnvironment.knownVariables(databases: []),
            variables: [:])
        let database = env.database(InventoryService.name)
        let orderId = UUID().uuidString.lowercased()
        let probe = Probe(kafka: try env.kafka(), topics: topics, database: database, orderId: orderId, logger: logger)

        try await ParticipantDaemon(InventoryService.definition()).run(on: daemon, alongside: [probe])

        #expect(probe.outcome.withLock { $0 } == topics.topic(for: InventoryRejected.eventType))
        try await PostgresTestDatabase.dropSchema(database.schema)
    }

    /// The topics a participant needs: those of the events it consumes and emits, and its dead-letter topic.
    @Test func aParticipantsTopicsAreItsEventTypesAndItsDeadLetterTopic() throws {
        let env = try DaemonEnvironment.load(
            ["SAGA_TOPIC_PREFIX": "t1.", "SAGA_TOPIC_PARTITIONS": "3", "SAGA_TOPIC_REPLICATION_FACTOR": "2"],
            databases: ["inventory"], devFile: nil, brokerFile: nil)
        #expect(
            env.topics(of: InventoryService.definition()) == [
                "t1.deadletter.inventory", "t1.inventory.rejected", "t1.inventory.released", "t1.inventory.reserved",
                "t1.order.cancelled", "t1.order.created", "t1.payment.completed", "t1.payment.failed",
            ])
        // Orders' deadline type (order.expired) never travels on Kafka: no topic for it.
        let orders = env.topics(of: OrdersService.definition())
        #expect(!orders.contains("t1.order.expired"))
        #expect(orders.contains("t1.order.created") && orders.contains("t1.payment.completed"))
        #expect(env.topicPartitions == 3)
        #expect(env.topicReplicationFactor == 2)
        #expect(
            try DaemonEnvironment.load([:], databases: [], devFile: nil, brokerFile: nil).topicReplicationFactor == nil)
        #expect {
            _ = try DaemonEnvironment.load(
                ["SAGA_TOPIC_PARTITIONS": "0"], databases: [], devFile: nil, brokerFile: nil)
        } throws: { "\($0)".contains("SAGA_TOPIC_PARTITIONS") }
    }

    /// On a real Kafka the kit creates the participant's missing topics with the configured partitions, and
    /// running it again (the topics exist) changes nothing. (The mock cluster answers no CreateTopics.)
    @Test(
        .enabled(
            if: KafkaTestBroker.usesRealKafka,
            "needs a real Kafka in SAGA_KAFKA_BOOTSTRAP: the mock answers no CreateTopics"
        )
    )
    func theKitCreatesAParticipantsMissingTopics() async throws {
        let prefix = KafkaTestBroker.uniqueName("tc") + "."
        let servers = try #require(ProcessInfo.processInfo.environment["SAGA_KAFKA_BOOTSTRAP"])
        let env = try DaemonEnvironment.load(
            [
                "SAGA_KAFKA_BOOTSTRAP": servers, "SAGA_TOPIC_PREFIX": prefix, "SAGA_TOPIC_PARTITIONS": "3",
                "SAGA_TOPIC_REPLICATION_FACTOR": "1",
            ], databases: [], devFile: nil, brokerFile: nil)
        let logger = Logger(label: "test")
        let definition = InventoryService.definition()
        try await env.ensureTopics([definition], logger: logger)
        try await env.ensureTopics([definition], logger: logger)
        let admin = try KafkaAdmin(bootstrapServers: servers, logger: logger)
        for topic in env.topics(of: definition) {
            #expect(try await admin.partitionCount(topic: topic, timeout: .seconds(10)) == 3, "\(topic)")
        }
    }
}

/// Runs once the participant's schema exists: stocks none of a SKU, sends an order of it, and returns when
/// the participant's rejection is on its topic (or throws after a minute).
private final class Probe: Service, Sendable {
    let kafka: KafkaSettings
    let topics: TopicNaming
    let database: ServiceDatabase
    let orderId: String
    let logger: Logger
    /// The topic the saga's answer came on.
    let outcome = Mutex<String?>(nil)

    init(kafka: KafkaSettings, topics: TopicNaming, database: ServiceDatabase, orderId: String, logger: Logger) {
        self.kafka = kafka
        self.topics = topics
        self.database = database
        self.orderId = orderId
        self.logger = logger
    }

    func run() async throws {
        let connection = try await PostgresConnection.connect(database.configuration, logger: logger)
        try await connection.execute("INSERT INTO stock (sku, available) VALUES ('none-left', 0)")
        await connection.close()

        let order = OrderCreatedV2(
            orderId: orderId, customerId: "c-1", total: Money(amount: 500, currency: "EUR"),
            lines: [.init(sku: "none-left", quantity: 1, unitPrice: Money(amount: 500, currency: "EUR"))])
        let codec = EventCodec(upcasters: sagaUpcasters, topics: topics)
        let producer = try KafkaProducer(configuration: kafka.producer(clientId: "probe"), logger: logger)
        _ = try await producer.send(
            codec.encode(try OutgoingEvent(order, sagaId: orderId, producer: OrdersService.name, causedBy: nil)))
        await producer.shutdown()

        let answers = [InventoryReserved.eventType, InventoryRejected.eventType].map(topics.topic(for:))
        let consumer = try KafkaConsumer(
            configuration: kafka.consumer(groupId: topics.group("probe-" + orderId), clientId: "probe"), logger: logger)
        try consumer.subscribe(topics: answers)
        let deadline = ContinuousClock.now + .seconds(60)
        while outcome.withLock({ $0 }) == nil {
            guard ContinuousClock.now < deadline else {
                await consumer.close()
                throw ProbeTimedOut()
            }
            for message in try await consumer.poll(maxMessages: 10, timeout: .milliseconds(200))
            where message.key.map({ String(decoding: $0, as: UTF8.self) }) == orderId {
                outcome.withLock { $0 = message.topic }
            }
        }
        await consumer.close()
    }
}

private struct ProbeTimedOut: Error {}
