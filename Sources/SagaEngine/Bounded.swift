import SagaKafka

/// Limits on what one incoming message can put into a row, whatever it holds: a poison message (any
/// bytes, any size, in its key, headers or value) must always be writable as a dead letter.
///
/// - Text loses its NUL characters (PostgreSQL text and jsonb cannot hold them; they become U+FFFD).
/// - A saga id longer than ``sagaIdBytes`` (a huge key, a forged envelope) is cut and ends in `…#` and a
///   hash of the whole id: it fits the outbox's and the tracker's saga indexes, the worker and the tracker
///   derive the same one, and different long ids stay apart.
/// - Reasons and header values are cut at a character boundary and end in a marker saying how many bytes
///   were cut; past ``headerCount`` headers the rest are dropped and counted in one more header.
/// - The message's key and value travel unchanged in the dead letter: a redrive needs them as they were.
package enum Bounded {
    /// Longest saga id written, in UTF-8 bytes (the envelope schema's `maxLength` is 200 characters).
    static let sagaIdBytes = 200
    static let reasonBytes = 2000
    static let headerKeyBytes = 256
    /// Longest header value kept whole; a longer one is cut to this many bytes plus the marker.
    static let headerValueBytes = 4096
    static let headerCount = 64
    /// The header that counts the headers dropped past ``headerCount``.
    static let droppedHeaders = "dlq-dropped-headers"

    /// `text` without NUL characters.
    static func withoutNUL(_ text: String) -> String {
        text.utf8.contains(0) ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text
    }

    /// A saga id for a row: `id` without NULs, or, when longer than ``sagaIdBytes``, its start and a hash of
    /// the whole of it.
    package static func sagaId(_ id: String) -> String {
        let clean = withoutNUL(id)
        guard clean.utf8.count > sagaIdBytes else { return clean }
        let hash = String(fnv1a64(id.utf8), radix: 16)
        let suffix = "…#" + String(repeating: "0", count: 16 - hash.count) + hash
        return prefix(clean, maxBytes: sagaIdBytes - suffix.utf8.count) + suffix
    }

    /// `text` without NULs, cut to at most `maxBytes` UTF-8 bytes plus a marker (`…[cut N bytes]`).
    static func text(_ text: String, maxBytes: Int) -> String {
        let clean = withoutNUL(text)
        let count = clean.utf8.count
        guard count > maxBytes else { return clean }
        let kept = prefix(clean, maxBytes: maxBytes)
        return kept + "…[cut \(count - kept.utf8.count) bytes]"
    }

    /// `headers` with bounded keys and values, at most ``headerCount`` of them (and one counting the rest).
    static func headers(_ headers: [KafkaHeader]) -> [KafkaHeader] {
        var out: [KafkaHeader] = []
        out.reserveCapacity(min(headers.count, headerCount + 1))
        for header in headers.prefix(headerCount) {
            let key = text(header.key, maxBytes: headerKeyBytes)
            guard header.value.count > headerValueBytes else {
                out.append(KafkaHeader(key: key, value: header.value))
                continue
            }
            if let string = header.stringValue {
                out.append(KafkaHeader(key: key, string: text(string, maxBytes: headerValueBytes)))
            } else {
                let marker = "…[cut \(header.value.count - headerValueBytes) bytes]"
                out.append(
                    KafkaHeader(key: key, value: Array(header.value.prefix(headerValueBytes)) + Array(marker.utf8)))
            }
        }
        if headers.count > headerCount {
            out.append(KafkaHeader(key: droppedHeaders, string: String(headers.count - headerCount)))
        }
        return out
    }

    /// The longest start of `text` of at most `maxBytes` UTF-8 bytes that ends on a scalar boundary.
    private static func prefix(_ text: String, maxBytes: Int) -> String {
        let utf8 = text.utf8
        guard utf8.count > maxBytes else { return text }
        var end = utf8.index(utf8.startIndex, offsetBy: max(0, maxBytes))
        while end > utf8.startIndex && end.samePosition(in: text.unicodeScalars) == nil {
            end = utf8.index(before: end)
        }
        return String(text.unicodeScalars[..<end])
    }

    /// FNV-1a, 64 bits: a stable hash (not a secure one) that tells long ids apart.
    private static func fnv1a64(_ bytes: String.UTF8View) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }
}
