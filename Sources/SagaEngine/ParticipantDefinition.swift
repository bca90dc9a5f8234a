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
/// Stored as JSON in the registry (`{"emits": [{"type", "kind", "outcome"?}], "consumes": [{"type",
/// "waitingOn"?}]}`); ``SagaModel/init(declarations:)`` says how declarations combine.
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

        /// A consumption of `type`; `waitingOn` as in ``waitingOn``.
        public init(type: String, waitingOn: String? = nil) {
            self.type = type
            self.waitingOn = waitingOn
        }

        /// The participant handles `payload`; `waitingOn` as in ``waitingOn``.
        public static func handles<P: EventPayload>(_ payload: P.Type, waitingOn: String? = nil) -> Consumption {
            Consumption(type: P.eventType, waitingOn: waitingOn)
        }
    }

    /// The event types the participant emits.
    public var emits: [Emission]
    /// The event types the participant consumes.
    public var consumes: [Consumption]

    /// A declaration of what the participant emits and consumes.
    public init(emits: [Emission] = [], consumes: [Consumption] = []) {
        self.emits = emits
        self.consumes = consumes
    }
}
