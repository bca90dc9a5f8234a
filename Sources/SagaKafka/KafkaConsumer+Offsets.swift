import CRdKafka
import Foundation

/// Where a partition's log starts (`low`, the oldest offset still kept) and ends (`high`, the
/// offset the next record will get).
public struct KafkaWatermarks: Sendable, Hashable {
    /// The oldest offset the partition still keeps.
    public var low: Int64
    /// The offset the next record written to the partition will get.
    public var high: Int64

    /// Creates watermarks from their two offsets.
    public init(low: Int64, high: Int64) {
        self.low = low
        self.high = high
    }
}

/// A consumer group as the group coordinator describes it (Kafka's ListGroups + DescribeGroups).
public struct KafkaGroupDescription: Sendable, Hashable {
    /// One member of the group.
    public struct Member: Sendable, Hashable {
        /// The id the coordinator gave the member.
        public var memberId: String
        /// The member's `client.id`.
        public var clientId: String
        /// The host the member connected from, as the coordinator saw it.
        public var clientHost: String
    }

    /// The group id.
    public var group: String
    /// The coordinator's state name: `Empty`, `Stable`, `PreparingRebalance`, `CompletingRebalance`
    /// or `Dead` (a group the coordinator does not know).
    public var state: String
    /// The group's protocol type as the coordinator reports it (`consumer` for consumer groups); empty for a group
    /// the coordinator does not know.
    public var protocolType: String
    /// The group's current members.
    public var members: [Member]
}

extension KafkaConsumer {
    /// Reads `offsets` (topic, partition, first offset to read) without joining the group: no
    /// rebalance, no member id, and nothing is committed unless ``commit(_:)`` is called.
    /// Replaces any earlier assignment. ``poll(maxMessages:timeout:)`` then returns their records.
    ///
    /// - Throws: ``KafkaError`` when librdkafka rejects the assignment (e.g. the consumer is
    ///   subscribed), or `_STATE` after ``close()``.
    public func assign(_ offsets: [KafkaTopicPartitionOffset]) async throws(KafkaError) {
        try throwIfClosed()
        let client = self.client
        try await controlLane.run { () -> Result<Void, KafkaError> in
            RDKafkaTopicPartitionList.with(offsets.map { ($0.topic, $0.partition, $0.offset) }) { list in
                let result = rd_kafka_assign(client.handle, list)
                guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    return .failure(
                        KafkaError(result, message: "assign failed: \(String(cString: rd_kafka_err2str(result)))"))
                }
                return .success(())
            }
        }
    }

    /// The next offset this consumer will return for each of `partitions` (the last returned
    /// record's offset + 1), or ``KafkaTopicPartitionOffset/noOffset`` before the first record.
    /// Skips past gaps (compacted records, transaction markers) as the consumer does.
    ///
    /// - Throws: ``KafkaError`` from librdkafka, or `_STATE` after ``close()``.
    public func positions(_ partitions: [KafkaTopicPartition]) throws(KafkaError) -> [KafkaTopicPartitionOffset] {
        try throwIfClosed()
        return try RDKafkaTopicPartitionList.with(partitions.map { ($0.topic, $0.partition, nil) }) {
            list -> Result<[KafkaTopicPartitionOffset], KafkaError> in
            let result = rd_kafka_position(client.handle, list)
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR else { return .failure(KafkaError(result)) }
            return .success(
                RDKafkaTopicPartitionList.elements(list).map {
                    KafkaTopicPartitionOffset(topic: $0.topic, partition: $0.partition, offset: $0.offset)
                })
        }.get()
    }

    /// How many records each assigned partition holds past this consumer's position (its lag), against
    /// the high watermark librdkafka last saw in fetch responses. A partition read nothing from since its
    /// assignment counts from the group's committed offset (one request, bounded by `timeout`), else from
    /// the log start. Partitions without a watermark yet are left out. Runs on the control lane.
    ///
    /// - Throws: ``KafkaError`` from librdkafka, or `_STATE` after ``close()``.
    public func lag(timeout: Duration = .seconds(2)) async throws(KafkaError)
        -> [(partition: KafkaTopicPartition, lag: Int64)]
    {
        try throwIfClosed()
        let positions = try await controlLane.run { [self] () -> Result<[KafkaTopicPartitionOffset], KafkaError> in
            do throws(KafkaError) { return .success(try self.positions(try self.assignment())) } catch {
                return .failure(error)
            }
        }
        let unread = positions.filter { $0.offset < 0 }.map {
            KafkaTopicPartition(topic: $0.topic, partition: $0.partition)
        }
        let committed = unread.isEmpty ? [] : ((try? await committed(unread, timeout: timeout)) ?? [])
        var from: [KafkaTopicPartition: Int64] = [:]
        for p in positions where p.offset >= 0 {
            from[KafkaTopicPartition(topic: p.topic, partition: p.partition)] = p.offset
        }
        for c in committed where c.offset >= 0 {
            from[KafkaTopicPartition(topic: c.topic, partition: c.partition)] = c.offset
        }
        let client = self.client
        return positions.compactMap { position in
            let partition = KafkaTopicPartition(topic: position.topic, partition: position.partition)
            var low: Int64 = -1
            var high: Int64 = -1
            let result = rd_kafka_get_watermark_offsets(
                client.handle, partition.topic, partition.partition, &low, &high)
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else { return nil }
            return (partition, max(0, high - (from[partition] ?? max(0, low))))
        }
    }

    /// Asks the partition leader for the partition's current watermarks.
    ///
    /// - Throws: ``KafkaError``: `UNKNOWN_TOPIC_OR_PART`, `_TIMED_OUT` / transport errors
    ///   (retriable) when no broker answered within `timeout`, or `_STATE` after ``close()``.
    public func watermarks(of partition: KafkaTopicPartition, timeout: Duration) async throws(KafkaError)
        -> KafkaWatermarks
    {
        try throwIfClosed()
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        return try await controlLane.run { () -> Result<KafkaWatermarks, KafkaError> in
            var low: Int64 = 0
            var high: Int64 = 0
            let result = rd_kafka_query_watermark_offsets(
                client.handle, partition.topic, partition.partition, &low, &high, milliseconds)
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(
                    KafkaError(
                        result,
                        message:
                            "watermarks of \(partition.topic)[\(partition.partition)]: \(String(cString: rd_kafka_err2str(result)))"
                    ))
            }
            return .success(KafkaWatermarks(low: low, high: high))
        }
    }

    /// For each partition, the earliest offset whose record timestamp is at or after the given
    /// time (Kafka's ListOffsets by timestamp), in the same order; `-1` (`RD_KAFKA_OFFSET_END`)
    /// when no record is that recent.
    ///
    /// - Throws: ``KafkaError`` for the request or the first partition that failed
    ///   (e.g. `_TIMED_OUT`, retriable), or `_STATE` after ``close()``.
    public func offsets(forTimes times: [(partition: KafkaTopicPartition, time: Date)], timeout: Duration)
        async throws(KafkaError) -> [KafkaTopicPartitionOffset]
    {
        guard !times.isEmpty else { return [] }
        try throwIfClosed()
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        let entries = times.map {
            ($0.partition.topic, $0.partition.partition, Int64(($0.time.timeIntervalSince1970 * 1000).rounded(.down)))
        }
        return try await controlLane.run { () -> Result<[KafkaTopicPartitionOffset], KafkaError> in
            RDKafkaTopicPartitionList.with(entries.map { (topic: $0.0, partition: $0.1, offset: Optional($0.2)) }) {
                list in
                let result = rd_kafka_offsets_for_times(client.handle, list, milliseconds)
                return RDKafkaTopicPartitionList.offsets(list, result: result, what: "offset for time")
            }
        }
    }

    /// Describes `group` through its coordinator (ListGroups + DescribeGroups): its state and
    /// members. Works for any group, not only this consumer's own.
    ///
    /// - Throws: ``KafkaError``: the broker's error for the group, `_TIMED_OUT` / `_TRANSPORT`
    ///   (retriable) when the coordinator did not answer within `timeout`, or `_STATE` after ``close()``.
    public func describeGroup(_ group: String, timeout: Duration) async throws(KafkaError) -> KafkaGroupDescription {
        try throwIfClosed()
        let client = self.client
        let milliseconds = timeout.kafkaMilliseconds
        return try await controlLane.run { () -> Result<KafkaGroupDescription, KafkaError> in
            var list: UnsafePointer<rd_kafka_group_list>? = nil
            let result = rd_kafka_list_groups(client.handle, group, &list, milliseconds)
            defer { if let list { rd_kafka_group_list_destroy(list) } }
            guard result == RD_KAFKA_RESP_ERR_NO_ERROR || result == RD_KAFKA_RESP_ERR__PARTIAL, let list else {
                return .failure(
                    KafkaError(
                        result,
                        message: "describing group \(group) failed: \(String(cString: rd_kafka_err2str(result)))"))
            }
            let groups = UnsafeBufferPointer(start: list.pointee.groups, count: Int(list.pointee.group_cnt))
            guard let info = groups.first(where: { String(cString: $0.group) == group }) else {
                // No coordinator knows it: the group has never existed or expired.
                return .success(KafkaGroupDescription(group: group, state: "Dead", protocolType: "", members: []))
            }
            guard info.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(
                    KafkaError(
                        info.err,
                        message: "describing group \(group) failed: \(String(cString: rd_kafka_err2str(info.err)))"))
            }
            let members = UnsafeBufferPointer(start: info.members, count: Int(info.member_cnt)).map {
                KafkaGroupDescription.Member(
                    memberId: $0.member_id.map { String(cString: $0) } ?? "",
                    clientId: $0.client_id.map { String(cString: $0) } ?? "",
                    clientHost: $0.client_host.map { String(cString: $0) } ?? "")
            }
            return .success(
                KafkaGroupDescription(
                    group: group, state: info.state.map { String(cString: $0) } ?? "",
                    protocolType: info.protocol_type.map { String(cString: $0) } ?? "", members: members))
        }
    }
}
