import Foundation

/// A Kafka record header. Keys may repeat within one message.
public struct KafkaHeader: Sendable, Hashable {
    /// The header's name.
    public var key: String
    /// The header's value, as raw bytes.
    public var value: [UInt8]

    /// Creates a header from its name and raw value.
    public init(key: String, value: [UInt8]) {
        self.key = key
        self.value = value
    }

    /// A header whose value is the UTF-8 encoding of `string`.
    public init(key: String, string: String) {
        self.init(key: key, value: Array(string.utf8))
    }

    /// The value decoded as UTF-8, or `nil` if it is not valid UTF-8.
    public var stringValue: String? {
        String(validating: value, as: UTF8.self)
    }
}

/// A record read by a ``KafkaConsumer``.
public struct KafkaMessage: Sendable {
    /// The topic the record was read from.
    public var topic: String
    /// The partition the record was read from.
    public var partition: Int32
    /// The record's offset in its partition.
    public var offset: Int64
    /// The record key; `nil` when the record has none.
    public var key: [UInt8]?
    /// The record value; empty for a null value (tombstone).
    public var value: [UInt8]
    /// The record headers, in the order they were written.
    public var headers: [KafkaHeader]
    /// The record timestamp (create or log-append time), when the broker reports one.
    public var timestamp: Date?

    /// Creates a record as a consumer would return it (for tests and fakes).
    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8],
        headers: [KafkaHeader], timestamp: Date?
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
    }

    /// The value of the last header named `key`, decoded as UTF-8; `nil` if there is no such
    /// header or its value is not valid UTF-8.
    public func header(_ key: String) -> String? {
        headers.last(where: { $0.key == key })?.stringValue
    }
}

/// A record to be written by a ``KafkaProducer``.
public struct KafkaOutgoingMessage: Sendable {
    /// The topic to write to.
    public var topic: String
    /// The record key; records with the same key go to the same partition when `partition` is `nil`.
    public var key: [UInt8]?
    /// The record value.
    public var value: [UInt8]
    /// The record headers.
    public var headers: [KafkaHeader]
    /// An explicit partition, or `nil` to let the partitioner choose by key.
    public var partition: Int32?

    /// Creates a record to write to `topic`.
    public init(
        topic: String, key: [UInt8]?, value: [UInt8], headers: [KafkaHeader] = [], partition: Int32? = nil
    ) {
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.partition = partition
    }
}

/// Where the broker stored a produced record.
public struct KafkaDeliveryReport: Sendable, Hashable {
    /// The topic the record was written to.
    public var topic: String
    /// The partition the record was written to.
    public var partition: Int32
    /// The record's offset in that partition.
    public var offset: Int64

    /// Creates a report from where the record was stored.
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}

/// A partition of a topic.
public struct KafkaTopicPartition: Sendable, Hashable {
    /// The topic's name.
    public var topic: String
    /// The partition's number within the topic.
    public var partition: Int32

    /// Names partition `partition` of `topic`.
    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }
}

/// An offset in a partition of a topic: what to commit, or where to start reading.
public struct KafkaTopicPartitionOffset: Sendable, Hashable {
    /// The topic's name.
    public var topic: String
    /// The partition's number within the topic.
    public var partition: Int32
    /// For commits: the next offset to read (last handled offset + 1).
    /// From ``KafkaConsumer/committed(_:timeout:)``: ``noOffset`` when the group has none.
    public var offset: Int64

    /// librdkafka's `RD_KAFKA_OFFSET_INVALID`: no committed offset.
    public static let noOffset: Int64 = -1001

    /// Names `offset` in partition `partition` of `topic`.
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}
