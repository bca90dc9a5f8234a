import Foundation
import Testing

@testable import SagaPostgres

@Suite struct PostgresCodingTests {
    @Test func dateFormatsAsUTCWithMicroseconds() {
        let date = Date(timeIntervalSince1970: 1_795_239_000.123456)
        #expect(date.postgresText == "2026-11-21T05:30:00.123456+00")
        #expect(Date(timeIntervalSince1970: -1).postgresText == "1969-12-31T23:59:59.000000+00")
    }

    /// Years 1-9999 are written byte by byte: the text reads back as the same microsecond (through the parser,
    /// which shares nothing with the writer but the calendar), and keeps its fixed shape; other years take the
    /// general path.
    @Test func dateTextRoundTripsToTheMicrosecond() throws {
        var generator = SystemRandomNumberGenerator()
        // 0001-01-01 to 9999-12-31, in microseconds since 1970, and around now.
        let ranges: [ClosedRange<Int64>] = [
            -62_135_596_800_000_000...253_402_300_799_999_999, 1_700_000_000_000_000...1_900_000_000_000_000,
        ]
        for range in ranges {
            for _ in 0..<10_000 {
                let micros = Int64.random(in: range, using: &generator)
                let date = Date(timeIntervalSince1970: Double(micros) / 1_000_000)
                let text = date.postgresText
                #expect(text.utf8.count == 29 && text.hasSuffix("+00"), "\(text)")
                let back = try Date(postgresText: text)
                #expect(
                    abs(back.timeIntervalSince(date)) < 0.000_001 * max(1, abs(date.timeIntervalSince1970) / 1e9),
                    "\(text)")
            }
        }
        #expect(Date(timeIntervalSince1970: -62_135_596_800).postgresText == "0001-01-01T00:00:00.000000+00")
        #expect(Date(timeIntervalSince1970: 253_402_300_799).postgresText == "9999-12-31T23:59:59.000000+00")
        #expect(Date(timeIntervalSince1970: 253_402_300_800).postgresText == "10000-01-01T00:00:00.000000+00")
        #expect(Date(timeIntervalSince1970: -62_135_596_801).postgresText == "0001-12-31T23:59:59.000000+00 BC")
    }

    @Test func dateParsesServerOutputForms() throws {
        let expected = 1_795_239_000.123456
        let forms = [
            "2026-11-21 05:30:00.123456+00", "2026-11-21T05:30:00.123456Z", "2026-11-21 07:30:00.123456+02",
            "2026-11-21 00:00:00.123456-05:30", "2026-11-21 05:30:00.123456",
        ]
        for form in forms {
            let date = try Date(postgresText: form)
            #expect(abs(date.timeIntervalSince1970 - expected) < 0.000_001, "\(form)")
        }
        #expect(try Date(postgresText: "2026-11-21").timeIntervalSince1970 == 1_795_219_200)
        #expect(try Date(postgresText: "2026-11-21 05:30:00+00").timeIntervalSince1970 == 1_795_239_000)
        #expect(try Date(postgresText: "2026-11-21 05:30:00.5+00").timeIntervalSince1970 == 1_795_239_000.5)
        #expect(try Date(postgresText: "infinity") == .distantFuture)
        #expect(throws: PostgresError.self) { try Date(postgresText: "21/11/2026") }
        #expect(throws: PostgresError.self) { try Date(postgresText: "2026-13-01") }
        #expect(throws: PostgresError.self) { try Date(postgresText: "2026-11-21 05:30:00+00 junk") }
    }

    @Test func calendarArithmeticRoundTripsAcrossEras() {
        for days: Int64 in [-1_000_000, -719_468, -1, 0, 1, 11_016, 20_778, 2_932_896] {
            let (y, m, d) = PostgresTimestamp.civil(fromDays: days)
            #expect(PostgresTimestamp.days(fromCivil: y, m, d) == days)
        }
    }

    @Test func byteaHexRoundTrips() throws {
        let bytes: [UInt8] = [0, 1, 0x7f, 0x80, 0xff]
        #expect(bytes.postgresText == "\\x00017f80ff")
        #expect(try [UInt8](postgresText: "\\x00017F80ff") == bytes)
        #expect(throws: PostgresError.self) { try [UInt8](postgresText: "\\x0") }
        #expect(throws: PostgresError.self) { try [UInt8](postgresText: "00") }
    }

    @Test func scalarDecodingRejectsGarbageWithoutQuotingIt() {
        #expect(throws: PostgresError.self) { try Int(postgresText: "12x") }
        #expect(throws: PostgresError.self) { try Bool(postgresText: "yes") }
        do {
            _ = try UUID(postgresText: "secret-customer-value")
            Issue.record("decoded a non-UUID")
        } catch {
            #expect(error.kind == .decoding)
            #expect(!error.message.contains("secret-customer-value"))
        }
    }

    @Test func redactionRemovesURLPasswords() {
        let configuration = PostgresConfiguration(url: "postgresql://user:p%40ss-w0rd@host/db?password=other-secret")
        let text = configuration.redact(
            "bad URI: postgresql://user:p%40ss-w0rd@host/db?password=other-secret p@ss-w0rd")
        #expect(!text.contains("p%40ss-w0rd"))
        #expect(!text.contains("p@ss-w0rd"))
        #expect(!text.contains("other-secret"))
        #expect(text.contains("postgresql://user:***@host/db"))
    }

    @Test func quoteIdentifierDoublesQuotes() {
        #expect(PostgresConnection.quoteIdentifier("my \"schema\"") == "\"my \"\"schema\"\"\"")
    }

    @Test func retriableClassification() {
        for state in ["40001", "40P01", "08006", "57P01", "57P02", "57P03", "53300"] {
            #expect(PostgresError(kind: .query, message: "x", sqlState: state).isRetriable, "\(state)")
        }
        for state in ["23505", "42601", "42P01", "25P02"] {
            #expect(!PostgresError(kind: .query, message: "x", sqlState: state).isRetriable, "\(state)")
        }
        #expect(PostgresError(kind: .connection, message: "x").isRetriable)
        #expect(!PostgresError(kind: .decoding, message: "x").isRetriable)
    }
}
