import ArgumentParser
import Foundation
import SagaEngine
import SagaOperations

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Re-publish a slice of a topic, redrive dead letters, reset a consumer group's offsets.",
        discussion: """
            Replayed events keep their event ids, so the consumers' inboxes skip what they already handled — \
            within the inbox retention (SAGA_INBOX_RETENTION, default 7d). A slice holding older messages is \
            refused unless --force. Dry-run first: --dry-run lists what would be sent and sends nothing. \
            Topic and group names get SAGA_TOPIC_PREFIX when they do not start with it already.
            """,
        subcommands: [ReplayTopicCommand.self, ReplayDeadLettersCommand.self, ReplayResetGroupCommand.self])
}

/// Options shared by `replay topic` and `replay dead-letters`.
struct ReplaySliceOptions: ParsableArguments {
    @Option(help: "Only this partition (repeat for several; default: all).") var partition: [Int32] = []
    @Option(help: "Records at or after this time: RFC 3339 (2024-05-01T10:00:00Z) or how long ago (15m, 2h, 7d).")
    var since: String?
    @Option(help: "Records at or before this time (same forms as --since).") var until: String?
    @Option(help: "Only this saga (the Kafka key).") var saga: String?
    @Flag(help: "List what would be sent (partition, offset, key, type, timestamp); send nothing.") var dryRun = false
    @Flag(help: "Send even messages older than the inbox horizon (SAGA_INBOX_RETENTION).") var force = false
    @Flag(help: "Print JSON instead of tables.") var json = false

    func selection(now: Date) throws -> ReplaySelection {
        func time(_ raw: String?, _ flag: String) throws -> Date? {
            guard let raw else { return nil }
            guard let date = ReplayDurations.parseTime(raw, now: now) else {
                throw ReplayError.invalidSelection(
                    "\(flag) '\(raw)': expected an RFC 3339 time (2024-05-01T10:00:00Z) or a duration ago (15m, 2h, 7d)"
                )
            }
            return date
        }
        return ReplaySelection(
            partitions: partition.isEmpty ? nil : partition, since: try time(since, "--since"),
            until: try time(until, "--until"), sagaId: saga)
    }

    func options(_ env: SagaEnvironment, now: Date) -> ReplayOptions {
        var options = ReplayOptions()
        options.dryRun = dryRun
        options.force = force
        options.inboxRetention = env.inboxRetention
        options.now = now
        return options
    }
}

struct ReplayTopicCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topic",
        abstract: "Re-publish a slice of a topic (to the same topic or --to another).",
        discussion: """
            Reads without joining a consumer group, up to --to-offset or the end of each partition as it was at \
            start, so it always ends. Re-published messages keep key, value and headers and get \
            saga-replayed-from (topic/partition/offset) and saga-replayed-at.
            """)

    @Argument(help: "The topic (an event type such as order.created).") var topic: String
    @Option(help: "First offset (inclusive), per partition.") var fromOffset: Int64?
    @Option(help: "Last offset (inclusive), per partition.") var toOffset: Int64?
    @Option(help: "Only events of this type (header saga-event-type).") var type: String?
    @Option(help: "Publish to this topic instead.") var to: String?
    @OptionGroup var slice: ReplaySliceOptions

    func run() async throws {
        let runtime = try Runtime.start("saga.replay")
        let now = Date()
        var selection = try slice.selection(now: now)
        selection.fromOffset = fromOffset
        selection.toOffset = toOffset
        selection.eventType = type
        let replayer = Replayer(kafka: try runtime.env.kafka(), topics: runtime.env.topics, logger: runtime.logger)
        let summary = try await replayer.replayTopic(
            prefixed(topic, runtime.env), selection: selection, to: to.map { prefixed($0, runtime.env) },
            options: slice.options(runtime.env, now: now), progress: ReplayOutput.progress)
        try ReplayOutput.print(summary, json: slice.json, deadLetters: false, retention: runtime.env.inboxRetention)
    }
}

struct ReplayDeadLettersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letters",
        abstract: "Redrive dead letters to the topic they came from (header dlq-source-topic).",
        discussion: """
            Reads deadletter.<service> for every service, or --service. Redriven messages keep their dlq-* headers \
            and get saga-redriven-from (topic/partition/offset) and saga-redriven-at. Fix the cause first (e.g. \
            add the missing SKU), then redrive.
            """)

    @Option(help: "Only this service's dead letters (repeat for several): orders, inventory, billing.")
    var service: [String] = []
    @Option(help: "Only dead letters whose reason (dlq-reason) contains this text.") var reason: String?
    @OptionGroup var slice: ReplaySliceOptions

    func run() async throws {
        let runtime = try Runtime.start("saga.replay")
        for name in service { _ = try Stack.definition(name) }
        let now = Date()
        var selection = try slice.selection(now: now)
        selection.reason = reason
        let replayer = Replayer(kafka: try runtime.env.kafka(), topics: runtime.env.topics, logger: runtime.logger)
        let summary = try await replayer.redriveDeadLetters(
            consumers: service.isEmpty ? Stack.services : service, selection: selection,
            options: slice.options(runtime.env, now: now), progress: ReplayOutput.progress)
        try ReplayOutput.print(summary, json: slice.json, deadLetters: true, retention: runtime.env.inboxRetention)
    }
}

struct ReplayResetGroupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset-group",
        abstract: "Move a consumer group's committed offsets (dry run unless --execute).",
        discussion: """
            Shows current -> new offsets per partition. Refuses while the group has active members: stop its \
            workers first. Exactly one of --to-earliest, --to-latest, --to-time, --to-offset. Moving a group back \
            delivers its records again: records older than the inbox horizon (SAGA_INBOX_RETENTION) plus \
            --lag-margin (the time the restarted consumers need to reach them) are counted (PAST HORIZON) and \
            refused unless --force.
            """)

    @Argument(help: "The consumer group (a service name such as inventory).") var group: String
    @Option(help: "A topic of the group (repeat for several).") var topic: [String] = []
    @Flag(help: "To the oldest offset kept.") var toEarliest = false
    @Flag(help: "To the end: skip everything not yet consumed.") var toLatest = false
    @Option(help: "To the first record at or after this time (RFC 3339 or 15m/2h/7d ago).") var toTime: String?
    @Option(help: "To this offset (clamped to what the partition holds).") var toOffset: Int64?
    @Option(help: "Only this partition.") var partition: Int32?
    @Flag(help: "Commit the new offsets (without it nothing changes).") var execute = false
    @Option(help: "How long the consumers may take to reach the records delivered again (e.g. 30m, 2h).")
    var lagMargin = "1h"
    @Flag(help: "Commit even when records past the inbox horizon would be delivered again.") var force = false
    @Flag(help: "Print JSON instead of a table.") var json = false

    func validate() throws {
        let chosen = [toEarliest, toLatest, toTime != nil, toOffset != nil].filter { $0 }.count
        guard chosen == 1 else {
            throw ValidationError("give exactly one of --to-earliest, --to-latest, --to-time, --to-offset")
        }
        guard !topic.isEmpty else { throw ValidationError("give at least one --topic") }
        guard ReplayDurations.parse(lagMargin) != nil else {
            throw ValidationError("--lag-margin '\(lagMargin)': expected a duration such as 30m, 2h or 1d")
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.replay")
        let target: GroupResetTarget
        if toEarliest {
            target = .earliest
        } else if toLatest {
            target = .latest
        } else if let toOffset {
            target = .offset(toOffset)
        } else {
            guard let raw = toTime, let time = ReplayDurations.parseTime(raw) else {
                throw ReplayError.invalidSelection(
                    "--to-time '\(toTime ?? "")': expected an RFC 3339 time (2024-05-01T10:00:00Z) or a duration ago (15m, 2h, 7d)"
                )
            }
            target = .time(time)
        }
        let env = runtime.env
        let replayer = Replayer(kafka: try env.kafka(), topics: env.topics, logger: runtime.logger)
        let groupName = env.topicPrefix.isEmpty || group.hasPrefix(env.topicPrefix) ? group : env.topics.group(group)
        var options = ReplayOptions()
        options.inboxRetention = env.inboxRetention
        options.consumerLagMargin = ReplayDurations.parse(lagMargin) ?? options.consumerLagMargin
        options.force = force
        var plan = try await replayer.planGroupReset(
            group: groupName, topics: topic.map { prefixed($0, env) }, target: target, partition: partition,
            options: options)
        let past = plan.rows.reduce(0) { $0 + $1.pastHorizon }
        if past > 0, let horizon = plan.horizon {
            let text =
                "warning: \(past) record(s) delivered again are older than the inbox horizon plus --lag-margin "
                + "\(Timestamp.format(horizon)) (SAGA_INBOX_RETENTION=\(ReplayDurations.format(env.inboxRetention))): "
                + (execute && force ? "committing anyway (--force)\n" : "refused without --force\n")
            FileHandle.standardError.write(Data(text.utf8))
        }
        if execute { plan = try await replayer.executeGroupReset(plan, options: options) }
        if json {
            say(try ReplayOutput.encode(plan))
            return
        }
        say(
            Table.render(
                ["TOPIC", "PARTITION", "CURRENT", "NEW", "LOW", "HIGH", "PAST HORIZON"],
                plan.rows.map {
                    [
                        $0.topic, "\($0.partition)", $0.current.map(String.init) ?? "-", "\($0.new)", "\($0.low)",
                        "\($0.high)", "\($0.pastHorizon)",
                    ]
                }))
        say(
            plan.executed
                ? "group \(plan.group): committed the new offsets of \(plan.rows.count) partition(s)"
                : "group \(plan.group) (\(plan.state)): dry run, nothing changed; add --execute to commit these offsets"
        )
    }
}

/// An event type or topic name, with SAGA_TOPIC_PREFIX unless it already has it.
private func prefixed(_ name: String, _ env: SagaEnvironment) -> String {
    env.topicPrefix.isEmpty || name.hasPrefix(env.topicPrefix) ? name : env.topics.topic(for: name)
}

enum ReplayOutput {
    /// Progress lines on stderr (about once a second on long runs).
    static let progress: @Sendable (ReplayProgress) -> Void = { p in
        let seconds = Double(p.elapsed.components.seconds) + Double(p.elapsed.components.attoseconds) / 1e18
        let line =
            "replay: scanned \(p.scanned)/\(p.total), matched \(p.matched), sent \(p.sent), failed \(p.failed) "
            + "(\(String(format: "%.1f", seconds))s)\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    static func encode<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.format(date))
        }
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    private struct JSONSummary: Encodable {
        var summary: ReplaySummary
        var scanned, matched, sent, failed, unreached: Int
    }

    /// Prints the listing (dry run) and the summary. - Throws: `ExitCode(2)` when some sends failed or
    /// records past a too-low high watermark could not be reached.
    static func print(_ summary: ReplaySummary, json: Bool, deadLetters: Bool, retention: Duration) throws {
        if summary.pastHorizon > 0 {
            let text =
                "warning: \(summary.pastHorizon) message(s) are older than the inbox horizon "
                + "\(Timestamp.format(summary.horizon)) (SAGA_INBOX_RETENTION=\(ReplayDurations.format(retention))): "
                + (summary.dryRun ? "a real run refuses them without --force\n" : "sent anyway (--force)\n")
            FileHandle.standardError.write(Data(text.utf8))
        }
        for note in summary.notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
        for failure in summary.failures { FileHandle.standardError.write(Data("failed: \(failure)\n".utf8)) }
        if json {
            say(
                try encode(
                    JSONSummary(
                        summary: summary, scanned: summary.scanned, matched: summary.matched, sent: summary.sent,
                        failed: summary.failed, unreached: summary.unreached)))
        } else {
            if summary.dryRun {
                var headers = ["TOPIC", "PARTITION", "OFFSET", "KEY", "TYPE", "TIMESTAMP"]
                headers += deadLetters ? ["TO", "REASON"] : ["TO"]
                say(
                    Table.render(
                        headers,
                        summary.messages.map { m in
                            var row = [
                                m.topic, "\(m.partition)", "\(m.offset)", m.key ?? "-", m.type ?? "-",
                                (m.timestamp.map(Timestamp.format) ?? "-") + (m.pastHorizon ? " (past horizon)" : ""),
                                m.target ?? "-",
                            ]
                            if deadLetters { row.append(m.reason ?? "-") }
                            return row
                        }))
                say("")
            }
            say(
                Table.render(
                    ["TOPIC", "PARTITION", "OFFSETS", "SCANNED", "MATCHED", "SENT", "FAILED"],
                    summary.partitions.filter { $0.endOffset > $0.startOffset }.map {
                        [
                            $0.topic, "\($0.partition)", "\($0.startOffset)..<\($0.endOffset)", "\($0.scanned)",
                            "\($0.matched)", "\($0.sent)", "\($0.failed)",
                        ]
                    }))
            let idle = summary.partitions.filter { $0.endOffset <= $0.startOffset }.count
            if idle > 0 { say("(\(idle) partition(s) with nothing in the range not shown)") }
            say(
                (summary.dryRun ? "dry run: nothing sent. " : "")
                    + "scanned \(summary.scanned), matched \(summary.matched), sent \(summary.sent), failed \(summary.failed)"
                    + (summary.unreached > 0 ? ", unreached \(summary.unreached)" : "")
            )
        }
        if summary.failed > 0 || summary.unreached > 0 { throw ExitCode(2) }
    }
}
