import Foundation
import JSONSchema
import SagaKafka

/// A typed event body. Each concrete type names the schema (`schemas/<type>/v<version>.schema.json`)
/// it is written against.
public protocol EventPayload: Codable, Sendable {
    /// The event type, e.g. `order.created`: the envelope's `type` and the name of the type's topic.
    static var eventType: String { get }
    /// The version of the type's schema this payload is written against.
    static var eventVersion: Int { get }
}

/// An event as a handler sees it: validated against its schema and upcast to the version
/// the handler was written for.
public struct IncomingEvent: Sendable {
    /// The envelope, with `data` and `version` already upcast.
    public var envelope: EventEnvelope
    /// The version the producer published.
    public var publishedVersion: Int
    /// Where it was read from.
    public var topic: String
    /// The partition it was read from.
    public var partition: Int32
    /// Its offset in that partition.
    public var offset: Int64

    /// The event's id (``EventEnvelope/id``).
    public var id: UUID { envelope.id }
    /// The event's type (``EventEnvelope/type``).
    public var type: String { envelope.type }
    /// The event's saga (``EventEnvelope/sagaId``).
    public var sagaId: String { envelope.sagaId }

    /// The body decoded as `T`.
    /// - Throws: `EventDecodingError` when the (validated) data does not fit `T` — a programming error
    ///   between the schema and the code, treated as a poison event.
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws(EventDecodingError) -> T {
        try envelope.data.decode(T.self)
    }
}

/// An event a handler emits. The runtime writes it to the outbox in the handler's transaction.
public struct OutgoingEvent: Sendable {
    /// The event in its envelope, as it will be published.
    public var envelope: EventEnvelope

    /// An event from a complete envelope.
    public init(envelope: EventEnvelope) { self.envelope = envelope }

    /// A new event of a saga, caused by `cause` (nil for the first event of a saga).
    /// The trace context is `traceparent` when given, else the current span's or the cause's trace
    /// (see ``TraceParent/forEmitting(after:)``).
    public init<P: EventPayload>(
        _ payload: P, sagaId: String, producer: String, causedBy cause: EventEnvelope?, traceparent: String? = nil
    ) throws(EventEncodingError) {
        let data: JSONValue
        do { data = try JSONValue(encoding: payload) } catch { throw EventEncodingError("\(P.eventType): \(error)") }
        self.envelope = EventEnvelope(
            type: P.eventType, version: P.eventVersion, sagaId: sagaId, causationId: cause?.id,
            producer: producer,
            traceparent: traceparent ?? TraceParent.forEmitting(after: cause?.traceparent),
            data: data)
    }
}

/// Why an event could not be encoded: its payload does not encode to JSON, or does not validate against
/// its schema.
public struct EventEncodingError: Error, Sendable, CustomStringConvertible {
    /// What is wrong with the event.
    public var reason: String
    /// An error with `reason`.
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

extension JSONValue {
    /// Encodes any `Encodable` as a JSON value (dates as RFC 3339 with milliseconds, `Timestamp`).
    public init<T: Encodable>(encoding value: T) throws {
        if let direct = try? JSONValueEncoder.encode(value) {
            self = direct
            return
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.format(date))
        }
        self = try JSONValue(parsing: Array(try encoder.encode(value)))
    }

    /// Decodes this value as `T`.
    public func decode<T: Decodable>(_ type: T.Type) throws(EventDecodingError) -> T {
        if let direct = try? JSONValueDecoder.decode(type, from: self) { return direct }
        do {
            return try JSONDecoder().decode(T.self, from: Data(serialized()))
        } catch {
            throw EventDecodingError("data does not decode as \(T.self): \(error)")
        }
    }

    /// The member `key` of an object, nil otherwise.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let o) = self else { return nil }
        return o[key]
    }
}
