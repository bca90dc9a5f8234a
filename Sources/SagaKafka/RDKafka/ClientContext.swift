import CRdKafka
import Logging
import Synchronization

/// The object passed to librdkafka as the client opaque (`rd_kafka_conf_set_opaque`), so C
/// callbacks find their Swift state. It is owned by the ``RDKafkaClient`` whose handle uses it
/// and therefore outlives every callback.
final class ClientContext: Sendable {
    let logger: Logger
    /// The first fatal error librdkafka raised on this client, if any.
    let fatalError = Mutex<KafkaError?>(nil)
    /// Whether the consumer is paused (``KafkaConsumer/pause()``): the rebalance callback then pauses the
    /// partitions it assigns, so a rebalance does not resume consumption.
    let paused = Atomic<Bool>(false)

    init(logger: Logger) {
        self.logger = logger
    }

    static func from(_ rk: OpaquePointer?) -> ClientContext? {
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return nil }
        return Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
    }

    /// Reads librdkafka's fatal error (code and reason) and records it.
    func recordFatalError(_ rk: OpaquePointer) -> KafkaError {
        var buffer = [CChar](repeating: 0, count: 512)
        let code = rd_kafka_fatal_error(rk, &buffer, buffer.count)
        let reason = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let error = KafkaError(code, message: "fatal error: \(reason)", isFatal: true)
        fatalError.withLock { if $0 == nil { $0 = error } }
        return error
    }
}

/// `log_cb`: librdkafka's own log lines, at the matching level (syslog levels 0-7).
let rdKafkaLogCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Void = {
    rk, level, facility, line in
    guard let context = ClientContext.from(rk) else { return }
    let text = line.map { String(cString: $0) } ?? ""
    let facilityText = facility.map { String(cString: $0) } ?? ""
    let logLevel: Logger.Level
    switch level {
    case ...3: logLevel = .error
    case 4: logLevel = .warning
    case 5: logLevel = .notice
    case 6: logLevel = .info
    default: logLevel = .debug
    }
    context.logger.log(level: logLevel, "\(text)", metadata: ["librdkafka.facility": "\(facilityText)"])
}

/// `error_cb`: client-level errors. Most are transient (e.g. all brokers down) and librdkafka
/// recovers by itself; fatal ones are recorded on the context.
let rdKafkaErrorCallback:
    @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void = {
        rk, code, reason, _ in
        guard let rk, let context = ClientContext.from(rk) else { return }
        let reasonText = reason.map { String(cString: $0) } ?? ""
        let error = rd_kafka_resp_err_t(rawValue: code)
        if error == RD_KAFKA_RESP_ERR__FATAL {
            let fatal = context.recordFatalError(rk)
            context.logger.error("librdkafka fatal error", metadata: ["error": "\(fatal)"])
        } else {
            context.logger.warning(
                "librdkafka error",
                metadata: ["error": "\(String(cString: rd_kafka_err2name(error)))", "reason": "\(reasonText)"]
            )
        }
    }
