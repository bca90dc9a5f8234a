import Foundation
import Logging
import SagaEngine
import SagaKafka
import ServiceLifecycle

/// A daemon process: its configuration, its logger, its span exporter, and how it runs its services.
///
/// Start-up is ``bootstrap()`` once per process, then a `Daemon` from the loaded ``DaemonEnvironment``;
/// ``worker(_:)``, ``relay(_:)`` and ``ops(_:workers:)`` build the runtime's services from it, and ``run(_:)`` runs
/// them until SIGTERM or SIGINT. ``ParticipantDaemon`` does all of it in one call.
public struct Daemon: Sendable {
    /// The configuration the services are built from.
    public let environment: DaemonEnvironment
    /// The daemon's logger (its label names the process, e.g. `saga.worker.orders`).
    public let logger: Logger
    /// The span exporter when an OTLP endpoint is configured (see ``Telemetry``), else nil. ``run(_:)`` runs
    /// it first, so it stops last and flushes what the other services traced.
    public let tracing: (any Service)?

    /// Once per process, before any logger or metric is made: logging as `SAGA_LOG_FORMAT` (json or text,
    /// default json) and `SAGA_LOG_LEVEL` (default info) say, and swift-metrics into the Prometheus registry
    /// that the ops server's `/metrics` serves.
    /// - Throws: ``ConfigurationError`` naming the variable when a logging setting is not understood.
    public static func bootstrap() throws(ConfigurationError) {
        try LogSetup.bootstrap()
        OpsServer.bootstrapMetrics()
    }

    /// A daemon over `environment`. Logs a warning for every SAGA_* variable set in `variables` that is not in
    /// `knownVariables` (most likely misspelt), and starts tracing when `tracing` names the service and an
    /// OTLP endpoint is configured.
    /// - Parameters:
    ///   - environment: the configuration, as ``DaemonEnvironment/load(_:databases:devFile:brokerFile:)`` read it.
    ///   - label: the logger's label.
    ///   - serviceName: (`tracing:`) the OpenTelemetry service name (e.g. `saga-orders`), or nil for a process
    ///     that exports no spans.
    ///   - knownVariables: every SAGA_* variable the process reads.
    ///   - variables: the process's environment.
    /// - Throws: ``ConfigurationError`` naming the variable when the OTLP settings are unusable.
    public init(
        environment: DaemonEnvironment, label: String, tracing serviceName: String? = nil,
        knownVariables: Set<String>, variables: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigurationError) {
        let logger = Logger(label: label)
        for name in DaemonEnvironment.unknownVariables(variables, known: knownVariables) {
            logger.warning("unknown variable ignored (misspelt?)", metadata: ["variable": .string(name)])
        }
        self.environment = environment
        self.logger = logger
        self.tracing = try serviceName.flatMap { name throws(ConfigurationError) in
            try Telemetry.bootstrapTracing(serviceName: name, logger: logger, env: variables)
        }
    }

    /// Applies each participant's migrations (the engine's tables, then its own) in its schema.
    /// - Throws: `PostgresError` when a database is unreachable or a migration fails.
    public func migrate(_ definitions: [ParticipantDefinition]) async throws {
        try await environment.migrate(definitions, logger: logger)
    }

    /// Creates the topics of the participants that are missing (see
    /// ``DaemonEnvironment/ensureTopics(_:logger:)``).
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured; `KafkaError` when the broker cannot
    ///   be asked or a topic cannot be created.
    public func ensureTopics(_ definitions: [ParticipantDefinition]) async throws {
        try await environment.ensureTopics(definitions, logger: logger)
    }

    /// The participant's worker. - Throws: ``ConfigurationError`` when no Kafka broker is configured.
    public func worker(_ definition: ParticipantDefinition) throws(ConfigurationError) -> Worker {
        try environment.worker(definition, logger: logger)
    }

    /// The relay of the outbox of participant `name`. - Throws: ``ConfigurationError`` when no Kafka broker is
    /// configured.
    public func relay(_ name: String) throws(ConfigurationError) -> OutboxRelay {
        try environment.relay(name, logger: logger)
    }

    /// The ops server (health, readiness, metrics) checking the databases of `names` (participants, or
    /// "tracker") and the broker, and controlling `workers` (pause, resume; see ``OpsServer``).
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured.
    public func ops(_ names: [String], workers: [Worker] = []) throws(ConfigurationError) -> OpsServer {
        try environment.ops(names, workers: workers, logger: logger)
    }

    /// Runs `services` (after the span exporter, when tracing is on) until SIGTERM or SIGINT, or until one
    /// of them ends. - Throws: the first error a service throws.
    public func run(_ services: [any Service]) async throws {
        try await Self.run((tracing.map { [$0] } ?? []) + services, logger: logger)
    }

    /// Runs `services` in one service group until SIGTERM or SIGINT, or until one of them ends or fails:
    /// then every service shuts down gracefully, in reverse order (list a relay before the worker whose
    /// outbox it publishes, so it stops after it and publishes what the worker committed).
    /// - Throws: the first error a service throws.
    public static func run(_ services: [any Service], logger: Logger) async throws {
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

extension DaemonEnvironment {
    /// The participant's worker, configured from this environment (batch size, inbox retention, topics).
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured or one of the definition's schemas
    ///   does not compile.
    public func worker(_ definition: ParticipantDefinition, logger: Logger) throws(ConfigurationError) -> Worker {
        var configuration = WorkerConfiguration(
            name: definition.name, kafka: try kafka(), database: database(definition.name), topics: topics)
        configuration.batchSize = workerBatchSize
        configuration.inboxRetention = inboxRetention
        configuration.groupInstanceId = groupInstanceId
        do {
            return try Worker(configuration: configuration, definition: definition, logger: logger)
        } catch {
            throw ConfigurationError("\(definition.name): \(error)")
        }
    }

    /// The relay of participant `name`'s outbox, configured from this environment (batch size, shards).
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured.
    public func relay(_ name: String, logger: Logger) throws(ConfigurationError) -> OutboxRelay {
        var configuration = RelayConfiguration(name: name, kafka: try kafka(), database: database(name))
        configuration.batchSize = relayBatchSize
        configuration.maxShards = relayMaxShards
        configuration.vacuumInterval = relayVacuumInterval
        return OutboxRelay(configuration: configuration, logger: logger)
    }

    /// Health (the databases of `names`: participants or "tracker", and the broker; whether each of `workers` is
    /// paused) and metrics over HTTP on `SAGA_HTTP_HOST:SAGA_OPS_PORT`, and pause/resume of `workers`.
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured.
    public func ops(_ names: [String], workers: [Worker] = [], logger: Logger) throws(ConfigurationError) -> OpsServer {
        var checks = names.map { HealthMonitor.Check.database($0, database($0), logger: logger) }
        checks.append(.broker(try kafka(), timeout: healthTimeout, logger: logger))
        checks += workers.map { HealthMonitor.Check.paused($0) }
        let monitor = HealthMonitor(checks: checks, interval: healthInterval, timeout: healthTimeout, logger: logger)
        return OpsServer(host: httpHost, port: opsPort, health: monitor, workers: workers, logger: logger)
    }

    /// The topics `definition` needs before it runs: one per event type it emits or consumes (as its declaration
    /// says) and its dead-letter topic, sorted.
    public func topics(of definition: ParticipantDefinition) -> [String] {
        let types = definition.declaration.emits.map(\.type) + definition.declaration.consumes.map(\.type)
        return Set(types.map(topics.topic(for:)) + [topics.deadLetterTopic(consumer: definition.name)]).sorted()
    }

    /// Creates the topics of `definitions` (``topics(of:)``) that the broker does not have, with
    /// ``topicPartitions`` partitions and ``topicReplicationFactor`` replicas each; topics that exist are left as
    /// they are, so running it again, or from several processes at once, changes nothing. The embedded broker
    /// (``kafkaEmbedded``) answers no CreateTopics: there a missing topic is created on first use.
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured; `KafkaError` when the broker cannot be
    ///   asked in time or refuses to create a topic.
    public func ensureTopics(_ definitions: [ParticipantDefinition], logger: Logger) async throws {
        let wanted = Set(definitions.flatMap(topics(of:))).sorted()
        let kafka = try kafka()
        if kafkaEmbedded {
            // Nothing to ask: it creates a missing topic on first use (and a broker of it that is down would only
            // hold up the daemon's start, its ops server included).
            logger.debug("the embedded broker creates missing topics on first use", metadata: ["topics": "\(wanted)"])
            return
        }
        let admin = try KafkaAdmin(
            bootstrapServers: kafka.bootstrapServers, properties: kafka.properties, logger: logger)
        var missing: [String] = []
        for topic in wanted {
            do {
                _ = try await admin.partitionCount(topic: topic, timeout: .seconds(30))
            } catch {
                guard error.name == "UNKNOWN_TOPIC_OR_PART" else { throw error }
                missing.append(topic)
            }
        }
        guard !missing.isEmpty else { return }
        try await admin.createTopics(
            missing.map { (name: $0, partitions: topicPartitions, replicationFactor: topicReplicationFactor ?? -1) },
            timeout: .seconds(30))
        logger.info(
            "created missing topics",
            metadata: [
                "topics": "\(missing)", "partitions": "\(topicPartitions)",
                "replicationFactor": "\(topicReplicationFactor.map(String.init) ?? "broker default")",
            ])
    }

    /// Applies each participant's migrations (the engine's tables, then its own) in its schema, and registers its
    /// part of the saga in the participant registry.
    /// - Throws: `PostgresError` when a database is unreachable or a migration fails.
    public func migrate(_ definitions: [ParticipantDefinition], logger: Logger) async throws {
        for definition in definitions {
            try await database(definition.name).prepare(definition, logger: logger)
        }
    }
}
