import ArgumentParser
import SagaDaemon
import SagaEngine
import ServiceLifecycle

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run one service's worker: consume its events, handle them, write the outbox.",
        discussion: """
            orders also serves the HTTP API (POST /orders, GET /orders/{id}, GET /health) on \
            SAGA_HTTP_HOST:SAGA_HTTP_PORT. Stops gracefully on SIGTERM/SIGINT: the batch in flight \
            commits or rolls back, offsets are committed, the consumer leaves its group. \
            SAGA_KAFKA_GROUP_INSTANCE_ID (e.g. inventory-1, or {hostname} for the host's name; default unset) \
            makes the consumer a static member (group.instance.id): it keeps its place in the group across a \
            restart within session.timeout.ms (30 s for a static member, 6 s for a dynamic one; \
            SAGA_KAFKA_PROPERTIES overrides it) instead of waiting out a rebalance; it does not leave the \
            group on SIGTERM. It must be unique among the service's running workers: on Apache Kafka a second \
            process with the same id fences the first, which exits with a fatal FENCED_INSTANCE_ID error. Not for \
            the embedded broker, which ignores it (a restart after SIGTERM then takes 19 s instead of 9 s), and \
            on Tansu 0.6 only with care: it fences no duplicate and hands the partitions of a static member that \
            is gone for good to nobody (they stall); see the README, "Restarts and static membership".
            """)

    @Argument(help: "The service: orders, inventory or billing.")
    var service: String

    func validate() throws {
        guard Stack.services.contains(service) else {
            throw ValidationError(
                "unknown service '\(service)': expected one of \(Stack.services.joined(separator: ", "))")
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.worker.\(service)", tracing: "saga-\(service)")
        // The same kit as any participant's own daemon, with the worker only (`saga relay` relays).
        let participant = ParticipantDaemon(try Stack.definition(service), roles: .worker)
        var alongside: [any Service] = []
        var pool: PostgresPool?
        if service == "orders" {
            let (http, p) = runtime.stack.ordersHTTP(port: runtime.env.httpPort) { port in
                runtime.logger.info(
                    "orders HTTP API listening", metadata: ["address": "\(runtime.env.httpHost):\(port)"])
            }
            alongside.append(http)
            pool = p
        }
        try await participant.run(on: runtime.daemon, alongside: alongside)
        await pool?.close()
    }
}

struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Publish committed outbox rows to Kafka (one relay per service database).",
        discussion: """
            Wakes on LISTEN/NOTIFY, polls every second as a fallback, publishes in batches with the \
            idempotent producer and marks rows only after the broker acknowledged them. Several instances \
            may run at once: they split the outbox shards through advisory locks (SAGA_RELAY_MAX_SHARDS \
            caps how many one instance takes), which keeps each saga's events in order.
            """)

    @Argument(help: "The services whose outboxes to relay (default: all three).")
    var services: [String] = []

    func validate() throws {
        for s in services where !Stack.services.contains(s) {
            throw ValidationError("unknown service '\(s)': expected one of \(Stack.services.joined(separator: ", "))")
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.relay", tracing: "saga-relay")
        let names = services.isEmpty ? Stack.services : services
        var relays: [any Service] = []
        for s in names { relays.append(try runtime.stack.relay(s)) }
        try await runtime.stack.migrate(names)
        try await runtime.run(relays + [try runtime.stack.ops(names)])
    }
}

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Create each service's schema and apply pending migrations (workers also do this at start).")

    @Argument(help: "The services (default: all three).")
    var services: [String] = []

    @Flag(help: "Also insert the demo catalogue (products, stock, customers) where missing.")
    var seed = false

    func run() async throws {
        let runtime = try Runtime.start("saga.migrate")
        let names = services.isEmpty ? Stack.services : services
        for s in names where !Stack.services.contains(s) { throw ValidationError("unknown service '\(s)'") }
        try await runtime.stack.migrate(names)
        if seed { try await runtime.stack.seed() }
        print("migrated: \(names.joined(separator: ", "))\(seed ? " (demo catalogue seeded)" : "")")
    }
}
