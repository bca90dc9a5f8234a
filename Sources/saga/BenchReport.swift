import Foundation
import SagaEngine
import SagaServices

/// Percentiles of a set of durations in milliseconds (nearest rank).
struct Distribution: Sendable, Equatable {
    var count: Int
    var p50: Double
    var p95: Double
    var p99: Double
    var max: Double
    var mean: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        count = sorted.count
        p50 = pct(sorted, 0.50)
        p95 = pct(sorted, 0.95)
        p99 = pct(sorted, 0.99)
        max = sorted.last ?? 0
        mean = sorted.isEmpty ? 0 : sorted.reduce(0, +) / Double(sorted.count)
    }

    var json: JSONValue {
        .object([
            "count": .integer(Int64(count)), "p50": .number(round2(p50)), "p95": .number(round2(p95)),
            "p99": .number(round2(p99)), "max": .number(round2(max)), "mean": .number(round2(mean)),
        ])
    }

    var text: String {
        count == 0
            ? "-"
            : "p50 \(fmt(p50))  p95 \(fmt(p95))  p99 \(fmt(p99))  max \(fmt(max))"
    }
}

/// One hop of the saga: from an event (as its producer stamped it) to the next one, split at the record
/// timestamp the relay's producer set: before it, the producing transaction's commit and the relay (outbox
/// lag); after it, the broker, the consumer's fetch and the handler up to the next event.
struct HopReport: Sendable {
    var from: String
    var to: String
    var total: Distribution
    /// `from`'s occurredAt → its record timestamp.
    var outbox: Distribution
    /// `from`'s record timestamp → `to`'s occurredAt (or, for the last hop, the benchmark seeing it).
    var delivery: Distribution

    var json: JSONValue {
        .object([
            "from": .string(from), "to": .string(to), "totalMs": total.json, "outboxMs": outbox.json,
            "deliveryMs": delivery.json,
        ])
    }
}

/// The saga's events in order; the last hop ends at the benchmark's consumer.
let benchHopTypes = [
    OrderCreatedV2.eventType, InventoryReserved.eventType, PaymentCompleted.eventType, OrderConfirmed.eventType,
]

extension SagaTally {
    /// Per-hop latency over the sagas of `phase` that have both ends of the hop.
    func hops(in phase: String) -> [HopReport] {
        let sagas = self.sagas(in: phase).map(\.saga)
        var reports: [HopReport] = []
        for (index, from) in benchHopTypes.enumerated() {
            let to = index + 1 < benchHopTypes.count ? benchHopTypes[index + 1] : nil
            var total: [Double] = []
            var outbox: [Double] = []
            var delivery: [Double] = []
            for saga in sagas {
                guard let a = saga.events[from], let aOccurred = a.occurredAt else { continue }
                let end: Date
                if let to {
                    guard let b = saga.events[to], let bOccurred = b.occurredAt else { continue }
                    end = bOccurred
                } else {
                    end = a.seenAt
                }
                total.append(ms(end, aOccurred))
                if let recorded = a.recordTime {
                    outbox.append(ms(recorded, aOccurred))
                    delivery.append(ms(end, recorded))
                }
            }
            reports.append(
                HopReport(
                    from: from, to: to ?? "bench", total: Distribution(total), outbox: Distribution(outbox),
                    delivery: Distribution(delivery)))
        }
        return reports
    }

    /// Every seen event of `phase`'s sagas: its occurredAt → its record timestamp (outbox insert, commit and
    /// relay until the producer took it).
    func outboxLag(in phase: String) -> Distribution {
        var lags: [Double] = []
        for (_, saga) in sagas(in: phase) {
            for sighting in saga.events.values {
                if let o = sighting.occurredAt, let r = sighting.recordTime { lags.append(ms(r, o)) }
            }
        }
        return Distribution(lags)
    }
}

/// The limits a run is held against, measured in the same run on the same machine.
struct BenchLimits: Sendable {
    var commit: CommitProbe.Result
    var broker: BrokerProbe.Result

    /// The least a hop can cost: one commit and one produce→consume round trip.
    var hopFloorMs: Double { commit.msPerCommit + broker.roundTrip.p50 }

    var json: JSONValue {
        .object([
            "postgresCommit": commit.json, "brokerRoundTrip": broker.json, "hopFloorMs": .number(round2(hopFloorMs)),
        ])
    }
}

/// What one part of a run (warm-up excluded) measured.
struct PhaseReport: Sendable {
    var name: String
    var description: String
    var placed: Int
    var finished: Int
    var confirmed: Int
    var seconds: Double
    /// Order accepted → its last event (order.confirmed or order.cancelled) seen.
    var latency: Distribution
    /// Order due (fixed rate) or sent → the API's 202.
    var accept: Distribution
    var hops: [HopReport]
    var outboxLag: Distribution
    var relay: RelayFigures?
    var processes: [ProcessFigures]
    /// The PostgreSQL server's CPU by client session name (empty when the server is not on this machine).
    var postgresSessions: [SessionFigures] = []
    var unfinished: [String]

    var sagasPerSecond: Double { seconds > 0 ? Double(finished) / seconds : 0 }

    init(
        name: String, description: String, tally: SagaTally, start: ContinuousClock.Instant,
        relay: RelayFigures?, processes: [ProcessFigures]
    ) {
        self.name = name
        self.description = description
        let sagas = tally.sagas(in: name).map(\.saga)
        placed = sagas.count
        finished = sagas.filter { $0.outcome != nil }.count
        confirmed = sagas.filter { $0.outcome == .confirmed }.count
        let last = sagas.compactMap(\.finished).max() ?? start
        seconds = millis(last - start) / 1000
        latency = Distribution(sagas.compactMap { s in s.finished.map { millis($0 - s.accepted) } })
        accept = Distribution(sagas.map { millis($0.accepted - $0.requested) })
        hops = tally.hops(in: name)
        outboxLag = tally.outboxLag(in: name)
        self.relay = relay
        self.processes = processes
        unfinished = tally.unfinished(in: name)
    }

    func json(limits: BenchLimits?) -> JSONValue {
        var o: [String: JSONValue] = [
            "phase": .string(name), "mode": .string(description), "placed": .integer(Int64(placed)),
            "finished": .integer(Int64(finished)), "confirmed": .integer(Int64(confirmed)),
            "seconds": .number(round2(seconds)), "sagasPerSecond": .number(round1(sagasPerSecond)),
            "latencyMs": latency.json, "acceptMs": accept.json, "hops": .array(hops.map(\.json)),
            "outboxLagMs": outboxLag.json, "processes": .array(processes.map(\.json)),
            "postgresSessions": .array(postgresSessions.map(\.json)),
            "unfinished": .array(unfinished.prefix(20).map { .string($0) }),
        ]
        o["relay"] = relay?.json ?? .null
        if let limits, limits.hopFloorMs > 0 {
            o["ratioToLimits"] = .object([
                "hopP50OverFloor": .array(hops.map { .number(round2($0.total.p50 / limits.hopFloorMs)) }),
                "latencyP50OverSagaFloor": .number(round2(latency.p50 / (4 * limits.hopFloorMs))),
            ])
        }
        return .object(o)
    }

    /// The server's sessions that used at least 1 % of a core, most first, then the rest together.
    var sessionsText: String? {
        guard !postgresSessions.isEmpty else { return nil }
        let shown = postgresSessions.filter { $0.cpuShare >= 0.01 }
        let rest = postgresSessions.dropFirst(shown.count)
        var parts = shown.map(\.text)
        if !rest.isEmpty {
            let sessions = rest.reduce(0) { $0 + $1.sessions }
            parts.append(
                "the rest (\(sessions) session\(sessions == 1 ? "" : "s")) \(fmt(rest.reduce(0) { $0 + $1.cpuSeconds })) s"
            )
        }
        return parts.joined(separator: ", ") + "   (server CPU by application_name)"
    }

    func text(limits: BenchLimits?) -> String {
        var lines: [String] = []
        lines.append("── \(name): \(description)")
        lines.append(
            "sagas           \(finished)/\(placed) finished (\(confirmed) confirmed) in \(fmt(seconds)) s")
        lines.append("throughput      \(fmt(sagasPerSecond)) sagas/s")
        lines.append("latency (ms)    \(latency.text)   (order accepted → order.confirmed seen)")
        lines.append("accept (ms)     \(accept.text)   (order due/sent → 202)")
        for hop in hops {
            var line =
                "hop (ms)        \(hop.from) → \(hop.to): p50 \(fmt(hop.total.p50))  p99 \(fmt(hop.total.p99))"
                + "  [outbox p50 \(fmt(hop.outbox.p50)), delivery p50 \(fmt(hop.delivery.p50))]"
            if let limits, limits.hopFloorMs > 0 { line += "  = \(fmt(hop.total.p50 / limits.hopFloorMs))× floor" }
            lines.append(line)
        }
        lines.append("outbox lag (ms) \(outboxLag.text)   (event occurredAt → relay's record timestamp)")
        if let relay { lines.append("relay           \(relay.text)") }
        for p in processes { lines.append("process         \(p.text)") }
        if let sessions = sessionsText { lines.append("pg sessions     \(sessions)") }
        if let limits, limits.hopFloorMs > 0 {
            lines.append(
                "vs limits       latency p50 = \(fmt(latency.p50 / (4 * limits.hopFloorMs)))× the saga floor "
                    + "(4 hops × \(fmt(limits.hopFloorMs)) ms)")
        }
        if !unfinished.isEmpty {
            lines.append("UNFINISHED      \(unfinished.count): \(unfinished.prefix(5).joined(separator: ", "))…")
        }
        return lines.joined(separator: "\n")
    }
}

func ms(_ a: Date, _ b: Date) -> Double { a.timeIntervalSince(b) * 1000 }

func millis(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}

func pct(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((Double(sorted.count) * p).rounded(.up)) - 1
    return sorted[min(sorted.count - 1, Swift.max(0, rank))]
}

func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
func round2(_ x: Double) -> Double { (x * 100).rounded() / 100 }

/// A figure for people: one decimal below 100, none above.
func fmt(_ x: Double) -> String {
    x.isFinite ? (abs(x) >= 100 ? String(Int(x.rounded())) : String(format: "%.1f", x)) : "-"
}
