import CRdKafka
import Foundation
import Logging

/// Owns one `rd_kafka_t` and destroys it exactly once, in `deinit`.
///
/// `@unchecked Sendable`: the handle pointer is immutable after `init`, every librdkafka call
/// made through it is thread-safe, and `rd_kafka_destroy` runs only in `deinit`, when no other
/// reference (hence no other call) can exist.
final class RDKafkaClient: @unchecked Sendable {
    let handle: OpaquePointer
    /// The callbacks' opaque; retained here so it outlives the handle.
    let context: ClientContext

    /// Creates the handle from `properties` (applied in order).
    ///
    /// - Parameter configure: installs role-specific callbacks on the configuration.
    /// - Throws: ``KafkaError`` (`_INVALID_ARG`) naming the rejected property, or the reason
    ///   `rd_kafka_new` failed.
    init(
        type: rd_kafka_type_t,
        properties: [(String, String)],
        context: ClientContext,
        configure: (OpaquePointer) -> Void = { _ in }
    ) throws(KafkaError) {
        guard let conf = rd_kafka_conf_new() else {
            throw KafkaError(RD_KAFKA_RESP_ERR__FAIL, message: "rd_kafka_conf_new failed")
        }
        var errorBuffer = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            let result = rd_kafka_conf_set(conf, key, value, &errorBuffer, errorBuffer.count)
            guard result == RD_KAFKA_CONF_OK else {
                rd_kafka_conf_destroy(conf)
                let reason = Self.string(errorBuffer)
                throw KafkaError(
                    RD_KAFKA_RESP_ERR__INVALID_ARG,
                    message: "invalid configuration property \"\(key)\": \(Self.redact(reason, key: key, value: value))"
                )
            }
        }
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_log_cb(conf, rdKafkaLogCallback)
        rd_kafka_conf_set_error_cb(conf, rdKafkaErrorCallback)
        configure(conf)
        // On success rd_kafka_new takes ownership of conf; on failure it stays ours.
        guard let handle = rd_kafka_new(type, conf, &errorBuffer, errorBuffer.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(
                RD_KAFKA_RESP_ERR__INVALID_ARG,
                message: "cannot create the Kafka client: \(Self.string(errorBuffer))"
            )
        }
        self.handle = handle
        self.context = context
    }

    deinit {
        rd_kafka_destroy(handle)
    }

    static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// librdkafka quotes a rejected value in its message; keep secrets out of errors and logs.
    private static func redact(_ reason: String, key: String, value: String) -> String {
        let sensitive = ["password", "secret", "key", "token", "jaas", "oauthbearer", "credential"]
        guard !value.isEmpty, sensitive.contains(where: { key.lowercased().contains($0) }) else { return reason }
        return reason.replacingOccurrences(of: value, with: "<redacted>")
    }

    /// Drops `client` on a dedicated thread once that thread holds the only reference, so that
    /// `rd_kafka_destroy` (which joins librdkafka's threads, and for an unclosed consumer leaves
    /// the group) never blocks the caller — typically a `deinit` on the cooperative pool.
    ///
    /// - Parameter beforeDestroy: runs on that thread just before the handle is destroyed.
    static func destroyOnDedicatedThread(
        _ client: RDKafkaClient,
        name: String,
        beforeDestroy: @escaping @Sendable (RDKafkaClient) -> Void = { _ in }
    ) {
        let handoff = Handoff(client)
        let thread = Thread {
            handoff.waitUntilUnique()
            handoff.finish(beforeDestroy)
        }
        thread.name = name
        thread.start()
    }

    /// `@unchecked Sendable`: after `init`, `client` is read and cleared only by the one thread
    /// started in `destroyOnDedicatedThread`.
    private final class Handoff: @unchecked Sendable {
        private var client: RDKafkaClient?

        init(_ client: RDKafkaClient) {
            self.client = client
        }

        func waitUntilUnique() {
            while !isKnownUniquelyReferenced(&client) {
                usleep(1000)
            }
        }

        func finish(_ beforeDestroy: (RDKafkaClient) -> Void) {
            if let client { beforeDestroy(client) }
            client = nil
        }
    }
}
