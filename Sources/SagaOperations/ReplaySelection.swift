import Foundation
import SagaEngine
import SagaKafka

/// Which messages of a topic (or of the dead-letter topics) a replay or redrive takes.
/// Every criterion given must hold; nil means "any".
public struct ReplaySelection: Sendable, Hashable {
    /// Partitions to read; nil: all of the topic's.
    public var partitions: [Int32]?
    /// First offset to take (inclusive), per partition.
    public var fromOffset: Int64?
    /// Last offset to take (inclusive), per partition.
    public var toOffset: Int64?
    /// Record timestamps at or after this time.
    public var since: Date?
    /// Record timestamps at or before this time.
    public var until: Date?
    /// The Kafka key (the saga id).
    public var sagaId: String?
    /// The `saga-event-type` header.
    public var eventType: String?
    /// A substring of the `dlq-reason` header (dead letters).
    public var reason: String?

    /// A selection by every criterion given (nil: any).
    public init(
        partitions: [Int32]? = nil, fromOffset: Int64? = nil, toOffset: Int64? = nil, since: Date? = nil,
        until: Date? = nil, sagaId: String? = nil, eventType: String? = nil, reason: String? = nil
    ) {
        self.partitions = partitions
        self.fromOffset = fromOffset
        self.toOffset = toOffset
        self.since = since
        self.until = until
        self.sagaId = sagaId
        self.eventType = eventType
        self.reason = reason
    }

    /// - Throws: ``ReplayError/invalidSelection(_:)`` for negative offsets or an empty range.
    func validate() throws(ReplayError) {
        if let from = fromOffset, from < 0 { throw .invalidSelection("--from-offset \(from): offsets start at 0") }
        if let to = toOffset, to < 0 { throw .invalidSelection("--to-offset \(to): offsets start at 0") }
        if let from = fromOffset, let to = toOffset, from > to {
            throw .invalidSelection("bad offset range: --from-offset \(from) is after --to-offset \(to)")
        }
        if let since, let until, since > until {
            throw .invalidSelection(
                "bad time range: --since \(Timestamp.format(since)) is after --until \(Timestamp.format(until))")
        }
        if let partitions, let bad = partitions.first(where: { $0 < 0 }) {
            throw .invalidSelection("--partition \(bad): partitions start at 0")
        }
    }

    /// Whether `message` passes every filter except the offset range (which bounds the read).
    func matches(_ message: KafkaMessage) -> Bool {
        if since != nil || until != nil {
            guard let timestamp = message.timestamp else { return false }
            if let since, timestamp < since { return false }
            if let until, timestamp > until { return false }
        }
        if let sagaId {
            guard let key = message.key, String(decoding: key, as: UTF8.self) == sagaId else { return false }
        }
        if let eventType, message.header(SagaHeader.eventType) != eventType { return false }
        if let reason {
            guard let text = message.header(SagaHeader.deadLetterReason), text.localizedCaseInsensitiveContains(reason)
            else { return false }
        }
        return true
    }
}

/// How a replay or redrive runs.
public struct ReplayOptions: Sendable {
    /// List what would be sent; send nothing.
    public var dryRun = false
    /// Send even when the slice holds messages older than the inbox horizon.
    public var force = false
    /// How long consumers remember handled event ids (`SAGA_INBOX_RETENTION`); messages older than
    /// `now - inboxRetention` are past the horizon.
    public var inboxRetention: Duration = .seconds(7 * 86_400)
    /// The clock the horizon is measured from.
    public var now = Date()
    /// How long a consumer may take to reach the records a group reset delivers again (it has to read its way
    /// to them first): a reset refuses records that will be past the inbox horizon by then, i.e. older than
    /// ``horizon`` plus this margin.
    public var consumerLagMargin: Duration = .seconds(3600)
    /// Report progress after this many scanned messages, and at least every `progressInterval`.
    public var progressEvery = 10_000
    /// Report progress at least this often.
    public var progressInterval: Duration = .seconds(1)
    /// How long metadata, watermark and offset requests may take.
    public var requestTimeout: Duration = .seconds(10)
    /// Give up when no record arrives for this long before the end of the slice.
    public var stallTimeout: Duration = .seconds(30)
    /// Messages per producer batch.
    public var sendBatchSize = 500

    /// The defaults: a real run, refusing slices past the inbox horizon of 7 days.
    public init() {}

    /// The inbox horizon: older messages may no longer be deduplicated.
    public var horizon: Date {
        let (seconds, attoseconds) = inboxRetention.components
        return now.addingTimeInterval(-(Double(seconds) + Double(attoseconds) / 1e18))
    }
}
