import CRdKafka

/// What a delivery-report callback completes: one slot of a ``DeliveryBatch``.
/// Passed to librdkafka as the per-message opaque, retained once per enqueued message and
/// released by the delivery-report callback.
final class DeliveryBox: Sendable {
    let batch: DeliveryBatch
    let index: Int

    init(batch: DeliveryBatch, index: Int) {
        self.batch = batch
        self.index = index
    }
}

/// `dr_msg_cb`: runs on the thread calling `rd_kafka_poll`/`rd_kafka_flush`, once per message
/// that was enqueued, whatever its fate (delivered, failed, timed out, purged).
let rdKafkaDeliveryReportCallback:
    @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = {
        rk, message, _ in
        guard let message, let opaque = message.pointee._private else { return }
        let box = Unmanaged<DeliveryBox>.fromOpaque(opaque).takeRetainedValue()
        let record = message.pointee
        let topic = record.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        if record.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            box.batch.complete(
                box.index,
                with: .success(KafkaDeliveryReport(topic: topic, partition: record.partition, offset: record.offset))
            )
        } else if record.err == RD_KAFKA_RESP_ERR__FATAL, let rk, let context = ClientContext.from(rk) {
            box.batch.complete(box.index, with: .failure(context.recordFatalError(rk)))
        } else {
            let reason = String(cString: rd_kafka_err2str(record.err))
            box.batch.complete(
                box.index,
                with: .failure(KafkaError(record.err, message: "delivery to topic \(topic) failed: \(reason)"))
            )
        }
    }

extension RDKafkaClient {
    /// Enqueues one message (payload, key and headers are copied) with `opaque` as its
    /// per-message opaque. Never blocks.
    ///
    /// - Returns: `nil` when enqueued (a delivery report will follow), else why it was not.
    func enqueue(_ message: KafkaOutgoingMessage, opaque: UnsafeMutableRawPointer) -> KafkaError? {
        var headers: OpaquePointer? = nil
        if !message.headers.isEmpty {
            headers = rd_kafka_headers_new(message.headers.count)
            for header in message.headers {
                header.value.withUnsafeBytes { value in
                    _ = rd_kafka_header_add(headers, header.key, -1, value.baseAddress, value.count)
                }
            }
        }
        let error: OpaquePointer? = message.topic.withCString { topic in
            message.value.withUnsafeBytes { value in
                withOptionalBytes(message.key) { key in
                    var values = [rd_kafka_vu_t](repeating: rd_kafka_vu_t(), count: headers == nil ? 6 : 7)
                    values[0].vtype = RD_KAFKA_VTYPE_TOPIC
                    values[0].u.cstr = topic
                    values[1].vtype = RD_KAFKA_VTYPE_PARTITION
                    values[1].u.i32 = message.partition ?? -1  // RD_KAFKA_PARTITION_UA
                    values[2].vtype = RD_KAFKA_VTYPE_VALUE
                    values[2].u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
                    values[2].u.mem.size = value.count
                    values[3].vtype = RD_KAFKA_VTYPE_KEY
                    values[3].u.mem.ptr = UnsafeMutableRawPointer(mutating: key?.baseAddress)
                    values[3].u.mem.size = key?.count ?? 0
                    values[4].vtype = RD_KAFKA_VTYPE_MSGFLAGS
                    values[4].u.i = RD_KAFKA_MSG_F_COPY
                    values[5].vtype = RD_KAFKA_VTYPE_OPAQUE
                    values[5].u.ptr = opaque
                    if let headers {
                        values[6].vtype = RD_KAFKA_VTYPE_HEADERS
                        values[6].u.headers = headers
                    }
                    return rd_kafka_produceva(handle, values, values.count)
                }
            }
        }
        guard let error else { return nil }  // librdkafka now owns the headers
        if let headers { rd_kafka_headers_destroy(headers) }
        return KafkaError(consuming: error)
    }
}

/// Calls `body` with the bytes of `bytes`, or `nil` when there are none.
private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
