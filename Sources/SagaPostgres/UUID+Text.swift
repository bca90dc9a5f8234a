import Foundation

extension UUID {
    /// The UUID in its canonical lowercase text form, `8-4-4-4-12` hex digits (`0190a5c4-...`): the form
    /// PostgreSQL prints, and the one events, headers and bind parameters carry.
    ///
    /// The same text as `uuidString.lowercased()`, written here digit by digit: Foundation formats a UUID through
    /// `sprintf` and parses one through `sscanf`, ~1 µs each, and an event's ids pass through text several times on
    /// their way (envelope, headers, bind parameters, result rows), ~2.5 % of `saga dev`'s CPU in the closed loop.
    public var lowercasedString: String {
        withUnsafeBytes(of: uuid) { bytes in
            String(unsafeUninitializedCapacity: 36) { out in
                func digit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 + nibble : 0x57 + nibble }  // 0-9, a-f
                var at = 0
                for (index, byte) in bytes.enumerated() {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        out[at] = UInt8(ascii: "-")
                        at += 1
                    }
                    out[at] = digit(byte >> 4)
                    out[at + 1] = digit(byte & 0x0F)
                    at += 2
                }
                return at
            }
        }
    }

    /// The UUID written in `text` in the canonical `8-4-4-4-12` form, with hex digits in either case (what
    /// `UUID(uuidString:)` accepts, without its `sscanf`); nil for anything else.
    public init?(parsing text: some StringProtocol) {
        var text = String(text)
        let parsed = text.withUTF8 { utf8 -> uuid_t? in
            guard utf8.count == 36 else { return nil }
            var value: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            let ok = withUnsafeMutableBytes(of: &value) { out -> Bool in
                func nibble(_ c: UInt8) -> UInt8? {
                    switch c {
                    case 0x30...0x39: c - 0x30  // 0-9
                    case 0x41...0x46: c - 0x37  // A-F
                    case 0x61...0x66: c - 0x57  // a-f
                    default: nil
                    }
                }
                var at = 0
                for index in 0..<16 {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        guard utf8[at] == UInt8(ascii: "-") else { return false }
                        at += 1
                    }
                    guard let high = nibble(utf8[at]), let low = nibble(utf8[at + 1]) else { return false }
                    out[index] = high << 4 | low
                    at += 2
                }
                return true
            }
            return ok ? value : nil
        }
        guard let parsed else { return nil }
        self.init(uuid: parsed)
    }
}
