import Foundation
import Logging
import SagaDaemon
import ServiceLifecycle

/// A participant daemon that `saga dev --participant` runs beside the stack: its executable, started with
/// the stack's environment (broker, database, topic prefix), stopped with SIGTERM by its PID when the stack
/// stops. It ends the stack when it exits by itself.
struct ParticipantProcess: Service {
    let executable: String
    let environment: [String: String]
    let logger: Logger

    /// The environment of a participant beside `saga dev`: the caller's, with the stack's broker and database,
    /// an ephemeral ops port (`saga dev`'s own ops server has the configured one), and without the settings of
    /// the stack's own services (`SAGA_HTTP_PORT`, `SAGA_ORDERS_DATABASE_URL`, …), which it would warn about.
    static func environment(
        kafkaBootstrap: String, embedded: Bool, databaseURL: String,
        base: [String: String] = ProcessInfo.processInfo.environment
    ) -> [String: String] {
        var environment = base
        environment["SAGA_KAFKA_BOOTSTRAP"] = kafkaBootstrap
        environment["SAGA_KAFKA_EMBEDDED"] = embedded ? "1" : nil
        environment["SAGA_DATABASE_URL"] = databaseURL
        environment["SAGA_OPS_PORT"] = "0"
        for name in SagaEnvironment.knownVariables.subtracting(DaemonEnvironment.knownVariables(databases: [])) {
            environment[name] = nil
        }
        return environment
    }

    struct Exited: Error, CustomStringConvertible {
        var executable: String
        var status: Int32
        var description: String { "participant \(executable) exited by itself with status \(status)" }
    }

    func run() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.environment = environment
        let exited = AsyncStream<Int32>.makeStream()
        process.terminationHandler = { exited.continuation.yield($0.terminationStatus) }
        try process.run()
        let pid = process.processIdentifier
        logger.info("participant started", metadata: ["executable": .string(executable), "pid": "\(pid)"])
        let status: Int32? = await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                var iterator = exited.stream.makeAsyncIterator()
                return await iterator.next()
            } onCancel: {
                kill(pid, SIGTERM)
            }
        } onGracefulShutdown: {
            kill(pid, SIGTERM)
        }
        let stopping = Task.isShuttingDownGracefully || Task.isCancelled
        logger.info(
            "participant stopped",
            metadata: ["executable": .string(executable), "pid": "\(pid)", "status": "\(status ?? -1)"])
        if !stopping { throw Exited(executable: executable, status: status ?? -1) }
    }
}
