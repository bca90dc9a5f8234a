import Foundation

extension UUID {
    /// A new version 7 UUID (RFC 9562): the Unix time in milliseconds in its first 48 bits, then 74 random bits.
    ///
    /// The engine makes event ids (``EventEnvelope/id``) this way, and the example services their order and payment
    /// ids: ids made later sort after earlier ones (to the millisecond), so every index keyed by them (the inboxes,
    /// the tracker's events, a service's own tables) takes new entries at its right edge instead of at random pages
    /// all over a large index, each of which PostgreSQL must read and, after a checkpoint, log whole to the WAL.
    /// They stay as unguessable as random ids for any purpose of the saga, and are ordinary UUIDs to every reader.
    public static func timeOrdered(at date: Date = Date()) -> UUID {
        let milliseconds = UInt64(max(0, (date.timeIntervalSince1970 * 1000).rounded(.down)))
        var generator = SystemRandomNumberGenerator()
        let a: UInt64 = generator.next()
        let b: UInt64 = generator.next()
        func byte(_ value: UInt64, _ shift: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: value >> shift) }
        return UUID(
            uuid: (
                byte(milliseconds, 40), byte(milliseconds, 32), byte(milliseconds, 24), byte(milliseconds, 16),
                byte(milliseconds, 8), byte(milliseconds, 0),
                0x70 | (byte(a, 0) & 0x0F), byte(a, 8),  // version 7, then 12 random bits
                0x80 | (byte(b, 0) & 0x3F), byte(b, 8), byte(b, 16), byte(b, 24),  // variant 10, then 62 random bits
                byte(b, 32), byte(b, 40), byte(b, 48), byte(b, 56)
            ))
    }
}
