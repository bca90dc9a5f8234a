import Foundation
import SagaEngine
import Testing

@Suite struct TimeOrderedIDTests {
    /// The RFC 9562 layout: the millisecond timestamp in the first 48 bits, version 7, variant 10.
    @Test func carriesItsMillisecondVersionAndVariant() {
        let date = Date(timeIntervalSince1970: 1_796_083_200.123_9)
        let id = UUID.timeOrdered(at: date)
        let bytes = withUnsafeBytes(of: id.uuid) { Array($0) }
        let milliseconds = bytes[0..<6].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        #expect(milliseconds == 1_796_083_200_123)
        #expect(bytes[6] >> 4 == 7)
        #expect(bytes[8] >> 6 == 0b10)
        #expect(id.uuidString.lowercased().hasPrefix("01a2"))  // 0x01a2... is 2026-12 in milliseconds
    }

    /// Ids of later milliseconds sort after earlier ones, as text too (what a `text` saga id is compared by); ids
    /// of one millisecond differ.
    @Test func laterIdsSortAfterEarlierOnesAndNoneRepeat() {
        // Mid-millisecond times, so that binary fractions cannot round a time into the millisecond before.
        func millisecond(_ step: Int) -> Date {
            Date(timeIntervalSince1970: (1_796_083_200_000.5 + Double(step)) / 1000)
        }
        let start = millisecond(0)
        var previous = UUID.timeOrdered(at: start).uuidString.lowercased()
        for step in 1...2_000 {
            let next = UUID.timeOrdered(at: millisecond(step)).uuidString.lowercased()
            #expect(next > previous, "step \(step)")
            previous = next
        }
        let sameMillisecond = (0..<10_000).map { _ in UUID.timeOrdered(at: start) }
        #expect(Set(sameMillisecond).count == 10_000)
    }

    /// A new event's id is time-ordered.
    @Test func newEnvelopesGetTimeOrderedIds() {
        let envelope = EventEnvelope(
            type: "order.created", version: 2, sagaId: "s", causationId: nil, producer: "orders", traceparent: nil,
            data: .object([:]))
        let bytes = withUnsafeBytes(of: envelope.id.uuid) { Array($0) }
        #expect(bytes[6] >> 4 == 7)
        let milliseconds = bytes[0..<6].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        #expect(abs(Double(milliseconds) / 1000 - Date().timeIntervalSince1970) < 60)
    }
}
