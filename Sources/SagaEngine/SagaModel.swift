import JSONSchema

/// What the tracker needs to know about a saga's shape, supplied by the services: which events end it
/// (and with which outcome), which undo an earlier step, and what a saga waits on after each event.
public struct SagaModel: Sendable {
    public enum Kind: String, Sendable, Codable {
        /// A step forward.
        case step
        /// A step that failed (the saga turns towards compensation or cancellation).
        case failure
        /// Undoes an earlier step.
        case compensation
        /// Ends the saga.
        case outcome
    }

    public var eventTypes: [String]
    public var kinds: [String: Kind]
    /// For each event type, what the saga waits on once that event is its latest.
    public var waitingOn: [String: String]
    /// The outcome a terminal event stands for, e.g. "confirmed" or "cancelled: out_of_stock".
    public var outcome: @Sendable (_ eventType: String, _ data: JSONValue) -> String?

    public init(
        eventTypes: [String], kinds: [String: Kind], waitingOn: [String: String],
        outcome: @escaping @Sendable (String, JSONValue) -> String?
    ) {
        self.eventTypes = eventTypes
        self.kinds = kinds
        self.waitingOn = waitingOn
        self.outcome = outcome
    }

    public func kind(of type: String) -> Kind { kinds[type] ?? .step }
}
