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
        #expect(SagaEnvironment.embeddedFetchWaitMaxMs < 10)
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
}
