import Foundation
import SagaServices

/// The sagas one benchmark run placed and what it saw of them on Kafka.
///
/// Only the order ids this run placed count: an event whose key it did not place (a saga of an earlier run
/// still draining, another client's order) is set aside and can never finish the run. An event may arrive
/// before the API's answer reached the client (the relay can publish `order.created` first), so sightings of
/// unknown keys are kept and credited when the key is placed; what is still unclaimed at the end is foreign.
struct SagaTally: Sendable {
    enum Outcome: String, Sendable { case confirmed, cancelled }

    /// One event of a saga as the benchmark saw it.
    struct Sighting: Sendable {
        /// The envelope's `occurredAt` (set by the producing service inside its transaction).
        var occurredAt: Date?
        /// The Kafka record timestamp (set by the relay's producer when it handed the record over).
        var recordTime: Date?
        /// When the benchmark's consumer returned it, wall clock (to compare with the two above) ...
        var seenAt: Date
        /// ... and monotonic (to compare with `Saga.accepted`).
        var seen: ContinuousClock.Instant
    }

    struct Saga: Sendable {
        /// Which part of the run placed it (e.g. "warmup", "lone", "closed", "rate").
        var phase: String
        /// When the order was due (its slot at a fixed rate) or, otherwise, sent.
        var requested: ContinuousClock.Instant
        /// When the API's 202 arrived.
        var accepted: ContinuousClock.Instant
        /// The first sighting of each event type.
        var events: [String: Sighting] = [:]
        var outcome: Outcome?

        var finished: ContinuousClock.Instant? {
            guard let outcome else { return nil }
            return events[outcome == .confirmed ? OrderConfirmed.eventType : OrderCancelled.eventType]?.seen
        }
    }

    static let terminal: [String: Outcome] = [
        OrderConfirmed.eventType: .confirmed, OrderCancelled.eventType: .cancelled,
    ]

    private(set) var sagas: [String: Saga] = [:]
    private var unclaimed: [String: [(type: String, sighting: Sighting)]] = [:]
    private(set) var foreignEvents = 0
    private var placedByPhase: [String: Int] = [:]
    private var finishedByPhase: [String: Int] = [:]

    /// Records an order this run placed; sightings of its key that arrived before are credited to it.
    mutating func placed(
        _ id: String, phase: String, requested: ContinuousClock.Instant, accepted: ContinuousClock.Instant
    ) {
        guard sagas[id] == nil else { return }
        var saga = Saga(phase: phase, requested: requested, accepted: accepted)
        if let early = unclaimed.removeValue(forKey: id) {
            foreignEvents -= early.count
            for e in early { Self.apply(e.type, e.sighting, to: &saga) }
        }
        sagas[id] = saga
        placedByPhase[phase, default: 0] += 1
        if saga.outcome != nil { finishedByPhase[phase, default: 0] += 1 }
    }

    /// Records an event seen on Kafka: `type` is the event type (its topic without the prefix), `key` the saga id.
    mutating func saw(type: String, key: String, _ sighting: Sighting) {
        if var saga = sagas[key] {
            let ended = saga.outcome != nil
            Self.apply(type, sighting, to: &saga)
            sagas[key] = saga
            if !ended && saga.outcome != nil { finishedByPhase[saga.phase, default: 0] += 1 }
        } else {
            unclaimed[key, default: []].append((type, sighting))
            foreignEvents += 1
        }
    }

    private static func apply(_ type: String, _ sighting: Sighting, to saga: inout Saga) {
        guard saga.events[type] == nil else { return }  // a re-published duplicate: the first sighting counts
        saga.events[type] = sighting
        if saga.outcome == nil, let outcome = terminal[type] { saga.outcome = outcome }
    }

    /// Keys seen on the watched topics that this run never placed.
    var foreignSagas: Int { unclaimed.count }

    func isFinished(_ id: String) -> Bool { sagas[id]?.outcome != nil }

    func sagas(in phase: String) -> [(id: String, saga: Saga)] {
        sagas.filter { $0.value.phase == phase }.map { ($0.key, $0.value) }
    }

    /// How many of the sagas `phase` placed have ended (confirmed or cancelled).
    func finishedCount(in phase: String) -> Int { finishedByPhase[phase] ?? 0 }

    /// How many sagas `phase` placed.
    func placedCount(in phase: String) -> Int { placedByPhase[phase] ?? 0 }

    /// The placed sagas of `phase` that have not ended, sorted.
    func unfinished(in phase: String) -> [String] {
        sagas.filter { $0.value.phase == phase && $0.value.outcome == nil }.map(\.key).sorted()
    }
}
