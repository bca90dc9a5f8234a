import Foundation
import SagaEngine
import SagaSchemas
import SagaServices

/// The AsyncAPI 3.0 document of the saga's events, generated from the code and the compiled-in schemas, so it
/// cannot drift from them: channels are `sagaTopics()`, messages every `(type, version)` of `schemas/`, payloads
/// `$ref`s to those files inside the envelope, producers `sagaEmittedEvents`, consumers the services' handlers
/// (and the tracker, which reads every topic). `schemas/asyncapi.yaml` is its output.
enum AsyncAPIDocument {
    static func yaml() -> String {
        YAMLNode.document(document())
    }

    /// `#/components/...` and `#/channels/...` references.
    private static func ref(_ pointer: String) -> YAMLNode { .map([("$ref", .string(pointer))]) }
    private static func messageName(_ key: SchemaKey) -> String { "\(key.type).v\(key.version)" }

    static func document() -> YAMLNode {
        let naming = TopicNaming()
        let registry = SchemaRegistry.shared
        let services = sagaServiceDefinitions
        // What follows each event, as the participants declare it (the tracker assembles the same from the
        // registry).
        let model = SagaModel(
            declarations: Dictionary(uniqueKeysWithValues: services.map { ($0.name, $0.declaration) }))
        let upcasters = Set(sagaUpcasters.map { SchemaKey(type: $0.type, version: $0.fromVersion) })
        // The versions a consumer handling `type` up to `target` accepts: the target and every older version
        // upcast to it step by step.
        func accepted(_ type: String, upTo target: Int) -> [Int] {
            registry.versions(of: type).filter { v in
                v <= target && (v..<target).allSatisfy { upcasters.contains(SchemaKey(type: type, version: $0)) }
            }
        }

        var channels: [(String, YAMLNode)] = []
        var operations: [(String, YAMLNode)] = []
        for type in sagaEventTypes {
            let versions = registry.versions(of: type)
            let next = model.waitingOn[type].map { " Next: \($0)." } ?? " It ends the saga."
            channels.append(
                (
                    type,
                    .map([
                        ("address", .string(naming.topic(for: type))),
                        ("title", .string(type)),
                        (
                            "description",
                            .string(
                                "Every `\(type)` event, keyed by saga id (a saga's events share a partition and stay"
                                    + " in order).\(next) Topic names get SAGA_TOPIC_PREFIX when it is set.")
                        ),
                        (
                            "messages",
                            .map(
                                versions.map { v in
                                    let name = messageName(SchemaKey(type: type, version: v))
                                    return (name, ref("#/components/messages/\(name)"))
                                })
                        ),
                    ])
                ))
            func messages(_ versions: [Int]) -> YAMLNode {
                .list(
                    versions.map {
                        ref("#/channels/\(type)/messages/\(messageName(SchemaKey(type: type, version: $0)))")
                    })
            }
            let producers = Dictionary(grouping: sagaEmittedEvents.filter { $0.type == type }, by: \.producer)
            for producer in producers.keys.sorted() {
                let produced = producers[producer]!.map(\.version).sorted()
                operations.append(
                    (
                        "\(producer).send.\(type)",
                        .map([
                            ("action", .string("send")),
                            ("channel", ref("#/channels/\(type)")),
                            (
                                "summary",
                                .string(
                                    "\(producer) publishes \(type) (\(produced.map { "v\($0)" }.joined(separator: " or ")))"
                                        + " through its outbox, after the transaction that decided it committed.")
                            ),
                            ("messages", messages(produced)),
                        ])
                    ))
            }
            for service in services {
                // A deadline type is delivered by its service's own deadlines, never read from a topic.
                let deadlineTypes = Set(service.declaration.deadlines.map(\.type))
                for handler in service.handlers where handler.eventType == type && !deadlineTypes.contains(type) {
                    let versions = accepted(type, upTo: handler.version)
                    operations.append(
                        (
                            "\(service.name).receive.\(type)",
                            .map([
                                ("action", .string("receive")),
                                ("channel", ref("#/channels/\(type)")),
                                (
                                    "summary",
                                    .string(
                                        "\(service.name) (consumer group \(naming.group(service.name))) handles \(type)"
                                            + " v\(handler.version)"
                                            + (versions.count > 1
                                                ? " (\(versions.dropLast().map { "v\($0)" }.joined(separator: ", "))"
                                                    + " upcast to it)" : "")
                                            + "; a newer version or an invalid event is dead-lettered to"
                                            + " deadletter.\(service.name).")
                                ),
                                ("messages", messages(versions)),
                            ])
                        ))
                }
            }
            operations.append(
                (
                    "tracker.receive.\(type)",
                    .map([
                        ("action", .string("receive")),
                        ("channel", ref("#/channels/\(type)")),
                        (
                            "summary",
                            .string("The tracker (saga tracker) records every event of every saga for saga inspect.")
                        ),
                        ("messages", messages(versions)),
                    ])
                ))
        }
        for service in services {
            let channel = "deadletter.\(service.name)"
            channels.append(
                (
                    channel,
                    .map([
                        ("address", .string(naming.deadLetterTopic(consumer: service.name))),
                        ("title", .string(channel)),
                        (
                            "description",
                            .string(
                                "Poison events \(service.name) gave up on (not JSON, an invalid envelope, a schema"
                                    + " violation, an unknown or too new version, a permanent rejection), written"
                                    + " through its outbox in the same transaction; the partition moves on. `saga"
                                    + " replay dead-letters` redrives them to their dlq-source-topic.")
                        ),
                        ("messages", .map([("deadLetter", ref("#/components/messages/deadLetter"))])),
                    ])
                ))
            operations.append(
                (
                    "\(service.name).send.\(channel)",
                    .map([
                        ("action", .string("send")),
                        ("channel", ref("#/channels/\(channel)")),
                        ("summary", .string("\(service.name) dead-letters an event it cannot handle.")),
                        ("messages", .list([ref("#/channels/\(channel)/messages/deadLetter")])),
                    ])
                ))
            operations.append(
                (
                    "tracker.receive.\(channel)",
                    .map([
                        ("action", .string("receive")),
                        ("channel", ref("#/channels/\(channel)")),
                        ("summary", .string("The tracker records every dead letter for saga inspect.")),
                        ("messages", .list([ref("#/channels/\(channel)/messages/deadLetter")])),
                    ])
                ))
        }

        var schemas: [(String, YAMLNode)] = [("envelope.v1", ref("envelope/v1.schema.json"))]
        var messages: [(String, YAMLNode)] = []
        for key in registry.keys {
            let name = messageName(key)
            schemas.append((name, ref("\(key.type)/v\(key.version).schema.json")))
            messages.append(
                (
                    name,
                    .map([
                        ("name", .string(key.type)),
                        ("title", .string("\(key.type) v\(key.version)")),
                        (
                            "summary",
                            .string(
                                "The envelope (schemas/envelope/v1.schema.json) with type \(key.type), version"
                                    + " \(key.version) and data as schemas/\(key.type)/v\(key.version).schema.json.")
                        ),
                        ("contentType", .string("application/json")),
                        ("headers", ref("#/components/schemas/EventHeaders")),
                        (
                            "payload",
                            .map([
                                (
                                    "allOf",
                                    .list([
                                        ref("#/components/schemas/envelope.v1"),
                                        .map([
                                            ("type", .string("object")),
                                            (
                                                "required",
                                                .list([.string("type"), .string("version"), .string("data")])
                                            ),
                                            (
                                                "properties",
                                                .map([
                                                    ("type", .map([("const", .string(key.type))])),
                                                    ("version", .map([("const", .int(key.version))])),
                                                    ("data", ref("#/components/schemas/\(name)")),
                                                ])
                                            ),
                                        ]),
                                    ])
                                )
                            ])
                        ),
                        ("correlationId", ref("#/components/correlationIds/sagaId")),
                        ("bindings", ref("#/components/messageBindings/sagaKey")),
                    ])
                ))
        }
        messages.append(
            (
                "deadLetter",
                .map([
                    ("name", .string("deadLetter")),
                    ("title", .string("dead letter")),
                    (
                        "summary",
                        .string(
                            "The original message, byte for byte (value, key and headers), with dlq-* headers saying"
                                + " why and where from.")
                    ),
                    ("contentType", .string("application/octet-stream")),
                    ("headers", ref("#/components/schemas/DeadLetterHeaders")),
                    (
                        "payload",
                        .map([
                            (
                                "description",
                                .string(
                                    "The value of the message as it was consumed: usually an event envelope, but"
                                        + " whatever bytes made it poison (not necessarily JSON).")
                            )
                        ])
                    ),
                    ("bindings", ref("#/components/messageBindings/sagaKey")),
                ])
            ))
        schemas += [
            ("EventHeaders", eventHeaders()),
            ("DeadLetterHeaders", deadLetterHeaders()),
        ]

        return .map([
            ("asyncapi", .string("3.0.0")),
            (
                "info",
                .map([
                    ("title", .string("saga order choreography events")),
                    ("version", .string("1.0.0")),
                    (
                        "description",
                        .string(
                            "The events of the order saga on Kafka: orders, inventory and billing agree on every order"
                                + " without a distributed transaction. One topic per event type, named as the type;"
                                + " the Kafka key is the saga id (the order id); every value is an event envelope"
                                + " (schemas/envelope/v1.schema.json) whose data follows"
                                + " schemas/<type>/v<version>.schema.json. A published version never changes: a new"
                                + " one comes with an upcaster (saga schemas check refuses anything else). Consumers"
                                + " deduplicate on the envelope id (effectively once). GENERATED by `saga schemas"
                                + " asyncapi` from the code and schemas/: do not edit.")
                    ),
                ])
            ),
            (
                "servers",
                .map([
                    (
                        "kafka",
                        .map([
                            ("host", .string("127.0.0.1:9092")),
                            ("protocol", .string("kafka")),
                            (
                                "description",
                                .string(
                                    "Any Kafka cluster: SAGA_KAFKA_BOOTSTRAP (and SAGA_KAFKA_PROPERTIES for TLS and"
                                        + " SASL). Producers are idempotent with acks=all.")
                            ),
                        ])
                    )
                ])
            ),
            ("defaultContentType", .string("application/json")),
            ("channels", .map(channels)),
            ("operations", .map(operations)),
            (
                "components",
                .map([
                    ("schemas", .map(schemas)),
                    ("messages", .map(messages)),
                    (
                        "correlationIds",
                        .map([
                            (
                                "sagaId",
                                .map([
                                    ("description", .string("The saga (the order) the event belongs to.")),
                                    ("location", .string("$message.payload#/sagaId")),
                                ])
                            )
                        ])
                    ),
                    (
                        "messageBindings",
                        .map([
                            (
                                "sagaKey",
                                .map([
                                    (
                                        "kafka",
                                        .map([
                                            (
                                                "key",
                                                .map([
                                                    ("type", .string("string")),
                                                    (
                                                        "description",
                                                        .string(
                                                            "The saga id (the order id, a UUID), UTF-8: a saga's"
                                                                + " events share a partition and keep their order.")
                                                    ),
                                                ])
                                            ),
                                            ("bindingVersion", .string("0.5.0")),
                                        ])
                                    )
                                ])
                            )
                        ])
                    ),
                ])
            ),
        ])
    }

    private static func header(_ description: String, pattern: String? = nil) -> YAMLNode {
        .map(
            [("type", .string("string")), ("description", .string(description))]
                + (pattern.map { [("pattern", .string($0))] } ?? []))
    }

    private static var eventHeaderProperties: [(String, YAMLNode)] {
        [
            (SagaHeader.eventType, header("The envelope's type, e.g. order.created.")),
            (SagaHeader.eventVersion, header("The envelope's version, in decimal.", pattern: "^[1-9][0-9]*$")),
            (SagaHeader.eventId, header("The envelope's id (a UUID): consumers deduplicate on it.")),
            (
                SagaHeader.traceparent,
                header("W3C Trace Context of the publishing span, as in the envelope (when traced).")
            ),
            (
                SagaHeader.replayedFrom,
                header("Set by saga replay topic: topic/partition/offset the event was replayed from.")
            ),
            (SagaHeader.replayedAt, header("Set by saga replay topic: when (RFC 3339).")),
            (
                SagaHeader.redrivenFrom,
                header("Set by saga replay dead-letters: topic/partition/offset of the dead letter.")
            ),
            (SagaHeader.redrivenAt, header("Set by saga replay dead-letters: when (RFC 3339).")),
        ]
    }

    private static func eventHeaders() -> YAMLNode {
        .map([
            ("type", .string("object")),
            (
                "description",
                .string(
                    "Kafka headers (UTF-8 values). Type, version and id repeat the envelope's for routing without parsing."
                )
            ),
            (
                "required",
                .list([SagaHeader.eventType, SagaHeader.eventVersion, SagaHeader.eventId].map { .string($0) })
            ),
            ("properties", .map(eventHeaderProperties)),
        ])
    }

    private static func deadLetterHeaders() -> YAMLNode {
        .map([
            ("type", .string("object")),
            (
                "description",
                .string(
                    "The original message's headers (its own dlq-* ones dropped) plus these. A value holding a NUL"
                        + " byte is kept as base64.")
            ),
            (
                "required",
                .list(
                    [
                        SagaHeader.deadLetterReason, SagaHeader.deadLetterSourceTopic,
                        SagaHeader.deadLetterSourcePartition, SagaHeader.deadLetterSourceOffset,
                        SagaHeader.deadLetterConsumer, SagaHeader.deadLetteredAt,
                    ].map { .string($0) })
            ),
            (
                "properties",
                .map(
                    [
                        (
                            SagaHeader.deadLetterReason,
                            header("Why the consumer gave up, e.g. `schema violation (...)`.")
                        ),
                        (SagaHeader.deadLetterSourceTopic, header("The topic the message was consumed from.")),
                        (
                            SagaHeader.deadLetterSourcePartition,
                            header("Its partition, in decimal.", pattern: "^[0-9]+$")
                        ),
                        (SagaHeader.deadLetterSourceOffset, header("Its offset, in decimal.", pattern: "^[0-9]+$")),
                        (SagaHeader.deadLetterConsumer, header("The service that dead-lettered it.")),
                        (SagaHeader.deadLetteredAt, header("When (RFC 3339).")),
                    ] + eventHeaderProperties)
            ),
        ])
    }
}

/// A YAML tree and its block-style rendering (the subset the AsyncAPI document needs).
indirect enum YAMLNode: Sendable, Hashable {
    case string(String)
    case int(Int)
    case list([YAMLNode])
    case map([Pair])

    struct Pair: Sendable, Hashable {
        var key: String
        var value: YAMLNode
    }

    static func map(_ pairs: [(String, YAMLNode)]) -> YAMLNode { .map(pairs.map { Pair(key: $0.0, value: $0.1) }) }

    /// The whole document, ending with a newline.
    static func document(_ node: YAMLNode) -> String {
        var out = ""
        node.render(into: &out, indent: 0)
        return out
    }

    private static let plain = try! NSRegularExpression(pattern: "^[A-Za-z_$][A-Za-z0-9_.$/-]*$")
    private static let reserved: Set<String> = ["true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"]

    /// A scalar as plain text when that reads back as the same string, else double-quoted (JSON escapes are
    /// valid YAML escapes).
    static func scalar(_ s: String) -> String {
        let range = NSRange(s.startIndex..., in: s)
        if plain.firstMatch(in: s, range: range) != nil, !reserved.contains(s.lowercased()) { return s }
        return String(decoding: JSONValue.string(s).serialized(), as: UTF8.self)
    }

    private var inline: String? {
        switch self {
        case .string(let s): return Self.scalar(s)
        case .int(let i): return String(i)
        case .list(let items) where items.isEmpty: return "[]"
        case .map(let pairs) where pairs.isEmpty: return "{}"
        default: return nil
        }
    }

    private func render(into out: inout String, indent: Int) {
        let pad = String(repeating: " ", count: indent)
        switch self {
        case .map(let pairs):
            for pair in pairs {
                out += pad + Self.scalar(pair.key) + ":"
                if let inline = pair.value.inline {
                    out += " " + inline + "\n"
                } else {
                    out += "\n"
                    pair.value.render(into: &out, indent: indent + 2)
                }
            }
        case .list(let items):
            for item in items {
                if let inline = item.inline {
                    out += pad + "- " + inline + "\n"
                } else {
                    // The item's block, its first line after "- ".
                    var block = ""
                    item.render(into: &block, indent: indent + 2)
                    out += pad + "- " + block.dropFirst(indent + 2)
                }
            }
        default:
            out += pad + (inline ?? "") + "\n"
        }
    }
}
