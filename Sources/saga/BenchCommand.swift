import ArgumentParser
import Foundation
import Logging
import SagaDaemon
import SagaEngine
import SagaKafka
import SagaServices
import Synchronization

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the running stack: sagas (default) or the relay draining an outbox backlog.",
        subcommands: [BenchSagasCommand.self, BenchRelayCommand.self],
        defaultSubcommand: BenchSagasCommand.self)
}

/// Thrown when a run did not do what it measured (a saga lost, an order refused): a failure of the system
/// under test, not of the command line, so it exits 1 with the reason and no usage text.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
}

struct BenchSagasCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sagas",
        abstract: "Drive sagas through the running stack; report throughput, latency and the limits.",
        discussion: """
            Needs a running stack (saga dev, or the workers and relays with the orders API on SAGA_HTTP_PORT). \
            Places orders over HTTP (each walks order.created → inventory.reserved → payment.completed → \
            order.confirmed) and reads those topics from their current end, counting only the orders it placed. \
            Modes: closed loop (--concurrency N orders in flight), a fixed arrival rate (--rate R orders/s, \
            placed on schedule whether or not earlier ones finished), one at a time (--lone: place one, wait \
            for its order.confirmed, place the next), or --suite (lone, then closed loop, then a fixed rate of \
            half the closed loop's throughput). \
            Before the load it measures the limits on this machine: PostgreSQL single-row commits on one \
            connection and a produce → consume round trip on the broker. Reports sagas/s; latency (order \
            accepted → order.confirmed seen); per-hop latency from the events' occurredAt and record timestamps; \
            outbox lag; the relays' rows/s from their /metrics; CPU seconds and RSS of the stack's processes, \
            and the PostgreSQL server's CPU by session application_name (saga worker inventory, saga relay \
            orders, ...) when the server runs on this machine. \
            Exits 1 when a saga it placed does not finish within --timeout (nothing may be lost).
            """)

    @Option(help: "Sagas per phase (closed loop, fixed rate, or --lone).") var sagas = 2000
    @Option(help: "Closed loop: orders in flight at once.") var concurrency = 32
    @Option(help: "Open loop: orders placed per second, on schedule.") var rate: Double?
    @Flag(help: "One saga at a time: place one, wait for its end, place the next.") var lone = false
    @Flag(help: "Lone sagas, then the closed loop, then a fixed rate of half the closed loop's sagas/s.")
    var suite = false
    @Option(help: "Sagas of the --suite's lone phase.") var loneSagas = 200
    @Option(help: "Sagas placed (closed loop, concurrency 16) and finished before measuring; not reported.")
    var warmup = 0
    @Option(help: "Seconds a phase waits for its last saga.") var timeout = 300
    @Option(
        name: .customLong("metrics"),
        help: "A daemon's Prometheus endpoint (repeatable; default: SAGA_HTTP_HOST:SAGA_OPS_PORT/metrics).")
    var metricsURLs: [String] = []
    @Option(
        name: .customLong("process"),
        help: "A process of the stack to measure, name=pid (repeatable; default: the saga dev of .saga/dev.json).")
    var processes: [String] = []
    @Option(help: "Seconds of the PostgreSQL commit probe.") var probeSeconds = 2.0
    @Option(help: "Round trips of the broker probe.") var probeRoundTrips = 200
    @Flag(help: "Print the result as JSON.") var json = false

    enum Mode: Sendable {
        case closed(concurrency: Int)
        case rate(Double)
        case lone
    }

    func validate() throws {
        guard (1...1_000_000).contains(sagas) else { throw ValidationError("--sagas must be 1...1000000") }
        guard (1...1024).contains(concurrency) else { throw ValidationError("--concurrency must be 1...1024") }
        guard (1...100_000).contains(loneSagas) else { throw ValidationError("--lone-sagas must be 1...100000") }
        guard (0...1_000_000).contains(warmup) else { throw ValidationError("--warmup must be 0...1000000") }
        guard timeout >= 1 else { throw ValidationError("--timeout must be at least 1") }
        if let rate, !(rate > 0 && rate <= 100_000) { throw ValidationError("--rate must be in (0, 100000]") }
        guard [rate != nil, lone, suite].filter({ $0 }).count <= 1 else {
            throw ValidationError("choose one of --rate, --lone and --suite")
        }
        guard probeSeconds >= 0, probeRoundTrips >= 0 else { throw ValidationError("probes cannot be negative") }
        _ = try parsedProcesses()
    }

    private func parsedProcesses() throws -> [WatchedProcess] {
        try processes.map { spec in
            let parts = spec.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let pid = Int32(parts[1]), pid > 0 else {
                throw ValidationError("--process '\(spec)': expected name=pid")
            }
            return WatchedProcess(name: String(parts[0]), pid: pid)
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.bench")
        let env = runtime.env
        let logger = runtime.logger
        let client = try await OrdersClient.runningStack(env)
        let kafka = try env.kafka()
        let customer = "bench-\(UUID().uuidString.prefix(8).lowercased())"
        try await Self.seed(env: env, customer: customer, logger: logger)

        var watched = try parsedProcesses()
        if watched.isEmpty, let dev = DevStackFile.read() {
            watched.append(WatchedProcess(name: "saga dev", pid: dev.pid))
        }
        watched.append(WatchedProcess(name: "bench", pid: getpid()))
        // The server's CPU, whole and by session, when it runs on this machine.
        var sessions: PostgresSessionWatch?
        if let postmaster = await CommitProbe.postmaster(url: env.database(OrdersService.name).url, logger: logger) {
            watched.append(WatchedProcess(name: "postgres (all backends)", pid: postmaster, withChildren: true))
            sessions = await PostgresSessionWatch.start(url: env.database(OrdersService.name).url, logger: logger)
        }
        let metricsURLs =
            self.metricsURLs.isEmpty ? ["http://\(env.httpHost):\(env.opsPort)/metrics"] : self.metricsURLs

        progress(
            "measuring the limits: PostgreSQL commits for \(probeSeconds) s, \(probeRoundTrips) broker round trips")
        let limits = BenchLimits(
            commit: try await CommitProbe.run(
                url: env.database(OrdersService.name).url, duration: .milliseconds(Int64(probeSeconds * 1000)),
                logger: logger),
            broker: try await BrokerProbe.run(
                kafka: kafka, topic: env.topics.topic(for: "saga.bench.probe"), roundTrips: probeRoundTrips,
                logger: logger))

        let watch = try await SagaWatch.start(kafka: kafka, topics: env.topics, logger: logger)
        let watching = Task { try await watch.run() }
        let run = BenchRun(
            client: client, customer: customer, watch: watch, timeout: .seconds(timeout),
            processes: ProcessWatch(watched), sessions: sessions, metricsURLs: metricsURLs)
        let sampling = Task { await run.processes.sampleRSS() }
        var phases: [PhaseReport] = []
        var failure: (any Error)?
        do {
            if warmup > 0 {
                progress("warming up: \(warmup) sagas")
                let report = try await run.phase(
                    "warmup", "closed loop, concurrency 16", count: warmup, .closed(concurrency: 16))
                guard report.unfinished.isEmpty else {
                    throw BenchFailure(
                        description:
                            "warm-up: \(report.unfinished.count) of \(report.placed) sagas did not finish within \(timeout) s"
                    )
                }
            }
            for (name, description, count, mode) in plan() {
                progress("\(name): \(description), \(count) sagas")
                phases.append(try await run.phase(name, description, count: count, mode))
            }
            if suite, let closed = phases.last, closed.sagasPerSecond > 0 {
                let half = max(1, closed.sagasPerSecond / 2)
                let description = "fixed rate \(fmt(half)) orders/s (half the closed loop's throughput)"
                progress("rate: \(description), \(sagas) sagas")
                phases.append(try await run.phase("rate", description, count: sagas, .rate(half)))
            }
        } catch {
            failure = error
        }
        watching.cancel()
        sampling.cancel()
        _ = try? await watching.value
        await watch.close()
        await sessions?.close()

        let tally = watch.tally.withLock { $0 }
        if json {
            let result = JSONValue.object([
                "limits": limits.json, "phases": .array(phases.map { $0.json(limits: limits) }),
                "foreign": .object([
                    "sagas": .integer(Int64(tally.foreignSagas)), "events": .integer(Int64(tally.foreignEvents)),
                ]),
            ])
            say(String(decoding: result.serialized(), as: UTF8.self))
        } else {
            say("limits          PostgreSQL: \(limits.commit.text)")
            say("                broker: \(limits.broker.text)")
            say(
                "                hop floor \(String(format: "%.2f", limits.hopFloorMs)) ms (one commit + one round trip)"
            )
            for p in phases { say(p.text(limits: limits)) }
            say(
                "foreign         \(tally.foreignSagas) sagas / \(tally.foreignEvents) events seen that this run did not place (ignored)"
            )
        }
        if let failure { throw failure }
        let lost = phases.filter { !$0.unfinished.isEmpty }
        if !lost.isEmpty {
            throw BenchFailure(
                description: lost.map {
                    "\($0.name): \($0.unfinished.count) of \($0.placed) sagas placed did not finish within \(timeout) s "
                        + "(e.g. \($0.unfinished.prefix(3).joined(separator: ", ")))"
                }.joined(separator: "; "))
        }
    }

    private func plan() -> [(String, String, Int, Mode)] {
        if suite {
            return [
                ("lone", "one saga at a time", loneSagas, .lone),
                ("closed", "closed loop, concurrency \(concurrency)", sagas, .closed(concurrency: concurrency)),
            ]
        }
        if lone { return [("lone", "one saga at a time", sagas, .lone)] }
        if let rate { return [("rate", "fixed rate \(fmt(rate)) orders/s", sagas, .rate(rate))] }
        return [("closed", "closed loop, concurrency \(concurrency)", sagas, .closed(concurrency: concurrency))]
    }

    /// An item with stock and a customer with credit for any run.
    static func seed(env: SagaEnvironment, customer: String, logger: Logger) async throws {
        let pools = Stack.services.map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: logger)
        }
        do {
            try await DemoCatalogue(
                products: [
                    .init(sku: "bench-item", unitPrice: Money(amount: 100, currency: "EUR"), stock: 1_000_000_000)
                ],
                customers: [.init(id: customer, creditLimit: Money(amount: 1_000_000_000_000, currency: "EUR"))]
            ).seed(orders: pools[0], inventory: pools[1], billing: pools[2])
        } catch {
            for p in pools { await p.close() }
            throw error
        }
        for p in pools { await p.close() }
    }
}

/// Places the orders of each phase and measures it.
struct BenchRun: Sendable {
    let client: OrdersClient
    let customer: String
    let watch: SagaWatch
    let timeout: Duration
    let processes: ProcessWatch
    let sessions: PostgresSessionWatch?
    let metricsURLs: [String]

    /// Places `count` orders in `mode`, waits for each to end (or the timeout) and reports.
    func phase(_ name: String, _ description: String, count: Int, _ mode: BenchSagasCommand.Mode) async throws
        -> PhaseReport
    {
        let before = await MetricsScrape.scrape(metricsURLs)
        let cpu = processes.begin()
        let sessionsBefore = await sessions?.sample()
        let start = ContinuousClock.now
        let deadline = start + timeout
        switch mode {
        case .closed(let concurrency):
            let claims = Claims()
            try await withThrowingDiscardingTaskGroup { group in
                for _ in 0..<min(concurrency, count) {
                    group.addTask {
                        while claims.next.add(1, ordering: .relaxed).oldValue < count {
                            try await place(name, requested: .now)
                        }
                    }
                }
            }
        case .rate(let perSecond):
            try await withThrowingDiscardingTaskGroup { group in
                for i in 0..<count {
                    let due = start + .nanoseconds(Int64(Double(i) / perSecond * 1e9))
                    if due > .now { try await Task.sleep(until: due, clock: .continuous) }
                    group.addTask { try await place(name, requested: due) }
                }
            }
        case .lone:
            for _ in 0..<count {
                let id = try await place(name, requested: .now)
                await watch.waitUntilFinished(id, deadline: deadline)
                if ContinuousClock.now >= deadline { break }
            }
        }
        while watch.tally.withLock({ $0.finishedCount(in: name) < $0.placedCount(in: name) })
            && ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(5))
        }
        let wall = millis(ContinuousClock.now - start) / 1000
        let figures = processes.end(cpu, seconds: wall)
        let sessionsAfter = await sessions?.sample()
        // A relay counts a row once it has marked it, a moment after the broker acknowledged it (and the
        // bench may have read it): wait until the counters stand still, so no row is counted in the next phase.
        var after = await MetricsScrape.scrape(metricsURLs)
        let settle = ContinuousClock.now + .seconds(3)
        while after.reachable > 0 && ContinuousClock.now < settle {
            try await Task.sleep(for: .milliseconds(250))
            let next = await MetricsScrape.scrape(metricsURLs)
            let stands = next.values[RelayFigures.publishedMetric] == after.values[RelayFigures.publishedMetric]
            after = next
            if stands { break }
        }
        let tally = watch.tally.withLock { $0 }
        var report = PhaseReport(
            name: name, description: description, tally: tally, start: start, relay: nil, processes: figures)
        report.relay = RelayFigures(before: before, after: after, seconds: report.seconds)
        if let sessionsBefore, let sessionsAfter {
            report.postgresSessions = PostgresSessionWatch.figures(
                from: sessionsBefore, to: sessionsAfter, seconds: wall)
        }
        return report
    }

    @discardableResult
    private func place(_ phase: String, requested: ContinuousClock.Instant) async throws -> String {
        let id: String
        do {
            id = try await client.place(customerId: customer, lines: [("bench-item", 1)])
        } catch {
            throw BenchFailure(description: "placing an order failed: \(error)")
        }
        let accepted = ContinuousClock.now
        watch.tally.withLock { $0.placed(id, phase: phase, requested: requested, accepted: accepted) }
        return id
    }
}

/// Hands out the orders of a closed-loop phase to its placing tasks.
private final class Claims: Sendable {
    let next = Atomic<Int>(0)
}

/// Progress for people, on standard error (standard output carries the result, e.g. --json).
func progress(_ text: String) {
    FileHandle.standardError.write(Data(("saga bench: " + text + "\n").utf8))
}
