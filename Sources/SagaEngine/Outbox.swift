import Foundation
import JSONSchema
import SagaKafka
import SagaPostgres

/// Writes Kafka messages into the outbox table inside the caller's transaction.
/// Nothing is published here: the relay publishes rows once their transaction committed.
public enum Outbox {
    /// Appends `messages` to the outbox of the connection's schema, in order, in one statement
    /// (however many there are). Rows get ids in the order given, so one saga's rows keep their order.
    /// - Parameters:
    ///   - messages: each message with the saga it belongs to (`sagaId` picks the shard, so one saga's rows
    ///     keep their order), its event id and its event type. An empty `eventType` is stored as NULL, like a
    ///     nil one.
    ///   - connection: a connection inside the caller's transaction.
    /// - Throws: `PostgresError`.
    public static func append(
        _ messages: [(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage)],
        on connection: PostgresConnection
    ) async throws(PostgresError) {
        guard !messages.isEmpty else { return }
        let (sql, binds) = appendStatement(messages)
        try await connection.execute(sql, binds)
    }

    /// Like ``append(_:on:)``, but the statement is sent with the session's next one, in its round trip
    /// (`PostgresConnection.executeDeferred(_:_:)`): for the last write before a transaction's `COMMIT`. Its
    /// failure fails the statement that carried it, and nothing of the transaction is kept.
    /// - Throws: `PostgresError` (SQLSTATE 25P01) outside a transaction.
    public static func appendDeferred(
        _ messages: [(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage)],
        on connection: PostgresConnection
    ) throws(PostgresError) {
        guard !messages.isEmpty else { return }
        let (sql, binds) = appendStatement(messages)
        try connection.executeDeferred(sql, binds)
    }

    /// The `INSERT INTO saga_outbox … SELECT … FROM unnest(…) AS m(…)` of `messages`, in order, whose bind
    /// parameters are numbered from `n`; with a `condition`, only the rows it holds for are written (it may refer
    /// to a row's saga id as `m.saga_id`).
    static func appendStatement(
        _ messages: [(sagaId: String, eventId: UUID?, eventType: String?, message: KafkaOutgoingMessage)],
        firstParameter n: Int = 1, where condition: String? = nil
    ) -> (sql: String, binds: [PostgresBind]) {
        (
            """
            INSERT INTO saga_outbox (shard, saga_id, event_id, event_type, topic, key, headers, payload)
            SELECT \(shard(of: "m.saga_id")), m.saga_id,
                   NULLIF(m.event_id, '')::uuid, NULLIF(m.event_type, ''), m.topic, m.key, m.headers::jsonb, m.payload
            FROM unnest($\(n)::text[], $\(n + 1)::text[], $\(n + 2)::text[], $\(n + 3)::text[], $\(n + 4)::bytea[],
                        $\(n + 5)::text[], $\(n + 6)::bytea[])
                 WITH ORDINALITY AS m(saga_id, event_id, event_type, topic, key, headers, payload, n)\(
                condition.map { "\nWHERE " + $0 } ?? "")
            ORDER BY m.n
            """,
            [
                PostgresArray(messages.map(\.sagaId)),
                PostgresArray(messages.map { $0.eventId.map { $0.lowercasedString } ?? "" }),
                PostgresArray(messages.map { $0.eventType ?? "" }),
                PostgresArray(messages.map(\.message.topic)),
                PostgresArray(bytes: messages.map(\.message.key)),
                PostgresArray(messages.map { String(decoding: encodeHeaders($0.message.headers), as: UTF8.self) }),
                PostgresArray(bytes: messages.map { Optional($0.message.value) }),
            ]
        )
    }

    /// The SQL expression of a row's shard, from the SQL expression of its saga id: one saga's rows share a shard.
    public static func shard(of sagaId: String) -> String {
        "(hashtext(\(sagaId)) & 2147483647) % \(EngineMigrations.shardCount)"
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

extension Outbox {
    /// An unpublished outbox row of one saga, as `saga inspect` shows it.
    public struct Pending: Sendable, Codable, Hashable {
        /// The row's id (publication order within its shard).
        public var id: Int64
        /// The event type, when the row is an event.
        public var eventType: String?
        /// The topic it goes to.
        public var topic: String
        /// When it was written.
        public var createdAt: Date
        /// `parked`: the broker refused it for good; `held`: it waits behind a parked row of its saga;
        /// `pending`: it goes out with the relay's next rounds.
        public var state: String
        /// How many times publishing it failed.
        public var attempts: Int
        /// The broker's error of the last failed attempt, if any.
        public var lastError: String?
    }

    /// The saga's rows still in this outbox, oldest first.
    public static func pending(saga sagaId: String, on connection: PostgresConnection) async throws -> [Pending] {
        try await connection.query(
            """
            SELECT id, event_type, topic, created_at, attempts, last_error,
                CASE WHEN failed_at IS NOT NULL THEN 'parked'
                    WHEN EXISTS (SELECT 1 FROM saga_outbox p WHERE p.saga_id = o.saga_id AND p.failed_at IS NOT NULL)
                        THEN 'held'
                    ELSE 'pending' END AS state
            FROM saga_outbox o WHERE saga_id = $1 ORDER BY id
            """, [sagaId]
        ).map { r in
            Pending(
                id: try r.decode("id"), eventType: try r.decode("event_type", as: String?.self),
                topic: try r.decode("topic"), createdAt: try r.decode("created_at"), state: try r.decode("state"),
                attempts: try r.decode("attempts"), lastError: try r.decode("last_error", as: String?.self))
        }
    }
}
