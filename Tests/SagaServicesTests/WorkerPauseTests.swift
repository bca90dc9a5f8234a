import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// An operator pauses a participant's worker and resumes it: while paused it handles nothing (its events wait in
/// Kafka) but stays in its group, also through the assignment of its partitions; resumed, it handles them all.
@Suite(.serialized) struct WorkerPauseTests {
    static func count(_ stack: TestStack, _ service: String, _ sql: String) async throws -> Int {
        try await stack.query(service, sql).first?.decode("n", as: Int.self) ?? -1
    }

    static func status(_ stack: TestStack, _ id: String) async throws -> String? {
        try await stack.book.view(try #require(UUID(uuidString: id)))?.status
    }

    @Test func aPausedWorkerHandlesNothingAndResumesWhereItStopped() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let warm = try await stack.place("alice", [("widget", 1)])
        #expect(try await stack.waitForTerminal(warm).status == "CONFIRMED")
        let billing = try #require(stack.worker("billing"))

        #expect(await billing.pause(), "the pause holds: nothing in flight")
        #expect(billing.isPaused && billing.pausedSince != nil)
        let before = billing.stats
        var ids: [String] = []
        for _ in 0..<3 { ids.append(try await stack.place("alice", [("widget", 1)])) }
        try await stack.eventually("inventory reserved the three orders") {
            try await Self.count(stack, "inventory", "SELECT count(*) AS n FROM reservations WHERE status = 'RESERVED'")
                == 3
        }
        try await Task.sleep(for: .seconds(2))  // billing's inventory.reserved events wait in Kafka meanwhile
        #expect(billing.stats == before, "no batch while paused")
        #expect(try await Self.count(stack, "billing", "SELECT count(*) AS n FROM charges") == 1)
        for id in ids { #expect(try await Self.status(stack, id) == "PENDING") }
        #expect(await billing.pause(), "pausing again changes nothing")

        await billing.resume()
        #expect(!billing.isPaused && billing.pausedSince == nil)
        for id in ids { #expect(try await stack.waitForTerminal(id).status == "CONFIRMED") }
        #expect(billing.stats.handled == before.handled + 3)
        #expect(try await Self.count(stack, "billing", "SELECT count(*) AS n FROM charges") == 4)
        await stack.stop()
    }

    /// The partitions are assigned while the worker is paused (the first assignment, the same path as any
    /// rebalance): they stay paused until it is resumed.
    @Test func aWorkerPausedBeforeItStartsJoinsItsGroupAndHandlesNothingUntilResumed() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("inventory")
        let logs = CapturedLogs()
        let billing = try Worker(
            configuration: stack.workerConfiguration("billing"), definition: try TestStack.definition("billing"),
            logger: logs.logger)
        #expect(await billing.pause(), "not running: recorded at once")
        let running = Task { try await billing.run() }

        let id = try await stack.place("alice", [("widget", 1)])
        try await stack.eventually("inventory reserved the order") {
            try await Self.count(stack, "inventory", "SELECT count(*) AS n FROM reservations WHERE status = 'RESERVED'")
                == 1
        }
        try await stack.eventually("billing joined its group and got its partitions, paused") {
            let messages = logs.entries.map(\.message)
            return messages.contains("partitions assigned") && messages.contains("assigned partitions paused")
        }
        try await Task.sleep(for: .seconds(2))
        #expect(billing.stats.batches == 0, "no batch while paused")
        #expect(try await Self.status(stack, id) == "PENDING")

        await billing.resume()
        #expect(try await stack.waitForTerminal(id).status == "CONFIRMED")
        #expect(billing.stats.handled == 1)
        running.cancel()
        _ = await running.result
        await stack.stop()
    }

    /// The ops endpoints of `saga worker`: pause and resume the worker it runs, readiness and the gauge follow,
    /// an unknown participant is 404.
    @Test func theOpsServerPausesAndResumesTheWorkerItRuns() async throws {
        let stack = try await TestStack()
        let opsPort = try SagaProcess.freePort()
        let environment = [
            "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
            "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_OPS_PORT": String(opsPort),
            "SAGA_HEALTH_INTERVAL": "300ms", "SAGA_HEALTH_TIMEOUT": "1s",
        ]
        let worker = try SagaProcess(["worker", "billing"], environment: environment)
        let base = "http://127.0.0.1:\(opsPort)"
        let ops = OpsTests()
        let up = try await ops.waitForStatus("\(base)/health/ready", 200)
        #expect(up.contains(#""paused:billing":"ok""#), "\(up)")
        #expect(SagaProcess.sample(try await SagaProcess.get("\(base)/metrics").body, Self.gauge) == 0)

        #expect(try await Self.post("\(base)/participants/billing/pause").status == 204)
        let paused = try await ops.waitForStatus("\(base)/health/ready", 503)
        #expect(paused.contains(#""paused:billing":"paused by an operator"#), "\(paused)")
        #expect(paused.contains(#""database:billing":"ok""#), "\(paused)")
        #expect(SagaProcess.sample(try await SagaProcess.get("\(base)/metrics").body, Self.gauge) == 1)
        #expect(try await SagaProcess.get("\(base)/health/live").status == 200)

        let unknown = try await Self.post("\(base)/participants/orders/pause")
        #expect(unknown.status == 404)
        #expect(unknown.body.contains("orders") && unknown.body.contains("billing"), "\(unknown.body)")
        #expect(try await Self.post("\(base)/participants/nobody/resume").status == 404)

        #expect(try await Self.post("\(base)/participants/billing/resume").status == 204)
        _ = try await ops.waitForStatus("\(base)/health/ready", 200)
        #expect(SagaProcess.sample(try await SagaProcess.get("\(base)/metrics").body, Self.gauge) == 0)
        #expect(try await worker.stop() == 0, "\(worker.output)")
        #expect(worker.output.contains("worker paused") && worker.output.contains("worker resumed"))
        await stack.stop()
    }

    static let gauge = #"saga_worker_paused{service="billing"}"#

    /// POST `url` with no body: status and body.
    static func post(_ url: String) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: try #require(URL(string: url)))
        request.httpMethod = "POST"
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }
}
