import CRdKafka

/// An error reported by librdkafka or by this module.
///
/// `code` is the raw `rd_kafka_resp_err_t` value (negative values are client-side errors,
/// positive values are broker error codes) and `name` its symbolic name. `message` and
/// `description` carry librdkafka's explanation and never contain message keys, values,
/// headers or configuration values of sensitive properties.
public struct KafkaError: Error, Sendable, CustomStringConvertible {
    /// The raw `rd_kafka_resp_err_t` value.
    public var code: Int32
    /// The symbolic name of `code`, as given by `rd_kafka_err2name` (e.g. `NOT_LEADER_FOR_PARTITION`).
    public var name: String
    /// A human-readable explanation, free of payload data.
    public var message: String
    /// Whether retrying the same operation later may succeed (e.g. broker unreachable, timeout, queue full).
    public var isRetriable: Bool
    /// Whether the client instance is unusable and must be recreated.
    public var isFatal: Bool

    /// Creates an error from its parts; mainly for fakes and tests of code built on this module.
    public init(code: Int32, name: String, message: String, isRetriable: Bool, isFatal: Bool) {
        self.code = code
        self.name = name
        self.message = message
        self.isRetriable = isRetriable
        self.isFatal = isFatal
    }

    public var description: String {
        var flags = ""
        if isFatal { flags += ", fatal" }
        if isRetriable { flags += ", retriable" }
        return "KafkaError(\(name) [\(code)]\(flags)): \(message)"
    }

    /// The symbolic librdkafka name of a raw error code (e.g. `6` gives `NOT_LEADER_FOR_PARTITION`).
    public static func name(forCode code: Int32) -> String {
        String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: code)))
    }
}

extension KafkaError {
    /// An error for a plain response code; retriability follows `isRetriableCode`.
    init(_ code: rd_kafka_resp_err_t, message: String? = nil, isFatal: Bool = false) {
        self.init(
            code: code.rawValue,
            name: String(cString: rd_kafka_err2name(code)),
            message: message ?? String(cString: rd_kafka_err2str(code)),
            isRetriable: KafkaError.isRetriableCode(code),
            isFatal: isFatal || code == RD_KAFKA_RESP_ERR__FATAL
        )
    }

    /// Takes ownership of an `rd_kafka_error_t` (destroys it) and converts it.
    init(consuming error: OpaquePointer) {
        defer { rd_kafka_error_destroy(error) }
        let code = rd_kafka_error_code(error)
        self.init(
            code: code.rawValue,
            name: String(cString: rd_kafka_error_name(error)),
            message: String(cString: rd_kafka_error_string(error)),
            isRetriable: rd_kafka_error_is_retriable(error) != 0,
            isFatal: rd_kafka_error_is_fatal(error) != 0
        )
    }

    /// Transport, timeout, broker-availability and leadership errors, message timeouts
    /// and a full local queue: conditions that go away by themselves.
    static func isRetriableCode(_ code: rd_kafka_resp_err_t) -> Bool {
        switch code {
        case RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR__TIMED_OUT,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE,
            RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN,
            RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RD_KAFKA_RESP_ERR__QUEUE_FULL:
            return true
        default:
            return false
        }
    }

    /// The group is rebalancing (`REBALANCE_IN_PROGRESS`): an offset commit goes again once it is over, for the
    /// partitions still assigned then.
    public var isRebalanceInProgress: Bool { code == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS.rawValue }

    /// Another member joined the group with this consumer's `group.instance.id` (static membership) and the
    /// broker fenced this one (`FENCED_INSTANCE_ID`): fatal, the consumer can no longer consume.
    public var isFencedInstance: Bool { code == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID.rawValue }

    /// A state error raised by this module (e.g. using a client after shutdown).
    static func state(_ message: String) -> KafkaError {
        KafkaError(RD_KAFKA_RESP_ERR__STATE, message: message)
    }
}
