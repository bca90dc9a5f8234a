import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

/// `saga worker` as a real process: configured by environment, stopped by SIGTERM.
@Suite(.serialized) struct DaemonProcessTests {
    /// The `saga` executable built next to the test bundle.
    static var sagaExecutable: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("saga")
    }

    @Test func aWorkerStopsGracefullyOnSIGTERMAndCommitsItsOffsets() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.sagaExecutable.path),
            "build the saga executable first (swift build --build-tests builds it)")
        let stack = try await TestStack()
        stack.startRelay("orders")
        stack.startRelay("inventory")
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("worker-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = Self.sagaExecutable
        process.arguments = ["worker", "inventory"]
        var env = ProcessInfo.processInfo.environment
        env["SAGA_KAFKA_BOOTSTRAP"] = stack.kafka.bootstrapServers
        env["SAGA_DATABASE_URL"] = PostgresTestDatabase.url
        env["SAGA_TOPIC_PREFIX"] = stack.topics.prefix
        env["SAGA_LOG_FORMAT"] = "json"
        process.environment = env
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()

        let id = try await stack.place("alice", [("widget", 2)])
        try await stack.eventually("the worker process reserved the stock") {
            try await !stack.query(
                "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
            ).isEmpty
        }
        process.terminate()  // SIGTERM
        let deadline = ContinuousClock.now + .seconds(30)
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        let exited = !process.isRunning
        if !exited { process.interrupt() }

        // The group's committed offset on order.created is past the handled event.
        let consumer = try KafkaConsumer(
            configuration: stack.kafka.consumer(groupId: stack.topics.group("inventory"), clientId: "test"),
            logger: stack.logger)
        let topic = stack.topics.topic(for: "order.created")
        let committed = try await consumer.committed(
            (0..<4).map { KafkaTopicPartition(topic: topic, partition: $0) }, timeout: .seconds(10))
        await consumer.close()
        let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        await stack.stop()

        #expect(exited, "the worker did not exit within 30 s of SIGTERM")
        #expect(exited && process.terminationStatus == 0)
        #expect(output.contains("\"message\":\"worker stopped\""))
        #expect(committed.reduce(0) { $0 + max(0, $1.offset) } == 1)
    }
}
