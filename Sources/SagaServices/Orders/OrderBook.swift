import Foundation
import SagaEngine

/// The orders service's writes and reads outside event handling: placing an order (state + `order.created`
/// in one transaction, through the outbox) and reading one back.
public struct OrderBook: Sendable {
    public let pool: PostgresPool
    public let codec: EventCodec
    /// The `order.created` version this service emits (1 or 2).
    public let emitVersion: Int

    public init(pool: PostgresPool, codec: EventCodec, emitVersion: Int) {
        self.pool = pool
        self.codec = codec
        self.emitVersion = emitVersion
    }

    public struct Placed: Sendable, Hashable {
        public var orderId: UUID
        /// false when an earlier request with the same idempotency key already placed it.
        public var created: Bool
        /// The saga's first event, when this call placed the order.
        public var event: EventEnvelope? = nil
    }

    /// Prices the lines from the price list, stores the order as PENDING and writes `order.created` to the outbox,
    /// all in one transaction. Works whether or not inventory and billing are up.
    /// - Parameters:
    ///   - idempotencyKey: a client's retry with the same key returns the first order instead of a new one.
    ///   - traceparent: the caller's W3C trace context (an HTTP request's `traceparent`): the saga continues
    ///     its trace. Without one (and no current span), the saga starts a new trace.
    /// - Throws: `OrderRequestError` for an unknown SKU or an overflowing total; `PostgresError` otherwise.
    public func place(_ request: OrderRequest, idempotencyKey: String? = nil, traceparent: String? = nil)
        async throws -> Placed
    {
        try await pool.withTransaction { connection in
            if let idempotencyKey {
                let existing = try await connection.query(
                    "SELECT id FROM orders WHERE idempotency_key = $1", [idempotencyKey])
                if let row = existing.first { return Placed(orderId: try row.decode("id"), created: false) }
            }
            let skus = Array(Set(request.lines.map(\.sku)))
            let priceRows = try await connection.query(
                "SELECT sku, unit_price FROM prices WHERE currency = $1 AND sku = ANY($2::text[])",
                [request.currency, PostgresArray(skus)])
            var prices: [String: Int64] = [:]
            for row in priceRows { prices[try row.decode("sku")] = try row.decode("unit_price") }
            var total: Int64 = 0
            var lines: [OrderCreatedV2.Line] = []
            for (i, line) in request.lines.enumerated() {
                guard let price = prices[line.sku] else {
                    throw OrderRequestError(
                        "lines[\(i)].sku: unknown SKU '\(line.sku)' (no price in \(request.currency))")
                }
                let (lineTotal, o1) = price.multipliedReportingOverflow(by: Int64(line.quantity))
                let (sum, o2) = total.addingReportingOverflow(lineTotal)
                guard !o1, !o2 else { throw OrderRequestError("the order total is too large") }
                total = sum
                lines.append(
                    .init(
                        sku: line.sku, quantity: line.quantity,
                        unitPrice: Money(amount: price, currency: request.currency)))
            }
            let id = UUID()
            // A concurrent request with the same key may have inserted it since the check above: then this
            // inserts nothing and the first order is the answer (this transaction writes nothing).
            let inserted = try await connection.execute(
                """
                INSERT INTO orders (id, customer_id, currency, total_amount, status, idempotency_key)
                VALUES ($1, $2, $3, $4, 'PENDING', $5) ON CONFLICT (idempotency_key) DO NOTHING
                """, [id, request.customerId, request.currency, total, idempotencyKey])
            if inserted == 0, let idempotencyKey {
                let first = try await connection.query(
                    "SELECT id FROM orders WHERE idempotency_key = $1", [idempotencyKey])
                return Placed(orderId: try first[0].decode("id"), created: false)
            }
            for (n, line) in lines.enumerated() {
                try await connection.execute(
                    "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) VALUES ($1, $2, $3, $4, $5)",
                    [id, n, line.sku, line.quantity, line.unitPrice?.amount ?? 0])
            }
            let created = OrderCreatedV2(
                orderId: id.uuidString.lowercased(), customerId: request.customerId,
                total: Money(amount: total, currency: request.currency), lines: lines)
            let sagaId = created.orderId
            let trace = TraceParent.forEmitting(after: traceparent)
            let event =
                emitVersion == 1
                ? try OutgoingEvent(
                    created.v1, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
                : try OutgoingEvent(
                    created, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
            try await connection.execute(
                "INSERT INTO order_history (order_id, status, event_type, event_id) VALUES ($1, 'PENDING', $2, $3)",
                [id, event.envelope.type, event.envelope.id])
            try await Outbox.append(
                [(sagaId, event.envelope.id, event.envelope.type, try codec.encode(event))], on: connection)
            return Placed(orderId: id, created: true, event: event.envelope)
        }
    }

    /// An order as `GET /orders/{id}` shows it.
    public struct View: Codable, Sendable, Hashable {
        public struct Line: Codable, Sendable, Hashable {
            public var sku: String
            public var quantity: Int
            public var unitPrice: Money
        }
        public struct Step: Codable, Sendable, Hashable {
            public var status: String
            public var event: String
            public var eventId: String?
            public var detail: String?
            public var at: String
        }
        public var orderId: String
        public var customerId: String
        public var status: String
        public var reason: String?
        public var total: Money
        public var lines: [Line]
        public var history: [Step]
        public var createdAt: String
        public var updatedAt: String
    }

    /// The order with its lines and status history; nil when there is no such order.
    public func view(_ id: UUID) async throws -> View? {
        try await pool.withConnection { connection in
            guard
                let o = try await connection.query(
                    """
                    SELECT customer_id, status, reason, total_amount, currency, created_at, updated_at
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
                    eventId: try r.decode("event_id", as: UUID?.self)?.uuidString.lowercased(),
                    detail: try r.decode("detail", as: String?.self), at: Timestamp.format(try r.decode("at")))
            }
            return View(
                orderId: id.uuidString.lowercased(), customerId: try o.decode("customer_id"),
                status: try o.decode("status"), reason: try o.decode("reason", as: String?.self),
                total: Money(amount: try o.decode("total_amount"), currency: currency), lines: lines, history: history,
                createdAt: Timestamp.format(try o.decode("created_at")),
                updatedAt: Timestamp.format(try o.decode("updated_at")))
        }
    }
}
