import Foundation
import JSONSchema
import SagaEngine

/// What one `saga-deadline` header says: the runtime adds one to every message of a saga written in a
/// transaction that scheduled, cancelled or fired a deadline of that saga, e.g.
/// `{"op":"fired","name":"order","participant":"orders","dueAt":"2026-11-30T10:00:00.000Z",
/// "eventId":"…","eventType":"order.expired","lateMs":120,"at":"2026-11-30T10:00:00.120Z"}` (times RFC 3339).
struct DeadlineMark: Sendable, Hashable {
    /// The header's key.
    static let header = "saga-deadline"

    /// What happened to the deadline.
    enum Op: String, Sendable {
        case scheduled, cancelled, fired
    }

    var op: Op
    /// The deadline's name within the saga (e.g. "order").
    var name: String
    /// The participant whose deadline it is.
    var participant: String
    /// When it falls (falls, or fell).
    var dueAt: Date
    /// The id of the event it delivers (or delivered) to its participant.
    var eventId: UUID?
    /// That event's type, e.g. "order.expired".
    var eventType: String?
    /// For a fired deadline: how late it fired, in milliseconds.
    var lateMs: Int64?
    /// When it happened.
    var at: Date?

    /// The mark in a header's value; nil when it is not one (not JSON, an unknown op, a field missing or of
    /// the wrong type).
    init?(_ value: [UInt8]) {
        guard case .object(let o)? = try? JSONValue(parsing: value),
            case .string(let op)? = o["op"], let op = Op(rawValue: op),
            case .string(let name)? = o["name"], !name.isEmpty,
            case .string(let participant)? = o["participant"], !participant.isEmpty,
            case .string(let due)? = o["dueAt"], let dueAt = Timestamp.parse(due)
        else { return nil }
        self.op = op
        self.name = name
        self.participant = participant
        self.dueAt = dueAt
        switch o["eventId"] {
        case .string(let id)?:
            guard let id = UUID(uuidString: id) else { return nil }
            eventId = id
        case nil, .null?: eventId = nil
        default: return nil
        }
        switch o["eventType"] {
        case .string(let type)?: eventType = type
        case nil, .null?: eventType = nil
        default: return nil
        }
        switch o["lateMs"] {
        case .integer(let late)?: lateMs = late
        case .number(let late)? where late.isFinite && abs(late) < 1e15: lateMs = Int64(late.rounded())
        case nil, .null?: lateMs = nil
        default: return nil
        }
        switch o["at"] {
        case .string(let text)?:
            guard let at = Timestamp.parse(text) else { return nil }
            self.at = at
        case nil, .null?: at = nil
        default: return nil
        }
    }
}
