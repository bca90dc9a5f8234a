import Foundation
import JSONSchema
import SagaKafka
import SagaSchemas

/// Turns a newer version's body out of an older one: `type` v`from` → v`from + 1`.
public struct Upcaster: Sendable {
    /// The event type it upcasts.
    public var type: String
    /// The version it reads; it produces `fromVersion + 1`.
    public var fromVersion: Int
    /// Turns the `data` of version `fromVersion` into the `data` of the next version. A thrown error makes the
    /// event a poison event (dead-lettered).
    public var transform: @Sendable (JSONValue) throws -> JSONValue

    /// An upcaster of `type` from `version` to `version + 1`.
    public init(type: String, from version: Int, transform: @escaping @Sendable (JSONValue) throws -> JSONValue) {
        self.type = type
        self.fromVersion = version
        self.transform = transform
    }
}

/// Decodes, validates and upcasts incoming messages; validates and encodes outgoing events.
///
/// Every failure is an `EventDecodingError` whose reason goes into the dead-letter headers.
public struct EventCodec: Sendable {
    /// The schemas it validates with.
    public let registry: SchemaRegistry
    private let upcasters: [String: Upcaster]
    /// How event types map to topics.
    public let topics: TopicNaming

    /// A codec validating with `registry`, upcasting with `upcasters` (one per type and source version),
    /// writing to the topics of `topics`.
    public init(registry: SchemaRegistry = .shared, upcasters: [Upcaster], topics: TopicNaming) {
        self.registry = registry
        self.upcasters = Dictionary(
            upcasters.map { ("\($0.type)@\($0.fromVersion)", $0) }, uniquingKeysWith: { a, _ in a })
        self.topics = topics
    }

    /// Decodes `message` and upcasts it to `targetVersion`.
    /// - Throws: `EventDecodingError` for anything that makes the message a poison event: not JSON,
    ///   an invalid envelope, an unknown type or version, a schema violation, a topic/type mismatch,
    ///   a version newer than `targetVersion`, a missing or failing upcaster.
    public func decode(_ message: KafkaMessage, targetVersion: Int) throws(EventDecodingError) -> IncomingEvent {
        let json: JSONValue
        do { json = try JSONValue(parsing: message.value) } catch {
            throw EventDecodingError("not JSON: \(error.message)")
        }
        let envelopeViolations = registry.validateEnvelope(json)
        guard envelopeViolations.isEmpty else {
            throw EventDecodingError("invalid envelope: \(Self.describe(envelopeViolations))")
        }
        var envelope = try EventEnvelope(validated: json)
        if let expected = topics.eventType(ofTopic: message.topic), expected != envelope.type {
            throw EventDecodingError("event type \(envelope.type) on topic \(message.topic)")
        }
        guard let violations = registry.validate(type: envelope.type, version: envelope.version, data: envelope.data)
        else {
            throw EventDecodingError("unknown event version: \(envelope.type) v\(envelope.version)")
        }
        guard violations.isEmpty else {
            throw EventDecodingError(
                "schema violation (\(envelope.type) v\(envelope.version)): \(Self.describe(violations))")
        }
        let published = envelope.version
        if published > targetVersion {
            throw EventDecodingError(
                "\(envelope.type) v\(published) is newer than v\(targetVersion), the version this consumer handles")
        }
        while envelope.version < targetVersion {
            guard let upcaster = upcasters["\(envelope.type)@\(envelope.version)"] else {
                throw EventDecodingError("no upcaster for \(envelope.type) v\(envelope.version)")
            }
            do { envelope.data = try upcaster.transform(envelope.data) } catch {
                throw EventDecodingError("upcasting \(envelope.type) v\(envelope.version) failed: \(error)")
            }
            envelope.version += 1
            let after = registry.validate(type: envelope.type, version: envelope.version, data: envelope.data) ?? []
            guard after.isEmpty else {
                throw EventDecodingError(
                    "upcast \(envelope.type) v\(envelope.version) is invalid: \(Self.describe(after))")
            }
        }
        return IncomingEvent(
            envelope: envelope, publishedVersion: published, topic: message.topic,
            partition: message.partition, offset: message.offset)
    }

    /// The Kafka message for `event`, after validating it against its schema.
    /// - Throws: `EventEncodingError` when the event breaks its schema (a programming error).
    public func encode(_ event: OutgoingEvent) throws(EventEncodingError) -> KafkaOutgoingMessage {
        let e = event.envelope
        guard let violations = registry.validate(type: e.type, version: e.version, data: e.data) else {
            throw EventEncodingError("no schema for \(e.type) v\(e.version)")
        }
        guard violations.isEmpty else {
            throw EventEncodingError("\(e.type) v\(e.version) breaks its schema: \(Self.describe(violations))")
        }
        var headers = [
            KafkaHeader(key: SagaHeader.eventType, string: e.type),
            KafkaHeader(key: SagaHeader.eventVersion, string: String(e.version)),
            KafkaHeader(key: SagaHeader.eventId, string: e.id.lowercasedString),
        ]
        if let t = e.traceparent { headers.append(KafkaHeader(key: SagaHeader.traceparent, string: t)) }
        return KafkaOutgoingMessage(
            topic: topics.topic(for: e.type), key: Array(e.sagaId.utf8), value: e.serialized(), headers: headers)
    }

    static func describe(_ violations: [JSONSchemaViolation]) -> String {
        violations.prefix(5).map { "\($0.path.isEmpty ? "/" : $0.path): \($0.message)" }.joined(separator: "; ")
            + (violations.count > 5 ? "; and \(violations.count - 5) more" : "")
    }
}

/// Topic names: one topic per event type, named as the type, with an optional prefix (tests, shared clusters).
public struct TopicNaming: Sendable, Hashable {
    /// Prepended to every topic and consumer group name; empty by default.
    public var prefix: String
    /// Topic names with `prefix`.
    public init(prefix: String = "") { self.prefix = prefix }

    /// The topic of an event type: the prefix, then the type (`order.created`).
    public func topic(for eventType: String) -> String { prefix + eventType }

    /// The dead-letter topic of a consumer (`deadletter.<consumer>`).
    public func deadLetterTopic(consumer: String) -> String { prefix + "deadletter." + consumer }

    /// The event type a topic carries, nil for topics that are not event topics (e.g. dead letters).
    public func eventType(ofTopic topic: String) -> String? {
        guard topic.hasPrefix(prefix) else { return nil }
        let name = String(topic.dropFirst(prefix.count))
        return name.hasPrefix("deadletter.") ? nil : name
    }

    /// A consumer group name for a service or tool.
    public func group(_ name: String) -> String { prefix + name }
}
