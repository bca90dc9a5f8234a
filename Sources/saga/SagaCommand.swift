import ArgumentParser
import Foundation
import Logging
import SagaEngine

@main
struct SagaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saga",
        abstract: "A choreography saga engine: orders, inventory and billing over Kafka and PostgreSQL.",
        discussion: """
            Configuration comes from the environment (SAGA_KAFKA_BOOTSTRAP, SAGA_DATABASE_URL, ...; see the README).
            Without it, commands find the local stack that `saga dev` started through .saga/dev.json.
            """,
        subcommands: [
            DevCommand.self, WorkerCommand.self, RelayCommand.self, BrokerCommand.self, MigrateCommand.self,
            TrackerCommand.self, InspectCommand.self, ReplayCommand.self, DemoCommand.self, BenchCommand.self,
        ])
}

/// Shared start-up of every subcommand: logging and configuration, with clear errors for bad values.
struct Runtime {
    let env: SagaEnvironment
    let logger: Logger

    static func start(_ label: String) throws -> Runtime {
        try LogSetup.bootstrap()
        OpsServer.bootstrapMetrics()
        return Runtime(env: try SagaEnvironment.load(), logger: Logger(label: label))
    }

    var stack: Stack { Stack(env: env, logger: logger) }
}
