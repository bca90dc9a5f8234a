import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaPostgres
import SagaServices
import SagaTestSupport
import ServiceLifecycle
import Synchronization
import Testing

@testable import saga

/// The benchmark against a real stack (PostgreSQL, an in-process mock cluster, the three workers, the relays
/// and the orders API in this process), with sagas it did not place ending on the same topics.
@Suite struct BenchEndToEndTests {
    @Test func theBenchmarkRefusesToCountForeignSagas() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let prefix = KafkaTestBroker.uniqueName("tb") + "."
        let running = try await InProcessStack(prefix: prefix, tracker: false, logger: logger)
        let env = running.env
        let customer = "bench-test"
        let watch = try await SagaWatch.start(kafka: try env.kafka(), topics: env.topics, logger: logger)
        let watching = Task { try await watch.run() }
        do {
            try await BenchSagasCommand.seed(env: env, customer: customer, logger: logger)
            let client = OrdersClient(base: running.base)

            // Five sagas this run did not place end first (an earlier run draining, say).
            let producer = try KafkaProducer(configuration: try env.kafka().producer(clientId: "test"), logger: logger)
            for i in 0..<5 {
                let envelope = EventEnvelope(
                    type: OrderConfirmed.eventType, version: 1, sagaId: "foreign-\(i)", causationId: nil,
                    producer: "orders", traceparent: nil, data: .object([:]))
                _ = try await producer.send(
                    KafkaOutgoingMessage(
                        topic: env.topics.topic(for: OrderConfirmed.eventType), key: Array("foreign-\(i)".utf8),
                        value: envelope.serialized()))
            }
            await producer.shutdown()
            let seen = ContinuousClock.now + .seconds(30)
            while watch.tally.withLock({ $0.foreignSagas }) < 5 && ContinuousClock.now < seen {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(watch.tally.withLock { $0.foreignSagas } == 5)

            let sessions = await PostgresSessionWatch.start(url: env.database("orders").url, logger: logger)
            #expect(sessions != nil)
            let run = BenchRun(
                client: client, customer: customer, watch: watch, timeout: .seconds(60),
                processes: ProcessWatch([WatchedProcess(name: "test", pid: getpid())]), sessions: sessions,
                metricsURLs: [])
            let report = try await run.phase("closed", "closed loop, concurrency 2", count: 3, .closed(concurrency: 2))

            #expect(report.placed == 3)
            #expect(report.finished == 3)
            #expect(report.confirmed == 3)
            #expect(report.unfinished.isEmpty)
            #expect(report.latency.count == 3)
            #expect(report.hops.allSatisfy { $0.total.count == 3 })
            #expect(report.processes.map(\.name) == ["test"])
            // One at a time: each saga's outcome ends the wait for it, and the next is placed.
            let lone = try await run.phase("lone", "one saga at a time", count: 2, .lone)
            #expect(lone.placed == 2)
            #expect(lone.finished == 2)
            #expect(watch.outcomes.count == 0)
            // The server's CPU by session: each component names its sessions (the bench's own is left out).
            let names = Set(lone.postgresSessions.map(\.name))
            for name in [
                "saga worker orders", "saga worker inventory", "saga worker billing", "saga relay orders",
                "saga relay orders listen", "saga relay orders gauges", "saga api orders",
            ] {
                #expect(names.contains(name), "no session named \(name) in \(names.sorted())")
            }
            #expect(!names.contains("saga bench"))
            // Two lone sagas cost the server well under a clock tick, so their figures may read 0: none is below it.
            #expect(lone.postgresSessions.allSatisfy { $0.cpuSeconds >= 0 && $0.sessions > 0 })
            // A session that works between two samples is found by its name, with the CPU it used.
            do {
                let sessions = try #require(sessions)
                let before = try #require(await sessions.sample())
                let burner = try await PostgresConnection.connect(
                    PostgresConfiguration(url: env.database("orders").url).named("test burner"), logger: logger)
                _ = try await burner.query("SELECT sum(i) FROM generate_series(1, 3000000) AS i")
                let after = try #require(await sessions.sample())
                await burner.close()
                let figures = PostgresSessionWatch.figures(from: before, to: after, seconds: 1)
                let burned = figures.first { $0.name == "saga test burner" }
                #expect(burned?.sessions == 1)
                #expect((burned?.cpuSeconds ?? 0) > 0.02, "\(figures)")
            }
            let tally = watch.tally.withLock { $0 }
            #expect(tally.foreignSagas == 5)
            for (id, saga) in tally.sagas(in: "closed") {
                #expect(!id.hasPrefix("foreign"))
                #expect(Set(saga.events.keys) == Set(benchHopTypes))
            }
            await sessions?.close()
        } catch {
            Issue.record(error)
        }
        watching.cancel()
        _ = try? await watching.value
        await watch.close()
        await running.stop()
    }
}
