import CRdKafka
import Logging

/// `rebalance_cb`: applies the group's assignment changes and logs them. Runs on the thread
/// calling `rd_kafka_consumer_poll` or `rd_kafka_consumer_close`. With the cooperative
/// protocol partitions are added/removed incrementally; with the eager protocol the whole
/// assignment is replaced. While the consumer is paused, the partitions it assigns are paused too.
let rdKafkaRebalanceCallback:
    @convention(c) (
        OpaquePointer?, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?,
        UnsafeMutableRawPointer?
    ) -> Void = { rk, code, partitions, _ in
        guard let rk else { return }
        let context = ClientContext.from(rk)
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let described = RDKafkaTopicPartitionList.describe(partitions)
        var failure: KafkaError? = nil
        switch code {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            context?.logger.info("partitions assigned", metadata: ["partitions": "\(described)"])
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, partitions) { failure = KafkaError(consuming: error) }
            } else {
                let result = rd_kafka_assign(rk, partitions)
                if result != RD_KAFKA_RESP_ERR_NO_ERROR { failure = KafkaError(result) }
            }
            // A paused consumer stays paused: librdkafka starts fetching newly assigned partitions.
            if failure == nil, let partitions, context?.paused.load(ordering: .acquiring) == true {
                let result = rd_kafka_pause_partitions(rk, partitions)
                if result != RD_KAFKA_RESP_ERR_NO_ERROR { failure = KafkaError(result) }
                context?.logger.info("assigned partitions paused", metadata: ["partitions": "\(described)"])
            }
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(rk) != 0
            context?.logger.info(
                lost ? "partitions lost" : "partitions revoked", metadata: ["partitions": "\(described)"])
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, partitions) { failure = KafkaError(consuming: error) }
            } else {
                let result = rd_kafka_assign(rk, nil)
                if result != RD_KAFKA_RESP_ERR_NO_ERROR { failure = KafkaError(result) }
            }
        default:
            context?.logger.error("rebalance failed", metadata: ["error": "\(KafkaError(code))"])
            _ = rd_kafka_assign(rk, nil)
        }
        if let failure {
            context?.logger.error("applying a rebalance failed", metadata: ["error": "\(failure)"])
        }
    }
