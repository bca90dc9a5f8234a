import SagaPostgres

/// A participant of a saga as the runtime needs it: its name (= its database schema, its consumer group, the
/// producer in its events' envelopes), its own tables, the upcasters of the events it consumes, and its handlers.
/// A worker, its relay and the daemon kit (`SagaDaemon`) are built from it.
public struct ParticipantDefinition: Sendable {
    /// The participant's name: its database schema, consumer group and dead-letter topic suffix.
    public var name: String
    /// Its own tables, applied after the engine's (outbox, inbox) in its schema.
    public var migrations: [PostgresMigration]
    /// Upcasters of the event types it consumes that have more than one version (none by default).
    public var upcasters: [Upcaster] = []
    /// What it does with each event type it consumes.
    public var handlers: [EventHandler]

    /// A participant named `name`, with its tables, upcasters and handlers.
    public init(
        name: String, migrations: [PostgresMigration], upcasters: [Upcaster] = [], handlers: [EventHandler]
    ) {
        self.name = name
        self.migrations = migrations
        self.upcasters = upcasters
        self.handlers = handlers
    }
}
