import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

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
        let opsPort = try Self.freePort()
        env["SAGA_OPS_PORT"] = String(opsPort)
        process.environment = env
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()

        let id = try await stack.place("alice", [("widget", 2)])
        try await stack.eventually("the worker process reserved the stock") {
            try await !stack.query(
                "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
            ).isEmpty
        }
        // Health and metrics over HTTP, from the running process.
        let (healthStatus, health) = try await Self.get("http://127.0.0.1:\(opsPort)/health")
        let (_, metrics) = try await Self.get("http://127.0.0.1:\(opsPort)/metrics")
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
        #expect(healthStatus == 200)
        #expect(health.contains(#""database:inventory":"ok""#))
        #expect(metrics.contains(#"saga_worker_events_total{service="inventory",type="order.created",result="handled"} 1"#))
    }

    /// A loopback port nothing listens on right now.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func get(_ url: String) async throws -> (Int, String) {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
                return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
            } catch  where ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))  // the server may still be starting
            }
        }
    }
}
