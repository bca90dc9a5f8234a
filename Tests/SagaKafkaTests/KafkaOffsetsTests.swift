import Foundation
import SagaKafka
import SagaTestSupport
import Testing

/// Reading by assignment, watermarks, offsets for times, group descriptions and commits from
/// outside a group — and what librdkafka 2.0.2's mock cluster does differently from Kafka.
@Suite(.serialized) struct KafkaOffsetsTests {
    @Test func assignedReadsWatermarksAndTimesWithoutJoiningAGroup() async throws {
        let broker = try KafkaTestBroker.bootstrap()
        let topic = KafkaTestBroker.uniqueName("offsets")
        try await createTopic(topic, partitions: 2, servers: broker.servers, cluster: broker.cluster)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: broker.servers), logger: testLogger("p"))
        func send(_ range: Range<Int>) async throws {
            for r in await producer.send(
                range.map { KafkaOutgoingMessage(topic: topic, key: "k\($0)", value: "v\($0)").on(0) })
            {
                _ = try r.get()
            }
        }
        try await send(0..<5)
        try await Task.sleep(for: .milliseconds(1200))
        let middle = Date()
        try await Task.sleep(for: .milliseconds(200))
        try await send(5..<10)
        await producer.shutdown()

        let reader = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: KafkaTestBroker.uniqueName("reader")),
            logger: testLogger("r"))
        let p0 = KafkaTopicPartition(topic: topic, partition: 0)
        let p1 = KafkaTopicPartition(topic: topic, partition: 1)
        let marks = try await reader.watermarks(of: p0, timeout: .seconds(10))
        if KafkaTestBroker.isTansu {
            // Tansu reports the last batch's base offset + 1: the second send's records (5..<10) usually travel
            // as one batch, giving 6. What it must still give: past the first send, within the log.
            withKnownIssue("Tansu's high watermark is the last batch's base offset + 1", isIntermittent: true) {
                #expect(marks == KafkaWatermarks(low: 0, high: 10))
            }
            #expect(marks.low == 0 && (6...10).contains(marks.high), "\(marks)")
        } else {
            #expect(marks == KafkaWatermarks(low: 0, high: 10))
        }
        #expect(try await reader.watermarks(of: p1, timeout: .seconds(10)) == KafkaWatermarks(low: 0, high: 0))
        let times = try await reader.offsets(forTimes: [(p0, middle)], timeout: .seconds(10))
        if broker.cluster != nil {
            #expect(times.map(\.offset) == [-1])  // the mock answers "none that recent" to every time
        } else if KafkaTestBroker.isTansu {
            withKnownIssue("Tansu's offsets for times are approximate", isIntermittent: true) {
                #expect(times.map(\.offset) == [5])
            }
            #expect(times.count == 1 && (-1...10).contains(times[0].offset), "\(times)")
        } else if KafkaTestBroker.usesRealKafka {
            #expect(times.map(\.offset) == [5])
        }
        try await reader.assign([KafkaTopicPartitionOffset(topic: topic, partition: 0, offset: 3)])
        let read = try await poll(reader, count: 7, limit: .seconds(20))
        #expect(read.map(\.offset) == Array(3..<10))
        #expect(try reader.positions([p0]).map(\.offset) == [10])
        await reader.close()
        broker.cluster?.shutdown()
    }

    @Test func groupsAreDescribedAndCommittedFromOutside() async throws {
        let topic = KafkaTestBroker.uniqueName("groups")
        let broker = try await KafkaTestBroker.withTopics([topic], partitions: 2)
        let p0 = KafkaTopicPartition(topic: topic, partition: 0)
        // A group nobody joined: a commit from outside is accepted, by the mock too.
        let fresh = KafkaTestBroker.uniqueName("fresh")
        let outsider = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: fresh), logger: testLogger("o"))
        try await outsider.commit([KafkaTopicPartitionOffset(topic: topic, partition: 0, offset: 7)])
        #expect(try await outsider.committed([p0], timeout: .seconds(10)).map(\.offset) == [7])
        await outsider.close()

        // A group with a member: the coordinator refuses commits from outside it.
        let group = KafkaTestBroker.uniqueName("active")
        let member = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: group), logger: testLogger("m"))
        try member.subscribe(topics: [topic])
        let deadline = ContinuousClock.now + .seconds(30)
        while try member.assignment().isEmpty, ContinuousClock.now < deadline {
            _ = try await member.poll(maxMessages: 10, timeout: .milliseconds(200))
        }
        #expect(try member.assignment().count == 2)
        let other = try KafkaConsumer(
            configuration: consumerConfiguration(broker.servers, group: group), logger: testLogger("x"))
        await #expect(throws: KafkaError.self) {
            try await other.commit([KafkaTopicPartitionOffset(topic: topic, partition: 0, offset: 1)])
        }
        do {
            let description = try await other.describeGroup(group, timeout: .seconds(10))
            // Seen on Tansu: it answered DescribeGroups for this group, which has one member, with no members.
            // `saga replay reset-group` relies on the member list; there the coordinator's refusal of commits from
            // outside an active group (checked above) is what still protects the group.
            withKnownIssue(
                "Tansu's DescribeGroups can list no members of a group that has one", isIntermittent: true
            ) {
                #expect(description.members.count == 1, "state \(description.state)")
            } when: {
                KafkaTestBroker.isTansu
            }
            #expect(broker.cluster == nil)
        } catch {
            // librdkafka 2.0.2's mock cluster answers neither ListGroups nor DescribeGroups.
            #expect(broker.cluster != nil && error.name == "_UNSUPPORTED_FEATURE")
        }
        await other.close()
        await member.close()
        broker.cluster?.shutdown()
    }
}

extension KafkaOutgoingMessage {
    fileprivate func on(_ partition: Int32) -> KafkaOutgoingMessage {
        var copy = self
        copy.partition = partition
        return copy
    }
}
