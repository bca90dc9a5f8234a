import Foundation
import Logging
import SagaPostgres
import Tracing

/// What a batch handler has at hand: the batch's transaction, the service it runs in, and a way to emit
/// follow-up events of each event's saga.
public struct BatchHandlerContext: Sendable {
    /// The batch's transaction: the handler's state changes, the outbox rows and the inbox records commit
    /// together. It runs statements but refuses those that would end the transaction or touch its
    /// savepoints (see `PostgresTransaction`): the worker alone commits or rolls back.
    public let connection: PostgresTransaction
    /// The name of the participant the handler runs in (the producer of the events it emits).
    public let service: String
    /// The worker's logger.
    public let logger: Logger
    /// The traceparent of each event's span (set by ``batchTracingMiddleware``), by event id.
    var spans: [UUID: String] = [:]
    /// What the worker's transaction scheduled and cancelled (see ``scheduleDeadline(name:for:at:payload:)``).
    var deadlineLedger: DeadlineLedger? = nil

    /// A context over a transaction the caller owns.
    /// - Parameters:
    ///   - connection: the connection of the transaction the caller owns; the handler gets a
    ///     `PostgresTransaction` of it.
    ///   - service: the participant's name.
    ///   - logger: the worker's logger.
    public init(connection: PostgresConnection, service: String, logger: Logger) {
        self.init(transaction: PostgresTransaction(connection), service: service, logger: logger)
    }

    /// A context over `transaction`, a transaction the caller owns.
    public init(transaction: PostgresTransaction, service: String, logger: Logger) {
        self.connection = transaction
        self.service = service
        self.logger = logger
    }

    /// The logger for lines about `event`: it names the event's saga, id, type and trace.
    public func logger(for event: IncomingEvent) -> Logger { EventLog.logger(logger, for: event.envelope) }

    /// A follow-up event of `event`'s saga, caused by it. It continues the trace of `event`'s span.
    public func emit<P: EventPayload>(_ payload: P, causedBy event: IncomingEvent) throws(EventEncodingError)
        -> OutgoingEvent
    {
        try OutgoingEvent(
            payload, sagaId: event.sagaId, producer: service, causedBy: event.envelope,
            traceparent: spans[event.id] ?? TraceParent.forEmitting(after: event.envelope.traceparent))
    }
}

/// Handles every event of a batch whose type it names, in one call: `(events, context) -> events to emit`.
/// The events come in the order they were consumed (offset order within a partition); the handler decides
/// each in that order, and returns what to emit in the order it should be published.
public typealias BatchHandlerFunction =
    @Sendable ([IncomingEvent], BatchHandlerContext) async throws -> [OutgoingEvent]

/// Wraps a batch handler with cross-cutting behaviour (logging, tracing), like ``HandlerMiddleware``.
public typealias BatchHandlerMiddleware = @Sendable (@escaping BatchHandlerFunction) -> BatchHandlerFunction

/// A handler that works on a whole batch: one call per batch for all the events of the types it names,
/// so that it can read and write set-based (one statement for the batch instead of one per event).
///
/// The worker gives it only new events (duplicates are already skipped by the inbox), in consumption
/// order; per saga, an event is never handed over before an earlier event of the same saga was handled.
/// A failure it throws for good (``HandlerRejection``, an invalid emitted event, a data error) makes the
/// worker roll the batch back and run it again one event per call, each in its own savepoint, so that
/// only the poison event is dead-lettered.
///
/// Give a worker its ``eventHandlers``: one ``EventHandler`` per type, whose per-event form calls the
/// batch function with one event.
public struct BatchHandler: Sendable {
    /// The event types handled, each with the version the handler is written for (older ones are upcast).
    public var versions: [String: Int]
    /// The batch function: the events of the batch whose types it names, in consumption order, to the events to emit.
    public var handle: BatchHandlerFunction
    /// Tells batch handlers apart (the handlers of one batch handler are called together).
    let identity = Identity()

    final class Identity: Sendable {}

    /// A batch handler of the event types in `versions` (each with the version it is written for).
    public init(versions: [String: Int], handle: @escaping BatchHandlerFunction) {
        self.versions = versions
        self.handle = handle
    }

    /// One ``EventHandler`` per handled type, for a worker's (or a service definition's) handler list.
    public var eventHandlers: [EventHandler] {
        versions.sorted { $0.key < $1.key }.map { type, version in
            var handler = EventHandler(eventType: type, version: version) { [handle] event, context in
                var batchContext = BatchHandlerContext(
                    transaction: context.connection, service: context.service, logger: context.logger)
                batchContext.deadlineLedger = context.deadlineLedger
                return try await handle([event], batchContext)
            }
            handler.batch = self
            return handler
        }
    }

    /// This handler wrapped in `middleware` (first in the list is outermost).
    public func wrapped(in middleware: [BatchHandlerMiddleware]) -> BatchHandler {
        var copy = self
        copy.handle = middleware.reversed().reduce(handle) { inner, m in m(inner) }
        return copy
    }
}

/// Logs every event a batch handler handled at debug level (the logger names its saga, event, type and
/// trace), with its published version, how many events it emitted and how long the batch call took.
public let batchLoggingMiddleware: BatchHandlerMiddleware = { next in
    { events, context in
        let start = ContinuousClock.now
        let out = try await next(events, context)
        guard context.logger.logLevel <= .debug else { return out }
        let ms = (ContinuousClock.now - start).milliseconds
        var emitted: [UUID: Int] = [:]
        for event in out { if let cause = event.envelope.causationId { emitted[cause, default: 0] += 1 } }
        for event in events {
            context.logger(for: event).debug(
                "handled",
                metadata: [
                    "version": .stringConvertible(event.publishedVersion),
                    "emitted": .stringConvertible(emitted[event.id] ?? 0), "ms": .stringConvertible(ms),
                    "batch": .stringConvertible(events.count),
                ])
        }
        return out
    }
}

/// Gives every event of a batch its own consumer span continuing the event's trace (as
/// ``tracingMiddleware`` does for one event); the events emitted for it carry that span as their parent.
/// The spans of one batch call start and end together. Skipped while no tracer is bootstrapped.
public let batchTracingMiddleware: BatchHandlerMiddleware = { next in
    { events, context in
        guard TraceParent.isTracing else { return try await next(events, context) }
        var context = context
        var spans: [any Span] = []
        spans.reserveCapacity(events.count)
        for event in events {
            let span = startSpan(
                "\(event.type) process", context: TraceParent.context(continuing: event.envelope.traceparent),
                ofKind: .consumer)
            span.attributes["messaging.system"] = "kafka"
            span.attributes["messaging.destination.name"] = event.topic
            span.attributes["messaging.destination.partition.id"] = String(event.partition)
            span.attributes["messaging.kafka.message.offset"] = Int(event.offset)
            span.attributes["messaging.message.id"] = event.id.lowercasedString
            span.attributes["messaging.batch.message_count"] = events.count
            span.attributes["saga.id"] = event.sagaId
            span.attributes["saga.service"] = context.service
            if let traceparent = TraceParent.current(span.context) { context.spans[event.id] = traceparent }
            spans.append(span)
        }
        do {
            let out = try await next(events, context)
            for span in spans { span.end() }
            return out
        } catch {
            for span in spans {
                span.recordError(error)
                span.end()
            }
            throw error
        }
    }
}
