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

    /// The envelope's shape is written and read by calendar arithmetic: the same text as Foundation's ISO 8601
    /// style writes, and the same time as it reads, from 1970 to 9999 (dense around now, and across the whole range).
    /// The same millisecond: Foundation's reading of `.681` is not always the double nearest to it (a few units in
    /// the last place off), the arithmetic's is (`Double(ms) / 1000`).
    @Test func theEnvelopesShapeAgreesWithFoundation() throws {
        var generator = SystemRandomNumberGenerator()
        var wrong: [String] = []
        let ranges: [ClosedRange<Int64>] = [1_700_000_000_000...1_900_000_000_000, 0...253_402_300_799_999]
        for range in ranges {
            for _ in 0..<10_000 {
                let ms = Int64.random(in: range, using: &generator)
                let text = Timestamp.format(Date(timeIntervalSince1970: Double(ms) / 1000))
                let foundation = Timestamp.formatWithFoundation(ms: Double(ms))
                if text != foundation { wrong.append("format \(ms): \(text) ≠ \(foundation)") }
                for shape in [text, String(text.prefix(19)) + "Z"] {
                    if !Self.sameTime(Timestamp.parse(shape), Timestamp.parseWithFoundation(shape)) {
                        wrong.append("parse \(shape)")
                    }
                }
                if Timestamp.parse(text) != Date(timeIntervalSince1970: Double(ms) / 1000) {
                    wrong.append("exact \(text)")
                }
            }
        }
        #expect(wrong.isEmpty, "\(wrong.count) wrong, e.g. \(wrong.prefix(3))")
    }

    /// The calendar's edges, and texts of other shapes (which Foundation reads, leniently or not, or refuses, as
    /// before).
    @Test func edgesAndOtherShapesReadAsFoundationReadsThem() {
        let texts = [
            "1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z", "2000-02-29T12:00:00Z", "2024-02-29T00:00:00.001Z",
            "2100-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z", "2026-12-00T00:00:00Z", "2026-12-01T24:00:00Z", "2026-12-01T23:60:00Z",
            "2026-12-01T23:59:60Z", "2026-12-01t10:11:05.681z", "2026-12-01T10:11:05.681+01:00",
            "2026-12-01T10:11:05.681234Z", "2026-12-01T10:11:05.6Z", "1969-12-31T23:59:59.999Z",
            "2026-12-01T10:11:05,681Z", "2026-12-01T10:11:0x.681Z", "2026-12-01 10:11:05.681Z", "",
        ]
        for text in texts {
            #expect(Self.sameTime(Timestamp.parse(text), Timestamp.parseWithFoundation(text)), "\(text)")
        }
        #expect(Timestamp.parse("2024-02-29T00:00:00.001Z") == Date(timeIntervalSince1970: 1_709_164_800.001))
        #expect(Timestamp.format(Date(timeIntervalSince1970: 253_402_300_799.999)) == "9999-12-31T23:59:59.999Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 951_825_600)) == "2000-02-29T12:00:00.000Z")
    }

    /// Both nil, or both a time, in the same millisecond.
    private static func sameTime(_ a: Date?, _ b: Date?) -> Bool {
        guard let a, let b else { return a == nil && b == nil }
        return (a.timeIntervalSince1970 * 1000).rounded() == (b.timeIntervalSince1970 * 1000).rounded()
    }
}
