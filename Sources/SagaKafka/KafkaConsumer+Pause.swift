import CRdKafka

extension KafkaConsumer {
    /// Whether ``pause()`` was called last (rather than ``resume()``).
    public var isPaused: Bool { client.context.paused.load(ordering: .acquiring) }

    /// Stops fetching from every partition assigned to this member, and from the partitions a later rebalance
    /// assigns, until ``resume()``. Polls go on (keep polling: that keeps the membership in the group and serves
    /// rebalances) and return no message, including none fetched before the pause and not yet polled: those are
    /// fetched again after ``resume()``, from the position after the last message a poll returned. Waits for a
    /// poll in progress to return first. Idempotent.
    ///
    /// - Throws: ``KafkaError`` when librdkafka refuses (the message names the partition), or `_STATE` after
    ///   ``close()``.
    public func pause() async throws(KafkaError) {
        try await setPaused(true)
    }

    /// Fetches again from every assigned partition (see ``pause()``). Idempotent.
    ///
    /// - Throws: ``KafkaError`` when librdkafka refuses (the message names the partition), or `_STATE` after
    ///   ``close()``.
    public func resume() async throws(KafkaError) {
        try await setPaused(false)
    }

    /// On the poll lane, so that it never interleaves with the rebalance callback (which runs within a poll): a
    /// partition is either assigned before the flag changes and (un)paused here, or assigned after it and
    /// paused by the callback when the flag says so.
    private func setPaused(_ paused: Bool) async throws(KafkaError) {
        try throwIfClosed()
        try await pollLane.run { [self] () -> Result<Void, KafkaError> in
            client.context.paused.store(paused, ordering: .releasing)
            var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>? = nil
            let result = rd_kafka_assignment(client.handle, &list)
            defer { if let list { rd_kafka_topic_partition_list_destroy(list) } }
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(KafkaError(result, message: "reading the assignment failed"))
            }
            guard let list, list.pointee.cnt > 0 else { return .success(()) }
            let applied =
                paused
                ? rd_kafka_pause_partitions(client.handle, list) : rd_kafka_resume_partitions(client.handle, list)
            let what = paused ? "pausing" : "resuming"
            guard applied == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(
                    KafkaError(applied, message: "\(what) failed: \(String(cString: rd_kafka_err2str(applied)))"))
            }
            if let failed = RDKafkaTopicPartitionList.elements(list).first(where: {
                $0.error != RD_KAFKA_RESP_ERR_NO_ERROR
            }) {
                return .failure(
                    KafkaError(
                        failed.error,
                        message:
                            "\(what) \(failed.topic)[\(failed.partition)] failed: \(String(cString: rd_kafka_err2str(failed.error)))"
                    ))
            }
            return .success(())
        }
    }
}
