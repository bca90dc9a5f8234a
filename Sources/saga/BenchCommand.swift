import ArgumentParser
import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaServices
import Synchronization

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Drive N sagas through the running stack and report throughput and latency.",
        discussion: """
            Needs a running stack (saga dev). Places orders over HTTP at the given concurrency (each one walks
            order.created → inventory.reserved → payment.completed → order.confirmed across the three workers
            and relays) and watches order.confirmed / order.cancelled on Kafka. Reports sagas/s, end-to-end
            latency p50/p95/p99 (order accepted → confirmed or cancelled), the relays' publish rate and the
            outbox lag (insert → broker ack). Fails if any saga does not finish (nothing may be lost).
            """)

    @Option(help: "Number of sagas.") var sagas = 1000
    @Option(help: "Orders in flight at once.") var concurrency = 32
    @Option(help: "Seconds to wait for the last saga.") var timeout = 300
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        guard sagas >= 1 && sagas <= 1_000_000 else { throw ValidationError("--sagas must be 1...1000000") }
        guard concurrency >= 1 && concurrency <= 1024 else { throw ValidationError("--concurrency must be 1...1024") }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.bench")
        let env = runtime.env
        let client = try await OrdersClient.runningStack(env)
        let kafka: KafkaSettings
        kafka = try env.kafka()
        let pools = Stack.services.map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: runtime.logger)
        }
        let customer = "bench-\(UUID().uuidString.prefix(8).lowercased())"
        try await DemoCatalogue(
            products: [.init(sku: "bench-item", unitPrice: Money(amount: 100, currency: "EUR"), stock: 1_000_000_000)],
            customers: [.init(id: customer, creditLimit: Money(amount: 1_000_000_000_000, currency: "EUR"))]
        ).seed(orders: pools[0], inventory: pools[1], billing: pools[2])

        // Watch the saga's last events before placing anything.
        var consumerConfig = kafka.consumer(
            groupId: "saga-bench-\(UUID().uuidString.prefix(8))", clientId: "saga-bench")
        consumerConfig.autoOffsetReset = "latest"
        let consumer = try KafkaConsumer(configuration: consumerConfig, logger: runtime.logger)
        try consumer.subscribe(
            topics: [OrderConfirmed.eventType, OrderCancelled.eventType].map(env.topics.topic(for:)))
        let joinDeadline = ContinuousClock.now + .seconds(30)
        while try consumer.assignment().isEmpty && ContinuousClock.now < joinDeadline {
            _ = try await consumer.poll(maxMessages: 100, timeout: .milliseconds(100))
        }

        let progress = Progress(total: sagas)
        let startWall = Date()
        let start = ContinuousClock.now
        let concurrency = self.concurrency
        let placing = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        while progress.claim() {
                            let id = try await client.place(customerId: customer, lines: [("bench-item", 1)])
                            progress.accepted(id)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        var finished: [String: ContinuousClock.Instant] = [:]
        var confirmed = 0
        let deadline = ContinuousClock.now + .seconds(timeout)
        while finished.count < sagas && ContinuousClock.now < deadline {
            for m in try await consumer.poll(maxMessages: 1000, timeout: .milliseconds(100)) {
                let id = m.key.map { String(decoding: $0, as: UTF8.self) } ?? ""
                if finished[id] == nil {
                    finished[id] = .now
                    if m.topic.hasSuffix(OrderConfirmed.eventType) { confirmed += 1 }
                }
            }
        }
        try await placing.value
        let end = ContinuousClock.now
        await consumer.close()
        let acceptedAt = progress.acceptedAt
        let latencies = finished.compactMap { id, t in acceptedAt[id].map { (t - $0).milliseconds } }.sorted()
        let elapsed = (end - start).milliseconds / 1000

        // The relays mark the last rows just after the broker acknowledged them: let them finish.
        let markDeadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < markDeadline {
            var pending = 0
            for pool in pools {
                pending +=
                    try await pool.query(
                        "SELECT count(*) AS n FROM saga_outbox WHERE created_at >= $1 AND published_at IS NULL",
                        [startWall]
                    ).first?.decode("n", as: Int.self) ?? 0
            }
            if pending == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        var relayRows = 0
        var lag: [Double] = []
        for pool in pools {
            for r in try await pool.query(
                """
                SELECT extract(epoch FROM (published_at - created_at)) * 1000 AS lag_ms FROM saga_outbox
                WHERE created_at >= $1 AND published_at IS NOT NULL
                """, [startWall])
            {
                relayRows += 1
                lag.append(try r.decode("lag_ms"))
            }
        }
        lag.sort()
        for p in pools { await p.close() }

        let result = JSONValue.object([
            "sagas": .integer(Int64(sagas)), "concurrency": .integer(Int64(concurrency)),
            "finished": .integer(Int64(latencies.count)), "confirmed": .integer(Int64(confirmed)),
            "seconds": .number(round1(elapsed)), "sagasPerSecond": .number(round1(Double(latencies.count) / elapsed)),
            "latencyMs": .object([
                "p50": .number(round1(pct(latencies, 0.50))), "p95": .number(round1(pct(latencies, 0.95))),
                "p99": .number(round1(pct(latencies, 0.99))), "max": .number(round1(latencies.last ?? 0)),
            ]),
            "relay": .object([
                "eventsPublished": .integer(Int64(relayRows)),
                "eventsPerSecond": .number(round1(Double(relayRows) / elapsed)),
                "outboxLagMs": .object([
                    "p50": .number(round1(pct(lag, 0.50))), "p99": .number(round1(pct(lag, 0.99))),
                    "max": .number(round1(lag.last ?? 0)),
                ]),
            ]),
        ])
        if json {
            print(String(decoding: result.serialized(), as: UTF8.self))
        } else {
            print(
                """
                sagas           \(latencies.count)/\(sagas) finished (\(confirmed) confirmed) in \(round1(elapsed)) s, concurrency \(concurrency)
                throughput      \(round1(Double(latencies.count) / elapsed)) sagas/s
                latency (ms)    p50 \(round1(pct(latencies, 0.5)))   p95 \(round1(pct(latencies, 0.95)))   p99 \(round1(pct(latencies, 0.99)))   max \(round1(latencies.last ?? 0))
                relay           \(relayRows) events published, \(round1(Double(relayRows) / elapsed)) events/s
                outbox lag (ms) p50 \(round1(pct(lag, 0.5)))   p99 \(round1(pct(lag, 0.99)))   max \(round1(lag.last ?? 0))   (outbox insert → broker ack)
                """)
        }
        guard latencies.count == sagas else {
            throw ValidationError("\(sagas - latencies.count) of \(sagas) sagas did not finish within \(timeout) s")
        }
    }
}

/// Orders handed out to the placing tasks and when each was accepted.
final class Progress: Sendable {
    private let state: Mutex<(next: Int, accepted: [String: ContinuousClock.Instant])>
    private let total: Int

    init(total: Int) {
        self.total = total
        self.state = Mutex((0, [:]))
    }

    /// Takes the next order to place; false when all are taken.
    func claim() -> Bool {
        state.withLock { s in
            guard s.next < total else { return false }
            s.next += 1
            return true
        }
    }

    func accepted(_ id: String) {
        let now = ContinuousClock.now
        state.withLock { $0.accepted[id] = now }
    }

    var acceptedAt: [String: ContinuousClock.Instant] { state.withLock { $0.accepted } }
}

func pct(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return sorted[
        min(
            sorted.count - 1,
            Int((Double(sorted.count) * p).rounded(.up)) - 1 < 0 ? 0 : Int((Double(sorted.count) * p).rounded(.up)) - 1)
    ]
}

func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
