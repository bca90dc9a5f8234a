import Foundation
import SagaEngine
import ServiceLifecycle

/// A participant as a daemon, in one call: its `main` is
///
/// ```swift
/// try await ParticipantDaemon(definition).run()
/// ```
///
/// which reads the configuration from the environment (``DaemonEnvironment``), sets up logging, metrics
/// and tracing, migrates the participant's schema, creates its topics that are missing, and runs its outbox relay, its worker and the ops
/// server (health, readiness, metrics) until SIGTERM or SIGINT, then stops them gracefully.
public struct ParticipantDaemon: Sendable {
    /// What of the participant a daemon runs.
    public struct Roles: OptionSet, Sendable, Hashable {
        /// The roles as bits.
        public let rawValue: Int
        /// The roles of `rawValue`'s bits.
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// The worker: consumes the participant's events, handles them, writes its outbox.
        public static let worker = Roles(rawValue: 1 << 0)
        /// The relay: publishes the participant's committed outbox rows.
        public static let relay = Roles(rawValue: 1 << 1)
        /// Both.
        public static let all: Roles = [.worker, .relay]
    }

    /// The participant.
    public var definition: ParticipantDefinition
    /// What runs: by default its worker and its relay.
    public var roles: Roles

    /// A daemon of `definition` running `roles`.
    public init(_ definition: ParticipantDefinition, roles: Roles = .all) {
        self.definition = definition
        self.roles = roles
    }

    /// Starts the process (``Daemon/bootstrap()``: logging and metrics, once per process), reads
    /// `variables` (its database is `SAGA_<NAME>_DATABASE_URL` or `SAGA_DATABASE_URL`), then runs as
    /// ``run(on:alongside:)`` says, with the logger `saga.<name>` and the tracing service `saga-<name>`.
    /// - Throws: ``ConfigurationError`` naming the variable when a setting is wrong; what migrating or a
    ///   service throws.
    public func run(variables: [String: String] = ProcessInfo.processInfo.environment) async throws {
        try Daemon.bootstrap()
        let names = [definition.name]
        let environment = try DaemonEnvironment.load(variables, databases: names)
        let daemon = try Daemon(
            environment: environment, label: "saga.\(definition.name)", tracing: "saga-\(definition.name)",
            knownVariables: DaemonEnvironment.knownVariables(databases: names), variables: variables)
        try await run(on: daemon, alongside: [])
    }

    /// Migrates the participant's schema, creates its missing topics
    /// (``DaemonEnvironment/ensureTopics(_:logger:)``), then runs its relay and worker (as ``roles`` says), the ops server
    /// checking its database and the broker (and pausing and resuming its worker: ``OpsServer``), and `alongside`
    /// (e.g. an HTTP API, which stops first) on
    /// `daemon` until SIGTERM or SIGINT.
    /// - Throws: ``ConfigurationError`` when no Kafka broker is configured; what migrating or a service throws.
    public func run(on daemon: Daemon, alongside: [any Service]) async throws {
        var services: [any Service] = []
        // The relay first: services stop in reverse order, so it publishes what the worker committed.
        if roles.contains(.relay) { services.append(try daemon.relay(definition.name)) }
        let worker = roles.contains(.worker) ? try daemon.worker(definition) : nil
        if let worker { services.append(worker) }
        services.append(try daemon.ops([definition.name], workers: worker.map { [$0] } ?? []))
        // The database first: an unreachable one is reported as such, before any broker request.
        try await daemon.migrate([definition])
        try await daemon.ensureTopics([definition])
        try await daemon.run(services + alongside)
    }
}
