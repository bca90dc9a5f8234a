import SagaPostgres
import SagaSchemas

/// A participant of a choreography as the runtime needs it: its name (= database schema, consumer group,
/// producer in envelopes), its tables, its upcasters and handlers, its part of the saga and the JSON
/// Schemas of the events it emits and consumes.
///
/// When it starts or migrates (``ServiceDatabase/prepare(_:logger:)``, which ``Worker/run()`` calls), the
/// runtime registers its ``declaration`` in the ``ParticipantRegistry``; the tracker and `saga inspect`
/// assemble the saga's shape from every registered participant.
public struct ParticipantDefinition: Sendable {
    /// The participant's name: its database schema, its consumer group, the producer in its events' envelopes
    /// and the suffix of its dead-letter topic.
    public var name: String
    /// Its own tables, created in its schema next to the runtime's (``EngineMigrations``).
    public var migrations: [PostgresMigration]
    /// The upcasters of the event types it consumes that have older versions.
    public var upcasters: [Upcaster]
    /// One handler per event type it consumes.
    public var handlers: [EventHandler]
    /// Its part of the saga: what it emits (step, failure, compensation, outcome) and what the saga waits on
    /// it for.
    public var declaration: SagaDeclaration
    /// The JSON Schemas of every version of every event type it emits or consumes; its codec validates with
    /// these plus the runtime's envelope schema (`SchemaRegistry.init(schemas:)`).
    public var schemas: [EventSchema]
    /// The session on which its worker handles batches plans each prepared statement once, generically
    /// (`PostgresConfiguration.genericPlans`), instead of anew for each batch whenever the server expects a cheaper
    /// plan for the batch's values, which it always does for a set-based statement over a small batch: below
    /// saturation, when batches hold an event or two, planning took longer than running for most of the sample
    /// services' statements. For a participant whose handlers look rows up by key in tables of a lasting size.
    /// Leave it off (the default) when they scan a table that empties and fills, or cancel deadlines (a
    /// `saga_deadlines` delete): a generic plan made while such a table is nearly empty reads it whole once it
    /// has grown. The runtime's own statements in a batch (inbox and outbox inserts) are safe either way.
    public var genericPlans = false

    /// A participant from its parts; `upcasters`, `declaration` and `schemas` default to none.
    public init(
        name: String, migrations: [PostgresMigration], upcasters: [Upcaster] = [], handlers: [EventHandler],
        declaration: SagaDeclaration = SagaDeclaration(), schemas: [EventSchema] = []
    ) {
        self.name = name
        self.migrations = migrations
        self.upcasters = upcasters
        self.handlers = handlers
        self.declaration = declaration
        self.schemas = schemas
    }

    /// The schema registry its codec validates with: ``schemas`` and the runtime's envelope schema.
    /// - Throws: `SchemaRegistry.LoadError` naming the schema that does not compile.
    public func schemaRegistry() throws(SchemaRegistry.LoadError) -> SchemaRegistry {
        try SchemaRegistry(schemas: schemas)
    }
}

/// A participant's part of the saga, declared next to its handlers: for each event type it emits, its kind
/// (and for an outcome, which one); for each event type it consumes, what the saga waits on it for while that
/// event is the saga's latest.
///
/// ```swift
/// SagaDeclaration(
///     emits: [.step(InventoryReserved.self), .failure(InventoryRejected.self),
///             .compensation(InventoryReleased.self)],
///     consumes: [.handles(OrderCreatedV2.self, waitingOn: "reserve the stock"),
///                .handles(PaymentCompleted.self)])
/// ```
///
/// A participant that delivers itself events through durable deadlines (``HandlerContext/scheduleDeadline(name:at:payload:)``,
/// ``Deadline/insert(_:firstParameter:where:)``) declares their types in ``deadlines``, not in ``consumes``: its
/// worker does not subscribe to their topics and refuses them from Kafka, so only its own deadlines deliver them.
///
/// Stored as JSON in the registry (`{"emits": [{"type", "kind", "outcome"?}], "consumes": [{"type",
/// "waitingOn"?, "untilOutcome"}], "deadlines": [{"name", "type"}]}`; fields an older runtime did not write
/// decode as their defaults); ``SagaModel/init(declarations:)`` says how declarations combine.
public struct SagaDeclaration: Sendable, Codable, Hashable {
    /// An event type the participant emits, and what it means for the saga.
    public struct Emission: Sendable, Codable, Hashable {
        /// The event type.
        public var type: String
        /// What an event of this type means for the saga.
        public var kind: SagaModel.Kind
        /// For ``SagaModel/Kind/outcome``: the outcome it stands for (nil: the type's name).
        public var outcome: SagaModel.Outcome?

        /// An emission of `type` of `kind`; `outcome` only for ``SagaModel/Kind/outcome``.
        public init(type: String, kind: SagaModel.Kind, outcome: SagaModel.Outcome? = nil) {
            self.type = type
            self.kind = kind
            self.outcome = outcome
        }

        /// A step forward.
        public static func step<P: EventPayload>(_ payload: P.Type) -> Emission {
            Emission(type: P.eventType, kind: .step)
        }
        /// A step that failed.
        public static func failure<P: EventPayload>(_ payload: P.Type) -> Emission {
            Emission(type: P.eventType, kind: .failure)
        }
        /// Undoes an earlier step.
        public static func compensation<P: EventPayload>(_ payload: P.Type) -> Emission {
            Emission(type: P.eventType, kind: .compensation)
        }
        /// Decides the saga's outcome: `label`, detailed by the string in the payload's `detail` field if any
        /// (e.g. `.outcome(OrderCancelled.self, "cancelled", detail: "reason")` → "cancelled: out_of_stock").
        public static func outcome<P: EventPayload>(_ payload: P.Type, _ label: String, detail: String? = nil)
            -> Emission
        {
            Emission(type: P.eventType, kind: .outcome, outcome: SagaModel.Outcome(label: label, detail: detail))
        }
    }

    /// An event type the participant consumes.
    public struct Consumption: Sendable, Codable, Hashable {
        /// The event type.
        public var type: String
        /// What the saga waits on this participant for while an event of this type is its latest, e.g.
        /// "reserve the stock" (shown as "inventory: reserve the stock"). nil when the participant only
        /// records it and emits nothing the saga goes on with: the tracker cannot see that work finish, so
        /// the saga does not wait on it.
        public var waitingOn: String?

        /// True when the saga waits on this participant for ``waitingOn`` only until it has an outcome: once an
        /// outcome event was seen, an event of this type no longer keeps the saga running (e.g. orders
        /// consuming `inventory.released` to cancel the order: after a timeout cancelled it, a late release is
        /// a compensation, not work the saga waits on). False by default.
        public var untilOutcome: Bool

        /// A consumption of `type`; `waitingOn` and `untilOutcome` as in ``waitingOn`` and ``untilOutcome``.
        public init(type: String, waitingOn: String? = nil, untilOutcome: Bool = false) {
            self.type = type
            self.waitingOn = waitingOn
            self.untilOutcome = untilOutcome
        }

        /// The participant handles `payload`; `waitingOn` and `untilOutcome` as in ``waitingOn`` and
        /// ``untilOutcome``.
        public static func handles<P: EventPayload>(
            _ payload: P.Type, waitingOn: String? = nil, untilOutcome: Bool = false
        ) -> Consumption {
            Consumption(type: P.eventType, waitingOn: waitingOn, untilOutcome: untilOutcome)
        }

        private enum CodingKeys: String, CodingKey {
            case type, waitingOn, untilOutcome
        }

        /// Decodes a consumption; `untilOutcome` is false when absent (registered by an older runtime).
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            type = try c.decode(String.self, forKey: .type)
            waitingOn = try c.decodeIfPresent(String.self, forKey: .waitingOn)
            untilOutcome = try c.decodeIfPresent(Bool.self, forKey: .untilOutcome) ?? false
        }
    }

    /// A deadline the participant schedules for its sagas: its name (one deadline of that name per saga) and
    /// the event type it delivers to the participant's own handler when it falls. That type has a schema and a
    /// handler in the participant, but no topic: it never travels on Kafka.
    public struct DeadlineDeclaration: Sendable, Codable, Hashable {
        /// The deadline's name, e.g. "order".
        public var name: String
        /// The event type its firing delivers, e.g. "order.expired".
        public var type: String

        /// A deadline `name` delivering `type`.
        public init(name: String, type: String) {
            self.name = name
            self.type = type
        }

        /// The deadline `name`, delivering `payload`'s type when it falls.
        public static func deadline<P: EventPayload>(_ payload: P.Type, name: String) -> DeadlineDeclaration {
            DeadlineDeclaration(name: name, type: P.eventType)
        }
    }

    /// The event types the participant emits.
    public var emits: [Emission]
    /// The event types the participant consumes.
    public var consumes: [Consumption]
    /// The deadlines it schedules, whose event types only its own deadlines deliver (not in ``consumes``).
    public var deadlines: [DeadlineDeclaration]

    /// A declaration of what the participant emits, consumes and delivers itself through deadlines.
    public init(emits: [Emission] = [], consumes: [Consumption] = [], deadlines: [DeadlineDeclaration] = []) {
        self.emits = emits
        self.consumes = consumes
        self.deadlines = deadlines
    }

    private enum CodingKeys: String, CodingKey {
        case emits, consumes, deadlines
    }

    /// Decodes a declaration; `deadlines` is empty when absent (registered by an older runtime).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        emits = try c.decode([Emission].self, forKey: .emits)
        consumes = try c.decode([Consumption].self, forKey: .consumes)
        deadlines = try c.decodeIfPresent([DeadlineDeclaration].self, forKey: .deadlines) ?? []
    }
}
