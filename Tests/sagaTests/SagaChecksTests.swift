import Testing

@testable import saga

/// The outcome the demo and the chaos check read from the orders table, for each kind of cancellation.
@Suite struct SagaChecksTests {
    @Test func everyCancellationReasonMapsToItsOutcome() {
        #expect(SagaChecks.outcome(status: "CONFIRMED", reason: nil) == "CONFIRMED")
        #expect(SagaChecks.outcome(status: "PENDING", reason: nil) == "PENDING")
        #expect(SagaChecks.outcome(status: "CANCELLED", reason: "out of stock: gizmo: 2 requested") == "out_of_stock")
        #expect(
            SagaChecks.outcome(status: "CANCELLED", reason: "payment declined: payment failed: insufficient_credit")
                == "payment_declined")
        #expect(SagaChecks.outcome(status: "CANCELLED", reason: "timeout: not confirmed within 3 s") == "timeout")
        #expect(SagaChecks.outcome(status: "CANCELLED", reason: nil) == "cancelled")
        #expect(SagaChecks.trackerOutcome("timeout") == "cancelled: timeout")
    }
}
