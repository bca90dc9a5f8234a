import Logging
import Tracing

/// W3C trace context (`traceparent`: version-traceid-spanid-flags), carried in every envelope and as a
/// Kafka header so a saga can be followed across services: one saga is one trace.
///
/// With a tracer bootstrapped (swift-distributed-tracing; the CLI bootstraps swift-otel when an OTLP
/// endpoint is configured), an emitted event carries the traceparent of the span it was emitted in, so the
/// exported spans link up. Without one, it carries its cause's trace id with a new span id.
public enum TraceParent {
    /// A new root trace.
    public static func root() -> String {
        traceparent { out in
            randomHex(into: out, at: traceIdStart, bytes: 16)
            out[length - 2] = UInt8(ascii: "0")
            out[length - 1] = UInt8(ascii: "1")
        }
    }

    /// The child of `parent`: same trace id and flags, new span id. A missing or malformed parent starts a new trace.
    public static func child(of parent: String?) -> String {
        guard var parent, isValid(parent) else { return root() }
        // Built in place (every emitted event takes one): the parent's trace id and flags, a new span id.
        return parent.withUTF8 { from in
            traceparent { out in
                for i in traceIdStart..<spanIdStart - 1 { out[i] = from[i] }
                out[length - 2] = from[length - 2]
                out[length - 1] = from[length - 1]
            }
        }
    }

    /// The length of a traceparent, and where its ids start.
    private static let length = 55
    private static let traceIdStart = 3
    private static let spanIdStart = 36

    /// A traceparent of version 00 with a new span id, whose trace id and flags `fill` writes.
    private static func traceparent(_ fill: (UnsafeMutableBufferPointer<UInt8>) -> Void) -> String {
        String(unsafeUninitializedCapacity: length) { out in
            out[0] = UInt8(ascii: "0")
            out[1] = UInt8(ascii: "0")
            out[traceIdStart - 1] = UInt8(ascii: "-")
            out[spanIdStart - 1] = UInt8(ascii: "-")
            out[length - 3] = UInt8(ascii: "-")
            randomHex(into: out, at: spanIdStart, bytes: 8)
            fill(out)
            return length
        }
    }

    /// Whether a tracer is bootstrapped (or bound to the task). Without one every span is a no-op, so the tracing
    /// middlewares skip building spans, their names and attributes (per event and per request).
    public static var isTracing: Bool { !(InstrumentationSystem.tracer is NoOpTracer) }

    /// The traceparent of an event emitted now: the current span's when a tracer gives one, else a child of
    /// `parent` (the cause's traceparent, or an HTTP request's).
    public static func forEmitting(after parent: String?) -> String {
        current() ?? child(of: parent)
    }

    /// The current span's traceparent, when the bootstrapped tracer propagates one (nil with no tracer).
    public static func current(_ context: ServiceContext? = .current) -> String? {
        guard let context else { return nil }
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: TraceCarrier())
        return carrier[SagaHeader.traceparent].flatMap { isValid($0) ? $0 : nil }
    }

    /// A context whose parent span is `traceparent` (for starting a span that continues its trace).
    public static func context(continuing traceparent: String?) -> ServiceContext {
        var context = ServiceContext.topLevel
        if let traceparent, isValid(traceparent) {
            InstrumentationSystem.instrument.extract(
                [SagaHeader.traceparent: traceparent], into: &context, using: TraceCarrier())
        }
        return context
    }

    /// The trace id of a well-formed traceparent.
    public static func traceId(_ traceparent: String) -> String? {
        guard isValid(traceparent) else { return nil }
        let utf8 = traceparent.utf8
        let start = utf8.index(utf8.startIndex, offsetBy: traceIdStart)
        return String(utf8[start..<utf8.index(start, offsetBy: 32)])
    }

    /// Whether `value` is a well-formed W3C traceparent (`00-<trace id>-<span id>-<flags>`, lower-case hex,
    /// ids not all zero).
    public static func isValid(_ value: String) -> Bool {
        // version(2)-traceid(32)-spanid(16)-flags(2), lower-case hex; ids not all zero. Checked byte by byte:
        // every emitted event checks its cause's traceparent.
        var value = value
        return value.withUTF8 { isValid($0) }
    }

    private static func isValid(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard bytes.count == 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"),
            bytes[52] == UInt8(ascii: "-")
        else { return false }
        var traceNonZero = false
        var spanNonZero = false
        for (i, b) in bytes.enumerated() where i != 2 && i != 35 && i != 52 {
            guard
                (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "f"))
            else { return false }
            if b != UInt8(ascii: "0") {
                if i > 2 && i < 35 { traceNonZero = true }
                if i > 35 && i < 52 { spanNonZero = true }
            }
        }
        return traceNonZero && spanNonZero
    }

    /// `bytes` random bytes as lower-case hex digits into `out` from `start` (8 bytes per draw from the system
    /// generator).
    private static func randomHex(into out: UnsafeMutableBufferPointer<UInt8>, at start: Int, bytes: Int) {
        var generator = SystemRandomNumberGenerator()
        var word: UInt64 = 0
        for i in 0..<bytes {
            if i % 8 == 0 { word = generator.next() }
            let b = UInt8(truncatingIfNeeded: word >> (UInt64(i % 8) * 8))
            out[start + 2 * i] = hexDigit(b >> 4)
            out[start + 2 * i + 1] = hexDigit(b & 0x0f)
        }
    }

    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }
}

/// Trace headers in a plain dictionary, for the instrument's extract and inject.
struct TraceCarrier: Extractor, Injector {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

/// The metadata every log line about an event carries, so a saga can be followed through the logs:
/// `saga_id`, `event_id`, `event_type` and `trace_id` (the saga's trace).
public enum EventLog {
    /// The metadata key of the saga id.
    public static let sagaId = "saga_id"
    /// The metadata key of the event id.
    public static let eventId = "event_id"
    /// The metadata key of the event type.
    public static let eventType = "event_type"
    /// The metadata key of the trace id.
    public static let traceId = "trace_id"

    /// `base` with the event's saga, id, type and trace.
    public static func logger(_ base: Logger, for envelope: EventEnvelope) -> Logger {
        var logger = base
        logger[metadataKey: sagaId] = .string(envelope.sagaId)
        logger[metadataKey: eventId] = .string(envelope.id.lowercasedString)
        logger[metadataKey: eventType] = .string(envelope.type)
        if let trace = envelope.traceparent.flatMap(TraceParent.traceId) {
            logger[metadataKey: traceId] = .string(trace)
        }
        return logger
    }
}
