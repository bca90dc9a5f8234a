import ArgumentParser
import SagaEngine

struct TrackerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tracker",
        abstract: "Keep the saga read model: every saga's timeline and state, for `saga inspect`.",
        discussion: """
            Reads every saga topic and the dead-letter topics in its own consumer group and writes the read \
            model to the `tracker` schema (SAGA_TRACKER_DATABASE_URL or SAGA_DATABASE_URL). Idempotent; one \
            instance is active at a time (others wait as standbys). --rebuild empties the read model and \
            reads the log again from the beginning (as far as the broker still retains it). \
            SAGA_KAFKA_GROUP_INSTANCE_ID makes its consumer a static member, as for `saga worker` (see its help).
            """)

    @Flag(help: "Drop the read model and rebuild it from the log.") var rebuild = false

    func run() async throws {
        let runtime = try Runtime.start("saga.tracker", tracing: "saga-tracker")
        let tracker = try runtime.stack.tracker(rebuild: rebuild)
        try await runtime.run([tracker, try runtime.stack.ops(["tracker"])])
    }
}
