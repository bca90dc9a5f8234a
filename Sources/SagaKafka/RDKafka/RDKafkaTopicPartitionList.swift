import CRdKafka

/// Builds and reads `rd_kafka_topic_partition_list_t`; each list lives only within one call.
enum RDKafkaTopicPartitionList {
    /// Calls `body` with a fresh list holding `entries`, destroyed afterwards.
    static func with<R>(
        _ entries: [(topic: String, partition: Int32, offset: Int64?)],
        _ body: (UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> R
    ) -> R {
        let list = rd_kafka_topic_partition_list_new(Int32(clamping: entries.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for entry in entries {
            let element = rd_kafka_topic_partition_list_add(list, entry.topic, entry.partition)!
            if let offset = entry.offset { element.pointee.offset = offset }
        }
        return body(list)
    }

    static func elements(
        _ list: UnsafePointer<rd_kafka_topic_partition_list_t>
    ) -> [(topic: String, partition: Int32, offset: Int64, error: rd_kafka_resp_err_t)] {
        let count = Int(list.pointee.cnt)
        guard count > 0, let elements = list.pointee.elems else { return [] }
        return (0..<count).map { index in
            let element = elements[index]
            return (String(cString: element.topic), element.partition, element.offset, element.err)
        }
    }

    /// The result of a request that filled `list` in place (`result`, then each element's error), as offsets
    /// in list order; the error names `what` was asked for.
    static func offsets(
        _ list: UnsafePointer<rd_kafka_topic_partition_list_t>, result: rd_kafka_resp_err_t, what: String
    ) -> Result<[KafkaTopicPartitionOffset], KafkaError> {
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            return .failure(KafkaError(result, message: "\(what): \(String(cString: rd_kafka_err2str(result)))"))
        }
        var offsets: [KafkaTopicPartitionOffset] = []
        for element in elements(list) {
            guard element.error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(
                    KafkaError(
                        element.error,
                        message:
                            "\(what) of \(element.topic)[\(element.partition)]: \(String(cString: rd_kafka_err2str(element.error)))"
                    ))
            }
            offsets.append(
                KafkaTopicPartitionOffset(topic: element.topic, partition: element.partition, offset: element.offset))
        }
        return .success(offsets)
    }

    static func describe(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>?) -> String {
        guard let list else { return "[]" }
        return "[" + elements(list).map { "\($0.topic)[\($0.partition)]" }.joined(separator: ", ") + "]"
    }
}
