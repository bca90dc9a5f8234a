import Foundation
import Logging
import Metrics
import SagaEngine
import SagaKafka
import ServiceLifecycle
import Synchronization

/// Readiness: whether what a daemon depends on (its databases, the Kafka broker) answers now, and whether its
/// workers run (not paused by an operator).
///
/// The checks run in the background every `interval`, each bounded by `timeout`, so `/health/ready` answers
/// at once from the last results (a probe never waits on a hung dependency) and `saga_ready{check}` shows
/// the same thing in the metrics. Not ready until every check has passed once.
public final class HealthMonitor: Service, Sendable {
    /// A named check: nil when healthy, else what is wrong.
    public struct Check: Sendable {
        /// How the check appears in `/health/ready` and in `saga_ready{check}`, e.g. `database:orders`.
        public var name: String
        /// Runs the check once: nil when healthy, else what is wrong.
        public var run: @Sendable () async -> String?

        /// A check named `name` that `run` performs.
        public init(name: String, run: @escaping @Sendable () async -> String?) {
            self.name = name
            self.run = run
        }
    }

    /// The last results.
    public struct Report: Sendable {
        /// Every check passed its last run.
        public var ready: Bool
        /// Check name → "ok" or the problem ("not checked yet" before its first run).
        public var checks: [String: String]
    }

    /// What it checks.
    public let checks: [Check]
    /// How often the checks run.
    public let interval: Duration
    /// How long one check may take before it counts as failed.
    public let timeout: Duration
    private let logger: Logger
    private let results: Mutex<[String: String]>
    private let gauges: [String: Gauge]

    /// A monitor of `checks`, run every `interval`, each bounded by `timeout`; nothing runs before ``run()``.
    public init(checks: [Check], interval: Duration, timeout: Duration, logger: Logger) {
        self.checks = checks
        self.interval = interval
        self.timeout = timeout
        self.logger = logger
        self.results = Mutex(Dictionary(uniqueKeysWithValues: checks.map { ($0.name, "not checked yet") }))
        self.gauges = Dictionary(
            uniqueKeysWithValues: checks.map { ($0.name, Gauge(label: "saga_ready", dimensions: [("check", $0.name)])) }
        )
    }

    /// The last results, at once.
    public var report: Report {
        let checks = results.withLock { $0 }
        return Report(ready: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
    }

    /// Runs the checks every ``interval`` until graceful shutdown or cancellation.
    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            await checkOnce()
            try? await Task.sleep(for: interval)
        }
    }

    /// Runs every check once, concurrently, and records the results (logging each change).
    public func checkOnce() async {
        let timeout = self.timeout
        await withTaskGroup(of: (String, String).self) { group in
            for check in checks {
                group.addTask { (check.name, await Self.bounded(check, timeout: timeout) ?? "ok") }
            }
            for await (name, outcome) in group {
                let previous = results.withLock { r in
                    defer { r[name] = outcome }
                    return r[name]
                }
                gauges[name]?.record(outcome == "ok" ? 1 : 0)
                if previous != outcome, name.hasPrefix("paused:") {
                    // Not a dependency: an operator's pause (`Check.paused`).
                    let state = outcome == "ok" ? "running" : outcome
                    logger.notice(
                        "worker readiness changed", metadata: ["check": .string(name), "state": .string(state)])
                } else if previous != outcome {
                    if outcome == "ok" {
                        logger.info("dependency reachable", metadata: ["check": .string(name)])
                    } else {
                        logger.warning(
                            "dependency unreachable", metadata: ["check": .string(name), "error": .string(outcome)])
                    }
                }
            }
        }
    }

    /// The check's result, or a timeout message when it takes longer than `timeout`. Does not wait for a
    /// check that hangs (a blocking libpq or librdkafka call ignores cancellation): the check goes on in
    /// its own task, and its probe refuses to start another until it has answered.
    private static func bounded(_ check: Check, timeout: Duration) async -> String? {
        let pending = Mutex<CheckedContinuation<String?, Never>?>(nil)
        let finish: @Sendable (String?) -> Void = { result in
            let continuation = pending.withLock { c in
                defer { c = nil }
                return c
            }
            continuation?.resume(returning: result)
        }
        return await withCheckedContinuation { continuation in
            pending.withLock { $0 = continuation }
            Task { finish(await check.run()) }
            Task {
                try? await Task.sleep(for: timeout)
                finish("no answer within \(timeout)")
            }
        }
    }
}

extension HealthMonitor.Check {
    /// The database answers `SELECT 1`. Keeps one connection open between checks and opens a new one after
    /// a failure, so a database that went away and came back is seen as both.
    public static func database(_ name: String, _ database: ServiceDatabase, logger: Logger) -> Self {
        let probe = DatabaseProbe(database: database, logger: logger)
        return Self(name: "database:\(name)") { await probe.check() }
    }

    /// `paused:<name>`: fails while an operator has paused the worker (`Worker.pause(waitingAtMost:)`), so the
    /// daemon reports not ready: it handles no events until it is resumed.
    public static func paused(_ worker: Worker) -> Self {
        Self(name: "paused:\(worker.configuration.name)") {
            guard worker.isPaused else { return nil }
            let since = worker.pausedSince.map { " since \($0.formatted(.iso8601))" } ?? ""
            return "paused by an operator\(since) (POST /participants/\(worker.configuration.name)/resume)"
        }
    }

    /// A broker answers a metadata request.
    public static func broker(_ settings: KafkaSettings, timeout: Duration, logger: Logger) -> Self {
        let admin = Mutex<KafkaAdmin?>(nil)
        // The daemon's own clients already log connection failures; the check reports through its result.
        var quiet = logger
        quiet.logLevel = .critical
        return Self(name: "kafka") { [quiet] in
            do {
                let client = try admin.withLock { current throws(KafkaError) -> KafkaAdmin in
                    if let current { return current }
                    let created = try KafkaAdmin(
                        bootstrapServers: settings.bootstrapServers, properties: settings.properties, logger: quiet)
                    current = created
                    return created
                }
                _ = try await client.brokerCount(timeout: timeout)
                return nil
            } catch {
                return "\(error)"
            }
        }
    }
}

/// One connection kept for health checks.
private actor DatabaseProbe {
    let database: ServiceDatabase
    let logger: Logger
    private var connection: PostgresConnection?
    private var running = false

    init(database: ServiceDatabase, logger: Logger) {
        self.database = database
        self.logger = logger
    }

    func check() async -> String? {
        // A check that outlived its timeout may still be waiting: never run two on one probe.
        guard !running else { return "the previous check has not answered yet" }
        running = true
        defer { running = false }
        do {
            if connection == nil {
                var configuration = database.configuration.named("health")
                configuration.connectTimeoutSeconds = 2
                connection = try await PostgresConnection.connect(configuration, logger: logger)
            }
            try await connection?.query("SELECT 1")
            return nil
        } catch {
            await connection?.close()
            connection = nil
            return "\(error)"
        }
    }
}
