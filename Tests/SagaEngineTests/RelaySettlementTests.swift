import SagaKafka
import Testing

@testable import SagaEngine

/// Which rows of a published batch the relay deletes, keeps or parks.
struct RelaySettlementTests {
    let acked: Result<KafkaDeliveryReport, KafkaError> = .success(
        KafkaDeliveryReport(topic: "t", partition: 0, offset: 0))
    let timedOut: Result<KafkaDeliveryReport, KafkaError> = .failure(
        KafkaError(code: -192, name: "_MSG_TIMED_OUT", message: "timed out", isRetriable: true, isFatal: false))
    let tooLarge: Result<KafkaDeliveryReport, KafkaError> = .failure(
        KafkaError(code: -186, name: "_MSG_SIZE_TOO_LARGE", message: "too large", isRetriable: false, isFatal: false))

    @Test func onlyAcknowledgedRowsAreDeletedAndASagaKeepsItsLaterRowsBehindAFailedOne() {
        // Rows 1-6: a:1 acked, b:1 failed, a:2 acked, b:2 acked (after b's failure), c:1 acked, b:3 failed.
        let settled = Settlement(
            results: [acked, timedOut, acked, acked, acked, timedOut], ids: [1, 2, 3, 4, 5, 6],
            sagas: ["a", "b", "a", "b", "c", "b"])
        #expect(settled.doneIndices == [0, 2, 4])  // rows 1, 3, 5
        #expect(settled.failed == [2, 6])
        #expect(settled.backingOff == ["b"])
        #expect(settled.heldBack == 1)  // b:2 goes again after b:1
        #expect(settled.refused == nil)
        #expect(settled.firstError?.name == "_MSG_TIMED_OUT")
    }

    /// A parked row holds its saga back: a later row of the saga, even acknowledged, is not deleted (it goes out
    /// again once the parked row is dealt with). A row that failed only because an earlier one was refused at
    /// enqueue goes again at once, without backing off.
    @Test func theFirstRowRefusedForGoodIsParkedAndHoldsItsSagaBack() {
        let settled = Settlement(
            results: [tooLarge, acked, tooLarge], ids: [1, 2, 3], sagas: ["a", "a", "b"])
        #expect(settled.refused?.id == 1)
        #expect(settled.doneIndices == [])
        #expect(settled.heldBack == 1)
        #expect(settled.failed == [3])
        #expect(settled.backingOff == [])
    }
}
