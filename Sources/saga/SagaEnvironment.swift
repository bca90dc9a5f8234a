import ArgumentParser
import Foundation
import SagaDaemon
import SagaEngine
import SagaOperations

/// The CLI's configuration: every daemon setting (``DaemonEnvironment``, for orders, inventory, billing and the
/// tracker), read through this struct as if its own, and what only the orders service reads: the port of its
/// HTTP API, the `order.created` version it emits and its orders' default deadline. Every variable is listed in the
/// README with its default.
@dynamicMemberLookup
struct SagaEnvironment: Sendable {
    var daemon: DaemonEnvironment
    var httpPort: Int
    /// Database sessions of the orders HTTP API (`SAGA_HTTP_DB_CONNECTIONS`, default 16): placements are stored
    /// one group at a time (`OrderBook.place`), each of its two statements on one session; `GET /orders/{id}`
    /// reads on the others.
    var httpDatabaseConnections: Int
    var orderCreatedVersion: Int
    /// How long after placement an order times out (`SAGA_ORDER_DEADLINE`, default 15m); nil (`0s`): no deadline
    /// unless a request asks for one.
    var orderDeadline: Duration?
    /// How long the tracker goes on collecting messages after the first of a batch (`SAGA_TRACKER_BATCH_WAIT`,
    /// default 50ms); nil (`0s`): it records what one poll returns. See `TrackerConfiguration.batchWait`.
    var trackerBatchWait: Duration?

    /// The databases the commands use: the three services' and the tracker's.
    static let databases = ["orders", "inventory", "billing", "tracker"]
    static let defaultDatabaseURL = DaemonEnvironment.defaultDatabaseURL
    static let embeddedFetchWaitMaxMs = DaemonEnvironment.embeddedFetchWaitMaxMs
    static let brokerFilePath = DaemonEnvironment.brokerFilePath
    /// Partitions of each saga topic on the embedded broker (`saga dev`, `saga broker`): room for a second worker
    /// of a service. Each partition more costs a relay batch a request: librdkafka sends one produce request per
    /// partition (at most 5 in flight with idempotence), and the mock cluster answers a fetch with at most one
    /// message set per partition. At a fixed 400 sagas/s in `saga dev`, 2 partitions instead of 8 lowered the p99
    /// in 7 of 9 alternating pairs (README, "Where the time goes").
    static let embeddedPartitions: Int32 = 2
    /// The accepted range of `--partitions` on the embedded broker.
    static let embeddedPartitionRange: ClosedRange<Int32> = 1...256

    /// Refuses an embedded broker's `--partitions` outside ``embeddedPartitionRange`` (`saga dev`, `saga broker`).
    static func validatePartitions(_ partitions: Int32) throws {
        let range = embeddedPartitionRange
        guard range.contains(partitions) else {
            throw ValidationError("--partitions must be \(range.lowerBound)...\(range.upperBound)")
        }
    }

    /// Reads the environment. - Throws: `ConfigurationError` naming the variable and what is wrong with it.
    static func load(
        _ env: [String: String] = ProcessInfo.processInfo.environment, devFile: DevStackFile? = DevStackFile.read(),
        brokerFile: String? = DaemonEnvironment.readBrokerFile()
    ) throws(ConfigurationError) -> SagaEnvironment {
        let daemon = try DaemonEnvironment.load(env, databases: databases, devFile: devFile, brokerFile: brokerFile)
        return SagaEnvironment(
            daemon: daemon,
            httpPort: try DaemonEnvironment.integer("SAGA_HTTP_PORT", in: env, default: 8080, 0...65535),
            httpDatabaseConnections: try DaemonEnvironment.integer(
                "SAGA_HTTP_DB_CONNECTIONS", in: env, default: 16, 1...500),
            orderCreatedVersion: try DaemonEnvironment.integer(
                "SAGA_ORDER_CREATED_VERSION", in: env, default: 2, 1...2),
            orderDeadline: try parseOrderDeadline(env["SAGA_ORDER_DEADLINE"]),
            trackerBatchWait: try parseTrackerBatchWait(env["SAGA_TRACKER_BATCH_WAIT"]))
    }

    /// The tracker's batch wait: `raw` (default 50ms), up to 10s, or `0s` for none.
    static func parseTrackerBatchWait(_ raw: String?) throws(ConfigurationError) -> Duration? {
        guard let raw, !raw.isEmpty else { return TrackerConfiguration.defaultBatchWait }
        guard let duration = DurationParser.parse(raw), duration <= .seconds(10) else {
            throw ConfigurationError(
                "SAGA_TRACKER_BATCH_WAIT='\(raw)': expected a duration up to 10s (e.g. 50ms), or 0s for none")
        }
        return duration == .zero ? nil : duration
    }

    /// The default order deadline: `raw` (default `15m`), from 1s to 7d, or `0s` for none.
    static func parseOrderDeadline(_ raw: String?) throws(ConfigurationError) -> Duration? {
        guard let raw else { return .seconds(15 * 60) }
        guard let duration = DurationParser.parse(raw),
            duration == .zero || (.seconds(1)...Duration.seconds(7 * 86_400)).contains(duration)
        else {
            throw ConfigurationError(
                "SAGA_ORDER_DEADLINE='\(raw)': expected a duration from 1s to 7d (e.g. 15m), or 0s for none")
        }
        return duration == .zero ? nil : duration
    }

    subscript<Value>(dynamicMember keyPath: WritableKeyPath<DaemonEnvironment, Value>) -> Value {
        get { daemon[keyPath: keyPath] }
        set { daemon[keyPath: keyPath] = newValue }
    }

    subscript<Value>(dynamicMember keyPath: KeyPath<DaemonEnvironment, Value>) -> Value { daemon[keyPath: keyPath] }

    /// The Kafka settings. - Throws: when no broker is configured and no local stack runs.
    func kafka() throws(ConfigurationError) -> KafkaSettings { try daemon.kafka() }

    /// A service's database (or the tracker's).
    func database(_ service: String) -> ServiceDatabase { daemon.database(service) }

    /// Every SAGA_* variable the commands and scripts read.
    static let knownVariables: Set<String> = DaemonEnvironment.knownVariables(databases: databases).union([
        "SAGA_HTTP_PORT", "SAGA_HTTP_DB_CONNECTIONS", "SAGA_TRACKER_BATCH_WAIT", "SAGA_ORDER_CREATED_VERSION",
        "SAGA_ORDER_DEADLINE",
        // scripts/ and the tests
        "SAGA_PG_PORT", "SAGA_PG_FSYNC", "SAGA_PG_DB", "SAGA_PG_DIR", "SAGA_ROOT", "SAGA_LOCAL", "SAGA_PIDS",
        "SAGA_STARTED_PG",
        "SAGA_TEST_LOG_LEVEL", "SAGA_TEST_BROKER",
    ])

    /// SAGA_* variables set in `env` that nothing reads: most likely misspelt.
    static func unknownVariables(_ env: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        DaemonEnvironment.unknownVariables(env, known: knownVariables)
    }
}
