import Foundation
import Logging
import SagaPostgres
import Tracing

/// What a handler has at hand: the event's transaction (the batch's transaction; its own savepoint inside
/// it when the batch is run one event at a time after a poison event), the service it runs in, and a way
/// to emit follow-up events of the same saga.
public struct HandlerContext: Sendable {
    /// The transaction the handler's state change, the outbox rows and the inbox record commit in
    /// together. It runs statements but refuses those that would end the transaction or touch its
    /// savepoints (see `PostgresTransaction`): the worker alone commits or rolls back.
    public let connection: PostgresTransaction
    /// The name of the participant the handler runs in (the producer of the events it emits).
    public let service: String
    /// The event being handled.
    public let event: IncomingEvent
    /// A logger whose metadata names the event's saga, id, type and trace.
    public let logger: Logger
    /// What the worker's transaction scheduled and cancelled (see ``scheduleDeadline(name:at:payload:)``).
    var deadlineLedger: DeadlineLedger? = nil

    /// A follow-up event of the same saga, caused by the event being handled.
    public func emit<P: EventPayload>(_ payload: P) throws(EventEncodingError) -> OutgoingEvent {
        try OutgoingEvent(payload, sagaId: event.sagaId, producer: service, causedBy: event.envelope)
    }
}

/// A handler refuses an event for good (e.g. it references something that can never exist).
/// The event is dead-lettered with `reason` and the partition moves on.
public struct HandlerRejection: Error, Sendable, CustomStringConvertible {
    /// Why the event is refused; it goes into the dead letter's `dlq-reason` header.
    public var reason: String
    /// A rejection with `reason`.
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Handles one event in its transaction and returns the events to emit, in the order to publish them.
/// Throwing ``HandlerRejection`` dead-letters the event. Any other error rolls the batch back: a transient one is
/// retried, one that is the event's fault dead-letters the event, and one that is neither is retried and
/// dead-letters the event after ``WorkerConfiguration/deadLetterAfterAttempts`` attempts in a row.
public typealias HandlerFunction = @Sendable (IncomingEvent, HandlerContext) async throws -> [OutgoingEvent]

/// Wraps a handler with cross-cutting behaviour (logging, metrics, tracing).
public typealias HandlerMiddleware = @Sendable (@escaping HandlerFunction) -> HandlerFunction

/// Handles one event type, written for one version of it (older versions are upcast first).
///
/// The worker calls `handle` once per event, in consumption order, inside the batch's transaction. A handler
/// made by ``BatchHandler/eventHandlers`` also has a batch form (``batch``), which the worker calls once
/// for all the batch's events of its types; `handle` then calls the batch form with one event.
public struct EventHandler: Sendable {
    /// The event type handled.
    public var eventType: String
    /// The version the handler is written for; older versions are upcast to it.
    public var version: Int
    /// The handler's function.
    public var handle: HandlerFunction
    /// The batch form of this handler, if it has one.
    public var batch: BatchHandler?

    /// A handler of `eventType`, written for `version`.
    public init(eventType: String, version: Int, handle: @escaping HandlerFunction) {
        self.eventType = eventType
        self.version = version
        self.handle = handle
    }

    /// A handler for a typed payload: the body gets the decoded payload.
    public static func on<P: EventPayload>(
        _ payload: P.Type, _ body: @escaping @Sendable (P, HandlerContext) async throws -> [OutgoingEvent]
    ) -> EventHandler {
        EventHandler(eventType: P.eventType, version: P.eventVersion) { event, context in
            try await body(try event.decode(P.self), context)
        }
    }

    /// This handler wrapped in `middleware` (first in the list is outermost).
    public func wrapped(in middleware: [HandlerMiddleware]) -> EventHandler {
        var copy = self
        copy.handle = middleware.reversed().reduce(handle) { inner, m in m(inner) }
        return copy
    }
}

/// Logs every handled event at debug level (the logger already names its saga, event, type and trace) with
/// its published version, how many events it emitted and how long it took.
public let loggingMiddleware: HandlerMiddleware = { next in
    { event, context in
        let start = ContinuousClock.now
        let out = try await next(event, context)
        context.logger.debug(
            "handled",
            metadata: [
                "version": .stringConvertible(event.publishedVersion), "emitted": .stringConvertible(out.count),
                "ms": .stringConvertible((ContinuousClock.now - start).milliseconds),
            ])
        return out
    }
}

/// Runs every handler in a consumer span that continues the event's trace (swift-distributed-tracing; skipped
/// while no tracer is bootstrapped). Events the handler emits carry this span as their parent.
public let tracingMiddleware: HandlerMiddleware = { next in
    { event, context in
        guard TraceParent.isTracing else { return try await next(event, context) }
        return try await withSpan(
            "\(event.type) process", context: TraceParent.context(continuing: event.envelope.traceparent),
            ofKind: .consumer
        ) { span in
            span.attributes["messaging.system"] = "kafka"
            span.attributes["messaging.destination.name"] = event.topic
            span.attributes["messaging.destination.partition.id"] = String(event.partition)
            span.attributes["messaging.kafka.message.offset"] = Int(event.offset)
            span.attributes["messaging.message.id"] = event.id.lowercasedString
            span.attributes["saga.id"] = event.sagaId
            span.attributes["saga.service"] = context.service
            return try await next(event, context)
        }
    }
}

extension Duration {
    /// Whole and fractional milliseconds.
    public var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
