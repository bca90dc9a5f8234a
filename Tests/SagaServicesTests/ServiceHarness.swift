import Foundation
import Logging
import SagaKafka
import SagaServices
import SagaTestSupport
import Synchronization

@testable import SagaEngine

/// One service of the saga on a real PostgreSQL (a fresh schema, its migrations applied), with workers that are
/// never run: a test feeds them crafted messages through `process` — the path of a consumed batch (inbox,
/// handler, outbox in one transaction) — in the exact order it wants, then reads the service's tables and outbox.
/// No broker: the workers' Kafka clients point at a closed port and are never used.
final class ServiceHarness: Sendable {
    let definition: ParticipantDefinition
    let database: ServiceDatabase
    let pool: PostgresPool
    let logger: Logger
    let topics = TopicNaming()
    /// Encodes the crafted events (validated against the service's schemas, as a producer would).
    let codec: EventCodec
    private let offsets = Mutex<Int64>(0)

    init(_ definition: ParticipantDefinition) async throws {
        var logger = Logger(label: "service-harness")
        logger.logLevel =
            ProcessInfo.processInfo.environment["SAGA_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) }
            ?? .warning
        self.logger = logger
        self.definition = definition
        database = ServiceDatabase(
            url: PostgresTestDatabase.url, schema: try await PostgresTestDatabase.freshSchema(definition.name))
        try await database.prepare(migrations: definition.migrations, logger: logger)
        pool = PostgresPool(configuration: database.configuration, size: 2, logger: logger)
        codec = EventCodec(registry: try definition.schemaRegistry(), upcasters: [], topics: topics)
    }

    /// A worker of the service (an instance; several may run `process` at once, each with its own pool).
    func worker() throws -> Worker {
        var c = WorkerConfiguration(
            name: definition.name, kafka: KafkaSettings(bootstrapServers: "127.0.0.1:9"), database: database,
            topics: topics)
        c.retry = RetryPolicy(initialDelay: .milliseconds(20), maxDelay: .milliseconds(200))
        return try Worker(configuration: c, definition: definition, middleware: [], batchMiddleware: [], logger: logger)
    }

    /// A pool of its own, for a second worker instance.
    func newPool() -> PostgresPool {
        PostgresPool(configuration: database.configuration, size: 1, logger: logger)
    }

    /// `payload` as a consumed message of its type's topic, produced by `producer`, under a new event id
    /// (a re-published event is another `message` of the same payload; a duplicate is the same message twice).
    func message<P: EventPayload>(_ payload: P, saga: String, producer: String) throws -> KafkaMessage {
        let out = try codec.encode(try OutgoingEvent(payload, sagaId: saga, producer: producer, causedBy: nil))
        let offset = offsets.withLock {
            $0 += 1
            return $0
        }
        return KafkaMessage(
            topic: out.topic, partition: 0, offset: offset, key: out.key, value: out.value, headers: out.headers,
            timestamp: nil)
    }

    /// The envelopes in the outbox, in the order written, optionally of one type.
    func outbox(_ type: String? = nil) async throws -> [EventEnvelope] {
        try await pool.query(
            "SELECT payload FROM saga_outbox WHERE $1::text IS NULL OR event_type = $1 ORDER BY id", [type]
        ).map { try EventEnvelope(validated: try JSONValue(parsing: try $0.decode("payload", as: [UInt8].self))) }
    }

    /// The `data` of the outbox's events of `type`, decoded.
    func emitted<P: EventPayload>(_ payload: P.Type) async throws -> [P] {
        try await outbox(P.eventType).map { try $0.data.decode(P.self) }
    }

    func query(_ sql: String, _ binds: [PostgresBind] = []) async throws -> [PostgresRow] {
        try await pool.query(sql, binds)
    }

    func execute(_ sql: String, _ binds: [PostgresBind] = []) async throws {
        try await pool.execute(sql, binds)
    }

    func tearDown() async {
        await pool.close()
        try? await PostgresTestDatabase.dropSchema(database.schema)
    }
}

extension TestStack {
    /// Waits until each of `services` has handled (its inbox holds) at least `count` events of `type`: e.g. the
    /// `order.cancelled` inventory and billing consume after orders committed the outcome a test waited for.
    func waitUntilConsumed(_ type: String, count: Int, by services: [String]) async throws {
        try await eventually("\(services) consumed \(count) \(type)") {
            for service in services {
                let n: Int = try await query(
                    service, "SELECT count(*)::int AS n FROM saga_inbox WHERE event_type = $1", [type]
                ).first!.decode("n")
                if n < count { return false }
            }
            return true
        }
    }
}
