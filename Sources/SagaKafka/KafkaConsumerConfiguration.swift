/// Settings for a ``KafkaConsumer``. Named properties are applied first, then `properties`.
/// The consumer always sets `enable.auto.commit=false`, `enable.auto.offset.store=false` and
/// `allow.auto.create.topics=true` before `properties`.
public struct KafkaConsumerConfiguration: Sendable {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    public var bootstrapServers: String
    /// `group.id`.
    public var groupId: String
    /// `client.id`.
    public var clientId: String = "saga"
    /// `auto.offset.reset`: where a group without a committed offset starts (`earliest` or `latest`).
    public var autoOffsetReset: String = "earliest"
    /// `fetch.wait.max.ms`. librdkafka's mock cluster answers an empty fetch only after this
    /// delay, so it bounds the latency there; a low value is harmless on real Kafka.
    public var fetchWaitMaxMs: Int = 10
    /// `fetch.min.bytes`: the broker answers a fetch as soon as this much is there (1: at once, the lowest
    /// latency).
    public var fetchMinBytes: Int = 1
    /// `queued.max.messages.kbytes`: the most the consumer prefetches into its local queue. librdkafka's
    /// default (64 MB) would let a worker that is behind grow far past its memory budget; a few MB hold
    /// many batches ahead.
    public var queuedMaxMessagesKbytes: Int = 8192
    /// `queued.min.messages`: how many messages the consumer tries to keep prefetched.
    public var queuedMinMessages: Int = 10000
    /// `session.timeout.ms`: how long the group waits for a member that stopped heartbeating (killed, frozen)
    /// before it hands its partitions to others; nil (the default): ``defaultSessionTimeoutMs`` for a dynamic
    /// member, ``defaultStaticSessionTimeoutMs`` for a static one (``groupInstanceId`` set).
    public var sessionTimeoutMs: Int? = nil
    /// A dynamic member's session: 6 s, the lowest a Kafka broker accepts by default
    /// (`group.min.session.timeout.ms`): a worker killed with `kill -9` and started again gets its partitions back
    /// in ~5 s on the embedded broker instead of ~19 s with 10 s (the mock's rebalance also waits for it).
    public static let defaultSessionTimeoutMs = 6000
    /// A static member's session: 30 s. Static membership keeps a member's place only while it is back within
    /// its session, and a restart (a container's, with its back-off) takes longer than 6 s; the price is that
    /// the partitions of a static member gone for good wait that long for another member.
    public static let defaultStaticSessionTimeoutMs = 30000
    /// The `session.timeout.ms` this consumer runs with (``sessionTimeoutMs`` or its default).
    var effectiveSessionTimeoutMs: Int {
        sessionTimeoutMs ?? (groupInstanceId == nil ? Self.defaultSessionTimeoutMs : Self.defaultStaticSessionTimeoutMs)
    }
    /// `heartbeat.interval.ms`: a third of the dynamic member's session, so two lost heartbeats do not end it.
    public var heartbeatIntervalMs: Int = 2000
    /// `max.poll.interval.ms`: the longest allowed gap between polls before the group evicts this member.
    public var maxPollIntervalMs: Int = 300000
    /// `group.instance.id` (static membership, KIP-345); nil (the default) for a dynamic member.
    ///
    /// A static member does not leave the group when it closes, and the broker keeps its assignment for up to
    /// `session.timeout.ms` (30 s for a static member unless ``sessionTimeoutMs`` says otherwise): a member that
    /// comes back with the same id within that time gets its partitions back without a rebalance of the others.
    /// It must be unique among the running members of the group: on Apache Kafka a second member joining with
    /// the same id fences the first, which then fails with a fatal `FENCED_INSTANCE_ID` error and stops
    /// consuming. What a broker does with it varies: librdkafka's mock cluster ignores it (a restart waits as
    /// long, a clean close waits longer: no LeaveGroup is sent); Tansu 0.6 hands the rejoining member its old
    /// place (holding its JoinGroup for half the session), but never fences a duplicate, and hands the
    /// partitions of a static member gone for good to nobody (when its session ends, the others are revoked
    /// once and get back only their own).
    public var groupInstanceId: String? = nil
    /// Raw librdkafka properties (TLS, SASL, `partition.assignment.strategy`, ...), applied last.
    public var properties: [String: String] = [:]

    /// Settings for a member of `groupId` on the cluster at `bootstrapServers` (`host:port[,host:port…]`).
    public init(bootstrapServers: String, groupId: String) {
        self.bootstrapServers = bootstrapServers
        self.groupId = groupId
    }

    var librdkafkaProperties: [(String, String)] {
        var result: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("group.id", groupId),
            ("client.id", clientId),
            ("auto.offset.reset", autoOffsetReset),
            ("fetch.wait.max.ms", String(fetchWaitMaxMs)),
            ("fetch.min.bytes", String(fetchMinBytes)),
            ("queued.max.messages.kbytes", String(queuedMaxMessagesKbytes)),
            ("queued.min.messages", String(queuedMinMessages)),
            ("session.timeout.ms", String(effectiveSessionTimeoutMs)),
            ("heartbeat.interval.ms", String(heartbeatIntervalMs)),
            ("max.poll.interval.ms", String(maxPollIntervalMs)),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("allow.auto.create.topics", "true"),
        ]
        if let groupInstanceId { result.append(("group.instance.id", groupInstanceId)) }
        result += properties.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value) }
        return result
    }
}
