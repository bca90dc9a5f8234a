/// A `pattern` that is a run of ASCII character classes and literals with counts, anchored at both ends
/// (`^[A-Z]{3}$`, `^[a-z]+\.[a-z]+$`, `^[0-9a-f]{2}-[0-9a-f]{32}$`): matched over the string's UTF-8 bytes without
/// ICU. Such patterns are what event schemas use; `NSRegularExpression` took ~0.7 % of the whole machine in the
/// benchmark's profiles matching them. Any other pattern is left to ICU (``init(_:)`` returns nil).
///
/// `$` matches only at the end, as in ECMA-262 (which JSON Schema's `pattern` follows); ICU's `$` also matches
/// before a final line terminator, so `"EUR\n"` matched `^[A-Z]{3}$` there.
struct SimplePattern: Sendable {
    /// One class or literal and how many times it repeats.
    struct Atom: Sendable {
        /// The ASCII bytes it matches, as a 128-bit set.
        var low: UInt64 = 0
        var high: UInt64 = 0
        var min = 1
        var max = 1

        func contains(_ byte: UInt8) -> Bool {
            byte < 64 ? low & (1 << UInt64(byte)) != 0 : byte < 128 && high & (1 << UInt64(byte - 64)) != 0
        }

        mutating func insert(_ byte: UInt8) {
            if byte < 64 { low |= 1 << UInt64(byte) } else { high |= 1 << UInt64(byte - 64) }
        }
    }

    let atoms: [Atom]

    /// The atoms of `source`, or nil when it is not such a pattern.
    init?(_ source: String) {
        let b = Array(source.utf8)
        guard b.count >= 2, b.first == UInt8(ascii: "^"), b.last == UInt8(ascii: "$"),
            b.allSatisfy({ $0 >= 0x20 && $0 < 0x7F })
        else { return nil }
        var atoms: [Atom] = []
        var i = 1
        let end = b.count - 1  // the final `$`
        /// The class an escape names (`\d`) or the literal it makes of a punctuation character (`\.`).
        func escaped(_ c: UInt8, into atom: inout Atom) -> Bool {
            if c == UInt8(ascii: "d") {
                for digit in UInt8(ascii: "0")...UInt8(ascii: "9") { atom.insert(digit) }
                return true
            }
            guard Array(#".\-^$|?*+()[]{}/"#.utf8).contains(c) else { return false }
            atom.insert(c)
            return true
        }
        func isDigit(_ c: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) }
        func number(_ at: inout Int) -> Int? {
            var value = 0
            let start = at
            while at < end, isDigit(b[at]), value < 10_000 {
                value = value * 10 + Int(b[at] - UInt8(ascii: "0"))
                at += 1
            }
            return at > start ? value : nil
        }
        while i < end {
            var atom = Atom()
            let c = b[i]
            switch c {
            case UInt8(ascii: "\\"):
                guard i + 1 < end, escaped(b[i + 1], into: &atom) else { return nil }
                i += 2
            case UInt8(ascii: "["):
                i += 1
                guard i < end, b[i] != UInt8(ascii: "^"), b[i] != UInt8(ascii: "]") else { return nil }
                while i < end, b[i] != UInt8(ascii: "]") {
                    var first = b[i]
                    if first == UInt8(ascii: "\\") {
                        guard i + 1 < end, escaped(b[i + 1], into: &atom) else { return nil }
                        i += 2
                        continue
                    }
                    guard first != UInt8(ascii: "[") else { return nil }
                    if i + 2 < end, b[i + 1] == UInt8(ascii: "-"), b[i + 2] != UInt8(ascii: "]") {
                        let last = b[i + 2]
                        guard last != UInt8(ascii: "\\"), last != UInt8(ascii: "["), first <= last else { return nil }
                        while first < last {
                            atom.insert(first)
                            first += 1
                        }
                        atom.insert(last)
                        i += 3
                    } else {
                        atom.insert(first)
                        i += 1
                    }
                }
                guard i < end else { return nil }  // no closing `]`
                i += 1
            case UInt8(ascii: "^"), UInt8(ascii: "$"), UInt8(ascii: "."), UInt8(ascii: "|"), UInt8(ascii: "?"),
                UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "]"),
                UInt8(ascii: "{"), UInt8(ascii: "}"):
                return nil
            default:
                atom.insert(c)
                i += 1
            }
            if i < end {
                switch b[i] {
                case UInt8(ascii: "?"): (atom.min, atom.max, i) = (0, 1, i + 1)
                case UInt8(ascii: "*"): (atom.min, atom.max, i) = (0, Int.max, i + 1)
                case UInt8(ascii: "+"): (atom.min, atom.max, i) = (1, Int.max, i + 1)
                case UInt8(ascii: "{"):
                    i += 1
                    guard let min = number(&i) else { return nil }
                    var max = min
                    if i < end, b[i] == UInt8(ascii: ",") {
                        i += 1
                        max = number(&i) ?? Int.max
                    }
                    guard i < end, b[i] == UInt8(ascii: "}"), min <= max else { return nil }
                    (atom.min, atom.max, i) = (min, max, i + 1)
                default: break
                }
                // A lazy or possessive quantifier, or a quantifier on a quantifier: left to ICU.
                if i < end, [UInt8(ascii: "?"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "{")].contains(b[i])
                {
                    return nil
                }
            }
            atoms.append(atom)
        }
        self.atoms = atoms
    }

    /// Whether all of `s` matches.
    func matches(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { match(atom: 0, at: 0, in: $0) }
    }

    /// Greedy, giving back one repetition at a time when what follows does not match.
    private func match(atom index: Int, at start: Int, in bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard index < atoms.count else { return start == bytes.count }
        let atom = atoms[index]
        var count = 0
        while count < atom.max, start + count < bytes.count, atom.contains(bytes[start + count]) { count += 1 }
        while count >= atom.min {
            if match(atom: index + 1, at: start + count, in: bytes) { return true }
            count -= 1
        }
        return false
    }
}
