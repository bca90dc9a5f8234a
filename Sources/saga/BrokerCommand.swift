import ArgumentParser
import Foundation
import Hummingbird
import SagaKafka
import SagaServices
import UnixSignals

struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Host librdkafka's mock Kafka cluster on loopback, for development and tests.",
        discussion: """
            Creates the saga's topics itself (the mock cluster does not answer CreateTopics), prints the \
            bootstrap servers and writes them to --bootstrap-file; runs until SIGINT/SIGTERM. Limits: data \
            lives in memory, 5 MB per partition (older data is dropped), slow group rebalances. \
            Production uses Apache Kafka (set SAGA_KAFKA_BOOTSTRAP instead). \
            --control-port P serves fault injection on 127.0.0.1:P (HTTP, for scripts/chaos): POST \
            /brokers/{id|all}/down and /brokers/{id|all}/up take brokers down and up; POST \
            /errors/{apiKey}?codes=6,7 makes the next requests of that Kafka API (0 Produce, 1 Fetch, 3 Metadata, \
            8 OffsetCommit, ...) fail with those error codes in order (-195: disconnect). 204 when done, 400 for \
            a malformed request, 409 when the mock cluster refuses.
            """)

    @Option(help: "Number of brokers (each consumer runs one fetch loop per broker it reads from).") var brokers = 1
    @Option(help: "Partitions of each saga topic (1...256).") var partitions: Int32 = SagaEnvironment.embeddedPartitions
    @Option(help: "Where to write the bootstrap servers.") var bootstrapFile = ".saga/broker"
    @Option(help: "Topic name prefix (as SAGA_TOPIC_PREFIX).") var topicPrefix = ""
    @Option(help: "Serve fault injection (brokers down/up, request errors) over HTTP on 127.0.0.1:<port>.")
    var controlPort: Int?

    func validate() throws {
        guard (1...10).contains(brokers) else { throw ValidationError("--brokers must be 1...10") }
        try SagaEnvironment.validatePartitions(partitions)
        if let controlPort, !(1...65535).contains(controlPort) {
            throw ValidationError("--control-port must be 1...65535")
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.broker")
        let cluster = try KafkaMockCluster(brokers: brokers, logger: runtime.logger)
        for topic in sagaTopics(.init(prefix: topicPrefix)) {
            try cluster.createTopic(topic, partitions: partitions)
        }
        let dir = (bootstrapFile as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try (cluster.bootstrapServers + "\n").write(toFile: bootstrapFile, atomically: true, encoding: .utf8)
        say(cluster.bootstrapServers)
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        var failure: (any Error)?
        if let controlPort {
            // Loopback only: whoever reaches it can take the brokers down.
            let control = Application(
                router: BrokerControl.router(cluster: cluster),
                configuration: .init(address: .hostname("127.0.0.1", port: controlPort), serverName: "saga-broker"),
                onServerRunning: { [logger = runtime.logger] _ in
                    logger.info("fault injection", metadata: ["address": "127.0.0.1:\(controlPort)"])
                },
                logger: runtime.logger)
            // Until a signal, or until the control server fails (e.g. its port is taken): then the broker exits
            // with the error rather than run without the control a script relies on.
            do {
                try await withThrowingTaskGroup { group in
                    group.addTask { try await control.run() }
                    group.addTask { for await _ in signals { break } }
                    defer { group.cancelAll() }
                    _ = try await group.next()
                }
            } catch {
                failure = error
            }
        } else {
            for await _ in signals { break }
        }
        try? FileManager.default.removeItem(atPath: bootstrapFile)
        cluster.shutdown()
        if let failure { throw failure }
    }
}
