import Foundation
import Hummingbird
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import SagaTestSupport
import Synchronization
import Testing

/// The daemons as operators see them, as real processes: readiness, metrics, logs and configuration.
@Suite(.serialized) struct OpsTests {
    let logger = Logger(label: "ops-test")

    /// A database of its own that a test can make unreachable: its URL and name.
    static func freshDatabase() async throws -> (url: String, name: String) {
        let name = "saga_ops_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(10))".lowercased()
        try await admin("CREATE DATABASE \(name)")
        var url = try #require(URLComponents(string: PostgresTestDatabase.url))
        url.path = "/" + name
        return (try #require(url.string), name)
    }

    /// Refuses (or allows again) new connections to `database` and, when refusing, ends the open ones: to
    /// the daemon, the database went away.
    static func setReachable(_ database: String, _ reachable: Bool) async throws {
        try await admin("ALTER DATABASE \(database) ALLOW_CONNECTIONS \(reachable)")
        if !reachable {
            try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(database)'")
        }
    }

    static func admin(_ sql: String) async throws {
        let connection = try await PostgresConnection.connect(
            PostgresTestDatabase.configuration(), logger: Logger(label: "ops-test"))
        do { try await connection.executeScript(sql) } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }

    /// An embedded cluster of its own (so the test can take its broker down) with the saga's topics.
    func cluster(_ topics: TopicNaming = TopicNaming()) throws -> KafkaMockCluster {
        let cluster = try KafkaMockCluster(brokers: 1, logger: logger)
        for topic in sagaTopics(topics) { try cluster.createTopic(topic, partitions: 2) }
        return cluster
    }

    /// Polls `url` until its status is `expected`; returns the last body.
    func waitForStatus(_ url: String, _ expected: Int, timeout: Duration = .seconds(45)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        var last = (status: 0, body: "")
        while ContinuousClock.now < deadline {
            last = try await SagaProcess.get(url)
            if last.status == expected { return last.body }
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("\(url) answered \(last.status) \(last.body), expected \(expected)")
        return last.body
    }

    @Test func readinessFollowsTheDatabaseAndTheBrokerWhileLivenessStays() async throws {
        let cluster = try cluster()
        defer { cluster.shutdown() }
        let database = try await Self.freshDatabase()
        let opsPort = try SagaProcess.freePort()
        let environment = [
            "SAGA_KAFKA_BOOTSTRAP": cluster.bootstrapServers, "SAGA_DATABASE_URL": database.url,
            "SAGA_OPS_PORT": String(opsPort), "SAGA_HEALTH_INTERVAL": "300ms", "SAGA_HEALTH_TIMEOUT": "1s",
        ]
        let worker = try SagaProcess(["worker", "inventory"], environment: environment)
        let ready = "http://127.0.0.1:\(opsPort)/health/ready"
        let live = "http://127.0.0.1:\(opsPort)/health/live"

        let up = try await waitForStatus(ready, 200)
        #expect(up.contains(#""database:inventory":"ok""#) && up.contains(#""kafka":"ok""#), "\(up)")
        let healthUp = try await SagaProcess.run(["health"], environment: environment)
        #expect(healthUp.status == 0, "saga health while ready: \(healthUp.output)")

        // The broker goes away, and comes back.
        try cluster.setBrokerDown(1)
        let brokerDown = try await waitForStatus(ready, 503)
        #expect(!brokerDown.contains(#""kafka":"ok""#) && brokerDown.contains(#""database:inventory":"ok""#))
        #expect(try await SagaProcess.get(live).status == 200)
        let healthDown = try await SagaProcess.run(["health"], environment: environment)
        #expect(healthDown.status == 1, "saga health while the broker is down: \(healthDown.output)")
        #expect(healthDown.output.contains("503"))
        try cluster.setBrokerUp(1)
        _ = try await waitForStatus(ready, 200)

        // The database goes away, and comes back.
        try await Self.setReachable(database.name, false)
        let databaseDown = try await waitForStatus(ready, 503)
        #expect(!databaseDown.contains(#""database:inventory":"ok""#) && databaseDown.contains(#""kafka":"ok""#))
        #expect(try await SagaProcess.get(live).status == 200)
        try await Self.setReachable(database.name, true)
        _ = try await waitForStatus(ready, 200)

        let status = try await worker.stop()
        #expect(status == 0, "\(worker.output)")
        try await Self.admin("DROP DATABASE \(database.name) WITH (FORCE)")
    }

    @Test func metricsMoveWhenEventsFlow() async throws {
        let stack = try await TestStack()
        let cluster = try cluster(stack.topics)
        defer { cluster.shutdown() }
        let relayPort = try SagaProcess.freePort()
        let workerPort = try SagaProcess.freePort()
        let environment = [
            "SAGA_KAFKA_BOOTSTRAP": cluster.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
            "SAGA_TOPIC_PREFIX": stack.topics.prefix,
        ]
        // Orders wait in the outbox while the broker is down: the relay's backlog gauges show them.
        try cluster.setBrokerDown(1)
        let relay = try SagaProcess(
            ["relay", "orders"], environment: environment.merging(["SAGA_OPS_PORT": String(relayPort)]) { $1 })
        let worker = try SagaProcess(
            ["worker", "inventory"], environment: environment.merging(["SAGA_OPS_PORT": String(workerPort)]) { $1 })
        for _ in 0..<3 { _ = try await stack.place("alice", [("widget", 1)]) }
        let relayMetrics = "http://127.0.0.1:\(relayPort)/metrics"
        let workerMetrics = "http://127.0.0.1:\(workerPort)/metrics"
        try await stack.eventually("the relay reports a backlog of 3 with an age") {
            let m = try await SagaProcess.get(relayMetrics).body
            return SagaProcess.sample(m, #"saga_outbox_backlog{service="orders"}"#) == 3
                && (SagaProcess.sample(m, #"saga_outbox_oldest_age_seconds{service="orders"}"#) ?? 0) > 0
        }
        let before = try await SagaProcess.get(workerMetrics).body
        #expect(
            SagaProcess.sample(before, #"saga_worker_events_consumed_total{service="inventory",type="order.created"}"#)
                ?? 0 == 0)

        try cluster.setBrokerUp(1)
        try await stack.eventually("the relay published the backlog") {
            let m = try await SagaProcess.get(relayMetrics).body
            return SagaProcess.sample(m, #"saga_relay_published_total{service="orders"}"#) == 3
                && SagaProcess.sample(m, #"saga_outbox_backlog{service="orders"}"#) == 0
                && (SagaProcess.sample(m, #"saga_relay_publish_duration_seconds_count{service="orders"}"#) ?? 0) >= 1
        }
        try await stack.eventually("the worker counted the events it consumed and handled") {
            let m = try await SagaProcess.get(workerMetrics).body
            let d = #"service="inventory",type="order.created""#
            return SagaProcess.sample(m, "saga_worker_events_consumed_total{\(d)}") == 3
                && SagaProcess.sample(m, "saga_worker_events_total{\(d),result=\"handled\"}") == 3
                && SagaProcess.sample(m, "saga_worker_handler_duration_seconds_count{\(d)}") == 3
                && m.contains(
                    "saga_worker_consumer_lag{service=\"inventory\",topic=\"\(stack.topics.topic(for: "order.created"))\""
                )
        }
        let after = try await SagaProcess.get(workerMetrics).body
        #expect(
            SagaProcess.sample(
                after, #"saga_worker_events_total{service="inventory",type="order.created",result="dead_lettered"}"#)
                == 0)
        #expect(SagaProcess.sample(after, #"saga_ready{check="kafka"}"#) == 1)

        #expect(try await worker.stop() == 0, "\(worker.output)")
        #expect(try await relay.stop() == 0, "\(relay.output)")
        await stack.stop()
    }

    @Test func aHandledEventsLogLineCarriesSagaEventAndTraceIdsAndNoPassword() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        let password = "s3cret-Pw0rd"
        // Local PostgreSQL trusts loopback, so the password is accepted and must never be printed.
        var url = try #require(URLComponents(string: PostgresTestDatabase.url))
        url.user = url.user ?? "postgres"
        url.password = password
        let worker = try SagaProcess(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": try #require(url.string),
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
                "SAGA_LOG_LEVEL": "debug", "SAGA_LOG_FORMAT": "json",
            ])
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let placed = try await stack.book.place(
            OrderRequest(customerId: "alice", currency: "EUR", lines: [.init(sku: "widget", quantity: 1)]),
            traceparent: traceparent)
        let sagaId = placed.orderId.uuidString.lowercased()
        let eventId = try #require(placed.event?.id.uuidString.lowercased())
        try await stack.eventually("the worker process logged the handled event") {
            worker.logLines.contains { $0["message"] as? String == "handled" && $0["saga_id"] as? String == sagaId }
        }
        #expect(try await worker.stop() == 0)
        let handled = try #require(
            worker.logLines.first { $0["message"] as? String == "handled" && $0["saga_id"] as? String == sagaId })
        #expect(handled["event_id"] as? String == eventId)
        #expect(handled["trace_id"] as? String == "0af7651916cd43dd8448eb211c80319c")
        #expect(handled["event_type"] as? String == "order.created")
        #expect(handled["service"] as? String == "inventory")
        #expect(handled["level"] as? String == "debug")
        #expect(!worker.output.contains(password))

        // An unreachable database: the error names it with the password masked.
        url.port = try SagaProcess.freePort()
        let failed = try await SagaProcess.run(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": try #require(url.string),
                "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
            ])
        #expect(failed.status != 0 && failed.status != nil)
        #expect(failed.output.contains("127.0.0.1") && !failed.output.contains(password), "\(failed.output)")
        await stack.stop()
    }

    @Test func withAnOTLPEndpointAWorkerExportsItsSpansInTheSagasTrace() async throws {
        let stack = try await TestStack()
        stack.startRelay("orders")
        stack.startRelay("inventory")
        // An OTLP/HTTP collector on loopback that keeps what it receives.
        let received = Mutex<[[UInt8]]>([])
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 16 << 20)
            received.withLock { $0.append(Array(buffer: body)) }
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"])
        }
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        let collector = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { portContinuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let collecting = Task { try await collector.run() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())

        let worker = try SagaProcess(
            ["worker", "inventory"],
            environment: [
                "SAGA_KAFKA_BOOTSTRAP": stack.kafka.bootstrapServers, "SAGA_DATABASE_URL": PostgresTestDatabase.url,
                "SAGA_TOPIC_PREFIX": stack.topics.prefix, "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(port)", "OTEL_BSP_SCHEDULE_DELAY": "200",
            ])
        let traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
        let placed = try await stack.book.place(
            OrderRequest(customerId: "alice", currency: "EUR", lines: [.init(sku: "widget", quantity: 1)]),
            traceparent: "00-\(traceId)-00f067aa0ba902b7-01")
        let reserved = try await stack.consumeAll([stack.topics.topic(for: "inventory.reserved")], atLeast: 1)
            .compactMap { try? EventEnvelope(validated: JSONValue(parsing: $0.value)) }
            .first { $0.sagaId == placed.orderId.uuidString.lowercased() }
        let emitted = try #require(reserved?.traceparent, "inventory emitted no inventory.reserved: \(worker.output)")
        // The emitted event continues the saga's trace, with the worker's exported span as its parent.
        #expect(TraceParent.traceId(emitted) == traceId)
        let spanId = String(emitted.split(separator: "-")[2])
        try await stack.eventually("the worker exported the span of the handled event") {
            let bodies = received.withLock { $0 }
            return bodies.contains { Self.contains($0, hex: traceId) && Self.contains($0, hex: spanId) }
        }
        let exported = received.withLock { $0 }
        #expect(
            exported.contains {
                Self.contains($0, text: "saga-inventory") && Self.contains($0, text: "order.created process")
            })
        #expect(try await worker.stop() == 0, "\(worker.output)")
        collecting.cancel()
        _ = await collecting.result
        await stack.stop()
    }

    /// Whether `bytes` holds the bytes that `hex` spells (ids are raw bytes in OTLP's protobuf).
    static func contains(_ bytes: [UInt8], hex: String) -> Bool {
        var needle: [UInt8] = []
        var digits = hex.makeIterator()
        while let high = digits.next(), let low = digits.next() {
            needle.append(UInt8(String([high, low]), radix: 16)!)
        }
        return contains(bytes, needle)
    }

    static func contains(_ bytes: [UInt8], text: String) -> Bool { contains(bytes, Array(text.utf8)) }

    static func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, bytes.count >= needle.count else { return false }
        return (0...(bytes.count - needle.count)).contains { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    @Test(arguments: [
        ("SAGA_WORKER_BATCH_SIZE", "lots"), ("SAGA_OPS_PORT", "70000"), ("SAGA_HEALTH_INTERVAL", "0s"),
        ("SAGA_LOG_LEVEL", "loud"), ("SAGA_KAFKA_BOOTSTRAP", "kafka:port"), ("SAGA_DATABASE_URL", "mysql://db/saga"),
        ("SAGA_INVENTORY_DATABASE_URL", "localhost"), ("SAGA_TOPIC_PREFIX", "a b"),
        ("SAGA_INBOX_RETENTION", "forever"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("SAGA_STATEMENT_TIMEOUT", "30"), ("SAGA_LOCK_TIMEOUT", "-5s"),
    ])
    func aBadEnvironmentValueStopsTheDaemonNamingTheVariable(variable: String, value: String) async throws {
        var environment = [
            "SAGA_KAFKA_BOOTSTRAP": "127.0.0.1:9", "SAGA_DATABASE_URL": PostgresTestDatabase.url,
            "SAGA_OPS_PORT": String(try SagaProcess.freePort()),
        ]
        environment[variable] = value
        let result = try await SagaProcess.run(
            ["worker", "inventory"], environment: environment, timeout: .seconds(20))
        #expect(result.status == 1, "\(variable)=\(value): \(result.output)")
        #expect(result.output.contains(variable), "\(result.output)")
        #expect(!result.output.contains("worker started"))
    }
}
