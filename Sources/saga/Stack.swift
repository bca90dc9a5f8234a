import Foundation
import Hummingbird
import Logging
import NIOCore
import SagaDaemon
import SagaEngine
import SagaOperations
import SagaServices
import ServiceLifecycle

/// Builds the daemons of the saga from the environment, over the daemon kit (`SagaDaemon`): workers, relays,
/// the tracker, the ops servers and the orders HTTP API.
struct Stack: Sendable {
    let env: SagaEnvironment
    let logger: Logger

    static let services = ["orders", "inventory", "billing"]

    static func definition(_ name: String) throws(ConfigurationError) -> ParticipantDefinition {
        switch name {
        case OrdersService.name: return OrdersService.definition()
        case InventoryService.name: return InventoryService.definition()
        case BillingService.name: return BillingService.definition()
        default:
            throw ConfigurationError("unknown service '\(name)': expected one of \(services.joined(separator: ", "))")
        }
    }

    func worker(_ name: String) throws(ConfigurationError) -> Worker {
        try env.daemon.worker(try Self.definition(name), logger: logger)
    }

    func relay(_ name: String) throws(ConfigurationError) -> OutboxRelay {
        _ = try Self.definition(name)
        return try env.daemon.relay(name, logger: logger)
    }

    func tracker(rebuild: Bool = false) throws(ConfigurationError) -> SagaTracker {
        var configuration = TrackerConfiguration(
            kafka: try env.kafka(), database: env.database("tracker"), topics: env.topics, services: Self.services)
        configuration.rebuild = rebuild
        configuration.groupInstanceId = env.groupInstanceId
        configuration.batchWait = env.trackerBatchWait
        return SagaTracker(configuration: configuration, logger: logger)
    }

    /// Health (the databases of `names`: services or "tracker", and the broker) and metrics over HTTP, and
    /// pause/resume of `workers`.
    func ops(_ names: [String], workers: [Worker] = []) throws(ConfigurationError) -> OpsServer {
        try env.daemon.ops(names, workers: workers, logger: logger)
    }

    /// Applies every service's migrations (engine tables + the service's own) and registers its part of the
    /// saga in the participant registry.
    func migrate(_ names: [String] = Stack.services) async throws {
        var definitions: [ParticipantDefinition] = []
        for name in names { definitions.append(try Self.definition(name)) }
        try await env.daemon.migrate(definitions, logger: logger)
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
        // Its statements look prices, orders and idempotency keys up by key: generic plans, made once per session.
        var database = env.database(OrdersService.name).configuration.named("api \(OrdersService.name)")
        database.genericPlans = true
        let pool = PostgresPool(configuration: database, size: env.httpDatabaseConnections, logger: logger)
        var book = OrderBook(
            pool: pool, codec: EventCodec(upcasters: sagaUpcasters, topics: env.topics),
            emitVersion: env.orderCreatedVersion, deadline: env.orderDeadline)
        // Wakes the orders relay when it runs in this process (`saga dev`); no effect otherwise.
        book.relayDatabase = env.database(OrdersService.name)
        var logger = self.logger
        logger[metadataKey: "service"] = .string(OrdersService.name)
        let app = Application(
            router: OrdersHTTP.router(book: book), server: OrdersHTTP.server(),
            configuration: .init(address: .hostname(env.httpHost, port: port), serverName: "saga-orders"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) },
            logger: logger)
        return (app, pool)
    }
}
