import Foundation
import Logging
import SagaEngine
import SagaKafka
import Synchronization

/// Extra headers on re-published messages.
extension SagaHeader {
    /// `topic/partition/offset` a replayed message was read from.
    public static let replayedFrom = "saga-replayed-from"
    /// When a message was replayed (RFC 3339).
    public static let replayedAt = "saga-replayed-at"
    /// `topic/partition/offset` of the dead letter a redriven message was read from.
    public static let redrivenFrom = "saga-redriven-from"
    /// When a dead letter was redriven (RFC 3339).
    public static let redrivenAt = "saga-redriven-at"
}

/// Re-publishes slices of topics and redrives dead letters.
///
/// Reading never joins a consumer group: partitions are assigned and read from a start offset up
/// to the end of the range or the high watermark read at start, so a run always ends (also when it
/// re-publishes to the topic it reads). Re-published messages keep key, value and headers — event
/// ids included, so the consumers' inboxes skip what they already handled — as long as the events
/// are younger than the inbox horizon; a slice reaching past it is refused unless forced.
public final class Replayer: Sendable {
    /// The cluster it reads from and publishes to.
    public let kafka: KafkaSettings
    /// The topic names (prefix) it resolves event types and dead-letter topics with.
    public let topics: TopicNaming
    let logger: Logger

    /// A replayer on `kafka`; it opens clients per run.
    public init(kafka: KafkaSettings, topics: TopicNaming = TopicNaming(), logger: Logger) {
        self.kafka = kafka
        self.topics = topics
        self.logger = logger
    }

    /// Re-publishes the messages of `topic` that `selection` picks to `target` (default: the same
    /// topic), with headers `saga-replayed-from` and `saga-replayed-at` added.
    ///
    /// Without `options.force` the slice is first scanned for messages older than the inbox horizon
    /// and nothing is sent if there is one. A dry run sends nothing and lists every match.
    ///
    /// - Throws: ``ReplayError``: a bad selection, an unknown topic or partition, no broker, the
    ///   horizon guard, or a read that stalled. Send failures do not throw: they are counted.
    public func replayTopic(
        _ topic: String, selection: ReplaySelection, to target: String? = nil, options: ReplayOptions,
        progress: @escaping @Sendable (ReplayProgress) -> Void = { _ in }
    ) async throws(ReplayError) -> ReplaySummary {
        try selection.validate()
        let admin = try makeAdmin()
        let count = try await partitionCount(topic, admin: admin, options: options)
        if let target, target != topic { _ = try await partitionCount(target, admin: admin, options: options) }
        let partitions = selection.partitions ?? Array(0..<count)
        if let bad = partitions.first(where: { $0 >= count }) {
            throw .unknownPartition(topic: topic, partition: bad, partitionCount: count)
        }
        let destination = target ?? topic
        let source = Source(
            partitions: partitions.map { KafkaTopicPartition(topic: topic, partition: $0) },
            target: { _ in destination },
            headers: { message, at in
                message.headers.filter { $0.key != SagaHeader.replayedFrom && $0.key != SagaHeader.replayedAt }
                    + [
                        KafkaHeader(
                            key: SagaHeader.replayedFrom,
                            string: "\(message.topic)/\(message.partition)/\(message.offset)"),
                        KafkaHeader(key: SagaHeader.replayedAt, string: Timestamp.format(at)),
                    ]
            },
            age: { $0.timestamp })
        return try await run(source, selection: selection, options: options, notes: [], progress: progress)
    }

    /// Re-publishes the dead letters of `consumers` (topics `deadletter.<consumer>`) that
    /// `selection` picks to their original topic (header `dlq-source-topic`), keeping the `dlq-*`
    /// headers and adding `saga-redriven-from` and `saga-redriven-at`. A dead-letter topic that does
    /// not exist yet holds no dead letters (noted in the summary). The horizon guard measures a dead
    /// letter's age from the earlier of its record timestamp and its `dlq-at` header.
    ///
    /// - Throws: as ``replayTopic(_:selection:to:options:progress:)``; a dead letter without a
    ///   source topic, or whose source topic is gone, is counted as failed.
    public func redriveDeadLetters(
        consumers: [String], selection: ReplaySelection, options: ReplayOptions,
        progress: @escaping @Sendable (ReplayProgress) -> Void = { _ in }
    ) async throws(ReplayError) -> ReplaySummary {
        try selection.validate()
        let admin = try makeAdmin()
        var partitions: [KafkaTopicPartition] = []
        var notes: [String] = []
        for consumer in consumers {
            let topic = topics.deadLetterTopic(consumer: consumer)
            let count: Int32
            do {
                count = try await partitionCount(topic, admin: admin, options: options)
            } catch .unknownTopic {
                notes.append("\(topic) does not exist: no dead letters for \(consumer)")
                continue
            }
            let chosen = selection.partitions ?? Array(0..<count)
            partitions += chosen.filter { $0 < count }.map { KafkaTopicPartition(topic: topic, partition: $0) }
        }
        var redrivable: [String: Bool] = [:]
        let source = Source(
            partitions: partitions,
            target: { $0.header(SagaHeader.deadLetterSourceTopic) },
            headers: { message, at in
                message.headers.filter { $0.key != SagaHeader.redrivenFrom && $0.key != SagaHeader.redrivenAt }
                    + [
                        KafkaHeader(
                            key: SagaHeader.redrivenFrom,
                            string: "\(message.topic)/\(message.partition)/\(message.offset)"),
                        KafkaHeader(key: SagaHeader.redrivenAt, string: Timestamp.format(at)),
                    ]
            },
            age: { message in
                let at = message.header(SagaHeader.deadLetteredAt).flatMap(Timestamp.parse)
                switch (message.timestamp, at) {
                case (let t?, let a?): return min(t, a)
                case (let t, let a): return t ?? a
                }
            },
            checkTarget: { topic async -> Bool in
                if let known = redrivable[topic] { return known }
                let exists = (try? await admin.partitionCount(topic: topic, timeout: options.requestTimeout)) != nil
                redrivable[topic] = exists
                return exists
            })
        return try await run(source, selection: selection, options: options, notes: notes, progress: progress)
    }

    // MARK: - Internals

    /// What to read and how to re-publish it.
    struct Source {
        var partitions: [KafkaTopicPartition]
        var target: (KafkaMessage) -> String?
        var headers: (KafkaMessage, Date) -> [KafkaHeader]
        /// The time the horizon guard compares; nil counts as past the horizon.
        var age: (KafkaMessage) -> Date?
        /// Whether a target topic exists (checked once per topic before sending to it).
        var checkTarget: ((String) async -> Bool)? = nil
    }

    struct Range {
        var partition: KafkaTopicPartition
        var start: Int64
        var end: Int64
        /// When the end is the high watermark read at `readAt` (not an offset the selection asked for),
        /// records found past it with an earlier timestamp were hidden by a broker reporting the watermark
        /// too low: they are counted as unreached.
        var readAt: Date? = nil
    }

    func makeAdmin() throws(ReplayError) -> KafkaAdmin {
        do {
            return try KafkaAdmin(
                bootstrapServers: kafka.bootstrapServers, properties: kafka.properties, logger: logger)
        } catch {
            throw .kafka(error)
        }
    }

    func makeReader() throws(ReplayError) -> KafkaConsumer {
        // A group id is required to assign partitions; this one is never joined or committed.
        var configuration = kafka.consumer(
            groupId: topics.group("saga-replay-reader-\(UUID().uuidString.prefix(8).lowercased())"),
            clientId: "saga-replay")
        configuration.autoOffsetReset = "earliest"
        do {
            return try KafkaConsumer(configuration: configuration, logger: logger)
        } catch {
            throw .kafka(error)
        }
    }

    func partitionCount(_ topic: String, admin: KafkaAdmin, options: ReplayOptions) async throws(ReplayError) -> Int32 {
        do {
            return try await admin.partitionCount(topic: topic, timeout: options.requestTimeout)
        } catch {
            if error.name == "UNKNOWN_TOPIC_OR_PART" { throw .unknownTopic(topic) }
            throw ReplayError.from(error, bootstrap: kafka.bootstrapServers)
        }
    }

    /// Resolves each partition's offsets: the requested range within the watermarks, starting no
    /// earlier than the first record at or after `since`.
    func ranges(
        _ partitions: [KafkaTopicPartition], selection: ReplaySelection, reader: KafkaConsumer, options: ReplayOptions
    ) async throws(ReplayError) -> [Range] {
        var out: [Range] = []
        do {
            var sinceOffsets: [KafkaTopicPartition: Int64] = [:]
            if let since = selection.since, !partitions.isEmpty {
                for entry in try await reader.offsets(
                    forTimes: partitions.map { ($0, since) }, timeout: options.requestTimeout)
                {
                    sinceOffsets[KafkaTopicPartition(topic: entry.topic, partition: entry.partition)] = entry.offset
                }
            }
            for partition in partitions {
                let readAt = Date()
                let marks = try await reader.watermarks(of: partition, timeout: options.requestTimeout)
                var start = max(marks.low, selection.fromOffset ?? marks.low)
                let end = min(marks.high, selection.toOffset.map { $0 + 1 } ?? marks.high)
                let toWatermark = selection.toOffset.map { $0 + 1 >= marks.high } ?? true
                // Records are filtered by timestamp while reading; the lookup only skips ahead. A -1
                // ("none that recent") is not trusted: librdkafka's mock cluster answers -1 to every
                // time, so a partition answering -1 is read whole.
                if let first = sinceOffsets[partition], first >= 0 { start = max(start, first) }
                out.append(
                    Range(
                        partition: partition, start: start, end: max(start, end),
                        readAt: toWatermark && start <= marks.high ? readAt : nil))
            }
        } catch {
            throw ReplayError.from(error, bootstrap: kafka.bootstrapServers)
        }
        return out
    }

    private func run(
        _ source: Source, selection: ReplaySelection, options: ReplayOptions, notes: [String],
        progress: @escaping @Sendable (ReplayProgress) -> Void
    ) async throws(ReplayError) -> ReplaySummary {
        let reader = try makeReader()
        let ranges: [Range]
        do {
            ranges = try await self.ranges(source.partitions, selection: selection, reader: reader, options: options)
        } catch {
            await reader.close()
            throw error
        }
        await reader.close()
        let horizon = options.horizon
        func withUnreached(_ notes: [String], _ partitions: [ReplayPartitionSummary]) -> [String] {
            notes
                + partitions.filter { $0.unreached > 0 }.map {
                    "\($0.topic)[\($0.partition)]: \($0.unreached) record(s) at offsets \($0.endOffset) and later were "
                        + "written before the run started but lie past the high watermark \($0.endOffset) the broker "
                        + "reported: not read, not replayed"
                }
        }
        func listed(_ message: KafkaMessage) -> ReplayedMessage {
            let age = source.age(message)
            return ReplayedMessage(
                topic: message.topic, partition: message.partition, offset: message.offset,
                key: message.key.map { String(decoding: $0, as: UTF8.self) },
                type: message.header(SagaHeader.eventType),
                timestamp: message.timestamp, target: source.target(message),
                reason: message.header(SagaHeader.deadLetterReason), pastHorizon: age.map { $0 < horizon } ?? true)
        }
        // Dry run, or the horizon check before a real run: the same scan, sending nothing.
        let mustCheckHorizon = !options.force && (selection.since.map { $0 < horizon } ?? true)
        if options.dryRun || mustCheckHorizon {
            let listing = Mutex<[ReplayedMessage]>([])
            let summary = try await scan(ranges, selection: selection, options: options, progress: progress) {
                message, flushOnly in
                if flushOnly { return .skipped }
                listing.withLock { $0.append(listed(message)) }
                return .skipped
            }
            let messages = listing.withLock { $0 }
            let past = messages.filter(\.pastHorizon)
            if options.dryRun {
                return ReplaySummary(
                    dryRun: true, horizon: horizon, partitions: summary, messages: messages, pastHorizon: past.count,
                    failures: [], notes: withUnreached(notes, summary))
            }
            if !past.isEmpty {
                throw .pastInboxHorizon(
                    horizon: horizon, retention: options.inboxRetention,
                    oldest: past.compactMap(\.timestamp).min(), count: past.count)
            }
        }

        let producer: KafkaProducer
        do {
            producer = try KafkaProducer(configuration: kafka.producer(clientId: "saga-replay"), logger: logger)
        } catch {
            throw .kafka(error)
        }
        let sentAt = Date()
        let sender = BatchSender(producer: producer, batchSize: options.sendBatchSize)
        let summary: [ReplayPartitionSummary]
        do throws(ReplayError) {
            summary = try await scan(ranges, selection: selection, options: options, progress: progress) {
                message, flushOnly in
                if flushOnly { return await sender.flush() }
                guard let target = source.target(message) else {
                    sender.recordFailure(
                        "\(message.topic)/\(message.partition)/\(message.offset): no \(SagaHeader.deadLetterSourceTopic) header"
                    )
                    return .failed(message)
                }
                if let check = source.checkTarget, await !check(target) {
                    sender.recordFailure(
                        "\(message.topic)/\(message.partition)/\(message.offset): target topic '\(target)' does not exist"
                    )
                    return .failed(message)
                }
                let outgoing = KafkaOutgoingMessage(
                    topic: target, key: message.key, value: message.value, headers: source.headers(message, sentAt))
                return await sender.add(outgoing, from: message)
            }
        } catch {
            await producer.shutdown()
            throw error
        }
        await producer.shutdown()
        let failureList = sender.failures
        return ReplaySummary(
            dryRun: false, horizon: horizon, partitions: summary, messages: [], pastHorizon: 0,
            failures: Array(failureList.prefix(20)), notes: withUnreached(notes, summary))
    }

    /// What the scan's per-message body did.
    enum Disposition {
        case skipped
        case failed(KafkaMessage)
        /// Messages whose sends completed (a batch was flushed), with their results.
        case completed([(KafkaMessage, Bool)])
    }

    /// Reads every range to its end, calls `body` for each matching message, and once more with
    /// `flushOnly` at the end; counts what `body` reports per partition.
    ///
    /// A range that ends at the high watermark is then read on while its records are older than the
    /// watermark: a broker that reports the watermark too low (Tansu: the last batch's base offset + 1)
    /// would otherwise end the slice early without a word. Such records are counted as `unreached`.
    func scan(
        _ ranges: [Range], selection: ReplaySelection, options: ReplayOptions,
        progress: @escaping @Sendable (ReplayProgress) -> Void,
        body: (KafkaMessage, _ flushOnly: Bool) async -> Disposition
    ) async throws(ReplayError) -> [ReplayPartitionSummary] {
        var summaries: [KafkaTopicPartition: ReplayPartitionSummary] = [:]
        for range in ranges {
            summaries[range.partition] = ReplayPartitionSummary(
                topic: range.partition.topic, partition: range.partition.partition, startOffset: range.start,
                endOffset: range.end)
        }
        func ordered() -> [ReplayPartitionSummary] {
            ranges.compactMap { summaries[$0.partition] }
        }
        func apply(_ disposition: Disposition) {
            switch disposition {
            case .skipped: break
            case .failed(let m): summaries[KafkaTopicPartition(topic: m.topic, partition: m.partition)]?.failed += 1
            case .completed(let results):
                for (m, ok) in results {
                    let key = KafkaTopicPartition(topic: m.topic, partition: m.partition)
                    if ok { summaries[key]?.sent += 1 } else { summaries[key]?.failed += 1 }
                }
            }
        }
        let total = ranges.reduce(Int64(0)) { $0 + ($1.end - $1.start) }
        let started = ContinuousClock.now
        var lastReport = started
        var sinceReport = 0
        func report(force: Bool = false) {
            let now = ContinuousClock.now
            guard force || sinceReport >= options.progressEvery || now - lastReport >= options.progressInterval else {
                return
            }
            lastReport = now
            sinceReport = 0
            let all = ordered()
            progress(
                ReplayProgress(
                    scanned: all.reduce(0) { $0 + $1.scanned }, total: total,
                    matched: all.reduce(0) { $0 + $1.matched },
                    sent: all.reduce(0) { $0 + $1.sent }, failed: all.reduce(0) { $0 + $1.failed },
                    elapsed: now - started))
        }

        var remaining: [KafkaTopicPartition: Int64] = [:]
        for range in ranges where range.start < range.end { remaining[range.partition] = range.end }
        // Ranges ending at the high watermark: read past it while records are older than the watermark.
        var beyond: [KafkaTopicPartition: (end: Int64, readAt: Date)] = [:]
        for range in ranges { if let readAt = range.readAt { beyond[range.partition] = (range.end, readAt) } }
        func checkBeyond(_ message: KafkaMessage, _ key: KafkaTopicPartition) {
            guard let (end, readAt) = beyond[key], message.offset >= end else { return }
            if let written = message.timestamp, written < readAt {
                summaries[key]?.unreached += 1
            } else {
                beyond[key] = nil  // written after the watermark was read: the rest is newer still
            }
        }
        guard !remaining.isEmpty || !beyond.isEmpty else {
            apply(
                await body(
                    KafkaMessage(topic: "", partition: 0, offset: 0, key: nil, value: [], headers: [], timestamp: nil),
                    true))
            return ordered()
        }
        let reader = try makeReader()
        do {
            try await reader.assign(
                ranges.filter { $0.start < $0.end || $0.readAt != nil }.map {
                    KafkaTopicPartitionOffset(
                        topic: $0.partition.topic, partition: $0.partition.partition, offset: $0.start)
                })
            var lastRecord = ContinuousClock.now
            while !remaining.isEmpty {
                let batch = try await reader.poll(maxMessages: 500, timeout: .milliseconds(200))
                if batch.isEmpty {
                    // Gaps (compaction, transaction markers) can leave the last offsets unreadable.
                    for position in try reader.positions(Array(remaining.keys)) {
                        let key = KafkaTopicPartition(topic: position.topic, partition: position.partition)
                        if let end = remaining[key], position.offset >= end { remaining[key] = nil }
                    }
                    if !remaining.isEmpty && ContinuousClock.now - lastRecord > options.stallTimeout {
                        let waiting = remaining.keys.map { "\($0.topic)[\($0.partition)]" }.sorted().joined(
                            separator: ", ")
                        throw ReplayError.stalled(
                            "no record arrived for \(options.stallTimeout) before the end of the slice on \(waiting)")
                    }
                    report()
                    continue
                }
                lastRecord = ContinuousClock.now
                for message in batch {
                    let key = KafkaTopicPartition(topic: message.topic, partition: message.partition)
                    guard let end = remaining[key] else {
                        checkBeyond(message, key)
                        continue
                    }
                    guard message.offset < end else {
                        remaining[key] = nil
                        checkBeyond(message, key)
                        continue
                    }
                    summaries[key]?.scanned += 1
                    sinceReport += 1
                    if selection.matches(message) {
                        summaries[key]?.matched += 1
                        apply(await body(message, false))
                    }
                    if message.offset >= end - 1 { remaining[key] = nil }
                }
                report()
            }
            // Past the watermarks: until a poll brings nothing, or only records written after them.
            let drainDeadline = ContinuousClock.now + options.stallTimeout
            while !beyond.isEmpty, ContinuousClock.now < drainDeadline {
                let batch = try await reader.poll(maxMessages: 500, timeout: .milliseconds(200))
                if batch.isEmpty { break }
                for message in batch {
                    checkBeyond(message, KafkaTopicPartition(topic: message.topic, partition: message.partition))
                }
            }
            apply(
                await body(
                    KafkaMessage(topic: "", partition: 0, offset: 0, key: nil, value: [], headers: [], timestamp: nil),
                    true))
            report(force: true)
        } catch let error as ReplayError {
            await reader.close()
            throw error
        } catch let error as KafkaError {
            await reader.close()
            throw ReplayError.from(error, bootstrap: kafka.bootstrapServers)
        } catch {
            await reader.close()
            throw ReplayError.stalled("\(error)")
        }
        await reader.close()
        return ordered()
    }
}

/// Collects outgoing messages and sends them in batches (in order, so per-key order holds).
final class BatchSender: Sendable {
    private let producer: KafkaProducer
    private let batchSize: Int
    private let pending = Mutex<[(KafkaOutgoingMessage, KafkaMessage)]>([])
    private let failureLog = Mutex<[String]>([])

    var failures: [String] { failureLog.withLock { $0 } }

    func recordFailure(_ text: String) {
        failureLog.withLock { $0.append(text) }
    }

    init(producer: KafkaProducer, batchSize: Int) {
        self.producer = producer
        self.batchSize = max(1, batchSize)
    }

    func add(_ outgoing: KafkaOutgoingMessage, from source: KafkaMessage) async -> Replayer.Disposition {
        let full = pending.withLock { pending in
            pending.append((outgoing, source))
            return pending.count >= batchSize
        }
        return full ? await flush() : .skipped
    }

    func flush() async -> Replayer.Disposition {
        let batch = pending.withLock { pending in
            defer { pending = [] }
            return pending
        }
        guard !batch.isEmpty else { return .skipped }
        let results = await producer.send(batch.map(\.0))
        var completed: [(KafkaMessage, Bool)] = []
        for (index, result) in results.enumerated() {
            let source = batch[index].1
            switch result {
            case .success: completed.append((source, true))
            case .failure(let error):
                recordFailure("\(source.topic)/\(source.partition)/\(source.offset): \(error)")
                completed.append((source, false))
            }
        }
        return .completed(completed)
    }
}
