import ArgumentParser
import Foundation
import SagaDaemon
import SagaEngine
import SagaOperations
import SagaServices

struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Inspect sagas: one saga's timeline, stuck sagas, counts and latencies.",
        discussion: """
            Views of the tracker's read model (`saga tracker`; `saga dev` runs one):
              SAGA_ID    the saga's timeline across services: time between steps,
                         compensations, deadlines (time left, fired late by,
                         cancelled; a fired one is a step), dead letters, the
                         order's status, and its rows still in the services'
                         outboxes (pending, parked by the broker, or held behind a
                         parked row)
              --stuck    sagas unfinished after --older-than, with the step each
                         one waits on, and sagas whose deadline fell more than
                         --grace ago without firing
              --stats    counts by outcome and latency percentiles per step
            Tables for people, --json for scripts. Exits 1 for an unknown saga or \
            an unreachable database.
            """)

    @Argument(help: "The saga (order) id.") var sagaId: String?
    @Flag(help: "List sagas that have not finished within --older-than.") var stuck = false
    @Option(help: "With --stuck: the age (e.g. 90s, 5m, 2h).") var olderThan = "5m"
    @Option(help: "With --stuck: also list sagas whose deadline fell this long ago and has not fired (e.g. 30s).")
    var grace = "30s"
    @Flag(help: "Counts by outcome and latency per step.") var stats = false
    @Option(help: "With --stats: sagas started within this long (e.g. 15m, 1h, 7d).") var since = "1h"
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        let modes = [sagaId != nil, stuck, stats].filter { $0 }.count
        guard modes == 1 else { throw ValidationError("give exactly one of SAGA_ID, --stuck or --stats") }
        guard DurationParser.parse(olderThan) != nil else {
            throw ValidationError("--older-than '\(olderThan)': expected e.g. 90s, 5m, 2h")
        }
        guard DurationParser.parse(grace) != nil else {
            throw ValidationError("--grace '\(grace)': expected e.g. 30s, 2m")
        }
        guard DurationParser.parse(since) != nil else {
            throw ValidationError("--since '\(since)': expected e.g. 15m, 1h, 7d")
        }
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.inspect")
        let pool = PostgresPool(
            configuration: runtime.env.database("tracker").configuration, size: 1, logger: runtime.logger)
        defer { Task { await pool.close() } }
        do {
            // The saga's shape as the registered participants declare it.
            let inspector = try await SagaInspector(pool: pool, registry: runtime.env.registry, logger: runtime.logger)
            if let sagaId {
                try await timeline(sagaId, inspector: inspector, runtime: runtime)
            } else if stuck {
                try await stuckSagas(inspector)
            } else {
                try await statistics(inspector)
            }
        } catch let error as PostgresError where error.sqlState == "42P01" {
            throw ConfigurationError("the tracker's read model does not exist yet: run `saga tracker` (or `saga dev`)")
        }
    }

    private func timeline(_ sagaId: String, inspector: SagaInspector, runtime: Runtime) async throws {
        let order = try await orderStatus(sagaId, runtime: runtime)
        guard let t = try await inspector.timeline(sagaId) else {
            throw ConfigurationError(
                "no saga \(sagaId): the tracker has seen no event or dead letter of it"
                    + (order.map { " (the orders service has it as \($0.status))" } ?? ""))
        }
        let outbox = try await outboxRows(sagaId, runtime: runtime)
        if json {
            var object: [String: JSONValue] = ["timeline": try JSONValue(encoding: t)]
            object["order"] = try order.map { try JSONValue(encoding: $0) } ?? .null
            object["outbox"] = try JSONValue(encoding: outbox)
            return say(String(decoding: JSONValue.object(object).serialized(), as: UTF8.self))
        }
        if let s = t.saga {
            say("saga \(sagaId)  \(Self.state(s))")
            say(
                "started \(Timestamp.format(s.startedAt)); \(s.events) events, \(s.compensations) compensation(s), "
                    + "\(s.deadLetters) dead letter(s)")
        } else {
            say("saga \(sagaId)  (only dead letters seen)")
        }
        if let order {
            say("order: \(order.status)\(order.reason.map { " (\($0))" } ?? ""), total \(order.total)")
        } else {
            say("order: unknown to the orders service")
        }
        for d in t.deadlines { say(Self.deadline(d)) }
        if !t.steps.isEmpty {
            say("")
            let marks = [
                "failure": "✗ failure", "compensation": "↩ compensation", "outcome": "■ outcome",
                "deadline": "⏱ deadline",
            ]
            say(
                Table.render(
                    ["time", "+ms", "event", "v", "producer", "", "topic/partition/offset", "caused by"],
                    t.steps.map { s in
                        [
                            Timestamp.format(s.occurredAt), s.sincePreviousMs.map { "+" + Self.ms($0) } ?? "", s.type,
                            s.kind == "deadline" ? "" : String(s.version), s.producer, marks[s.kind] ?? "",
                            s.partition < 0 ? s.topic : "\(s.topic)/\(s.partition)/\(s.offset)",
                            s.causationId.map { String($0.prefix(8)) } ?? "",
                        ]
                    }))
        }
        if !outbox.isEmpty {
            say(
                "\nunpublished outbox rows (parked: refused by the broker for good; held: waiting behind a parked row):"
            )
            say(
                Table.render(
                    ["service", "id", "event", "state", "attempts", "since", "last error"],
                    outbox.sorted { $0.key < $1.key }.flatMap { service, rows in
                        rows.map { r in
                            [
                                service, String(r.id), r.eventType ?? r.topic, r.state, String(r.attempts),
                                Timestamp.format(r.createdAt), r.lastError ?? "",
                            ]
                        }
                    }))
        }
        if !t.deadLetters.isEmpty {
            say("\ndead letters:")
            say(
                Table.render(
                    ["at", "consumer", "event", "from topic/partition/offset", "reason"],
                    t.deadLetters.map { d in
                        [
                            Timestamp.format(d.deadLetteredAt), d.consumer ?? "", d.eventType ?? "",
                            "\(d.sourceTopic ?? "?")/\(d.sourcePartition.map(String.init) ?? "?")/\(d.sourceOffset.map(String.init) ?? "?")",
                            d.reason,
                        ]
                    }))
        }
    }

    /// "finished: confirmed in 25ms", "running, waiting on billing: charge the customer", or for a saga whose
    /// outcome is decided but on whose latest event a registered participant still acts: "confirmed in 25ms,
    /// still running, waiting on shipping: schedule the shipment".
    static func state(_ s: SagaInspector.Summary) -> String {
        let took = s.finishedAt.map { " in \(ms($0.timeIntervalSince(s.startedAt) * 1000))" } ?? ""
        let waiting = "waiting on \(s.waitingOn ?? "?")"
        switch (s.status, s.outcome) {
        case ("finished", let outcome): return "finished: \(outcome ?? "?")\(took)"
        case (_, let outcome?): return "\(outcome)\(took), still running, \(waiting)"
        default: return "running, \(waiting)"
        }
    }

    /// The timeline's line for one deadline, e.g. "deadline orders/order: due 2026-…Z, 12.3 s left",
    /// "…, overdue by 4.0 s", "…, fired 2026-…Z, 120 ms late" or "…, cancelled 2026-…Z".
    static func deadline(_ d: SagaInspector.Deadline) -> String {
        let head = "deadline \(d.participant)/\(d.name): due \(Timestamp.format(d.dueAt))"
        switch d.state {
        case "scheduled":
            guard let left = d.timeLeftMs else { return head + ", scheduled" }
            return head + (left >= 0 ? ", \(ms(left)) left" : ", overdue by \(ms(-left))")
        case "fired":
            return head + ", fired" + (d.firedAt.map { " \(Timestamp.format($0))" } ?? "")
                + (d.lateMs.map { ", \(ms(Double($0))) late" } ?? "")
        case "cancelled":
            return head + ", cancelled" + (d.cancelledAt.map { " \(Timestamp.format($0))" } ?? "")
        default:
            return head + ", \(d.state)"
        }
    }

    /// The "deadline overdue by" column of `--stuck`: empty unless the saga's earliest scheduled deadline fell.
    static func overdue(_ s: SagaInspector.Summary) -> String {
        guard let left = s.deadline?.timeLeftMs, left < 0 else { return "" }
        return ms(-left)
    }

    private func stuckSagas(_ inspector: SagaInspector) async throws {
        let age = DurationParser.parse(olderThan)!
        let sagas = try await inspector.stuck(olderThan: age, grace: DurationParser.parse(grace)!)
        if json { return say(String(decoding: try JSONValue(encoding: sagas).serialized(), as: UTF8.self)) }
        guard !sagas.isEmpty else {
            return say("no saga older than \(olderThan) is unfinished, and no deadline is \(grace) overdue")
        }
        let now = Date()
        say(
            Table.render(
                ["saga", "age", "last event", "waiting on", "deadline overdue by", "dead letters"],
                sagas.map { s in
                    [
                        s.sagaId, Self.ms(now.timeIntervalSince(s.startedAt) * 1000), s.lastEventType,
                        s.waitingOn ?? (s.status == "running" ? "?" : "-"), Self.overdue(s), String(s.deadLetters),
                    ]
                }))
        say("\(sagas.count) saga(s) unfinished after \(olderThan) or past a deadline by \(grace)")
    }

    private func statistics(_ inspector: SagaInspector) async throws {
        let window = DurationParser.parse(since)!
        let stats = try await inspector.stats(since: Date().addingTimeInterval(-Double(window.components.seconds)))
        if json { return say(String(decoding: try JSONValue(encoding: stats).serialized(), as: UTF8.self)) }
        let f: (Double?) -> String = { $0.map(Self.ms) ?? "-" }
        say("sagas started in the last \(since), by outcome (end to end):")
        say(
            Table.render(
                ["outcome", "sagas", "p50", "p95", "p99"],
                stats.outcomes.map { [$0.outcome, String($0.sagas), f($0.p50Ms), f($0.p95Ms), f($0.p99Ms)] }))
        say("\nlatency per step:")
        say(
            Table.render(
                ["from", "to", "count", "p50", "p95", "p99"],
                stats.steps.map {
                    [$0.from, $0.to, String($0.count), Self.ms($0.p50Ms), Self.ms($0.p95Ms), Self.ms($0.p99Ms)]
                }))
        say("\ndead letters: \(stats.deadLetters)")
    }

    /// The saga's unpublished rows in each service's outbox (a service whose outbox does not exist yet has none).
    private func outboxRows(_ sagaId: String, runtime: Runtime) async throws -> [String: [Outbox.Pending]] {
        var found: [String: [Outbox.Pending]] = [:]
        for service in Stack.services {
            let pool = PostgresPool(
                configuration: runtime.env.database(service).configuration, size: 1, logger: runtime.logger)
            defer { Task { await pool.close() } }
            do {
                let rows = try await pool.withConnection { try await Outbox.pending(saga: sagaId, on: $0) }
                if !rows.isEmpty { found[service] = rows }
            } catch let error as PostgresError where error.sqlState == "42P01" {
                continue
            }
        }
        return found
    }

    private func orderStatus(_ sagaId: String, runtime: Runtime) async throws -> OrderBook.View? {
        guard let id = UUID(parsing: sagaId) else { return nil }
        let pool = PostgresPool(
            configuration: runtime.env.database("orders").configuration, size: 1, logger: runtime.logger)
        defer { Task { await pool.close() } }
        let book = OrderBook(pool: pool, codec: EventCodec(upcasters: [], topics: runtime.env.topics), emitVersion: 2)
        do { return try await book.view(id) } catch let error as PostgresError where error.sqlState == "42P01" {
            return nil
        }
    }

    static func ms(_ value: Double) -> String {
        value >= 10_000 ? String(format: "%.1f s", value / 1000) : String(format: "%.0f ms", value)
    }
}
