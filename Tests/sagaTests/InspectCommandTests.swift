import Foundation
import Testing

@testable import SagaEngine
@testable import SagaOperations
@testable import saga

/// The first line of `saga inspect SAGA_ID`.
@Suite struct InspectCommandTests {
    func summary(status: String, outcome: String?, finishedAfter: Double?, waitingOn: String?) -> SagaInspector.Summary
    {
        let start = Date(timeIntervalSince1970: 1_000_000)
        return SagaInspector.Summary(
            sagaId: "s", status: status, outcome: outcome, startedAt: start, updatedAt: start,
            finishedAt: finishedAfter.map { start.addingTimeInterval($0) }, lastEventType: "x", waitingOn: waitingOn,
            events: 1, compensations: 0, deadLetters: 0)
    }

    @Test func aSagaDecidedButStillWaitedOnSaysBoth() {
        #expect(
            InspectCommand.state(
                summary(status: "finished", outcome: "confirmed", finishedAfter: 0.025, waitingOn: nil))
                == "finished: confirmed in 25 ms")
        #expect(
            InspectCommand.state(
                summary(status: "running", outcome: nil, finishedAfter: nil, waitingOn: "billing: charge the customer"))
                == "running, waiting on billing: charge the customer")
        #expect(
            InspectCommand.state(
                summary(
                    status: "running", outcome: "confirmed", finishedAfter: 0.025,
                    waitingOn: "shipping: schedule the shipment"))
                == "confirmed in 25 ms, still running, waiting on shipping: schedule the shipment")
    }

    func deadline(
        _ state: String, left: Double? = nil, firedAt: Date? = nil, cancelledAt: Date? = nil, late: Int64? = nil
    )
        -> SagaInspector.Deadline
    {
        SagaInspector.Deadline(
            participant: "orders", name: "order", dueAt: Date(timeIntervalSince1970: 1_000_000), state: state,
            timeLeftMs: left, eventId: nil, eventType: "order.expired", firedAt: firedAt, cancelledAt: cancelledAt,
            lateMs: late)
    }

    @Test func theTimelineSaysWhatBecameOfEachDeadline() {
        let due = "deadline orders/order: due 1970-01-12T13:46:40.000Z"
        #expect(InspectCommand.deadline(deadline("scheduled", left: 12_345)) == due + ", 12.3 s left")
        #expect(InspectCommand.deadline(deadline("scheduled", left: -4_000)) == due + ", overdue by 4000 ms")
        #expect(
            InspectCommand.deadline(deadline("fired", firedAt: Date(timeIntervalSince1970: 1_000_000.12), late: 120))
                == due + ", fired 1970-01-12T13:46:40.120Z, 120 ms late")
        #expect(
            InspectCommand.deadline(deadline("cancelled", cancelledAt: Date(timeIntervalSince1970: 999_999)))
                == due + ", cancelled 1970-01-12T13:46:39.000Z")
    }

    @Test func stuckShowsHowFarPastItsDeadlineASagaIs() {
        var s = summary(status: "running", outcome: nil, finishedAfter: nil, waitingOn: "inventory: reserve the stock")
        #expect(InspectCommand.overdue(s) == "")
        s.deadline = deadline("scheduled", left: 45_000)
        #expect(InspectCommand.overdue(s) == "")
        s.deadline = deadline("scheduled", left: -31_500)
        #expect(InspectCommand.overdue(s) == "31.5 s")
    }

    @Test func theJSONOfASagaCarriesItsDeadlines() throws {
        var s = summary(status: "running", outcome: nil, finishedAfter: nil, waitingOn: nil)
        s.deadline = deadline("scheduled", left: -1_000)
        let t = SagaInspector.Timeline(
            saga: s, steps: [], deadLetters: [], deadlines: [deadline("scheduled", left: -1_000)])
        let json = try JSONValue(encoding: t)
        guard case .object(let o) = json, case .array(let deadlines)? = o["deadlines"],
            case .object(let first)? = deadlines.first, case .object(let saga)? = o["saga"],
            case .object(let summaryDeadline)? = saga["deadline"]
        else {
            Issue.record("\(json)")
            return
        }
        #expect(first["state"] == .string("scheduled"))
        #expect(first["timeLeftMs"] == .number(-1_000) || first["timeLeftMs"] == .integer(-1_000))
        #expect(first["dueAt"] != nil && first["participant"] == .string("orders"))
        #expect(summaryDeadline["name"] == .string("order"))
    }

    func step(_ type: String, at: Date, id: String, causedBy: String?) -> SagaInspector.Step {
        SagaInspector.Step(
            eventId: id, type: type, version: 1, producer: "orders", kind: "step", occurredAt: at,
            sincePreviousMs: nil, causationId: causedBy, topic: type, partition: 0, offset: 0)
    }

    @Test func aFiredDeadlineIsAStepBeforeWhatItCaused() {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        var fired = deadline("fired", firedAt: t0.addingTimeInterval(2.001), late: 1)
        fired.eventId = "e"
        let steps = [
            step("order.created", at: t0, id: "a", causedBy: nil),
            // Caused by the deadline, yet 0.6 ms before its firing time as the header has it (milliseconds).
            step("order.cancelled", at: t0.addingTimeInterval(2.0004), id: "b", causedBy: "e"),
        ]
        let merged = SagaInspector.merging(fired: [fired, deadline("cancelled")], into: steps)
        #expect(merged.map(\.type) == ["order.created", "order.expired", "order.cancelled"])
        #expect(merged.map(\.kind) == ["step", "deadline", "step"])
        #expect(merged[1].eventId == "e" && merged[1].topic == "(deadline)" && merged[1].partition == -1)
        #expect(merged[0].sincePreviousMs == nil)
        #expect(abs((merged[1].sincePreviousMs ?? 0) - 2001) < 0.01)
        // At the very same time as an event, the deadline comes first.
        let tie = SagaInspector.merging(
            fired: [fired], into: [step("order.cancelled", at: t0.addingTimeInterval(2.001), id: "b", causedBy: nil)])
        #expect(tie.map(\.kind) == ["deadline", "step"])
        #expect(SagaInspector.merging(fired: [deadline("cancelled")], into: steps) == steps)
    }
}
