import Foundation
import SagaEngine

/// The orders service's writes and reads outside event handling: placing an order (state + `order.created`
/// in one transaction, through the outbox) and reading one back.
public struct OrderBook: Sendable {
    /// The connections to the orders schema.
    public let pool: PostgresPool
    /// The codec that validates and encodes `order.created`.
    public let codec: EventCodec
    /// The `order.created` version this service emits (1 or 2).
    public let emitVersion: Int
    /// How long after placement an order times out unless a request says otherwise
    /// (``OrderRequest/deadlineSeconds``); nil: no deadline by default (`SAGA_ORDER_DEADLINE=0s`).
    public let deadline: Duration?

    /// Fault injection for tests.
    public enum Failpoint: Sendable, Hashable {
        /// The order's statement commits, then its session breaks before the answer arrives.
        case sessionLostAfterCommit
    }
    /// The fault to inject, if any (tests only).
    public var failpoint: Failpoint?
    /// The orders database, when this process also runs its outbox relay: a placement then wakes that relay
    /// (`ServiceDatabase.outboxCommitted()`), which publishes `order.created` at once instead of at its next look.
    public var relayDatabase: ServiceDatabase?

    /// An order book over `pool`, emitting `order.created` in version `emitVersion`, giving each order the
    /// deadline `deadline` by default (nil: none).
    public init(pool: PostgresPool, codec: EventCodec, emitVersion: Int, deadline: Duration? = nil) {
        self.pool = pool
        self.codec = codec
        self.emitVersion = emitVersion
        self.deadline = deadline
        self.queue = PlacementQueue(maxGroup: Self.maxGroup)
    }

    /// Most placements stored in one group (see ``place(_:idempotencyKey:traceparent:)``).
    public static let maxGroup = 128
    /// The placements waiting for the next group.
    let queue: PlacementQueue

    /// The result of ``place(_:idempotencyKey:traceparent:)``.
    public struct Placed: Sendable, Hashable {
        /// The order's id (the saga id).
        public var orderId: UUID
        /// false when an earlier request with the same idempotency key already placed it.
        public var created: Bool
        /// The saga's first event, when this call placed the order.
        public var event: EventEnvelope? = nil
        /// When the order times out, when this call placed it with a deadline.
        public var deadline: Date? = nil
    }

    /// Prices the lines from the price list, stores the order as PENDING and writes `order.created` to the outbox,
    /// all in one transaction. Works whether or not inventory and billing are up.
    ///
    /// Placements that arrive together are stored together (group commit): when no other is being stored, this one
    /// is stored at once; else it waits for the current group and is stored in the next, with every placement that
    /// arrived meanwhile (up to ``maxGroup``). A group takes two round trips: one read (prices and idempotency keys),
    /// then one statement that writes the orders, their lines, history, events and deadlines (a data-modifying
    /// `WITH`, which commits as one transaction). When the database refuses a group's statement, each placement is
    /// stored alone, so only the refused one fails. The deadline (``OrderRequest/deadlineSeconds``, else
    /// ``deadline``; none when both are nil) falls at one due time stored both as the order's `deadline_at` and in
    /// `saga_deadlines` ("order", delivering `order.expired` to orders' worker); `order.created` carries its
    /// `saga-deadline` header.
    /// - Parameters:
    ///   - request: the validated order.
    ///   - idempotencyKey: scoped to the customer: the customer's retry of the same request (same canonical
    ///     form, see `OrderRequest.canonical`) with the same key returns the first order instead of a new one.
    ///     The key's request is remembered as a SHA-256 fingerprint of that form.
    ///   - traceparent: the caller's W3C trace context (an HTTP request's `traceparent`): the saga continues
    ///     its trace. Without one (and no current span), the saga starts a new trace.
    /// - Throws: `OrderRequestError` for an invalid idempotency key, an unknown SKU or an overflowing total;
    ///   `IdempotencyKeyConflict` when the customer used the key for a different request; `OrderNotStored` when
    ///   the database is unavailable; `OrderOutcomeUnknown` when it became unavailable while the order was being
    ///   committed; `PostgresError` otherwise.
    public func place(_ request: OrderRequest, idempotencyKey: String? = nil, traceparent: String? = nil)
        async throws -> Placed
    {
        if let idempotencyKey { try OrderRequest.validate(idempotencyKey: idempotencyKey) }
        return try await enqueue(Placement(request: request, idempotencyKey: idempotencyKey, traceparent: traceparent))
    }

    /// The database session broke (or the database is unreachable), as opposed to a statement it refused.
    static func sessionLost(_ error: PostgresError) -> Bool {
        guard error.kind != .connection else { return true }
        guard let state = error.sqlState else { return false }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }

    /// Which of the orders `ids` (written by one statement: all or none) were stored, after the session that
    /// inserted them broke. The lost session may still be running on the server (a network failure, not a crash),
    /// so it is ended first: then what the order table shows is final. Tries for a few seconds; throws
    /// ``OrderOutcomeUnknown`` (of the first order) when the database stays unreachable.
    func stored(_ ids: [UUID], lostSession backend: Int32) async throws -> Set<UUID> {
        var lastError: any Error = OrderOutcomeUnknown(orderId: ids[0], reason: "not checked")
        for attempt in 1...4 {
            do {
                return try await pool.withConnection { c in
                    // Only a session of this user on this database (after a server restart the pid may be
                    // another process's).
                    let session = "pid = $1 AND usename = current_user AND datname = current_database()"
                    _ = try await c.query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE \(session)", [backend])
                    for _ in 0..<100 {
                        if try await c.query("SELECT 1 FROM pg_stat_activity WHERE \(session)", [backend]).isEmpty {
                            break
                        }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    let rows = try await c.query(
                        "SELECT id FROM orders WHERE id = ANY($1::uuid[])", [PostgresArray(ids)])
                    return Set(try rows.map { try $0.decode("id", as: UUID.self) })
                }
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(250 * attempt))
            }
        }
        throw OrderOutcomeUnknown(orderId: ids[0], reason: "\(lastError)")
    }

    /// A key's order answers a retry only when the retry is the same request. Orders placed before fingerprints
    /// were stored (nil) answer as before.
    static func checkSameRequest(_ stored: String?, _ fingerprint: String?) throws(IdempotencyKeyConflict) {
        if let stored, stored != fingerprint { throw IdempotencyKeyConflict() }
    }

    /// An order as `GET /orders/{id}` shows it.
    public struct View: Codable, Sendable, Hashable {
        /// A line of the order.
        public struct Line: Codable, Sendable, Hashable {
            /// The product.
            public var sku: String
            /// How many units.
            public var quantity: Int
            /// The price per unit quoted when the order was placed.
            public var unitPrice: Money
        }
        /// A status the order had, with the event that set it.
        public struct Step: Codable, Sendable, Hashable {
            /// The status (an ``OrdersService/Status`` raw value).
            public var status: String
            /// The event type that set it.
            public var event: String
            /// That event's id.
            public var eventId: String?
            /// For a cancellation, why (as ``OrderBook/View/reason``); nil otherwise.
            public var detail: String?
            /// When (RFC 3339).
            public var at: String
        }
        /// The order's id.
        public var orderId: String
        /// The customer who placed it.
        public var customerId: String
        /// Its current status (an ``OrdersService/Status`` raw value).
        public var status: String
        /// Why it was cancelled, e.g. "out of stock: …"; nil otherwise.
        public var reason: String?
        /// The order's total.
        public var total: Money
        /// Its lines.
        public var lines: [Line]
        /// Every status it had, oldest first.
        public var history: [Step]
        /// When it was placed (RFC 3339).
        public var createdAt: String
        /// When its status last changed (RFC 3339).
        public var updatedAt: String
        /// When it times out unless confirmed or cancelled before (RFC 3339); nil when it was placed without a
        /// deadline.
        public var deadline: String? = nil
    }

    /// The order with its lines and status history; nil when there is no such order.
    public func view(_ id: UUID) async throws -> View? {
        try await pool.withConnection { connection in
            guard
                let o = try await connection.query(
                    """
                    SELECT customer_id, status, reason, total_amount, currency, created_at, updated_at, deadline_at
                    FROM orders WHERE id = $1
                    """, [id]
                ).first
            else { return nil }
            let currency: String = try o.decode("currency")
            let lines = try await connection.query(
                "SELECT sku, quantity, unit_price FROM order_lines WHERE order_id = $1 ORDER BY line_no", [id]
            ).map { r in
                View.Line(
                    sku: try r.decode("sku"), quantity: try r.decode("quantity"),
                    unitPrice: Money(amount: try r.decode("unit_price"), currency: currency))
            }
            let history = try await connection.query(
                "SELECT status, event_type, event_id, detail, at FROM order_history WHERE order_id = $1 ORDER BY seq",
                [id]
            ).map { r in
                View.Step(
                    status: try r.decode("status"), event: try r.decode("event_type"),
                    eventId: try r.decode("event_id", as: UUID?.self)?.lowercasedString,
                    detail: try r.decode("detail", as: String?.self), at: Timestamp.format(try r.decode("at")))
            }
            return View(
                orderId: id.lowercasedString, customerId: try o.decode("customer_id"),
                status: try o.decode("status"), reason: try o.decode("reason", as: String?.self),
                total: Money(amount: try o.decode("total_amount"), currency: currency), lines: lines, history: history,
                createdAt: Timestamp.format(try o.decode("created_at")),
                updatedAt: Timestamp.format(try o.decode("updated_at")),
                deadline: try o.decode("deadline_at", as: Date?.self).map(Timestamp.format))
        }
    }
}
