import Foundation
import JSONSchema
import SagaKafka
import SagaPostgres

/// Writes Kafka messages into the outbox table inside the caller's transaction.
/// Nothing is published here: the relay publishes rows once their transaction committed.
public enum Outbox {
    /// Appends `messages` to the outbox of the connection's schema, in order.
    /// - Parameters:
    ///   - sagaId: the saga each message belongs to; it picks the shard, so one saga's rows keep their order.
    /// - Throws: `PostgresError`.
    public static func append(
        _ messages: [(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage)],
        on connection: PostgresConnection
    ) async throws(PostgresError) {
        for m in messages {
            try await connection.execute(
                """
                INSERT INTO saga_outbox (shard, saga_id, event_id, event_type, topic, key, headers, payload)
                VALUES ((hashtext($1) & 2147483647) % \(EngineMigrations.shardCount), $1, $2, $3, $4, $5, $6::jsonb, $7)
                """,
                [
                    m.sagaId, m.eventId, m.eventType, m.message.topic, m.message.key,
                    String(decoding: encodeHeaders(m.message.headers), as: UTF8.self), m.message.value,
                ])
        }
    }

    /// Headers as stored: a JSON array of `{"k": name, "v": text}` or `{"k": name, "b64": base64}` for
    /// values that are not UTF-8.
    static func encodeHeaders(_ headers: [KafkaHeader]) -> [UInt8] {
        JSONValue.array(
            headers.map { h in
                if let s = h.stringValue, !s.utf8.contains(0) {  // jsonb refuses \u0000: such values go as base64
                    return .object(["k": .string(h.key), "v": .string(s)])
                }
                return .object(["k": .string(h.key), "b64": .string(Data(h.value).base64EncodedString())])
            }
        ).serialized()
    }

    static func decodeHeaders(_ text: String) -> [KafkaHeader] {
        guard case .array(let items)? = try? JSONValue(parsing: Array(text.utf8)) else { return [] }
        return items.compactMap { item in
            guard case .string(let k)? = item["k"] else { return nil }
            if case .string(let v)? = item["v"] { return KafkaHeader(key: k, string: v) }
            if case .string(let b)? = item["b64"], let d = Data(base64Encoded: b) {
                return KafkaHeader(key: k, value: Array(d))
            }
            return nil
        }
    }
}
