import ArgumentParser
import Foundation
import Logging
import SagaDaemon
import SagaEngine
import ServiceLifecycle

@main
struct SagaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saga",
        abstract: "A choreography saga engine: orders, inventory and billing over Kafka and PostgreSQL.",
        discussion: """
            Configuration comes from the environment (SAGA_KAFKA_BOOTSTRAP, SAGA_DATABASE_URL, ...; see the README). \
            Without it, commands find the local stack that `saga dev` started through .saga/dev.json. \
            Every PostgreSQL connection has TCP keepalives and tcp_user_timeout on (a dead peer is noticed in about \
            11 s; the database URL's keepalives_* and tcp_user_timeout parameters tune them); SAGA_STATEMENT_TIMEOUT \
            and SAGA_LOCK_TIMEOUT (e.g. 30s, 5s; default none) set statement_timeout and lock_timeout of the \
            daemons' sessions (not of migrations). SAGA_KAFKA_GROUP_INSTANCE_ID (default unset) makes the worker's \
            and the tracker's consumers static members of their groups, for Apache Kafka (`saga worker --help`).
            """,
        subcommands: [
            DevCommand.self, WorkerCommand.self, RelayCommand.self, BrokerCommand.self, MigrateCommand.self,
            TrackerCommand.self, InspectCommand.self, ReplayCommand.self, DemoCommand.self, BenchCommand.self,
            HealthCommand.self, SchemasCommand.self, ChaosCommand.self,
        ])
}

/// Shared start-up of every subcommand, over the daemon kit: logging, metrics and configuration, with clear
/// errors for bad values.
struct Runtime {
    let env: SagaEnvironment
    let daemon: Daemon

    var logger: Logger { daemon.logger }

    /// - Parameter tracing: the OTel service name, for daemons that export spans when an OTLP endpoint is set.
    static func start(_ label: String, tracing serviceName: String? = nil) throws -> Runtime {
        try Daemon.bootstrap()
        let env = try SagaEnvironment.load()
        let daemon = try Daemon(
            environment: env.daemon, label: label, tracing: serviceName, knownVariables: SagaEnvironment.knownVariables)
        return Runtime(env: env, daemon: daemon)
    }

    var stack: Stack { Stack(env: env, logger: logger) }

    /// Runs the daemon's services (and the span exporter, which stops last) until SIGTERM/SIGINT.
    func run(_ services: [any Service]) async throws {
        try await daemon.run(services)
    }
}
