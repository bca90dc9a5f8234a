import Foundation
import SagaEngine
import SagaKafka

/// Where a group reset moves a group's committed offsets.
public enum GroupResetTarget: Sendable, Hashable {
    /// The oldest offset still kept (low watermark).
    case earliest
    /// The end of the partition (high watermark): skip everything not yet read.
    case latest
    /// The first record at or after this time (the end when there is none).
    case time(Date)
    /// This offset, clamped to the partition's watermarks.
    case offset(Int64)
}

/// One partition of a group reset: its committed offset now and after.
public struct GroupResetRow: Sendable, Hashable, Codable {
    /// The topic.
    public var topic: String
    /// The partition.
    public var partition: Int32
    /// The committed offset; nil when the group has none for this partition.
    public var current: Int64?
    /// The committed offset after the reset.
    public var new: Int64
    /// The partition's low watermark (oldest offset kept).
    public var low: Int64
    /// The partition's high watermark (next offset written).
    public var high: Int64
    /// Records the reset would deliver again (from `new` up to `current`, or to `high` when the group has no
    /// committed offset) that are older than the plan's ``GroupResetPlan/horizon``, or have no timestamp.
    public var pastHorizon: Int = 0
}

/// What a group reset shows (dry run) or did (`executed`).
public struct GroupResetPlan: Sendable, Codable {
    /// The consumer group.
    public var group: String
    /// The group's state as the coordinator reported it when planning (`Empty`, `Dead`, ...).
    public var state: String
    /// One row per partition.
    public var rows: [GroupResetRow]
    /// The offsets were committed (false: a dry run).
    public var executed: Bool
    /// The inbox horizon the rows were checked against, moved later by the consumer-lag margin (see
    /// ``ReplayOptions/consumerLagMargin``); nil when no row moves back.
    public var horizon: Date? = nil
}

extension Replayer {
    /// Computes new committed offsets for `group` on `topics` (all partitions, or only
    /// `partition`), changing nothing.
    ///
    /// Moving a partition back delivers its records again, and the consumers' inboxes absorb that only for
    /// events younger than the inbox horizon (`options.now - options.inboxRetention`). The records a restarted
    /// consumer reaches only later must still be inside it then, so they are checked against the horizon
    /// moved later by `options.consumerLagMargin`; each row counts the records past it (``GroupResetRow/pastHorizon``),
    /// and ``executeGroupReset(_:options:)`` refuses such a plan without `options.force`.
    ///
    /// - Throws: ``ReplayError``: `.groupActive` while the group has members (resetting under
    ///   them would be overwritten by their next commit), an unknown topic or partition, no broker.
    public func planGroupReset(
        group: String, topics names: [String], target: GroupResetTarget, partition: Int32? = nil,
        options: ReplayOptions = ReplayOptions()
    ) async throws(ReplayError) -> GroupResetPlan {
        guard !names.isEmpty else { throw .invalidSelection("name at least one --topic") }
        if case .offset(let offset) = target, offset < 0 {
            throw .invalidSelection("--to-offset \(offset): offsets start at 0")
        }
        if let partition, partition < 0 { throw .invalidSelection("--partition \(partition): partitions start at 0") }
        let admin = try makeAdmin()
        var partitions: [KafkaTopicPartition] = []
        for topic in names {
            let count = try await partitionCount(topic, admin: admin, options: options)
            if let partition {
                guard partition < count else {
                    throw .unknownPartition(topic: topic, partition: partition, partitionCount: count)
                }
                partitions.append(KafkaTopicPartition(topic: topic, partition: partition))
            } else {
                partitions += (0..<count).map { KafkaTopicPartition(topic: topic, partition: $0) }
            }
        }
        let client = try groupClient(group)
        do {
            let state = try await requireInactive(group, client: client, partitions: partitions, options: options)
            let committed = try await client.committed(partitions, timeout: options.requestTimeout)
            var wanted: [KafkaTopicPartition: Int64] = [:]
            if case .time(let time) = target {
                for entry in try await client.offsets(
                    forTimes: partitions.map { ($0, time) }, timeout: options.requestTimeout)
                {
                    wanted[KafkaTopicPartition(topic: entry.topic, partition: entry.partition)] = entry.offset
                }
            }
            var rows: [GroupResetRow] = []
            for (index, partition) in partitions.enumerated() {
                let marks = try await client.watermarks(of: partition, timeout: options.requestTimeout)
                let new: Int64
                switch target {
                case .earliest: new = marks.low
                case .latest: new = marks.high
                case .time(let time):
                    if let found = wanted[partition], found >= 0 {
                        new = min(max(found, marks.low), marks.high)
                    } else {
                        // -1 ("no record that recent") is what librdkafka's mock cluster answers to every
                        // time: confirm it by reading the partition.
                        new = try await firstOffset(in: partition, atOrAfter: time, marks: marks, options: options)
                    }
                case .offset(let offset): new = min(max(offset, marks.low), marks.high)
                }
                let current = committed[index].offset
                rows.append(
                    GroupResetRow(
                        topic: partition.topic, partition: partition.partition, current: current < 0 ? nil : current,
                        new: new,
                        low: marks.low, high: marks.high))
            }
            let horizon = try await checkHorizon(&rows, options: options)
            await client.close()
            return GroupResetPlan(group: group, state: state, rows: rows, executed: false, horizon: horizon)
        } catch {
            await client.close()
            throw Self.mapped(error, bootstrap: kafka.bootstrapServers)
        }
    }

    /// Commits the plan's new offsets for its group, after checking again that the group has no
    /// members, and reads them back.
    ///
    /// - Throws: ``ReplayError``: `.pastInboxHorizon` when the plan delivers records again that are past
    ///   its horizon and `options.force` is not set; `.groupActive` when a member joined meanwhile, or the
    ///   commit's failure (on a real Kafka a commit from outside an active group is refused as well).
    public func executeGroupReset(_ plan: GroupResetPlan, options: ReplayOptions = ReplayOptions())
        async throws(ReplayError)
        -> GroupResetPlan
    {
        let past = plan.rows.reduce(0) { $0 + $1.pastHorizon }
        if past > 0, !options.force, let horizon = plan.horizon {
            throw .pastInboxHorizon(horizon: horizon, retention: options.inboxRetention, oldest: nil, count: past)
        }
        let client = try groupClient(plan.group)
        do {
            let partitions = plan.rows.map { KafkaTopicPartition(topic: $0.topic, partition: $0.partition) }
            _ = try await requireInactive(plan.group, client: client, partitions: partitions, options: options)
            try await client.commit(
                plan.rows.map { KafkaTopicPartitionOffset(topic: $0.topic, partition: $0.partition, offset: $0.new) })
            let readBack = try await client.committed(
                plan.rows.map { KafkaTopicPartition(topic: $0.topic, partition: $0.partition) },
                timeout: options.requestTimeout)
            for (row, committed) in zip(plan.rows, readBack) where committed.offset != row.new {
                throw ReplayError.stalled(
                    "the commit of \(row.topic)[\(row.partition)] did not stick: committed \(committed.offset), wanted \(row.new)"
                )
            }
            await client.close()
            var done = plan
            done.executed = true
            return done
        } catch {
            await client.close()
            throw Self.mapped(error, bootstrap: kafka.bootstrapServers)
        }
    }

    /// A consumer carrying the group's id that never joins it: it reads and commits the group's
    /// offsets from outside (as kafka-consumer-groups does).
    private func groupClient(_ group: String) throws(ReplayError) -> KafkaConsumer {
        do {
            return try KafkaConsumer(
                configuration: kafka.consumer(groupId: group, clientId: "saga-replay-reset"), logger: logger)
        } catch {
            throw .kafka(error)
        }
    }

    /// Checks that `group` has no members, and returns its state.
    ///
    /// Through DescribeGroups where the broker supports it (Kafka does). librdkafka's mock cluster
    /// does not (`_UNSUPPORTED_FEATURE`), and it refuses offset commits from outside a group it has
    /// ever seen; there `client` joins the group on the partitions' topics instead: when it is not
    /// given every partition, another member holds the rest. After the check `client` is a member
    /// (its commits are accepted); closing it leaves the group.
    private func requireInactive(
        _ group: String, client: KafkaConsumer, partitions: [KafkaTopicPartition], options: ReplayOptions
    ) async throws -> String {
        do {
            let description = try await client.describeGroup(group, timeout: options.requestTimeout)
            guard description.members.isEmpty else {
                throw ReplayError.groupActive(
                    group: group, state: description.state,
                    members: description.members.map { "\($0.clientId)@\($0.clientHost)" })
            }
            return description.state
        } catch let error as KafkaError where error.name == "_UNSUPPORTED_FEATURE" {
            logger.debug(
                "DescribeGroups unsupported: checking membership by joining", metadata: ["group": .string(group)])
        }
        let wanted = Set(partitions)
        try client.subscribe(topics: Array(Set(partitions.map(\.topic))).sorted())
        let deadline = ContinuousClock.now + options.stallTimeout
        var assigned: Set<KafkaTopicPartition> = []
        var settledSince: ContinuousClock.Instant? = nil
        while ContinuousClock.now < deadline {
            _ = try await client.poll(maxMessages: 100, timeout: .milliseconds(200))
            let now = Set(try client.assignment())
            if now != assigned {
                assigned = now
                settledSince = assigned.isEmpty ? nil : .now
            }
            if wanted.isSubset(of: assigned) { return "Empty" }
            // A partial assignment that holds for a few seconds: other members own the rest.
            if let since = settledSince, ContinuousClock.now - since > .seconds(3) {
                let missing = wanted.subtracting(assigned).count
                throw ReplayError.groupActive(
                    group: group, state: "Stable",
                    members: ["other members hold \(missing) of the \(wanted.count) partitions"])
            }
        }
        throw ReplayError.groupActive(
            group: group, state: "unknown",
            members: ["could not join the group within \(options.stallTimeout) to check that it is empty"])
    }

    /// Counts, per row that moves back, the records it would deliver again that are older than the inbox horizon
    /// moved later by the consumer-lag margin; returns that horizon (nil when no row moves back).
    private func checkHorizon(_ rows: inout [GroupResetRow], options: ReplayOptions) async throws -> Date? {
        let back = rows.indices.filter { rows[$0].new < min(rows[$0].current ?? rows[$0].high, rows[$0].high) }
        guard !back.isEmpty else { return nil }
        let (seconds, attoseconds) = options.consumerLagMargin.components
        let horizon = options.horizon.addingTimeInterval(Double(seconds) + Double(attoseconds) / 1e18)
        for i in back {
            let row = rows[i]
            let end = min(row.current ?? row.high, row.high)
            let partition = KafkaTopicPartition(topic: row.topic, partition: row.partition)
            // Records are read from `new` until the first at or after the horizon (the mock cluster answers no
            // offset-for-time lookups, so reading is the one way that works on both).
            let fresh = try await firstOffset(
                in: partition, atOrAfter: horizon, marks: KafkaWatermarks(low: row.new, high: end), options: options)
            rows[i].pastHorizon = Int(max(0, min(fresh, end) - row.new))
        }
        return horizon
    }

    /// The first offset of `partition` whose record is at or after `time`, by reading it; the high
    /// watermark when there is none.
    private func firstOffset(
        in partition: KafkaTopicPartition, atOrAfter time: Date, marks: KafkaWatermarks, options: ReplayOptions
    ) async throws -> Int64 {
        var found: Int64? = nil
        let range = Range(partition: partition, start: marks.low, end: marks.high)
        _ = try await scan(
            [range], selection: ReplaySelection(since: time), options: options, progress: { _ in },
            body: { message, flushOnly in
                if !flushOnly, found == nil { found = message.offset }
                return .skipped
            })
        return found ?? marks.high
    }

    private static func mapped(_ error: any Error, bootstrap: String) -> ReplayError {
        switch error {
        case let e as ReplayError: return e
        case let e as KafkaError: return ReplayError.from(e, bootstrap: bootstrap)
        default: return .stalled("\(error)")
        }
    }
}
