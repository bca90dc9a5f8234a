import Foundation
import SagaEngine
import SagaKafka

/// Why a replay, redrive or group reset did not run (nothing was sent or committed), or stopped.
public enum ReplayError: Error, Sendable, CustomStringConvertible {
    /// A bad offset or time range, or a filter that cannot match.
    case invalidSelection(String)
    /// The topic does not exist on the cluster.
    case unknownTopic(String)
    /// The partition is not one of the topic's.
    case unknownPartition(topic: String, partition: Int32, partitionCount: Int32)
    /// No broker answered in time (wrong address, cluster down).
    case brokerUnreachable(String)
    /// The slice holds messages older than the inbox horizon (now − inbox retention): consumers no
    /// longer remember those event ids, so replaying them could apply them twice.
    case pastInboxHorizon(horizon: Date, retention: Duration, oldest: Date?, count: Int)
    /// A group reset while the group has members: they would overwrite the new offsets.
    case groupActive(group: String, state: String, members: [String])
    /// Reading stopped making progress before the end of the slice.
    case stalled(String)
    /// Any other Kafka failure.
    case kafka(KafkaError)

    /// What went wrong, for people to read.
    public var description: String {
        switch self {
        case .invalidSelection(let why): return why
        case .unknownTopic(let topic): return "unknown topic '\(topic)'"
        case .unknownPartition(let topic, let partition, let count):
            return "topic '\(topic)' has no partition \(partition) (it has \(count): 0...\(count - 1))"
        case .brokerUnreachable(let why): return "no Kafka broker reachable: \(why)"
        case .pastInboxHorizon(let horizon, let retention, let oldest, let count):
            let oldestText = oldest.map { ", the oldest from \(Timestamp.format($0))" } ?? ""
            return
                "\(count) message(s) are older than the inbox horizon \(Timestamp.format(horizon)) "
                + "(SAGA_INBOX_RETENTION=\(ReplayDurations.format(retention)))\(oldestText): consumers may no longer "
                + "remember them and could apply them twice; narrow the slice or pass --force"
        case .groupActive(let group, let state, let members):
            return
                "consumer group '\(group)' is \(state) and has active members (\(members.joined(separator: ", "))): "
                + "stop its consumers first; offsets can only be reset while the group is empty"
        case .stalled(let why): return why
        case .kafka(let error): return error.description
        }
    }

    /// Maps a Kafka failure: transport errors and timeouts mean no broker answered.
    static func from(_ error: KafkaError, bootstrap: String) -> ReplayError {
        if error.isRetriable { return .brokerUnreachable("\(bootstrap): \(error.message)") }
        return .kafka(error)
    }
}

/// `7d`, `2h`, `15m`, `90s`, `500ms`: the same units SAGA_INBOX_RETENTION and `--since` accept.
public enum ReplayDurations {
    /// Parses a relative duration (`500ms`, `90s`, `15m`, `2h`, `7d`); nil when it is not one.
    public static func parse(_ raw: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, ms) in units where raw.hasSuffix(suffix) {
            let number = raw.dropLast(suffix.count)
            if suffix == "s" && number.hasSuffix("m") { continue }
            guard let n = Int64(number), n >= 0, n <= Int64.max / ms else { return nil }
            return .milliseconds(n * ms)
        }
        return nil
    }

    /// The largest unit that divides the duration exactly.
    public static func format(_ duration: Duration) -> String {
        let ms = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        for (suffix, unit) in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000)]
        where ms >= unit && ms % unit == 0 {
            return "\(ms / unit)\(suffix)"
        }
        return "\(ms)ms"
    }

    /// An RFC 3339 time, or a relative duration meaning "that long before `now`".
    public static func parseTime(_ raw: String, now: Date = Date()) -> Date? {
        if let date = Timestamp.parse(raw) { return date }
        guard let duration = parse(raw) else { return nil }
        let (seconds, attoseconds) = duration.components
        return now.addingTimeInterval(-(Double(seconds) + Double(attoseconds) / 1e18))
    }
}
