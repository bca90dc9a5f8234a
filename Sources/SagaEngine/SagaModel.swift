import JSONSchema

/// What the tracker and the inspector know about a saga's shape: which events end it (and with which
/// outcome), which undo an earlier step, and what a saga waits on after each event.
///
/// Nothing central writes it: it is assembled from the participants' declarations
/// (``SagaDeclaration``, registered in the ``ParticipantRegistry``), so a participant that joins
/// appears in it without a change to the others. See ``init(declarations:)`` for how declarations combine.
public struct SagaModel: Sendable, Hashable {
    /// What an event means for its saga.
    public enum Kind: String, Sendable, Codable {
        /// A step forward.
        case step
        /// A step that failed (the saga turns towards compensation or cancellation).
        case failure
        /// Undoes an earlier step.
        case compensation
        /// Ends the saga (decides its outcome).
        case outcome
    }

    /// The outcome an ``Kind/outcome`` event stands for: `label`, followed by `": "` and the string
    /// value of the payload's `detail` field when it has one (e.g. "cancelled: out_of_stock").
    public struct Outcome: Sendable, Codable, Hashable {
        /// The outcome's name, e.g. "confirmed" or "cancelled".
        public var label: String
        /// A top-level field of the event's `data` whose string value details the outcome.
        public var detail: String?

        /// An outcome named `label`, detailed by the payload's `detail` field when given.
        public init(label: String, detail: String? = nil) {
            self.label = label
            self.detail = detail
        }
    }

    /// Every event type of the saga (emitted or consumed by a participant), sorted.
    public var eventTypes: [String]
    /// What each event type means for the saga; a type with no entry is a ``Kind/step``.
    public var kinds: [String: Kind]
    /// For each event type, what the saga waits on once that event is its latest, e.g.
    /// "inventory: reserve the stock". No entry: nothing registered waits to act on it.
    public var waitingOn: [String: String]
    /// The outcome of each ``Kind/outcome`` event type.
    public var outcomes: [String: Outcome]
    /// The participants the model was assembled from, sorted.
    public var participants: [String]
    /// Like ``waitingOn``, once the saga has an outcome: only the consumptions that wait on their participant
    /// after it too (``SagaDeclaration/Consumption/untilOutcome`` false).
    public var waitingAfterOutcome: [String: String]
    /// The deadline event types (``SagaDeclaration/deadlines``): who schedules them, under which name. They
    /// are not in ``eventTypes`` (they have no topic).
    public var deadlines: [String: DeadlineOwner]

    /// The participant that schedules a deadline, and the deadline's name.
    public struct DeadlineOwner: Sendable, Hashable {
        /// The participant whose deadline it is (and whose handler its event is delivered to).
        public var participant: String
        /// The deadline's name.
        public var name: String

        /// The deadline `name` of `participant`.
        public init(participant: String, name: String) {
            self.participant = participant
            self.name = name
        }
    }

    /// A model from its parts (``init(declarations:)`` assembles one from the participants' declarations);
    /// `waitingAfterOutcome` nil: the same as `waitingOn`.
    public init(
        eventTypes: [String], kinds: [String: Kind], waitingOn: [String: String], outcomes: [String: Outcome],
        participants: [String] = [], waitingAfterOutcome: [String: String]? = nil,
        deadlines: [String: DeadlineOwner] = [:]
    ) {
        self.eventTypes = eventTypes
        self.kinds = kinds
        self.waitingOn = waitingOn
        self.outcomes = outcomes
        self.participants = participants
        self.waitingAfterOutcome = waitingAfterOutcome ?? waitingOn
        self.deadlines = deadlines
    }

    /// The model of a saga whose participants declared `declarations` (participant name → its part).
    ///
    /// - Event types: the union of what every participant emits and consumes.
    /// - Kinds and outcomes: as the emitting participant declares them; should two participants declare
    ///   the same type differently, the first by name wins. A type nobody emits is a ``Kind/step``.
    /// - Waiting: a type that participants consume with a ``SagaDeclaration/Consumption/waitingOn`` text
    ///   waits on `"<participant>: <text>"`; several such participants are listed by name, joined by `"; "`.
    ///   ``waitingAfterOutcome`` is built the same way from the consumptions without
    ///   ``SagaDeclaration/Consumption/untilOutcome``.
    /// - Deadlines: each participant's ``SagaDeclaration/deadlines`` by event type (the first by name wins).
    public init(declarations: [String: SagaDeclaration]) {
        var types = Set<String>()
        var kinds: [String: Kind] = [:]
        var outcomes: [String: Outcome] = [:]
        var waiting: [String: [String]] = [:]
        var waitingAfter: [String: [String]] = [:]
        var deadlines: [String: DeadlineOwner] = [:]
        for name in declarations.keys.sorted() {
            let declaration = declarations[name]!
            for emitted in declaration.emits {
                types.insert(emitted.type)
                if kinds[emitted.type] == nil {
                    kinds[emitted.type] = emitted.kind
                    if emitted.kind == .outcome {
                        outcomes[emitted.type] = emitted.outcome ?? Outcome(label: emitted.type)
                    }
                }
            }
            for consumed in declaration.consumes {
                types.insert(consumed.type)
                if let text = consumed.waitingOn {
                    waiting[consumed.type, default: []].append("\(name): \(text)")
                    if !consumed.untilOutcome { waitingAfter[consumed.type, default: []].append("\(name): \(text)") }
                }
            }
            for deadline in declaration.deadlines where deadlines[deadline.type] == nil {
                deadlines[deadline.type] = DeadlineOwner(participant: name, name: deadline.name)
            }
        }
        self.init(
            eventTypes: types.sorted(), kinds: kinds, waitingOn: waiting.mapValues { $0.joined(separator: "; ") },
            outcomes: outcomes, participants: declarations.keys.sorted(),
            waitingAfterOutcome: waitingAfter.mapValues { $0.joined(separator: "; ") }, deadlines: deadlines)
    }

    /// What events of `type` mean for the saga (``Kind/step`` for a type nobody declared).
    public func kind(of type: String) -> Kind { kinds[type] ?? .step }

    /// The outcome an event of `type` with payload `data` stands for, e.g. "confirmed" or
    /// "cancelled: out_of_stock"; nil when `type` is not an outcome.
    public func outcome(of type: String, data: JSONValue) -> String? {
        guard let outcome = outcomes[type] else { return nil }
        if let field = outcome.detail, case .string(let detail)? = data[field] { return "\(outcome.label): \(detail)" }
        return outcome.label
    }
}
