import Foundation
import JSONSchema
import SagaPostgres

/// The envelope every event travels in (schemas/envelope/v1.schema.json).
///
/// The Kafka key is the saga id; `type` and `version` also travel as Kafka headers
/// (`saga-event-type`, `saga-event-version`) so tools can filter without parsing the value.
public struct EventEnvelope: Sendable, Hashable {
    /// The event's id: the inbox key, so the same id is handled once per participant.
    public var id: UUID
    /// The event type, e.g. `order.created`.
    public var type: String
    /// The version of the type's schema that `data` is written against.
    public var version: Int
    /// The saga the event belongs to; also the Kafka key, so a saga's events stay in one partition.
    public var sagaId: String
    /// The event whose handling produced this one; nil for the first event of a saga.
    public var causationId: UUID?
    /// When the producer created the event.
    public var occurredAt: Date
    /// The service that produced the event (`orders`, `inventory`, `billing`).
    public var producer: String
    /// W3C trace context, propagated from cause to effect.
    public var traceparent: String?
    /// The event's body, valid against the schema of `type` and `version`.
    public var data: JSONValue

    /// An envelope from its fields; `id` and `occurredAt` default to a new time-ordered id (`UUID.timeOrdered()`)
    /// and now.
    public init(
        id: UUID = .timeOrdered(), type: String, version: Int, sagaId: String, causationId: UUID?,
        occurredAt: Date = Date(), producer: String, traceparent: String?, data: JSONValue
    ) {
        self.id = id
        self.type = type
        self.version = version
        self.sagaId = sagaId
        self.causationId = causationId
        self.occurredAt = occurredAt
        self.producer = producer
        self.traceparent = traceparent
        self.data = data
    }

    /// The envelope as a JSON value, keys in the schema's vocabulary.
    public var json: JSONValue {
        var object: [String: JSONValue] = [
            "id": .string(id.lowercasedString),
            "type": .string(type),
            "version": .integer(Int64(version)),
            "sagaId": .string(sagaId),
            "occurredAt": .string(Timestamp.format(occurredAt)),
            "producer": .string(producer),
            "data": data,
        ]
        object["causationId"] = causationId.map { .string($0.lowercasedString) } ?? .null
        object["traceparent"] = traceparent.map { .string($0) } ?? .null
        return .object(object)
    }

    /// Compact JSON bytes, as published.
    public func serialized() -> [UInt8] { json.serialized() }

    /// Reads an envelope that already passed the envelope schema.
    /// - Throws: `EventDecodingError` when a field is missing or malformed.
    public init(validated json: JSONValue) throws(EventDecodingError) {
        guard case .object(let o) = json else { throw EventDecodingError("envelope is not an object") }
        func string(_ key: String) throws(EventDecodingError) -> String {
            guard case .string(let s)? = o[key] else { throw EventDecodingError("envelope field '\(key)' missing") }
            return s
        }
        func uuid(_ key: String) throws(EventDecodingError) -> UUID {
            guard let u = UUID(parsing: try string(key)) else {
                throw EventDecodingError("envelope field '\(key)' is not a UUID")
            }
            return u
        }
        guard case .integer(let version)? = o["version"] else {
            throw EventDecodingError("envelope field 'version' missing")
        }
        guard let occurredAt = Timestamp.parse(try string("occurredAt")) else {
            throw EventDecodingError("envelope field 'occurredAt' is not an RFC 3339 date-time")
        }
        var causation: UUID? = nil
        if case .string? = o["causationId"] { causation = try uuid("causationId") }
        var traceparent: String? = nil
        if case .string(let t)? = o["traceparent"] { traceparent = t }
        self.init(
            id: try uuid("id"), type: try string("type"), version: Int(version), sagaId: try string("sagaId"),
            causationId: causation, occurredAt: occurredAt, producer: try string("producer"),
            traceparent: traceparent, data: o["data"] ?? .null)
    }
}

/// Why an incoming message could not be turned into an event. Always permanent: the message is dead-lettered.
public struct EventDecodingError: Error, Sendable, CustomStringConvertible {
    /// What is wrong with the message; it goes into the dead letter's `dlq-reason` header.
    public var reason: String
    /// An error with `reason`.
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// RFC 3339 timestamps with milliseconds, UTC, as the envelope and the read models use them.
///
/// The shape every event carries (`2026-12-01T10:11:05.681Z`, or without the fraction, years 1970–9999) is written
/// and read by calendar arithmetic; any other time or text goes through Foundation's ISO 8601 style, which took
/// ~1 % of the whole machine's CPU in the benchmark when it did all of them.
public enum Timestamp {
    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let plain = Date.ISO8601FormatStyle()
    /// 10000-01-01T00:00:00Z in milliseconds since 1970: the first time whose year has five digits.
    private static let endOfYear9999: Int64 = 253_402_300_800_000

    /// `date` as RFC 3339 in UTC, to the nearest millisecond (`2026-12-01T10:11:05.681Z`): a time at a whole
    /// millisecond reads back as itself. (Foundation's fractional style truncates, and a double just below its
    /// millisecond, as about half of them are, came out one millisecond early.)
    public static func format(_ date: Date) -> String {
        let ms = (date.timeIntervalSince1970 * 1000).rounded()
        guard ms >= 0, ms < Double(endOfYear9999) else { return formatWithFoundation(ms: ms) }
        let total = Int64(ms)
        let (year, month, day) = PostgresTimestamp.civil(fromDays: total / 86_400_000)
        let ofDay = total % 86_400_000
        return String(unsafeUninitializedCapacity: 24) { out in
            PostgresTimestamp.put(year, 4, into: out, at: 0, then: "-")
            PostgresTimestamp.put(month, 2, into: out, at: 5, then: "-")
            PostgresTimestamp.put(day, 2, into: out, at: 8, then: "T")
            PostgresTimestamp.put(ofDay / 3_600_000, 2, into: out, at: 11, then: ":")
            PostgresTimestamp.put(ofDay / 60_000 % 60, 2, into: out, at: 14, then: ":")
            PostgresTimestamp.put(ofDay / 1000 % 60, 2, into: out, at: 17, then: ".")
            PostgresTimestamp.put(ofDay % 1000, 3, into: out, at: 20, then: "Z")
            return 24
        }
    }

    /// The same text through Foundation (any year; the tests compare the two).
    static func formatWithFoundation(ms: Double) -> String {
        let seconds = (ms / 1000).rounded(.down)
        let fraction = Int(ms - seconds * 1000)
        let whole = plain.format(Date(timeIntervalSince1970: seconds))  // exact: a whole second, "…:05Z"
        let digits = String(fraction)
        return whole.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// The date of an RFC 3339 timestamp, with or without fractional seconds; `nil` if `text` is not one.
    public static func parse(_ text: String) -> Date? {
        if let ms = canonicalMilliseconds(text) { return Date(timeIntervalSince1970: Double(ms) / 1000) }
        return parseWithFoundation(text)
    }

    /// The date of any RFC 3339 text Foundation reads (the tests compare the two).
    static func parseWithFoundation(_ text: String) -> Date? {
        (try? withFraction.parse(text)) ?? (try? plain.parse(text))
    }

    /// The time of `YYYY-MM-DDTHH:MM:SS[.sss]Z` (years 1970–9999, every field in range), in milliseconds since
    /// 1970; nil for any other text, which Foundation then reads (or refuses).
    private static func canonicalMilliseconds(_ text: String) -> Int64? {
        var text = text
        return text.withUTF8 { b -> Int64? in
            guard b.count == 24 || b.count == 20, b[b.count - 1] == UInt8(ascii: "Z") else { return nil }
            func number(_ from: Int, _ count: Int) -> Int64? {
                var value: Int64 = 0
                for i in from..<from + count {
                    let digit = b[i] &- UInt8(ascii: "0")
                    guard digit < 10 else { return nil }
                    value = value * 10 + Int64(digit)
                }
                return value
            }
            guard b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
                b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
                let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
                let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2),
                year >= 1970, (1...12).contains(month), day >= 1, hour < 24, minute < 60, second < 60
            else { return nil }
            var fraction: Int64 = 0
            if b.count == 24 {
                guard b[19] == UInt8(ascii: "."), let digits = number(20, 3) else { return nil }
                fraction = digits
            }
            let days = PostgresTimestamp.days(fromCivil: year, month, day)
            // A day past its month's end would run into the next month: refused (Foundation decides).
            guard PostgresTimestamp.civil(fromDays: days) == (year, month, day) else { return nil }
            return ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + fraction
        }
    }
}
