import ArgumentParser
import Foundation
import SagaEngine
import SagaKafka
import SagaServices

/// One poison record the chaos test produced, and the services that must dead-letter it.
struct PoisonRecord: Codable, Sendable, Hashable {
    var kind: String
    var topic: String
    var partition: Int32
    var offset: Int64
    var consumers: [String]
}

struct ChaosPoisonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "poison",
        abstract: "Produce poison records of every kind straight to every consumed topic; write where they landed.",
        discussion: """
            Kinds: \(ChaosPoison.kinds.joined(separator: ", ")). Each consuming service must dead-letter each \
            record exactly once (its saga_dead_letters table and its dead-letter topic) and go on with the others. \
            One JSON line per record (topic, partition, offset, the consumers) in --out.
            """)

    @Option(help: "Where to append the records (JSON lines).") var out: String
    @Option(help: "A tag for the records' keys and saga ids (e.g. the round).") var tag = "1"
    @Option(help: "Only these kinds, comma-separated (default: every kind).") var kinds: String?

    func validate() throws {
        for kind in selected where !ChaosPoison.kinds.contains(kind) {
            throw ValidationError("--kinds: unknown kind '\(kind)' (\(ChaosPoison.kinds.joined(separator: ", ")))")
        }
    }

    private var selected: [String] {
        kinds.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? ChaosPoison.kinds
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.chaos")
        let env = runtime.env
        var consumers: [String: [String]] = [:]
        for service in Stack.services {
            let definition = try Stack.definition(service)
            // A deadline type has no consumer on Kafka (its worker does not subscribe to it): nothing to poison.
            let deadlineTypes = Set(definition.declaration.deadlines.map(\.type))
            for handler in definition.handlers where !deadlineTypes.contains(handler.eventType) {
                consumers[handler.eventType, default: []].append(service)
            }
        }
        let types = consumers.keys.sorted()
        var messages: [(kind: String, message: KafkaOutgoingMessage, consumers: [String])] = []
        for type in types {
            let other = types.first { $0 != type } ?? "unknown.type"
            for (kind, message) in ChaosPoison.records(
                topic: env.topics.topic(for: type), type: type, otherType: other, tag: "poison-\(tag)-\(type)")
            where selected.contains(kind) {
                messages.append((kind, message, consumers[type] ?? []))
            }
        }
        let producer = try KafkaProducer(
            configuration: try env.kafka().producer(clientId: "saga-chaos-poison"), logger: runtime.logger)
        let writer = try LedgerWriter(path: out)
        let reports = await producer.send(messages.map(\.message))
        await producer.shutdown()
        var failed = 0
        for (m, report) in zip(messages, reports) {
            switch report {
            case .success(let r):
                try writer.append(
                    PoisonRecord(
                        kind: m.kind, topic: r.topic, partition: r.partition, offset: r.offset, consumers: m.consumers))
            case .failure(let error):
                failed += 1
                FileHandle.standardError.write(
                    Data("saga chaos poison: \(m.kind) on \(m.message.topic): \(error)\n".utf8))
            }
        }
        print("\(messages.count - failed) poison records sent to \(types.count) topics")
        if failed > 0 { throw ExitCode(1) }
    }
}

/// The poison: any bytes, any size, in key, headers or value.
enum ChaosPoison {
    static let kinds = [
        "not-json", "not-utf8", "empty-value", "bad-envelope", "schema-violation", "unknown-version", "wrong-type",
        "huge-key", "huge-headers", "huge-saga-id", "nul-escaped", "nul-raw",
    ]

    /// `count` random printable ASCII characters: PostgreSQL cannot compress them below its index row limit
    /// (about 2.7 KB), as it would a repeated character.
    static func noise(_ count: Int) -> String {
        String(decoding: (0..<count).map { _ in UInt8.random(in: 0x21...0x7e) }, as: UTF8.self)
    }

    static func records(topic: String, type: String, otherType: String, tag: String) -> [(
        String, KafkaOutgoingMessage
    )] {
        func envelope(_ type: String, _ version: Int, sagaId: String, _ data: JSONValue) -> [UInt8] {
            EventEnvelope(
                type: type, version: version, sagaId: sagaId, causationId: nil, producer: "chaos", traceparent: nil,
                data: data
            ).serialized()
        }
        func message(_ kind: String, key: [UInt8]? = nil, _ value: [UInt8], headers: [KafkaHeader] = [])
            -> (String, KafkaOutgoingMessage)
        {
            (
                kind,
                KafkaOutgoingMessage(
                    topic: topic, key: key ?? Array("\(tag)-\(kind)".utf8), value: value, headers: headers)
            )
        }
        let id = { (kind: String) in "\(tag)-\(kind)" }
        let bigHeaders =
            [
                KafkaHeader(key: SagaHeader.eventType, string: noise(5000)),
                KafkaHeader(key: SagaHeader.eventVersion, string: noise(5000)),
                KafkaHeader(key: SagaHeader.eventId, value: (0..<5000).map { _ in UInt8.random(in: 0...255) }),
            ] + (0..<8).map { KafkaHeader(key: "x-chaos-\($0)", string: noise(4096)) }
        return [
            message("not-json", Array(#"{"id": "unterminated"#.utf8)),
            message("not-utf8", [0xff, 0xfe, 0xc3, 0x28, 0x80, 0xbf]),
            message("empty-value", []),
            message("bad-envelope", Array(#"{"hello":"world"}"#.utf8)),
            message(
                "schema-violation",
                envelope(type, 1, sagaId: id("schema-violation"), .object(["orderId": .integer(42), "x": .bool(true)]))),
            message("unknown-version", envelope(type, 999, sagaId: id("unknown-version"), .object([:]))),
            message("wrong-type", envelope(otherType, 1, sagaId: id("wrong-type"), .object([:]))),
            message(
                "huge-key", key: Array((id("huge-key") + noise(5000)).utf8),
                Array("not json at all".utf8)),
            message("huge-headers", Array(#"{"hello":"headers"}"#.utf8), headers: bigHeaders),
            message(
                "huge-saga-id",
                envelope(type, 1, sagaId: id("huge-saga-id") + noise(5000), .object([:]))),
            message(
                "nul-escaped", key: Array("\(id("nul-escaped"))\u{0}nul".utf8),
                envelope(type, 1, sagaId: "\(id("nul-escaped"))\u{0}nul", .object(["orderId": .string("\u{0}")])),
                headers: [KafkaHeader(key: "x-chaos-nul", value: [0x00, 0x41, 0x00])]),
            message(
                "nul-raw", [0x7b, 0x00, 0x22, 0x00, 0x7d], headers: [KafkaHeader(key: "nul\u{0}key", value: [0x00])]),
        ]
    }
}
