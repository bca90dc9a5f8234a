import Foundation

extension Date: PostgresEncodable, PostgresDecodable {
    /// ISO 8601 in UTC with microseconds (`2026-11-21T05:30:00.123456+00`), PostgreSQL's precision.
    /// Sub-microsecond parts are rounded.
    public var postgresText: String { PostgresTimestamp.format(self) }

    /// Parses `timestamptz` output in DateStyle ISO (`2026-11-21 05:30:00.123456+00`), also with
    /// a `T` separator, a `Z` or `±hh[:mm[:ss]]` offset, no fraction, a ` BC` suffix, a plain
    /// `date`, or `timestamp` without zone (read as UTC). `infinity` / `-infinity` become
    /// `Date.distantFuture` / `Date.distantPast`.
    public init(postgresText: String) throws(PostgresError) {
        guard let date = PostgresTimestamp.parse(postgresText) else { throw .decoding(Date.self, postgresText) }
        self = date
    }
}

/// Calendar arithmetic on the proleptic Gregorian calendar in UTC, without Foundation's
/// locale- and time-zone-dependent formatters. (The engine's RFC 3339 timestamps use its calendar arithmetic too.)
package enum PostgresTimestamp {
    static func format(_ date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        let (seconds, fraction) = floorDivMod(micros, 1_000_000)
        let (days, secondOfDay) = floorDivMod(seconds, 86_400)
        let (year, month, day) = civil(fromDays: days)
        if (1...9999).contains(year) {
            // The usual shape, written byte by byte (the general path below builds it from padded pieces).
            return String(unsafeUninitializedCapacity: 29) { out in
                put(year, 4, into: out, at: 0, then: "-")
                put(month, 2, into: out, at: 5, then: "-")
                put(day, 2, into: out, at: 8, then: "T")
                put(secondOfDay / 3600, 2, into: out, at: 11, then: ":")
                put(secondOfDay / 60 % 60, 2, into: out, at: 14, then: ":")
                put(secondOfDay % 60, 2, into: out, at: 17, then: ".")
                put(fraction, 6, into: out, at: 20, then: "+")
                out[27] = UInt8(ascii: "0")
                out[28] = UInt8(ascii: "0")
                return 29
            }
        }
        let bc = year <= 0
        var text = pad(bc ? 1 - year : year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2)
        text += "T" + pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay / 60 % 60, 2) + ":" + pad(secondOfDay % 60, 2)
        text += "." + pad(fraction, 6) + "+00"
        return bc ? text + " BC" : text
    }

    static func parse(_ text: String) -> Date? {
        if text == "infinity" { return .distantFuture }
        if text == "-infinity" { return .distantPast }
        var scanner = Scanner(Array(text.utf8))
        let bc = scanner.stripSuffix(" BC")
        guard var year = scanner.number(), scanner.take("-"), let month = scanner.number(maxDigits: 2),
            scanner.take("-"), let day = scanner.number(maxDigits: 2), (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        if bc { year = 1 - year }
        var secondOfDay: Int64 = 0
        var micros: Int64 = 0
        var offsetSeconds: Int64 = 0
        if scanner.take(" ") || scanner.take("T") {
            guard let hour = scanner.number(maxDigits: 2), scanner.take(":"), let minute = scanner.number(maxDigits: 2),
                scanner.take(":"), let second = scanner.number(maxDigits: 2), hour <= 24, minute < 60, second < 61
            else { return nil }
            secondOfDay = hour * 3600 + minute * 60 + second
            if scanner.take(".") {
                guard let (value, digits) = scanner.digits(maxDigits: 6), digits > 0 else { return nil }
                var scaled = value
                for _ in digits..<6 { scaled *= 10 }
                micros = scaled
            }
            if scanner.take("Z") {
                offsetSeconds = 0
            } else if let sign: Int64 = scanner.take("+") ? 1 : (scanner.take("-") ? -1 : nil) {
                guard let hours = scanner.number(maxDigits: 2) else { return nil }
                var offset = hours * 3600
                if scanner.take(":") {
                    guard let minutes = scanner.number(maxDigits: 2) else { return nil }
                    offset += minutes * 60
                    if scanner.take(":") {
                        guard let seconds = scanner.number(maxDigits: 2) else { return nil }
                        offset += seconds
                    }
                }
                offsetSeconds = sign * offset
            }
        }
        guard scanner.atEnd else { return nil }
        let seconds = days(fromCivil: year, month, day) * 86_400 + secondOfDay - offsetSeconds
        return Date(timeIntervalSince1970: Double(seconds) + Double(micros) / 1_000_000)
    }

    private static func floorDivMod(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
        let q = a / b
        let r = a % b
        return r < 0 ? (q - 1, r + b) : (q, r)
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }

    /// Writes `value` (not negative) in `digits` decimal digits at `at` in `out`, then `then` right after them.
    package static func put(
        _ value: Int64, _ digits: Int, into out: UnsafeMutableBufferPointer<UInt8>, at: Int, then: Unicode.Scalar
    ) {
        var value = value
        for i in stride(from: at + digits - 1, through: at, by: -1) {
            out[i] = UInt8(ascii: "0") + UInt8(value % 10)
            value /= 10
        }
        out[at + digits] = UInt8(ascii: then)
    }

    /// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
    package static func civil(fromDays z: Int64) -> (Int64, Int64, Int64) {
        let z = z + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// (year, month, day) to days since 1970-01-01; Howard Hinnant's `days_from_civil`.
    package static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private struct Scanner {
        var bytes: [UInt8]
        var index = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { index == bytes.count }

        mutating func stripSuffix(_ suffix: String) -> Bool {
            let tail = Array(suffix.utf8)
            guard bytes.count >= tail.count, Array(bytes.suffix(tail.count)) == tail else { return false }
            bytes.removeLast(tail.count)
            return true
        }

        mutating func take(_ literal: Character) -> Bool {
            guard index < bytes.count, let ascii = literal.asciiValue, bytes[index] == ascii else { return false }
            index += 1
            return true
        }

        mutating func digits(maxDigits: Int) -> (Int64, Int)? {
            var value: Int64 = 0
            var count = 0
            while index < bytes.count, count < maxDigits, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index])
            {
                value = value * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
                index += 1
                count += 1
            }
            return count == 0 ? nil : (value, count)
        }

        mutating func number(maxDigits: Int = 9) -> Int64? { digits(maxDigits: maxDigits)?.0 }
    }
}
