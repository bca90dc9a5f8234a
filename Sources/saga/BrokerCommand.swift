import ArgumentParser
import Foundation
import SagaKafka
import SagaServices
import UnixSignals

struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Host librdkafka's mock Kafka cluster on loopback, for development and tests.",
        discussion: """
            Creates the saga's topics itself (the mock cluster does not answer CreateTopics), prints the
            bootstrap servers and writes them to --bootstrap-file; runs until SIGINT/SIGTERM. Limits: data
            lives in memory, 5 MB per partition (older data is dropped), slow group rebalances.
            Production uses Apache Kafka (set SAGA_KAFKA_BOOTSTRAP instead).
            """)

    @Option(help: "Number of brokers (each consumer runs one fetch loop per broker it reads from).") var brokers = 1
    @Option(help: "Partitions of each saga topic.") var partitions: Int32 = 8
    @Option(help: "Where to write the bootstrap servers.") var bootstrapFile = ".saga/broker"
    @Option(help: "Topic name prefix (as SAGA_TOPIC_PREFIX).") var topicPrefix = ""

    func validate() throws {
        guard (1...10).contains(brokers) else { throw ValidationError("--brokers must be 1...10") }
        guard (1...256).contains(partitions) else { throw ValidationError("--partitions must be 1...256") }
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
        for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
        try? FileManager.default.removeItem(atPath: bootstrapFile)
        cluster.shutdown()
    }
}
