import Foundation
import Hummingbird
import Logging
import NIOCore
import SagaEngine
import SagaServices
import ServiceLifecycle

/// Builds the daemons of the saga from the environment: workers, relays and the orders HTTP API.
struct Stack: Sendable {
    let env: SagaEnvironment
    let logger: Logger

    static let services = ["orders", "inventory", "billing"]

    static func definition(_ name: String) throws(ConfigurationError) -> SagaServiceDefinition {
        switch name {
        case OrdersService.name: return OrdersService.definition()
        case InventoryService.name: return InventoryService.definition()
        case BillingService.name: return BillingService.definition()
        default:
            throw ConfigurationError("unknown service '\(name)': expected one of \(services.joined(separator: ", "))")
        }
    }

    func worker(_ name: String) throws(ConfigurationError) -> Worker {
        let definition = try Self.definition(name)
        var configuration = WorkerConfiguration(
            name: name, kafka: try env.kafka(), database: env.database(name), topics: env.topics)
        configuration.batchSize = env.workerBatchSize
        configuration.inboxRetention = env.inboxRetention
        configuration.groupInstanceId = env.groupInstanceId
        return Worker(
            configuration: configuration, handlers: definition.handlers, upcasters: definition.upcasters,
            migrations: definition.migrations, logger: logger)
    }

    func relay(_ name: String) throws(ConfigurationError) -> OutboxRelay {
        _ = try Self.definition(name)
        var configuration = RelayConfiguration(name: name, kafka: try env.kafka(), database: env.database(name))
        configuration.batchSize = env.relayBatchSize
        configuration.maxShards = env.relayMaxShards
        return OutboxRelay(configuration: configuration, logger: logger)
    }

    func tracker(rebuild: Bool = false) throws(ConfigurationError) -> SagaTracker {
        var configuration = TrackerConfiguration(
            kafka: try env.kafka(), database: env.database("tracker"), topics: env.topics, services: Self.services)
        configuration.rebuild = rebuild
        configuration.groupInstanceId = env.groupInstanceId
        return SagaTracker(configuration: configuration, model: orderSagaModel, logger: logger)
    }

    /// Health (the databases of `names`: services or "tracker", and the broker) and metrics over HTTP.
    func ops(_ names: [String]) throws(ConfigurationError) -> OpsServer {
        var checks = names.map { HealthMonitor.Check.database($0, env.database($0), logger: logger) }
        checks.append(.broker(try env.kafka(), timeout: env.healthTimeout, logger: logger))
        let monitor = HealthMonitor(
            checks: checks, interval: env.healthInterval, timeout: env.healthTimeout, logger: logger)
        return OpsServer(host: env.httpHost, port: env.opsPort, health: monitor, logger: logger)
    }

    /// Applies every service's migrations (engine tables + the service's own).
    func migrate(_ names: [String] = Stack.services) async throws {
        for name in names {
            try await env.database(name).prepare(migrations: try Self.definition(name).migrations, logger: logger)
        }
    }

    /// Seeds the demo catalogue into the three databases.
    func seed(_ catalogue: DemoCatalogue = .standard) async throws {
        let pools = Self.services.map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: logger)
        }
        do {
            try await catalogue.seed(orders: pools[0], inventory: pools[1], billing: pools[2])
        } catch {
            for p in pools { await p.close() }
            throw error
        }
        for p in pools { await p.close() }
    }

    /// The orders HTTP API as a service. `onRunning` gets the bound port (useful with port 0).
    func ordersHTTP(port: Int, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> (
        any Service, PostgresPool
    ) {
        let pool = PostgresPool(configuration: env.database(OrdersService.name).configuration, size: 4, logger: logger)
        let book = OrderBook(
            pool: pool, codec: EventCodec(upcasters: sagaUpcasters, topics: env.topics),
            emitVersion: env.orderCreatedVersion)
        var logger = self.logger
        logger[metadataKey: "service"] = .string(OrdersService.name)
        let app = Application(
            router: OrdersHTTP.router(book: book), server: OrdersHTTP.server(),
            configuration: .init(address: .hostname(env.httpHost, port: port), serverName: "saga-orders"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) },
            logger: logger)
        return (app, pool)
    }

    /// Runs `services` until SIGTERM/SIGINT; they stop in reverse order (list relays first so they
    /// publish what the workers wrote before they stop).
    static func run(_ services: [any Service], logger: Logger) async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: services.map {
                    .init(
                        service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .gracefullyShutdownGroup)
                },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}
