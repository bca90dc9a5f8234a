import Foundation
import Logging
import SagaEngine
import SagaKafka
import SagaOperations
import SagaServices
import SagaTestSupport
import Testing

/// `saga replay` on real workers, relays, PostgreSQL and a broker: re-delivery changes nothing,
/// a fixed poison event completes its saga when redriven, dry runs send nothing, group resets
/// respect active members, and the inbox horizon guards old slices.
@Suite(.serialized) struct ReplayTests {
    static let logger = Logger(label: "replay-test")

    @Test func replayingASliceRedeliversItAndChangesNothing() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let start = Date()
        // One saga after the other, so that each order's inventory.reserved goes in a producer batch of its own:
        // Tansu answers ListOffsets(latest) with the base offset of a partition's last batch plus one, so two
        // records relayed in one batch count as one in its high watermark (a replay reads up to it).
        let confirmed = try await stack.place("alice", [("widget", 1)])
        #expect(try await stack.waitForTerminal(confirmed).status == "CONFIRMED")
        let declined = try await stack.place("carol", [("gadget", 1)])
        #expect(try await stack.waitForTerminal(declined).status == "CANCELLED")
        try await stack.waitForOutboxesPublished()
        try await stack.waitUntilConsumed(OrderCancelled.eventType, count: 1, by: ["inventory", "billing"])
        let before = try await stack.stateSnapshot()
        let replayer = stack.replayer()
        let created = stack.topics.topic(for: "order.created")
        let reserved = stack.topics.topic(for: "inventory.reserved")
        // A replay reads up to the high watermarks: wait until the broker counts both orders' records there.
        try await stack.eventually("the high watermarks count both orders' records") {
            try await stack.endOffsets([created, reserved]).values.allSatisfy { $0 >= 2 }
        }
        let endsBefore = try await stack.endOffsets([created, reserved])

        // A dry run lists the saga's order.created and sends nothing.
        var options = ReplayOptions()
        options.dryRun = true
        let dry = try await replayer.replayTopic(
            created, selection: ReplaySelection(sagaId: confirmed), options: options)
        #expect(dry.matched == 1 && dry.sent == 0)
        #expect(dry.scanned == 2)
        #expect(dry.messages.map(\.key) == [confirmed])
        #expect(dry.messages.first?.type == "order.created")
        #expect(try await stack.endOffsets([created, reserved]) == endsBefore)

        // All of order.created for the finished saga, for real.
        let inventoryDuplicates = stack.worker("inventory")!.stats.duplicates
        let one = try await replayer.replayTopic(
            created, selection: ReplaySelection(sagaId: confirmed), options: ReplayOptions())
        #expect(one.matched == 1 && one.sent == 1 && one.failed == 0)
        try await stack.eventually("inventory skipped the replayed order.created") {
            stack.worker("inventory")!.stats.duplicates >= inventoryDuplicates + 1
        }

        // A time-range slice: every inventory.reserved since the test began (both orders reserved stock).
        let billingDuplicates = stack.worker("billing")!.stats.duplicates
        let slice = try await replayer.replayTopic(
            reserved, selection: ReplaySelection(since: start, until: Date()), options: ReplayOptions())
        #expect(slice.matched == 2 && slice.sent == 2)
        let empty = try await replayer.replayTopic(
            reserved, selection: ReplaySelection(until: start.addingTimeInterval(-60)), options: ReplayOptions())
        #expect(empty.scanned >= 2 && empty.matched == 0 && empty.sent == 0)
        try await stack.eventually("billing skipped both replayed inventory.reserved") {
            stack.worker("billing")!.stats.duplicates >= billingDuplicates + 2
        }

        // The messages are on the topics again, marked as replays.
        let endsAfter = try await stack.endOffsets([created, reserved])
        #expect(endsAfter[created] == endsBefore[created]! + 1)
        // On Tansu the two replayed records may travel as one batch to one partition, and it then moves the high
        // watermark by 1 (see recordsPastALowHighWatermarkAreReportedNotSilentlySkipped); billing saw both above.
        withKnownIssue("Tansu's high watermark is the last batch's base offset + 1", isIntermittent: true) {
            #expect(endsAfter[reserved] == endsBefore[reserved]! + 2)
        } when: {
            KafkaTestBroker.isTansu
        }
        let again = try await stack.consumeAll([created], atLeast: 3)
        let replayed = again.filter { $0.header(SagaHeader.replayedFrom) != nil }
        #expect(replayed.count == 1)
        if let copy = replayed.first,
            let original = again.first(where: { $0.header(SagaHeader.replayedFrom) == nil && $0.key == copy.key })
        {
            #expect(copy.header(SagaHeader.replayedFrom) == "\(created)/\(original.partition)/\(original.offset)")
            #expect(copy.value == original.value)
            #expect(copy.header(SagaHeader.eventId) == original.header(SagaHeader.eventId))
            #expect(copy.header(SagaHeader.replayedAt).flatMap(Timestamp.parse) != nil)
        }
        try await Task.sleep(for: .milliseconds(500))
        let after = try await stack.stateSnapshot()
        await stack.stop()
        #expect(before == after)
    }

    @Test func aPoisonEventFixedAndRedrivenCompletesItsSaga() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        // Orders prices a SKU that inventory does not stock: inventory dead-letters order.created.
        _ = try await stack.query(
            "orders", "INSERT INTO prices (sku, currency, unit_price) VALUES ('sprocket', 'EUR', 700)")
        let id = try await stack.place("alice", [("sprocket", 2)])
        let deadLetters = stack.topics.deadLetterTopic(consumer: "inventory")
        let created = stack.topics.topic(for: "order.created")
        try await stack.eventually("the dead letter is published") {
            try await stack.endOffsets([deadLetters])[deadLetters]! >= 1
        }
        #expect(try await stack.book.view(UUID(uuidString: id)!)?.status == "PENDING")
        let replayer = stack.replayer()

        // Dry run first: the dead letter is listed with its reason and target, nothing is sent.
        var dryRun = ReplayOptions()
        dryRun.dryRun = true
        let endsBefore = try await stack.endOffsets([created])
        let listed = try await replayer.redriveDeadLetters(
            consumers: TestStack.services, selection: ReplaySelection(sagaId: id), options: dryRun)
        #expect(listed.matched == 1 && listed.sent == 0)
        #expect(listed.messages.first?.reason?.hasPrefix("rejected: unknown SKU 'sprocket'") == true)
        #expect(listed.messages.first?.target == created)
        #expect(try await stack.endOffsets([created]) == endsBefore)
        let otherReason = try await replayer.redriveDeadLetters(
            consumers: ["inventory"], selection: ReplaySelection(reason: "schema"), options: dryRun)
        #expect(otherReason.scanned == 1 && otherReason.matched == 0)

        // The fix, then the redrive.
        _ = try await stack.query("inventory", "INSERT INTO stock (sku, available) VALUES ('sprocket', 10)")
        let redriven = try await replayer.redriveDeadLetters(
            consumers: ["inventory"], selection: ReplaySelection(sagaId: id, reason: "unknown SKU"),
            options: ReplayOptions())
        #expect(redriven.matched == 1 && redriven.sent == 1 && redriven.failed == 0)
        #expect(try await stack.waitForTerminal(id).status == "CONFIRMED")
        let stock = try await stack.query("inventory", "SELECT available, sold FROM stock WHERE sku = 'sprocket'")
        #expect(try stock.first?.decode("available", as: Int.self) == 8)
        #expect(try stock.first?.decode("sold", as: Int.self) == 2)
        let copies = try await stack.consumeAll([created], atLeast: 2).filter {
            $0.header(SagaHeader.redrivenFrom) != nil
        }
        #expect(copies.count == 1)
        #expect(copies.first?.header(SagaHeader.deadLetterReason)?.contains("sprocket") == true)
        #expect(copies.first?.header(SagaHeader.redrivenFrom)?.hasPrefix("\(deadLetters)/") == true)
        await stack.stop()
    }

    @Test func aGroupResetRefusesAnActiveGroupAndMovesAnEmptyOne() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let id = try await stack.place("alice", [("widget", 1)])
        _ = try await stack.waitForTerminal(id)
        let replayer = stack.replayer()
        let group = stack.topics.group("inventory")
        let created = stack.topics.topic(for: "order.created")
        await #expect(throws: ReplayError.self) {
            _ = try await replayer.planGroupReset(group: group, topics: [created], target: .earliest)
        }
        do {
            _ = try await replayer.planGroupReset(group: group, topics: [created], target: .earliest)
        } catch {
            guard case .groupActive = error else { throw error }
        }

        await stack.stopWorker("inventory")
        let plan = try await replayer.planGroupReset(group: group, topics: [created], target: .earliest)
        #expect(plan.executed == false)
        #expect(plan.rows.count == 4)
        #expect(plan.rows.allSatisfy { $0.new == $0.low })
        #expect(plan.rows.contains { ($0.current ?? 0) == 1 })  // the one order.created was handled and committed
        // A dry run commits nothing.
        let partitions = plan.rows.map { KafkaTopicPartition(topic: $0.topic, partition: $0.partition) }
        #expect(
            try await stack.committed(group: group, partitions)
                == plan.rows.map { $0.current ?? KafkaTopicPartitionOffset.noOffset })

        let done = try await replayer.executeGroupReset(plan)
        #expect(done.executed)
        #expect(try await stack.committed(group: group, partitions) == plan.rows.map(\.new))
        let latest = try await replayer.executeGroupReset(
            try await replayer.planGroupReset(
                group: group, topics: [created], target: .latest, partition: plan.rows[0].partition))
        #expect(latest.rows.count == 1)
        #expect(try await stack.committed(group: group, [partitions[0]]) == [latest.rows[0].high])
        await stack.stop()
    }

    @Test func aGroupResetPastTheInboxHorizonIsRefusedWithoutForce() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let id = try await stack.place("alice", [("widget", 1)])
        _ = try await stack.waitForTerminal(id)
        await stack.stopWorker("inventory")
        let replayer = stack.replayer()
        let group = stack.topics.group("inventory")
        let created = stack.topics.topic(for: "order.created")
        let partitions = (0..<4).map { KafkaTopicPartition(topic: created, partition: Int32($0)) }
        let before = try await stack.committed(group: group, partitions)
        // A test-sized horizon: retention of one hour, measured 50 minutes from now. The order.created is
        // inside it, but not by the margin a restarted consumer needs to reach it (15 minutes).
        var options = ReplayOptions()
        options.inboxRetention = .seconds(3600)
        options.now = Date().addingTimeInterval(3000)
        options.consumerLagMargin = .seconds(900)
        let plan = try await replayer.planGroupReset(
            group: group, topics: [created], target: .earliest, options: options)
        #expect(plan.rows.map(\.pastHorizon).reduce(0, +) == 1)
        #expect(plan.horizon != nil)
        do {
            _ = try await replayer.executeGroupReset(plan, options: options)
            Issue.record("a reset past the horizon was executed without --force")
        } catch {
            guard case .pastInboxHorizon(_, _, _, let count) = error else { throw error }
            #expect(count == 1)
        }
        let refused = try await stack.committed(group: group, partitions)
        // Moving forward (to the end) never redelivers anything: no guard.
        let latest = try await replayer.planGroupReset(
            group: group, topics: [created], target: .latest, options: options)
        #expect(latest.rows.allSatisfy { $0.pastHorizon == 0 })
        // Without the margin the same reset is inside the horizon.
        var noMargin = options
        noMargin.consumerLagMargin = .zero
        let inside = try await replayer.planGroupReset(
            group: group, topics: [created], target: .earliest, options: noMargin)
        #expect(inside.rows.allSatisfy { $0.pastHorizon == 0 })
        options.force = true
        let forced = try await replayer.executeGroupReset(plan, options: options)
        let after = try await stack.committed(group: group, partitions)
        await stack.stop()

        #expect(refused == before)
        #expect(forced.executed)
        #expect(after == plan.rows.map(\.new))
    }

    @Test func aSliceOlderThanTheInboxHorizonIsRefusedWithoutForce() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let id = try await stack.place("alice", [("widget", 1)])
        _ = try await stack.waitForTerminal(id)
        try await stack.waitForOutboxesPublished()
        let replayer = stack.replayer()
        let created = stack.topics.topic(for: "order.created")
        let ends = try await stack.endOffsets([created])
        // A test-sized horizon: retention of one minute, measured an hour from now.
        var options = ReplayOptions()
        options.inboxRetention = .seconds(60)
        options.now = Date().addingTimeInterval(3600)
        do {
            _ = try await replayer.replayTopic(created, selection: ReplaySelection(), options: options)
            Issue.record("a slice past the horizon was replayed without --force")
        } catch {
            guard case .pastInboxHorizon(_, _, _, let count) = error else { throw error }
            #expect(count == 1)
            #expect("\(error)".contains("SAGA_INBOX_RETENTION=1m"))
        }
        #expect(try await stack.endOffsets([created]) == ends)
        // Within the horizon (the real clock) the same slice passes.
        var fresh = ReplayOptions()
        fresh.inboxRetention = .seconds(3600)
        fresh.dryRun = true
        let dry = try await replayer.replayTopic(created, selection: ReplaySelection(), options: fresh)
        #expect(dry.pastHorizon == 0 && dry.matched == 1)
        options.force = true
        let forced = try await replayer.replayTopic(created, selection: ReplaySelection(), options: options)
        #expect(forced.sent == 1)
        #expect(try await stack.endOffsets([created])[created] == ends[created]! + 1)
        await stack.stop()
    }

    /// A replay reads up to the high watermark read at its start. A broker that reports it too low (Tansu:
    /// the last batch's base offset + 1) hides records written before the start: the replay must count
    /// and name them, not end quietly as if the slice were complete.
    @Test func recordsPastALowHighWatermarkAreReportedNotSilentlySkipped() async throws {
        let topic = KafkaTestBroker.uniqueName("replay-hw")
        let broker = try await KafkaTestBroker.withTopics([topic], partitions: 1)
        let kafka = KafkaSettings(bootstrapServers: broker.servers)
        let producer = try KafkaProducer(configuration: kafka.producer(clientId: "test"), logger: Self.logger)
        // Sent at once, so that they travel (and are stored) as one batch.
        let outgoing = (0..<10).map {
            KafkaOutgoingMessage(topic: topic, key: Array("k\($0)".utf8), value: Array("v\($0)".utf8), partition: 0)
        }
        for result in await producer.send(outgoing) { _ = try result.get() }
        await producer.shutdown()
        let replayer = Replayer(kafka: kafka, logger: Self.logger)
        var options = ReplayOptions()
        options.dryRun = true
        let summary = try await replayer.replayTopic(topic, selection: ReplaySelection(), options: options)
        let partition = try #require(summary.partitions.first)
        #expect(summary.messages.map(\.offset) == Array(0..<Int64(summary.scanned)))
        #expect(summary.scanned + summary.unreached == 10, "every record is either read or reported")
        #expect(partition.unreached == summary.unreached)
        if summary.unreached > 0 {
            #expect(
                summary.notes.contains { $0.contains("\(topic)[0]") && $0.contains("\(summary.unreached) record") },
                "\(summary.notes)")
        }
        if KafkaTestBroker.isTansu {
            // The ten records usually travel as one batch, and Tansu then reports the high watermark 1.
            withKnownIssue("Tansu's high watermark is the last batch's base offset + 1", isIntermittent: true) {
                #expect(summary.unreached == 0, "\(summary.notes)")
            }
        } else if KafkaTestBroker.usesRealKafka || broker.cluster != nil {
            #expect(summary.unreached == 0 && partition.endOffset == 10)  // a correct high watermark
        }
        withExtendedLifetime(broker.cluster) {}
    }

    @Test func badInputIsRefusedAndSendsNothing() async throws {
        let stack = try await TestStack()
        let replayer = stack.replayer()
        let created = stack.topics.topic(for: "order.created")
        let ends = try await stack.endOffsets([created])
        /// Expects `body` to fail with the ReplayError case named `expected`.
        func expectFailure(_ what: String, is expected: String, _ body: () async throws -> Void) async {
            do {
                try await body()
                Issue.record("\(what) was accepted")
            } catch let error as ReplayError {
                #expect(Mirror(reflecting: error).children.first?.label == expected, "\(what): \(error)")
            } catch {
                Issue.record("\(what): not a ReplayError: \(error)")
            }
        }
        await expectFailure("an unknown topic", is: "unknownTopic") {
            _ = try await replayer.replayTopic(
                "no-such-topic-\(UUID())", selection: ReplaySelection(), options: ReplayOptions())
        }
        await expectFailure("from > to", is: "invalidSelection") {
            _ = try await replayer.replayTopic(
                created, selection: ReplaySelection(fromOffset: 5, toOffset: 2), options: ReplayOptions())
        }
        await expectFailure("since > until", is: "invalidSelection") {
            _ = try await replayer.replayTopic(
                created, selection: ReplaySelection(since: Date(), until: Date().addingTimeInterval(-60)),
                options: ReplayOptions())
        }
        await expectFailure("an unknown partition", is: "unknownPartition") {
            _ = try await replayer.replayTopic(
                created, selection: ReplaySelection(partitions: [99]), options: ReplayOptions())
        }
        await expectFailure("an unknown --to topic", is: "unknownTopic") {
            _ = try await replayer.replayTopic(
                created, selection: ReplaySelection(), to: "no-such-\(UUID())", options: ReplayOptions())
        }
        var quick = ReplayOptions()
        quick.requestTimeout = .seconds(2)
        let nowhere = Replayer(
            kafka: KafkaSettings(bootstrapServers: "127.0.0.1:1"), topics: stack.topics, logger: stack.logger)
        await expectFailure("an unreachable broker", is: "brokerUnreachable") {
            _ = try await nowhere.replayTopic(created, selection: ReplaySelection(), options: quick)
        }
        #expect(
            ReplayDurations.parseTime("15m", now: Date(timeIntervalSince1970: 1000)) == Date(timeIntervalSince1970: 100)
        )
        #expect(ReplayDurations.parseTime("2024-05-01T10:00:00Z") == Date(timeIntervalSince1970: 1_714_557_600))
        #expect(ReplayDurations.parseTime("yesterday") == nil)
        #expect(try await stack.endOffsets([created]) == ends)
        await stack.stop()
    }
}

extension TestStack {
    func replayer() -> Replayer { Replayer(kafka: kafka, topics: topics, logger: logger) }

    /// The sum of the high watermarks of each topic's partitions.
    func endOffsets(_ names: [String]) async throws -> [String: Int64] {
        let admin = try KafkaAdmin(bootstrapServers: kafka.bootstrapServers, logger: logger)
        let reader = try KafkaConsumer(
            configuration: kafka.consumer(groupId: KafkaTestBroker.uniqueName("ends"), clientId: "test"), logger: logger
        )
        var out: [String: Int64] = [:]
        for name in names {
            var sum: Int64 = 0
            for p in 0..<(try await admin.partitionCount(topic: name, timeout: .seconds(10))) {
                sum += try await reader.watermarks(
                    of: KafkaTopicPartition(topic: name, partition: p), timeout: .seconds(10)
                ).high
            }
            out[name] = sum
        }
        await reader.close()
        return out
    }

    /// The group's committed offsets, read from outside the group.
    func committed(group: String, _ partitions: [KafkaTopicPartition]) async throws -> [Int64] {
        let client = try KafkaConsumer(configuration: kafka.consumer(groupId: group, clientId: "test"), logger: logger)
        let offsets = try await client.committed(partitions, timeout: .seconds(10))
        await client.close()
        return offsets.map(\.offset)
    }

    /// Waits until every outbox row is published (the relays are idle).
    func waitForOutboxesPublished() async throws {
        try await eventually("every outbox row published") {
            var pending = 0
            for s in Self.services {
                pending += try await query(s, "SELECT count(*) AS n FROM saga_outbox")
                    .first!.decode("n", as: Int.self)
            }
            return pending == 0
        }
    }

    /// Every state a saga touches, to compare before and after re-deliveries.
    func stateSnapshot() async throws -> [String] {
        var out: [String] = []
        for r in try await query("orders", "SELECT id::text, status FROM orders ORDER BY id") {
            out.append("order \(try r.decode("id", as: String.self)) \(try r.decode("status", as: String.self))")
        }
        for r in try await query("inventory", "SELECT sku, available, reserved, sold FROM stock ORDER BY sku") {
            out.append(
                "stock \(try r.decode("sku", as: String.self)) \(try r.decode("available", as: Int.self)) "
                    + "\(try r.decode("reserved", as: Int.self)) \(try r.decode("sold", as: Int.self))")
        }
        for r in try await query("billing", "SELECT customer_id, used FROM accounts ORDER BY customer_id") {
            out.append(
                "account \(try r.decode("customer_id", as: String.self)) \(try r.decode("used", as: Int64.self))")
        }
        for s in Self.services {
            // Published rows are deleted, so the outbox holds only what is unpublished; the events a service
            // received (its inbox) show whether a re-delivery made anything emit again.
            let n = try await query(s, "SELECT count(*) AS n FROM saga_outbox").first!.decode("n", as: Int.self)
            out.append("outbox \(s) \(n)")
            let handled = try await query(s, "SELECT count(*) AS n FROM saga_inbox").first!.decode("n", as: Int.self)
            out.append("inbox \(s) \(handled)")
        }
        return out
    }
}
