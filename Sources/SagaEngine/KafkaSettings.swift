import SagaKafka

/// How the engine reaches Kafka: bootstrap servers plus raw librdkafka properties (TLS, SASL, …)
/// for what the typed configuration does not name.
public struct KafkaSettings: Sendable, Hashable {
    /// Bootstrap servers, `host:port[,host:port…]`.
    public var bootstrapServers: String
    /// Raw librdkafka properties applied to every producer and consumer, after the typed settings.
    public var properties: [String: String]
    /// `fetch.wait.max.ms`: the embedded broker answers an empty fetch only after this long, so keep it low.
    public var fetchWaitMaxMs: Int

    /// Settings for the cluster at `bootstrapServers`.
    public init(bootstrapServers: String, properties: [String: String] = [:], fetchWaitMaxMs: Int = 10) {
        self.bootstrapServers = bootstrapServers
        self.properties = properties
        self.fetchWaitMaxMs = fetchWaitMaxMs
    }

    /// The configuration of a producer named `clientId`, with ``properties``.
    public func producer(clientId: String) -> KafkaProducerConfiguration {
        var c = KafkaProducerConfiguration(bootstrapServers: bootstrapServers)
        c.clientId = clientId
        c.properties = properties
        return c
    }

    /// The configuration of a consumer named `clientId` in `groupId`, with ``fetchWaitMaxMs`` and ``properties``.
    public func consumer(groupId: String, clientId: String) -> KafkaConsumerConfiguration {
        var c = KafkaConsumerConfiguration(bootstrapServers: bootstrapServers, groupId: groupId)
        c.clientId = clientId
        c.fetchWaitMaxMs = fetchWaitMaxMs
        c.properties = properties
        return c
    }
}
