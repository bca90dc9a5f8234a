import Logging
import SagaEngine
import SagaKafka
import SagaPostgres
import SagaServices
import SagaTestSupport
import ServiceLifecycle
import Synchronization

@testable import saga

/// The whole stack in this test process: a mock cluster with the saga's topics, the services' schemas under a
/// fresh topic prefix (migrated, then `prepare`), the relays and workers (and the tracker), and the orders API on
/// a free loopback port. ``stop()`` shuts it down and drops the schemas.
final class InProcessStack {
    let env: SagaEnvironment
    let stack: Stack
    /// The orders API, e.g. `http://127.0.0.1:41234`.
    let base: String
    private let cluster: KafkaMockCluster
    private let group: ServiceGroup
    private let running: Task<Void, any Error>
    private let httpPool: PostgresPool
    private let schemas: [String]

    init(
        prefix: String, tracker: Bool, logger: Logger, prepare: (Stack) async throws -> Void = { _ in }
    ) async throws {
        cluster = try KafkaMockCluster(brokers: 1, logger: logger)
        for topic in sagaTopics(TopicNaming(prefix: prefix)) { try cluster.createTopic(topic, partitions: 2) }
        env = try SagaEnvironment.load(
            [
                "SAGA_DATABASE_URL": PostgresTestDatabase.url, "SAGA_KAFKA_BOOTSTRAP": cluster.bootstrapServers,
                "SAGA_TOPIC_PREFIX": prefix, "SAGA_HTTP_PORT": "0",
            ], devFile: nil, brokerFile: nil)
        stack = Stack(env: env, logger: logger)
        try await stack.migrate()
        try await prepare(stack)
        let port = Mutex<Int?>(nil)
        var services: [any Service] = []
        for s in Stack.services { services.append(try stack.relay(s)) }
        for s in Stack.services { services.append(try stack.worker(s)) }
        if tracker { services.append(try stack.tracker()) }
        let (http, httpPool) = stack.ordersHTTP(port: 0) { p in port.withLock { $0 = p } }
        services.append(http)
        self.httpPool = httpPool
        let env = self.env
        schemas = (Stack.services + (tracker ? ["tracker"] : [])).map { env.database($0).schema } + [env.registrySchema]
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) }, gracefulShutdownSignals: [], logger: logger))
        self.group = group
        running = Task { try await group.run() }
        while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
        base = "http://127.0.0.1:\(port.withLock { $0 }!)"
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        await httpPool.close()
        for schema in schemas { try? await PostgresTestDatabase.dropSchema(schema) }
        cluster.shutdown()
    }
}
