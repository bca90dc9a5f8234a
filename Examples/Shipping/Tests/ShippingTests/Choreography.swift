import Foundation
import Logging
import SagaDaemon
import SagaKafka
import SagaOperations
import SagaServices
import SagaTestSupport
import Shipping
import Synchronization

/// The whole choreography in this process, each participant run by the daemon kit as its daemon runs it
/// (``ParticipantDaemon/run(on:alongside:)``: topics, migrations, registration, relay, worker, ops server):
/// orders, inventory and billing from the engine's example domain, and shipping. Its own topic prefix and
/// schemas, on a mock Kafka cluster (or `SAGA_KAFKA_BOOTSTRAP`) and the local PostgreSQL; `stop()` ends
/// everything and drops the schemas.
final class Choreography: Sendable {
    let environment: DaemonEnvironment
    let logger: Logger
    let book: OrderBook
    let inspector: SagaInspector
    let tracker: SagaTracker
    private let cluster: KafkaMockCluster?
    private let pools: [PostgresPool]
    private let tasks: [Task<Void, any Error>]
    /// Daemons (and the tracker) that ended before `stop()`, with how they ended.
    private let ended: EndedTasks

    static let participants = sagaServiceDefinitions + [ShippingService.definition]

    init() async throws {
        var logger = Logger(label: "shipping-test")
        logger.logLevel =
            ProcessInfo.processInfo.environment["SAGA_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) }
            ?? .warning
        self.logger = logger
        let prefix = KafkaTestBroker.uniqueName("ship") + "."
        let topics = TopicNaming(prefix: prefix)
        // The domain's topics exist, as a deployment creates them; shipping's too, since the mock cluster
        // answers no CreateTopics (against a real Kafka, the kit would create them).
        let broker = try await KafkaTestBroker.withTopics(
            sagaTopics(topics) + [
                topics.topic(for: ShipmentScheduled.eventType), topics.deadLetterTopic(consumer: ShippingService.name),
            ], partitions: 4)
        cluster = broker.cluster
        var variables = [
            "SAGA_KAFKA_BOOTSTRAP": broker.servers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
            "SAGA_TOPIC_PREFIX": prefix, "SAGA_OPS_PORT": "0", "SAGA_HEALTH_INTERVAL": "1s",
        ]
        if broker.cluster != nil { variables["SAGA_KAFKA_EMBEDDED"] = "1" }
        let names = Self.participants.map(\.name) + ["tracker"]
        let environment = try DaemonEnvironment.load(variables, databases: names, devFile: nil, brokerFile: nil)
        self.environment = environment

        // Migrated and seeded before the daemons start (they migrate again: nothing to do).
        try await environment.migrate(Self.participants, logger: logger)
        let orders = PostgresPool(configuration: environment.database("orders").configuration, size: 2, logger: logger)
        let inventory = PostgresPool(
            configuration: environment.database("inventory").configuration, size: 1, logger: logger)
        let billing = PostgresPool(
            configuration: environment.database("billing").configuration, size: 1, logger: logger)
        try await DemoCatalogue.standard.seed(orders: orders, inventory: inventory, billing: billing)
        book = OrderBook(
            pool: orders, codec: EventCodec(upcasters: sagaUpcasters, topics: topics), emitVersion: 2)

        let ended = EndedTasks()
        self.ended = ended
        var tasks: [Task<Void, any Error>] = []
        for definition in Self.participants {
            let daemon = try Daemon(
                environment: environment, label: "shipping-test.\(definition.name)",
                knownVariables: DaemonEnvironment.knownVariables(databases: names), variables: variables)
            tasks.append(
                ended.watch(definition.name) { try await ParticipantDaemon(definition).run(on: daemon, alongside: []) })
        }
        var trackerConfiguration = TrackerConfiguration(
            kafka: try environment.kafka(), database: environment.database("tracker"), topics: topics, services: [])
        trackerConfiguration.registryRefreshInterval = .milliseconds(200)
        let tracker = SagaTracker(configuration: trackerConfiguration, logger: logger)
        self.tracker = tracker
        tasks.append(ended.watch("tracker") { try await tracker.run() })
        self.tasks = tasks

        let trackerPool = PostgresPool(
            configuration: environment.database("tracker").configuration, size: 1, logger: logger)
        pools = [orders, inventory, billing, trackerPool]
        try await SagaTracker.prepare(environment.database("tracker"), logger: logger)
        // Every participant registered (migrating registers it, and so does its daemon when it starts): the
        // inspector knows the whole saga.
        let deadline = ContinuousClock.now + .seconds(60)
        while try await environment.registry.declarations(logger: logger).count < Self.participants.count {
            guard ContinuousClock.now < deadline else { throw Timeout("the four participants registered") }
            try await Task.sleep(for: .milliseconds(50))
        }
        inspector = try await SagaInspector(pool: trackerPool, registry: environment.registry, logger: logger)
    }

    /// Places an order through the orders service (the code its HTTP API calls); returns the saga's id.
    func place(_ customer: String, _ lines: [(String, Int)]) async throws -> String {
        let placed = try await book.place(
            OrderRequest(
                customerId: customer, currency: "EUR", lines: lines.map { OrderLine(sku: $0.0, quantity: $0.1) }))
        return placed.orderId.uuidString.lowercased()
    }

    /// Rows of `sql` in participant `name`'s schema.
    func query(_ name: String, _ sql: String, _ binds: [PostgresBind] = []) async throws -> [PostgresRow] {
        let pool = PostgresPool(configuration: environment.database(name).configuration, size: 1, logger: logger)
        do {
            let rows = try await pool.query(sql, binds)
            await pool.close()
            return rows
        } catch {
            await pool.close()
            throw error
        }
    }

    func produce(_ messages: [KafkaOutgoingMessage]) async throws {
        let producer = try KafkaProducer(
            configuration: try environment.kafka().producer(clientId: "shipping-test"), logger: logger)
        for result in await producer.send(messages) { _ = try result.get() }
        await producer.shutdown()
    }

    /// Every message of `topic` from its start, read until `count` arrived (or `timeout` passed), then for
    /// half a second more so that unexpected extra messages show up too.
    func consume(_ topic: String, atLeast count: Int, timeout: Duration = .seconds(30)) async throws -> [KafkaMessage] {
        let consumer = try KafkaConsumer(
            configuration: try environment.kafka().consumer(
                groupId: KafkaTestBroker.uniqueName("reader"), clientId: "shipping-test"),
            logger: logger)
        try consumer.subscribe(topics: [topic])
        var out: [KafkaMessage] = []
        let deadline = ContinuousClock.now + timeout
        while out.count < count && ContinuousClock.now < deadline {
            out += try await consumer.poll(maxMessages: 500, timeout: .milliseconds(100))
        }
        let settle = ContinuousClock.now + .milliseconds(500)
        while ContinuousClock.now < settle {
            out += try await consumer.poll(maxMessages: 500, timeout: .milliseconds(100))
        }
        await consumer.close()
        return out
    }

    /// Waits until `condition` holds. - Throws: ``Timeout`` naming `what` (and what `state` says then) after
    /// `timeout`.
    func eventually(
        _ what: String, timeout: Duration = .seconds(60), state: @autoclosure () -> String = "",
        _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            let ended = ended.list.withLock { $0 }
            guard ended.isEmpty else { throw EndedEarly(waitingUntil: what, ended: ended) }
            guard ContinuousClock.now < deadline else { throw Timeout(what, state: state()) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = await task.result }
        for pool in pools { await pool.close() }
        for name in Self.participants.map(\.name) + ["tracker"] {
            try? await PostgresTestDatabase.dropSchema(environment.database(name).schema)
        }
        try? await PostgresTestDatabase.dropSchema(environment.registry.schema)
        cluster?.shutdown()
    }
}

struct Timeout: Error, CustomStringConvertible {
    var description: String
    init(_ what: String, state: String = "") {
        description = "timed out waiting until \(what)" + (state.isEmpty ? "" : " (\(state))")
    }
}

/// A daemon (or the tracker) ended while a test waited on the choreography.
struct EndedEarly: Error, CustomStringConvertible {
    var description: String
    init(waitingUntil what: String, ended: [String]) {
        description = "waiting until \(what): \(ended.joined(separator: "; ")) before the test stopped it"
    }
}

/// The daemons (and the tracker) of a ``Choreography`` that ended before it stopped them, with how they ended.
final class EndedTasks: Sendable {
    let list = Mutex<[String]>([])

    /// Runs `body` (a daemon that runs until cancelled); if it ends before that, ``Choreography/eventually(_:timeout:state:_:)``
    /// fails at once, saying how it ended.
    func watch(_ name: String, _ body: @escaping @Sendable () async throws -> Void) -> Task<Void, any Error> {
        Task { [self] in
            do {
                try await body()
                if !Task.isCancelled { list.withLock { $0.append("\(name) returned") } }
            } catch {
                if !Task.isCancelled { list.withLock { $0.append("\(name) failed: \(error)") } }
                throw error
            }
        }
    }
}
