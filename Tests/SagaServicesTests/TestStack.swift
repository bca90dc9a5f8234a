import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Synchronization

/// The saga on real infrastructure for one test: a real PostgreSQL (fresh schemas per service), a Kafka
/// broker (SAGA_KAFKA_BOOTSTRAP, else an in-process mock cluster; unique topic prefix either way), and
/// workers and relays as separate instances that a test can start, stop and crash one by one.
final class TestStack: @unchecked Sendable {
    // @unchecked: the running-task tables are only touched from the test's own task, one call at a time.
    let cluster: KafkaMockCluster?
    let kafka: KafkaSettings
    let topics: TopicNaming
    let databases: [String: ServiceDatabase]
    /// The tracker's read model (created by the tracker when it starts).
    let trackerDatabase: ServiceDatabase
    /// Where the participants register (the schema `saga dev` would use with this topic prefix), shared by
    /// every service database and the tracker's.
    let registry: ParticipantRegistry
    let logger: Logger
    let book: OrderBook
    private let ordersPool: PostgresPool
    private var workers: [String: (worker: Worker, task: Task<Void, any Error>)] = [:]
    private var relays: [(name: String, relay: OutboxRelay, task: Task<Void, any Error>)] = []

    static let services = [OrdersService.name, InventoryService.name, BillingService.name]

    init(orderCreatedVersion: Int = 2, partitions: Int32 = 4, orderDeadline: Duration? = .seconds(15 * 60))
        async throws
    {
        var logger = Logger(label: "test")
        logger.logLevel =
            ProcessInfo.processInfo.environment["SAGA_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) }
            ?? .warning
        self.logger = logger
        let prefix = KafkaTestBroker.uniqueName("t") + "."
        self.topics = TopicNaming(prefix: prefix)
        let broker = try await KafkaTestBroker.withTopics(sagaTopics(topics), partitions: partitions)
        self.cluster = broker.cluster
        self.kafka = KafkaSettings(bootstrapServers: broker.servers)
        var dbs: [String: ServiceDatabase] = [:]
        let schemaPrefix = String(prefix.dropLast()).lowercased().replacingOccurrences(of: "-", with: "_")
        let registry = ParticipantRegistry(url: PostgresTestDatabase.url, schema: "\(schemaPrefix)_saga_registry")
        self.registry = registry
        for s in Self.services {
            dbs[s] = ServiceDatabase(url: PostgresTestDatabase.url, schema: "\(schemaPrefix)_\(s)")
            dbs[s]!.registry = registry
        }
        self.databases = dbs
        var trackerDatabase = ServiceDatabase(url: PostgresTestDatabase.url, schema: "\(schemaPrefix)_tracker")
        trackerDatabase.registry = registry
        self.trackerDatabase = trackerDatabase
        for s in Self.services {
            try await dbs[s]!.prepare(try Self.definition(s), logger: logger)
        }
        ordersPool = PostgresPool(configuration: dbs["orders"]!.configuration, size: 2, logger: logger)
        book = OrderBook(
            pool: ordersPool, codec: EventCodec(upcasters: sagaUpcasters, topics: topics),
            emitVersion: orderCreatedVersion, deadline: orderDeadline)
        try await withPools { o, i, b in try await DemoCatalogue.standard.seed(orders: o, inventory: i, billing: b) }
    }

    static func definition(_ name: String) throws -> ParticipantDefinition {
        switch name {
        case "orders": return OrdersService.definition()
        case "inventory": return InventoryService.definition()
        case "billing": return BillingService.definition()
        default: throw HandlerRejection("no service \(name)")
        }
    }

    func withPools<T: Sendable>(
        _ body: (PostgresPool, PostgresPool, PostgresPool) async throws -> T
    ) async throws -> T {
        let pools = Self.services.map {
            PostgresPool(configuration: databases[$0]!.configuration, size: 1, logger: logger)
        }
        do {
            let result = try await body(pools[0], pools[1], pools[2])
            for p in pools { await p.close() }
            return result
        } catch {
            for p in pools { await p.close() }
            throw error
        }
    }

    /// One query on a service's database.
    @discardableResult
    func query(_ service: String, _ sql: String, _ binds: [PostgresBind] = []) async throws -> [PostgresRow] {
        let database = service == "tracker" ? trackerDatabase : databases[service]!
        let pool = PostgresPool(configuration: database.configuration, size: 1, logger: logger)
        do {
            let rows = try await pool.query(sql, binds)
            await pool.close()
            return rows
        } catch {
            await pool.close()
            throw error
        }
    }

    func workerConfiguration(_ name: String) -> WorkerConfiguration {
        var c = WorkerConfiguration(name: name, kafka: kafka, database: databases[name]!, topics: topics)
        c.pollTimeout = .milliseconds(50)
        c.retry = RetryPolicy(initialDelay: .milliseconds(50), maxDelay: .milliseconds(500))
        return c
    }

    @discardableResult
    func startWorker(_ name: String) throws -> Worker {
        let worker = try Worker(
            configuration: workerConfiguration(name), definition: try Self.definition(name), logger: logger)
        workers[name] = (worker, Task { try await worker.run() })
        return worker
    }

    /// Stops a worker the way a shutdown does (its loop sees cancellation, commits, leaves the group).
    func stopWorker(_ name: String) async {
        guard let w = workers.removeValue(forKey: name) else { return }
        w.task.cancel()
        _ = await w.task.result
    }

    func worker(_ name: String) -> Worker? { workers[name]?.worker }

    func relayConfiguration(_ name: String) -> RelayConfiguration {
        var c = RelayConfiguration(name: name, kafka: kafka, database: databases[name]!)
        c.pollInterval = .milliseconds(200)
        c.claimInterval = .milliseconds(200)
        c.retry = RetryPolicy(initialDelay: .milliseconds(50), maxDelay: .milliseconds(500))
        return c
    }

    @discardableResult
    func startRelay(_ name: String, configure: (inout RelayConfiguration) -> Void = { _ in }) -> OutboxRelay {
        var c = relayConfiguration(name)
        configure(&c)
        let relay = OutboxRelay(configuration: c, logger: logger)
        relays.append((name, relay, Task { try await relay.run() }))
        return relay
    }

    func startAll() throws {
        for s in Self.services {
            startRelay(s)
            try startWorker(s)
        }
    }

    /// Places an order through the orders service (the same code the HTTP API calls).
    func place(_ customer: String, _ lines: [(String, Int)]) async throws -> String {
        let placed = try await book.place(
            OrderRequest(
                customerId: customer, currency: "EUR", lines: lines.map { OrderLine(sku: $0.0, quantity: $0.1) }))
        return placed.orderId.uuidString.lowercased()
    }

    /// Places one order of each outcome (confirmed, declined and released, out of stock) and waits until all
    /// three sagas finished; returns their ids in that order.
    func finishOneOfEachOutcome() async throws -> [String] {
        let ids = [
            try await place("alice", [("widget", 1)]), try await place("carol", [("gadget", 1)]),
            try await place("alice", [("doohickey", 1)]),
        ]
        for id in ids { _ = try await waitForTerminal(id) }
        return ids
    }

    /// Waits until the order leaves PENDING; returns its view. - Throws: on timeout, with the last status.
    func waitForTerminal(_ orderId: String, timeout: Duration = .seconds(60)) async throws -> OrderBook.View {
        let deadline = ContinuousClock.now + timeout
        var last: OrderBook.View?
        while ContinuousClock.now < deadline {
            last = try await book.view(UUID(uuidString: orderId)!)
            if let v = last, v.status != "PENDING" { return v }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HandlerRejection("order \(orderId) still \(last?.status ?? "missing") after \(timeout)")
    }

    /// Waits until `condition` holds, polling. - Throws: on timeout, naming `what`.
    func eventually(_ what: String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws
    {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HandlerRejection("timed out waiting for: \(what)")
    }

    /// Produces raw messages straight to the broker (to inject duplicates and poison events).
    /// An `order.created` of a new saga (its id is the order id unless `sagaId` is given), encoded for this
    /// stack's topics: for tests that feed the tracker or a worker directly.
    func orderCreated(customer: String = "alice", sagaId: String? = nil) throws -> (
        sagaId: String, message: KafkaOutgoingMessage
    ) {
        let id = UUID().uuidString.lowercased()
        let event = try OutgoingEvent(
            OrderCreatedV2(
                orderId: id, customerId: customer, total: Money(amount: 1, currency: "EUR"),
                lines: [.init(sku: "widget", quantity: 1, unitPrice: nil)]), sagaId: sagaId ?? id, producer: "orders",
            causedBy: nil)
        return (sagaId ?? id, try EventCodec(upcasters: [], topics: topics).encode(event))
    }

    /// Creates `names` on this stack's broker (e.g. a participant's that joins later), with 2 partitions.
    func createTopics(_ names: [String]) async throws {
        if let cluster {
            for name in names { try cluster.createTopic(name, partitions: 2) }
        } else {
            let admin = try KafkaAdmin(bootstrapServers: kafka.bootstrapServers, logger: logger)
            try await admin.createTopics(
                names.map { (name: $0, partitions: 2, replicationFactor: 1) }, timeout: .seconds(30))
        }
    }

    func produce(_ messages: [KafkaOutgoingMessage]) async throws {
        let producer = try KafkaProducer(configuration: kafka.producer(clientId: "test"), logger: logger)
        for r in await producer.send(messages) { _ = try r.get() }
        await producer.shutdown()
    }

    /// Reads every message of `topics` from the beginning until `count` arrived or `timeout` passed.
    func consumeAll(_ topicNames: [String], atLeast count: Int, timeout: Duration = .seconds(30)) async throws
        -> [KafkaMessage]
    {
        let consumer = try KafkaConsumer(
            configuration: kafka.consumer(groupId: KafkaTestBroker.uniqueName("reader"), clientId: "test"),
            logger: logger)
        try consumer.subscribe(topics: topicNames)
        var out: [KafkaMessage] = []
        let deadline = ContinuousClock.now + timeout
        while out.count < count && ContinuousClock.now < deadline {
            out += try await consumer.poll(maxMessages: 500, timeout: .milliseconds(100))
        }
        // Linger briefly so that extra (unexpected) messages would show up too.
        let settle = ContinuousClock.now + .milliseconds(500)
        while ContinuousClock.now < settle {
            out += try await consumer.poll(maxMessages: 500, timeout: .milliseconds(100))
        }
        await consumer.close()
        return out
    }

    func stop() async {
        for (name, _) in workers { await stopWorker(name) }
        for r in relays { r.task.cancel() }
        for r in relays { _ = await r.task.result }
        relays = []
        await ordersPool.close()
        for db in databases.values { try? await PostgresTestDatabase.dropSchema(db.schema) }
        try? await PostgresTestDatabase.dropSchema(trackerDatabase.schema)
        try? await PostgresTestDatabase.dropSchema(registry.schema)
        cluster?.shutdown()
    }
}
