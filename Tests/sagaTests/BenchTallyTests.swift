import ArgumentParser
import Foundation
import JSONSchema
import SagaEngine
import SagaServices
import Testing

@testable import saga

@Suite struct BenchTallyTests {
    let t0 = ContinuousClock.now
    let wall = Date(timeIntervalSince1970: 1_800_000_000)

    func sighting(at ms: Double, recorded: Double? = nil, seen: Double? = nil) -> SagaTally.Sighting {
        SagaTally.Sighting(
            occurredAt: wall.addingTimeInterval(ms / 1000),
            recordTime: recorded.map { wall.addingTimeInterval($0 / 1000) },
            seenAt: wall.addingTimeInterval((seen ?? ms) / 1000),
            seen: t0 + .milliseconds(Int64(seen ?? ms)))
    }

    @Test func foreignSagasNeverFinishTheRun() {
        var tally = SagaTally()
        // An earlier run's sagas end while this run's first saga is still in flight.
        tally.saw(type: OrderConfirmed.eventType, key: "earlier-1", sighting(at: 1))
        tally.saw(type: OrderCancelled.eventType, key: "earlier-2", sighting(at: 2))
        tally.placed("mine", phase: "closed", requested: t0, accepted: t0 + .milliseconds(3))
        tally.saw(type: OrderConfirmed.eventType, key: "earlier-3", sighting(at: 4))

        #expect(tally.placedCount(in: "closed") == 1)
        #expect(tally.finishedCount(in: "closed") == 0)
        #expect(tally.unfinished(in: "closed") == ["mine"])
        #expect(!tally.isFinished("mine"))
        #expect(tally.foreignSagas == 3)
        #expect(tally.foreignEvents == 3)
        #expect(tally.sagas["earlier-1"] == nil)

        tally.saw(type: OrderConfirmed.eventType, key: "mine", sighting(at: 50))
        #expect(tally.finishedCount(in: "closed") == 1)
        #expect(tally.unfinished(in: "closed").isEmpty)
        #expect(tally.sagas["mine"]?.outcome == .confirmed)
    }

    @Test func anEventSeenBeforeTheAPIAnsweredIsCreditedToTheOrder() {
        var tally = SagaTally()
        tally.saw(type: OrderCreatedV2.eventType, key: "fast", sighting(at: 1, recorded: 2))
        #expect(tally.foreignSagas == 1)
        tally.placed("fast", phase: "lone", requested: t0, accepted: t0 + .milliseconds(5))
        #expect(tally.foreignSagas == 0)
        #expect(tally.foreignEvents == 0)
        #expect(tally.sagas["fast"]?.events[OrderCreatedV2.eventType]?.recordTime != nil)
        #expect(tally.finishedCount(in: "lone") == 0)
    }

    @Test func aRepublishedTerminalEventCountsOnce() {
        var tally = SagaTally()
        tally.placed("a", phase: "closed", requested: t0, accepted: t0)
        tally.saw(type: OrderConfirmed.eventType, key: "a", sighting(at: 10))
        tally.saw(type: OrderConfirmed.eventType, key: "a", sighting(at: 20))
        #expect(tally.finishedCount(in: "closed") == 1)
        #expect(tally.sagas["a"]?.finished == t0 + .milliseconds(10))
    }

    @Test func phasesAreCountedApart() {
        var tally = SagaTally()
        tally.placed("w", phase: "warmup", requested: t0, accepted: t0)
        tally.saw(type: OrderConfirmed.eventType, key: "w", sighting(at: 10))
        tally.placed("c", phase: "closed", requested: t0, accepted: t0)
        #expect(tally.finishedCount(in: "warmup") == 1)
        #expect(tally.finishedCount(in: "closed") == 0)
        #expect(tally.placedCount(in: "closed") == 1)
    }

    @Test func hopsSplitAtTheRecordTimestamp() {
        var tally = SagaTally()
        tally.placed("s", phase: "lone", requested: t0, accepted: t0)
        tally.saw(type: OrderCreatedV2.eventType, key: "s", sighting(at: 0, recorded: 2))
        tally.saw(type: InventoryReserved.eventType, key: "s", sighting(at: 10, recorded: 13))
        tally.saw(type: PaymentCompleted.eventType, key: "s", sighting(at: 25, recorded: 26))
        tally.saw(type: OrderConfirmed.eventType, key: "s", sighting(at: 40, recorded: 42, seen: 45))
        let hops = tally.hops(in: "lone")
        #expect(hops.map(\.from) == benchHopTypes)
        #expect(hops.map(\.to) == Array(benchHopTypes.dropFirst()) + ["bench"])
        #expect(hops.map { round2($0.total.p50) } == [10, 15, 15, 5])
        #expect(hops.map { round2($0.outbox.p50) } == [2, 3, 1, 2])
        #expect(hops.map { round2($0.delivery.p50) } == [8, 12, 14, 3])
        #expect(round2(tally.outboxLag(in: "lone").max) == 3)

        let report = PhaseReport(
            name: "lone", description: "one at a time", tally: tally, start: t0, relay: nil, processes: [])
        #expect(report.finished == 1)
        #expect(report.confirmed == 1)
        #expect(round2(report.latency.p50) == 45)
    }

    @Test func percentilesUseNearestRank() {
        let d = Distribution((1...100).map(Double.init))
        #expect(d.p50 == 50)
        #expect(d.p95 == 95)
        #expect(d.p99 == 99)
        #expect(d.max == 100)
        #expect(Distribution([]).count == 0)
    }

    @Test func aLostSagaIsAFailureNotAUsageError() {
        let failure = BenchFailure(description: "closed: 3 of 300 sagas placed did not finish within 300 s")
        #expect(BenchSagasCommand.exitCode(for: failure) == .failure)
        #expect(BenchSagasCommand.exitCode(for: failure) != .validationFailure)
        let message = BenchSagasCommand.fullMessage(for: failure)
        #expect(message.contains("did not finish"))
        #expect(!message.contains("Usage"))
    }
}

@Suite struct BenchMetricsTests {
    @Test func prometheusSamplesAreSummedOverLabels() {
        let text = """
            # HELP saga_relay_published_total x
            # TYPE saga_relay_published_total counter
            saga_relay_published_total{service="orders"} 10
            saga_relay_published_total{service="billing"} 5
            saga_relay_outbox_lag_seconds_sum{service="orders"} 0.5
            saga_relay_outbox_lag_seconds_count{service="orders"} 10
            saga_outbox_backlog 3
            """
        let values = MetricsScrape.parse(text)
        #expect(values["saga_relay_published_total"] == 15)
        #expect(values["saga_outbox_backlog"] == 3)

        let before = MetricsScrape(values: ["saga_relay_published_total": 5], reachable: 1)
        let after = MetricsScrape(values: values, reachable: 1)
        let relay = RelayFigures(before: before, after: after, seconds: 2)
        #expect(relay?.published == 10)
        #expect(relay?.rowsPerSecond == 5)
        #expect(relay?.meanLagMs == 50)
        #expect(RelayFigures(before: before, after: MetricsScrape(), seconds: 2) == nil)
    }

    @Test func procStatIsReadPastTheCommand() throws {
        let stat = "4242 (saga (dev) x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 9 0 100 1000 200"
        let status = "Name:\tsaga\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n"
        let sample = try #require(ProcessSample.parse(stat: stat, status: status))
        #expect(sample.parent == 17)
        #expect(sample.cpuSeconds == 300 / ProcessSample.ticksPerSecond)
        #expect(sample.childrenCPUSeconds == 50 / ProcessSample.ticksPerSecond)
        #expect(sample.rss == 10240 * 1024)
        #expect(sample.peakRSS == 20480 * 1024)
    }

    @Test func ourOwnProcessIsReadable() throws {
        let sample = try #require(ProcessSample.read(getpid()))
        #expect(sample.rss > 0)
        #expect(sample.peakRSS >= sample.rss)
    }

    @Test func theWatchReadsTheTopLevelOccurredAtAsAParseWould() throws {
        let envelope = EventEnvelope(
            type: "order.confirmed", version: 1, sagaId: "o-1", causationId: nil, producer: "orders",
            traceparent: nil,
            data: .object(["note": .string("occurredAt: {"), "occurredAt": .string("1999-01-01T00:00:00Z")]))
        let bytes = envelope.serialized()
        let text = try #require(SagaWatch.topLevelString("occurredAt", in: bytes))
        #expect(Timestamp.parse(text) == Timestamp.parse(Timestamp.format(envelope.occurredAt)))
        #expect(SagaWatch.occurredAt(bytes) == Timestamp.parse(text))
        // Nested members, braces and quotes inside strings are not the envelope's.
        let tricky = Array(
            #"{"data": {"occurredAt": "1999-01-01T00:00:00Z", "note": "}\" {"}, "x": ["{", "\"occurredAt\":"], "occurredAt" : "2026-12-03T08:00:00.123Z"}"#
                .utf8)
        #expect(SagaWatch.topLevelString("occurredAt", in: tricky) == "2026-12-03T08:00:00.123Z")
        #expect(SagaWatch.topLevelString("occurredAt", in: Array(#"{"data": {"occurredAt": "x"}}"#.utf8)) == nil)
        // What the scan cannot read is parsed: an escaped value, or no member at all.
        #expect(SagaWatch.topLevelString("occurredAt", in: Array(#"{"occurredAt": "2026\u002d12"}"#.utf8)) == nil)
        #expect(SagaWatch.occurredAt(Array("not json".utf8)) == nil)
    }

    @Test(.timeLimit(.minutes(1))) func anOutcomeEndsTheLoneWaitAndOnlyItsOwn() async throws {
        let waiters = OutcomeWaiters()
        let far = ContinuousClock.now + .seconds(120)
        let a = Task { await waiters.wait(for: "a", until: far) { false } }
        let b = Task { await waiters.wait(for: "b", until: far) { false } }
        while waiters.count < 2 { try await Task.sleep(for: .milliseconds(1)) }
        waiters.resume(["a", "unknown"])
        await a.value
        #expect(waiters.count == 1)  // b still waits
        #expect(ContinuousClock.now < far)
        waiters.resume(["b"])
        await b.value
        #expect(waiters.count == 0)
    }

    @Test(.timeLimit(.minutes(1))) func anOutcomeSeenBeforeTheWaitOrADeadlineEndsIt() async {
        let waiters = OutcomeWaiters()
        // Recorded before the waiter came: nobody will resume it, so the wait must not begin.
        await waiters.wait(for: "done", until: .now + .seconds(120)) { true }
        #expect(waiters.count == 0)
        // Never seen: the deadline ends it, and no waiter is left behind.
        await waiters.wait(for: "lost", until: .now + .milliseconds(20)) { false }
        await waiters.wait(for: "late", until: .now - .seconds(1)) { false }
        #expect(waiters.count == 0)
    }
}

@Suite struct BenchSessionTests {
    typealias S = PostgresSessionWatch.Session

    @Test func serverCPUIsAddedUpByApplicationNameOverTheSessionsOfBothSamples() {
        let start: [Int32: S] = [
            1: S(name: "saga api orders", cpuSeconds: 1.0), 2: S(name: "saga api orders", cpuSeconds: 2.0),
            3: S(name: "saga tracker", cpuSeconds: 5.0), 4: S(name: "saga relay orders", cpuSeconds: 0.5),
            5: S(name: "saga worker billing", cpuSeconds: 1.0),
            // Its backend ended (left out), and the PID went to a new session of another name (counted whole).
            6: S(name: "saga retention orders", cpuSeconds: 3.0),
            8: S(name: "saga relay billing", cpuSeconds: 4.0),  // ended during the phase: left out
        ]
        let end: [Int32: S] = [
            1: S(name: "saga api orders", cpuSeconds: 1.5), 2: S(name: "saga api orders", cpuSeconds: 3.0),
            3: S(name: "saga tracker", cpuSeconds: 7.0), 4: S(name: "saga relay orders", cpuSeconds: 0.52),
            5: S(name: "saga worker billing", cpuSeconds: 1.5), 6: S(name: "saga deadlines orders", cpuSeconds: 0.1),
            7: S(name: "saga worker orders", cpuSeconds: 0.9),  // began during the phase: all of it counts
        ]
        let figures = PostgresSessionWatch.figures(from: start, to: end, seconds: 10)
        #expect(
            figures.map(\.name) == [
                "saga tracker", "saga api orders", "saga worker orders", "saga worker billing", "saga deadlines orders",
                "saga relay orders",
            ])
        #expect(figures.map(\.sessions) == [1, 2, 1, 1, 1, 1])
        #expect(figures.map { round2($0.cpuSeconds) } == [2, 1.5, 0.9, 0.5, 0.1, 0.02])
        #expect(figures.map { round2($0.cpuShare) } == [0.2, 0.15, 0.09, 0.05, 0.01, 0])

        var report = PhaseReport(
            name: "closed", description: "closed loop", tally: SagaTally(), start: .now, relay: nil, processes: [])
        #expect(report.sessionsText == nil)
        #expect(!report.text(limits: nil).contains("pg sessions"))
        report.postgresSessions = figures
        // Under 1 % of a core: summed up at the end.
        #expect(
            report.sessionsText
                == "saga tracker 2.0 s (20.0 %), saga api orders (×2) 1.5 s (15.0 %), saga worker orders 0.9 s (9.0 %), "
                + "saga worker billing 0.5 s (5.0 %), saga deadlines orders 0.1 s (1.0 %), the rest (1 session) 0.0 s   "
                + "(server CPU by application_name)")
        #expect(report.text(limits: nil).contains("pg sessions     saga tracker 2.0 s"))
        guard case .array(let sessions)? = report.json(limits: nil)["postgresSessions"] else {
            Issue.record("no postgresSessions in the JSON report")
            return
        }
        #expect(sessions.count == 6)
        #expect(sessions.first?["applicationName"] == .string("saga tracker"))
        #expect(sessions.first?["cpuPercent"] == .number(20))
    }
}
