import Logging
import SagaDaemon
import Testing

@testable import saga

/// Defaults the environment derives from where the broker is.
struct EnvironmentTests {
    /// The embedded broker answers an empty fetch only after fetch.wait.max.ms, so its consumers wait less;
    /// against a real Kafka the default stays, and an explicit value always wins.
    @Test func theFetchWaitIsShortOnlyAgainstTheEmbeddedBroker() throws {
        let kafka = try SagaEnvironment.load(["SAGA_KAFKA_BOOTSTRAP": "kafka:9092"], devFile: nil, brokerFile: nil)
        let flagged = try SagaEnvironment.load(
            ["SAGA_KAFKA_BOOTSTRAP": "127.0.0.1:40001", "SAGA_KAFKA_EMBEDDED": "1"], devFile: nil, brokerFile: nil)
        let announced = try SagaEnvironment.load([:], devFile: nil, brokerFile: "127.0.0.1:40001")
        func dev(embedded: Bool) -> DevStackFile {
            DevStackFile(
                http: "http://127.0.0.1:1", kafkaBootstrap: "127.0.0.1:40002", kafkaEmbedded: embedded,
                databaseURL: "postgresql://127.0.0.1/x", schemas: [:], pid: 1)
        }
        let devEmbedded = try SagaEnvironment.load([:], devFile: dev(embedded: true), brokerFile: "127.0.0.1:40001")
        let devKafka = try SagaEnvironment.load([:], devFile: dev(embedded: false), brokerFile: nil)
        let overridden = try SagaEnvironment.load(
            ["SAGA_KAFKA_EMBEDDED": "1", "SAGA_KAFKA_FETCH_WAIT_MAX_MS": "7"], devFile: nil, brokerFile: nil)
        #expect(kafka.fetchWaitMaxMs == 10)
        #expect(flagged.fetchWaitMaxMs == SagaEnvironment.embeddedFetchWaitMaxMs)
        #expect(announced.fetchWaitMaxMs == SagaEnvironment.embeddedFetchWaitMaxMs)
        #expect(announced.kafkaBootstrap == "127.0.0.1:40001")
        #expect(devEmbedded.fetchWaitMaxMs == SagaEnvironment.embeddedFetchWaitMaxMs)
        #expect(devEmbedded.kafkaBootstrap == "127.0.0.1:40002")
        #expect(devKafka.fetchWaitMaxMs == 10)
        #expect(overridden.fetchWaitMaxMs == 7)
        // 1 ms: the lowest wait, measured to bring a lone saga to ~15 ms on the embedded broker (see its doc).
        #expect(SagaEnvironment.embeddedFetchWaitMaxMs == 1)
    }

    /// SAGA_STATEMENT_TIMEOUT and SAGA_LOCK_TIMEOUT reach every service's database configuration (not the
    /// migrations'); unset or 0s means none, and a bad value names the variable.
    @Test func statementAndLockTimeoutsReachEveryDatabaseConfiguration() throws {
        let none = try SagaEnvironment.load([:], devFile: nil, brokerFile: nil)
        let set = try SagaEnvironment.load(
            ["SAGA_STATEMENT_TIMEOUT": "30s", "SAGA_LOCK_TIMEOUT": "500ms"], devFile: nil, brokerFile: nil)
        let zero = try SagaEnvironment.load(["SAGA_STATEMENT_TIMEOUT": "0s"], devFile: nil, brokerFile: nil)
        #expect(none.database("orders").configuration.statementTimeout == nil)
        #expect(none.database("orders").configuration.lockTimeout == nil)
        for service in ["orders", "inventory", "billing", "tracker"] {
            #expect(set.database(service).configuration.statementTimeout == .seconds(30))
            #expect(set.database(service).configuration.lockTimeout == .milliseconds(500))
        }
        #expect(zero.statementTimeout == nil)
        for (name, value) in [("SAGA_STATEMENT_TIMEOUT", "30"), ("SAGA_LOCK_TIMEOUT", "soon")] {
            #expect {
                _ = try SagaEnvironment.load([name: value], devFile: nil, brokerFile: nil)
            } throws: { "\($0)".contains(name) }
        }
    }

    /// SAGA_ORDER_DEADLINE: 15 minutes by default, 1s to 7d, `0s` for none; anything else names the variable.
    @Test func theOrderDeadlineIsADurationOrNone() throws {
        func load(_ value: String?) throws -> Duration? {
            try SagaEnvironment.load(value.map { ["SAGA_ORDER_DEADLINE": $0] } ?? [:], devFile: nil, brokerFile: nil)
                .orderDeadline
        }
        #expect(try load(nil) == .seconds(900))
        #expect(try load("90s") == .seconds(90))
        #expect(try load("7d") == .seconds(7 * 86_400))
        #expect(try load("0s") == nil)
        for bad in ["15", "500ms", "8d", "soon", "-1s"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try load(bad) }
            #expect {
                _ = try load(bad)
            } throws: {
                "\($0)" == "SAGA_ORDER_DEADLINE='\(bad)': expected a duration from 1s to 7d (e.g. 15m), or 0s for none"
            }
        }
        #expect(SagaEnvironment.unknownVariables(["SAGA_ORDER_DEADLINE": "1m"]) == [])
    }

    /// SAGA_KAFKA_GROUP_INSTANCE_ID makes the worker's and the tracker's consumers static members: `{hostname}`
    /// is expanded, unset or empty means dynamic members, and an id Kafka would refuse names the variable.
    /// SAGA_HTTP_DB_CONNECTIONS: the orders API's database sessions, 16 by default, 1 to 500.
    @Test func theOrdersAPIsDatabaseSessionsAreConfigurable() throws {
        #expect(try SagaEnvironment.load([:], devFile: nil, brokerFile: nil).httpDatabaseConnections == 16)
        #expect(
            try SagaEnvironment.load(["SAGA_HTTP_DB_CONNECTIONS": "3"], devFile: nil, brokerFile: nil)
                .httpDatabaseConnections == 3)
        for bad in ["0", "501", "many"] {
            #expect {
                try SagaEnvironment.load(["SAGA_HTTP_DB_CONNECTIONS": bad], devFile: nil, brokerFile: nil)
            } throws: { "\($0)".hasPrefix("SAGA_HTTP_DB_CONNECTIONS='\(bad)'") }
        }
        #expect(SagaEnvironment.unknownVariables(["SAGA_HTTP_DB_CONNECTIONS": "8"]) == [])
    }

    /// SAGA_TRACKER_BATCH_WAIT: how long the tracker collects a batch, 50ms by default, `0s` for none, at most 10s;
    /// it reaches the tracker the commands build.
    @Test func theTrackersBatchWaitIsConfigurable() throws {
        let kafka = ["SAGA_KAFKA_BOOTSTRAP": "kafka:9092"]
        func wait(_ raw: String?) throws -> Duration? {
            let env = try SagaEnvironment.load(
                kafka.merging(raw.map { ["SAGA_TRACKER_BATCH_WAIT": $0] } ?? [:]) { $1 }, devFile: nil,
                brokerFile: nil)
            return try Stack(env: env, logger: Logger(label: "test")).tracker().configuration.batchWait
        }
        #expect(try wait(nil) == .milliseconds(50))
        #expect(try wait("200ms") == .milliseconds(200))
        #expect(try wait("0s") == nil)
        for bad in ["11s", "soon", "-1s"] {
            #expect {
                try SagaEnvironment.load(["SAGA_TRACKER_BATCH_WAIT": bad], devFile: nil, brokerFile: nil)
            } throws: { "\($0)".hasPrefix("SAGA_TRACKER_BATCH_WAIT='\(bad)'") }
        }
        #expect(SagaEnvironment.unknownVariables(["SAGA_TRACKER_BATCH_WAIT": "1s"]) == [])
    }

    @Test func theGroupInstanceIdReachesTheWorkerAndTrackerConsumers() throws {
        let kafka = ["SAGA_KAFKA_BOOTSTRAP": "kafka:9092"]
        let none = try SagaEnvironment.load(kafka, devFile: nil, brokerFile: nil)
        let empty = try SagaEnvironment.load(
            kafka.merging(["SAGA_KAFKA_GROUP_INSTANCE_ID": ""]) { $1 }, devFile: nil, brokerFile: nil)
        let set = try SagaEnvironment.load(
            kafka.merging(["SAGA_KAFKA_GROUP_INSTANCE_ID": "inventory-1"]) { $1 }, devFile: nil, brokerFile: nil)
        #expect(none.groupInstanceId == nil)
        #expect(empty.groupInstanceId == nil)
        #expect(set.groupInstanceId == "inventory-1")
        #expect(SagaEnvironment.unknownVariables(["SAGA_KAFKA_GROUP_INSTANCE_ID": "x"]).isEmpty)
        let stack = Stack(env: set, logger: Logger(label: "test"))
        #expect(try stack.worker("inventory").configuration.groupInstanceId == "inventory-1")
        #expect(try stack.tracker().configuration.groupInstanceId == "inventory-1")
        #expect(
            try Stack(env: none, logger: Logger(label: "test")).worker("billing").configuration.groupInstanceId == nil)

        #expect(try DaemonEnvironment.groupInstanceId("worker-{hostname}", hostname: "c0ffee12") == "worker-c0ffee12")
        #expect(try DaemonEnvironment.groupInstanceId("a.b_c-9") == "a.b_c-9")
        #expect(try DaemonEnvironment.groupInstanceId(String(repeating: "x", count: 249))?.count == 249)
        for bad in ["has space", "ümlaut", ".", "..", "a/b", String(repeating: "x", count: 250)] {
            #expect {
                _ = try DaemonEnvironment.groupInstanceId(bad)
            } throws: { "\($0)".contains("SAGA_KAFKA_GROUP_INSTANCE_ID") }
        }
        #expect {
            _ = try SagaEnvironment.load(
                kafka.merging(["SAGA_KAFKA_GROUP_INSTANCE_ID": "no spaces"]) { $1 }, devFile: nil, brokerFile: nil)
        } throws: { "\($0)".contains("SAGA_KAFKA_GROUP_INSTANCE_ID") }
    }
}
