import Foundation
import SagaEngine

/// One selected message: where it is, what it is, and where it goes.
public struct ReplayedMessage: Sendable, Hashable, Codable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: String?
    public var type: String?
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
    public var topic: String
    public var partition: Int32
    /// The offsets read: `startOffset ..< endOffset` (the end is the high watermark at start, or the range end).
    public var startOffset: Int64
    public var endOffset: Int64
    public var scanned = 0
    public var matched = 0
    public var sent = 0
    public var failed = 0
    /// Records past `endOffset` that were written before the run read the high watermark: a broker
    /// reporting the watermark too low hid them. Not read, not replayed; each partition with some is
    /// named in the summary's notes.
    public var unreached = 0
}

/// The result of a replay or redrive.
public struct ReplaySummary: Sendable, Codable {
    public var dryRun: Bool
    /// The inbox horizon the slice was checked against.
    public var horizon: Date
    public var partitions: [ReplayPartitionSummary]
    /// Every matched message, for a dry run; empty otherwise.
    public var messages: [ReplayedMessage]
    /// Matched messages older than the horizon.
    public var pastHorizon: Int
    /// The first failures (at most 20), for people to read.
    public var failures: [String]
    /// Things worth knowing that are not failures (e.g. a dead-letter topic that does not exist yet).
    public var notes: [String]

    public var scanned: Int { partitions.reduce(0) { $0 + $1.scanned } }
    public var matched: Int { partitions.reduce(0) { $0 + $1.matched } }
    public var sent: Int { partitions.reduce(0) { $0 + $1.sent } }
    public var failed: Int { partitions.reduce(0) { $0 + $1.failed } }
    public var unreached: Int { partitions.reduce(0) { $0 + $1.unreached } }
}

/// Reported while a replay or redrive runs.
public struct ReplayProgress: Sendable, Hashable {
    public var scanned: Int
    /// Offsets in the slice: scanned ≤ total.
    public var total: Int64
    public var matched: Int
    public var sent: Int
    public var failed: Int
    public var elapsed: Duration
}
