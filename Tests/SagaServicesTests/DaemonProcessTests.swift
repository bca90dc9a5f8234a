import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

/// `saga worker` as a real process: configured by environment, stopped by SIGTERM.
@Suite(.serialized) struct DaemonProcessTests {
    @Test func aWorkerStopsGracefullyOnSIGTERMAndCommitsItsOffsets() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        stack.startRelay("inventory")
        let opsPort = try SagaProcess.freePort()
        let worker = try SagaProcess(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_LOG_FORMAT": "json", "SAGA_OPS_PORT": String(opsPort),
            ])

        let id = try await stack.place("alice", [("widget", 2)])
        try await stack.eventually("the worker process reserved the stock") {
            try await !stack.query(
                "inventory", "SELECT 1 FROM reservations WHERE order_id = $1", [UUID(uuidString: id)]
            ).isEmpty
        }
        // Health and metrics over HTTP, from the running process.
        let (healthStatus, health) = try await SagaProcess.get("http://127.0.0.1:\(opsPort)/health/ready")
        let (_, metrics) = try await SagaProcess.get("http://127.0.0.1:\(opsPort)/metrics")
        let status = try await worker.stop()

        // The group's committed offset on order.created is past the handled event.
        let consumer = try KafkaConsumer(
            configuration: stack.kafka.consumer(groupId: stack.topics.group("inventory"), clientId: "test"),
            logger: stack.logger)
        let topic = stack.topics.topic(for: "order.created")
        let committed = try await consumer.committed(
            (0..<4).map { KafkaTopicPartition(topic: topic, partition: $0) }, timeout: .seconds(10))
        await consumer.close()
        await stack.stop()

        #expect(status == 0, "the worker did not exit cleanly within 30 s of SIGTERM: \(worker.output)")
        #expect(worker.output.contains("\"message\":\"worker stopped\""))
        #expect(committed.reduce(0) { $0 + max(0, $1.offset) } == 1)
        #expect(healthStatus == 200)
        #expect(health.contains(#""database:inventory":"ok""#))
        #expect(
            metrics.contains(#"saga_worker_events_total{service="inventory",type="order.created",result="handled"} 1"#))
    }
}
