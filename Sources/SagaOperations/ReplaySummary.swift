import Foundation
import SagaEngine

/// One selected message: where it is, what it is, and where it goes.
public struct ReplayedMessage: Sendable, Hashable, Codable {
    /// The topic it was read from.
    public var topic: String
    /// Its partition.
    public var partition: Int32
    /// Its offset.
    public var offset: Int64
    /// Its Kafka key (the saga id).
    public var key: String?
    /// Its `saga-event-type` header.
    public var type: String?
    /// Its record timestamp.
    public var timestamp: Date?
    /// The topic it is (or would be) re-published to; nil when it has none (a dead letter
    /// without `dlq-source-topic`).
    public var target: String?
    /// `dlq-reason`, for dead letters.
    public var reason: String?
    /// Older than the inbox horizon (or without a timestamp).
    public var pastHorizon: Bool
}

/// What happened on one source partition.
public struct ReplayPartitionSummary: Sendable, Hashable, Codable {
    /// The source topic.
    public var topic: String
    /// The source partition.
    public var partition: Int32
    /// The offsets read: `startOffset ..< endOffset` (the end is the high watermark at start, or the range end).
    public var startOffset: Int64
    /// The end of the offsets read (exclusive).
    public var endOffset: Int64
    /// Messages read.
    public var scanned = 0
    /// Messages the selection picked.
    public var matched = 0
    /// Messages re-published.
    public var sent = 0
    /// Messages that could not be re-published.
    public var failed = 0
    /// Records past `endOffset` that were written before the run read the high watermark: a broker
    /// reporting the watermark too low hid them. Not read, not replayed; each partition with some is
    /// named in the summary's notes.
    public var unreached = 0
}

/// The result of a replay or redrive.
public struct ReplaySummary: Sendable, Codable {
    /// Nothing was sent: the run only listed what it would send.
    public var dryRun: Bool
    /// The inbox horizon the slice was checked against.
    public var horizon: Date
    /// Per source partition.
    public var partitions: [ReplayPartitionSummary]
    /// Every matched message, for a dry run; empty otherwise.
    public var messages: [ReplayedMessage]
    /// Matched messages older than the horizon.
    public var pastHorizon: Int
    /// The first failures (at most 20), for people to read.
    public var failures: [String]
    /// Things worth knowing that are not failures (e.g. a dead-letter topic that does not exist yet).
    public var notes: [String]

    /// Messages read, over every partition.
    public var scanned: Int { partitions.reduce(0) { $0 + $1.scanned } }
    /// Messages picked, over every partition.
    public var matched: Int { partitions.reduce(0) { $0 + $1.matched } }
    /// Messages re-published, over every partition.
    public var sent: Int { partitions.reduce(0) { $0 + $1.sent } }
    /// Messages not re-published, over every partition.
    public var failed: Int { partitions.reduce(0) { $0 + $1.failed } }
    /// Records hidden by a low watermark, over every partition.
    public var unreached: Int { partitions.reduce(0) { $0 + $1.unreached } }
}

/// Reported while a replay or redrive runs.
public struct ReplayProgress: Sendable, Hashable {
    /// Messages read so far.
    public var scanned: Int
    /// Offsets in the slice: scanned ≤ total.
    public var total: Int64
    /// Messages picked so far.
    public var matched: Int
    /// Messages re-published so far.
    public var sent: Int
    /// Messages not re-published so far.
    public var failed: Int
    /// Time since the run started.
    public var elapsed: Duration
}
