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
}
