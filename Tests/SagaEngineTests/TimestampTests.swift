import Foundation
import Testing

@testable import SagaEngine

/// `Timestamp`: the envelope's `occurredAt` and the deadline marks' times, to the millisecond.
@Suite struct TimestampTests {
    /// A time already at a whole millisecond reads back as itself. The formatter truncated to milliseconds, so a
    /// time whose double lay just below its millisecond (about 1 in 20) was written one millisecond early (a
    /// flaky DeadlineTests in CI).
    @Test func aWholeMillisecondRoundTripsExactly() throws {
        var generator = SystemRandomNumberGenerator()
        var wrong: [String] = []
        for _ in 0..<20_000 {
            let ms = Int64.random(in: 1_700_000_000_000...1_900_000_000_000, using: &generator)
            let date = Date(timeIntervalSince1970: Double(ms) / 1000)
            let text = Timestamp.format(date)
            let back = try #require(Timestamp.parse(text))
            if Int64((back.timeIntervalSince1970 * 1000).rounded()) != ms { wrong.append("\(ms) → \(text)") }
        }
        #expect(wrong.count == 0, "\(wrong.count) of 20000 wrong, e.g. \(wrong.prefix(3))")
    }

    @Test func anyTimeIsWrittenToTheNearestMillisecondInUTC() throws {
        let cases: [(Double, String)] = [
            (1_796_119_865.681, "2026-12-01T10:11:05.681Z"),
            (1_796_119_865.9996, "2026-12-01T10:11:06.000Z"),  // rounds up, into the next second
            (1_796_119_865.0004, "2026-12-01T10:11:05.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
            (-0.0004, "1970-01-01T00:00:00.000Z"),
            (-1.5, "1969-12-31T23:59:58.500Z"),
        ]
        for (seconds, text) in cases {
            #expect(Timestamp.format(Date(timeIntervalSince1970: seconds)) == text)
        }
        #expect(Timestamp.parse("2026-12-01T10:11:05Z") == Date(timeIntervalSince1970: 1_796_119_865))
        #expect(Timestamp.parse("2026-12-01T10:11:05.5+01:00") == Date(timeIntervalSince1970: 1_796_116_265.5))
        #expect(Timestamp.parse("yesterday") == nil)
    }
}
