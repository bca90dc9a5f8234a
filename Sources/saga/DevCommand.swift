import ArgumentParser
import Foundation
import Logging
import SagaDaemon
import SagaEngine
import SagaKafka
import SagaServices
import ServiceLifecycle

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run the whole stack locally: embedded broker, local PostgreSQL, workers, relays, tracker, HTTP API.",
        discussion: """
            Uses SAGA_KAFKA_BOOTSTRAP / SAGA_DATABASE_URL when set; otherwise hosts librdkafka's mock cluster \
            in-process and uses the checkout's local PostgreSQL (starting it with scripts/pg when it is not \
            running). Seeds the demo catalogue, prints the addresses and writes them to .saga/dev.json so \
            other saga commands find the stack. Runs until SIGINT/SIGTERM, then stops everything it started.
            """)

    @Option(help: "Partitions of each saga topic on the embedded broker (1...256).")
    var partitions: Int32 = SagaEnvironment.embeddedPartitions

    @Option(
        name: .customLong("participant"),
        help: ArgumentHelp(
            "A participant daemon's executable to run beside the stack, with its broker and database (repeatable).",
            discussion: """
                e.g. Examples/Shipping/.build/debug/shipping. It gets the stack's SAGA_KAFKA_BOOTSTRAP and \
                SAGA_DATABASE_URL (plus the rest of this environment) and SAGA_OPS_PORT=0, and is stopped with \
                SIGTERM when the stack stops; when it exits by itself, the stack stops.
                """, valueName: "executable"))
    var participants: [String] = []

    func validate() throws {
        try SagaEnvironment.validatePartitions(partitions)
        for participant in participants where !FileManager.default.isExecutableFile(atPath: participant) {
            throw ValidationError("--participant \(participant): no executable file there (build it first)")
        }
    }

    func run() async throws {
        try Daemon.bootstrap()
        var configured: SagaEnvironment
        configured = try SagaEnvironment.load(devFile: nil, brokerFile: nil)
        let logger = Logger(label: "saga.dev")
        let tracing = try Telemetry.bootstrapTracing(serviceName: "saga-dev", logger: logger)

        var cluster: KafkaMockCluster?
        if configured.kafkaBootstrap == nil {
            // One broker: each consumer then runs one fetch loop instead of one per broker.
            let c = try KafkaMockCluster(brokers: 1, logger: logger)
            for topic in sagaTopics(configured.topics) { try c.createTopic(topic, partitions: partitions) }
            configured.kafkaBootstrap = c.bootstrapServers
            if ProcessInfo.processInfo.environment["SAGA_KAFKA_FETCH_WAIT_MAX_MS", default: ""].isEmpty {
                configured.fetchWaitMaxMs = SagaEnvironment.embeddedFetchWaitMaxMs
            }
            cluster = c
        }
        let env = configured
        let startedPostgres = try await LocalPostgres.ensureReachable(env: env, logger: logger)

        let embedded = cluster != nil
        let stack = Stack(env: env, logger: logger)
        do {
            try await stack.migrate()
            try await stack.seed()
            var services: [any Service] = tracing.map { [$0] } ?? []
            for s in Stack.services { services.append(try stack.relay(s)) }
            var workers: [Worker] = []
            for s in Stack.services { workers.append(try stack.worker(s)) }
            services += workers
            services.append(try stack.tracker())
            services.append(try stack.ops(Stack.services + ["tracker"], workers: workers))
            let participantLines = participants.map { "\n  participant \($0)   (SAGA_OPS_PORT=0)" }.joined()
            let (http, pool) = stack.ordersHTTP(port: env.httpPort) { port in
                let file = DevStackFile(
                    http: "http://\(env.httpHost):\(port)", kafkaBootstrap: env.kafkaBootstrap ?? "",
                    kafkaEmbedded: embedded,
                    databaseURL: env.databaseURL,
                    schemas: Dictionary(uniqueKeysWithValues: Stack.services.map { ($0, env.database($0).schema) }),
                    pid: getpid(), ops: env.opsPort == 0 ? nil : "http://\(env.httpHost):\(env.opsPort)")
                do { try file.write() } catch { logger.error("cannot write \(DevStackFile.path): \(error)") }
                say(
                    """
                    saga dev: the local stack is up (Ctrl-C stops it)
                      HTTP API    \(file.http)   (POST /orders, GET /orders/{id})
                      ops         http://\(env.httpHost):\(env.opsPort)   (GET /health/live, /health/ready, /metrics; POST /participants/{name}/pause|resume)
                      Kafka       \(file.kafkaBootstrap)\(embedded ? "   (embedded mock cluster)" : "")
                      PostgreSQL  \(PostgresConfiguration(url: file.databaseURL).redactedURL)   (schemas: \(Stack.services.map { env.database($0).schema }.joined(separator: ", ")))
                      wrote \(DevStackFile.path)\(participantLines)
                    """)
            }
            services.append(http)
            // Last, so that they stop first: they stop while the stack they talk to still runs.
            for participant in participants {
                services.append(
                    ParticipantProcess(
                        executable: participant,
                        environment: ParticipantProcess.environment(
                            kafkaBootstrap: env.kafkaBootstrap ?? "", embedded: embedded, databaseURL: env.databaseURL),
                        logger: logger))
            }
            try await Daemon.run(services, logger: logger)
            await pool.close()
        } catch {
            try? FileManager.default.removeItem(atPath: DevStackFile.path)
            cluster?.shutdown()
            if startedPostgres { LocalPostgres.stop() }
            throw error
        }
        try? FileManager.default.removeItem(atPath: DevStackFile.path)
        cluster?.shutdown()
        if startedPostgres { LocalPostgres.stop() }
    }
}

/// The checkout's local PostgreSQL (scripts/pg), for `saga dev` when SAGA_DATABASE_URL is not set.
enum LocalPostgres {
    /// Connects once; when that fails and no SAGA_DATABASE_URL was given, starts the local server with
    /// `scripts/pg start`. Returns true when it started it (so the caller stops it again).
    static func ensureReachable(env: SagaEnvironment, logger: Logger) async throws -> Bool {
        if await reachable(env.databaseURL, logger: logger) { return false }
        let explicit = ProcessInfo.processInfo.environment["SAGA_DATABASE_URL"].map { !$0.isEmpty } ?? false
        guard !explicit, FileManager.default.isExecutableFile(atPath: "scripts/pg") else {
            throw ValidationError(
                "cannot reach PostgreSQL at \(PostgresConfiguration(url: env.databaseURL).redactedURL): start it (scripts/pg start) or set SAGA_DATABASE_URL"
            )
        }
        logger.info("starting the local PostgreSQL (scripts/pg start)")
        try runScript(["start"])
        guard await reachable(env.databaseURL, logger: logger) else {
            throw ValidationError(
                "started the local PostgreSQL but cannot reach \(PostgresConfiguration(url: env.databaseURL).redactedURL)"
            )
        }
        return true
    }

    static func stop() { try? runScript(["stop"]) }

    private static func reachable(_ url: String, logger: Logger) async -> Bool {
        guard let c = try? await PostgresConnection.connect(PostgresConfiguration(url: url), logger: logger) else {
            return false
        }
        await c.close()
        return true
    }

    private static func runScript(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "scripts/pg")
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ValidationError("scripts/pg \(args.joined(separator: " ")) failed")
        }
    }
}

/// Hides the password of a connection URL before it is printed or logged.
