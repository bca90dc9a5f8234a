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
    }

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
    /// Two round trips: one read (prices and the idempotency key), then one statement that writes the order, its
    /// lines, its history, its event and its deadline (a data-modifying `WITH`, which commits as one
    /// transaction). The deadline (``OrderRequest/deadlineSeconds``, else ``deadline``; none when both are nil)
    /// falls at one due time stored both as the order's `deadline_at` and in `saga_deadlines` ("order",
    /// delivering `order.expired` to orders' worker); `order.created` carries its `saga-deadline` header.
    /// - Parameters:
    ///   - request: the validated order.
    ///   - idempotencyKey: scoped to the customer: the customer's retry of the same request (same canonical
    ///     form, see `OrderRequest.canonical`) with the same key returns the first order instead of a new one.
    ///     The key's request is remembered as a SHA-256 fingerprint of that form.
    ///   - traceparent: the caller's W3C trace context (an HTTP request's `traceparent`): the saga continues
    ///     its trace. Without one (and no current span), the saga starts a new trace.
    /// - Throws: `OrderRequestError` for an invalid idempotency key, an unknown SKU or an overflowing total;
    ///   `IdempotencyKeyConflict` when the customer used the key for a different request; `PostgresError`
    ///   otherwise.
    public func place(_ request: OrderRequest, idempotencyKey: String? = nil, traceparent: String? = nil)
        async throws -> Placed
    {
        if let idempotencyKey { try OrderRequest.validate(idempotencyKey: idempotencyKey) }
        let skus = Array(Set(request.lines.map(\.sku)))
        // One row at least (the key's order, if any, and the keyed request's fingerprint), plus one per priced SKU.
        let lookup: [PostgresRow]
        do {
            lookup = try await pool.query(
                """
                SELECT k.id AS existing, k.request_fingerprint AS existing_fingerprint,
                    encode(sha256(convert_to($5, 'UTF8')), 'hex') AS fingerprint, p.sku, p.unit_price
                FROM (SELECT 1) AS one
                LEFT JOIN orders k ON k.customer_id = $4 AND k.idempotency_key = $3
                LEFT JOIN prices p ON p.currency = $1 AND p.sku = ANY($2::text[])
                """,
                [
                    request.currency, PostgresArray(skus), idempotencyKey, request.customerId,
                    idempotencyKey == nil ? nil : request.canonical,
                ])
        } catch let error as PostgresError where Self.sessionLost(error) {
            throw OrderNotStored(reason: "\(error)")  // only read so far
        }
        // Only a keyed request has (and needs) a fingerprint.
        let fingerprint = try lookup[0].decode("fingerprint", as: String?.self)
        if let existing = try lookup[0].decode("existing", as: UUID?.self) {
            try Self.checkSameRequest(try lookup[0].decode("existing_fingerprint"), fingerprint)
            return Placed(orderId: existing, created: false)
        }
        var prices: [String: Int64] = [:]
        for row in lookup {
            if let sku = try row.decode("sku", as: String?.self) { prices[sku] = try row.decode("unit_price") }
        }
        var total: Int64 = 0
        var lines: [OrderCreatedV2.Line] = []
        for (i, line) in request.lines.enumerated() {
            guard let price = prices[line.sku] else {
                throw OrderRequestError("lines[\(i)].sku: unknown SKU '\(line.sku)' (no price in \(request.currency))")
            }
            let (lineTotal, o1) = price.multipliedReportingOverflow(by: Int64(line.quantity))
            let (sum, o2) = total.addingReportingOverflow(lineTotal)
            guard !o1, !o2 else { throw OrderRequestError("the order total is too large") }
            total = sum
            lines.append(
                .init(
                    sku: line.sku, quantity: line.quantity, unitPrice: Money(amount: price, currency: request.currency))
            )
        }
        let id = UUID.timeOrdered()
        let created = OrderCreatedV2(
            orderId: id.lowercasedString, customerId: request.customerId,
            total: Money(amount: total, currency: request.currency), lines: lines)
        let sagaId = created.orderId
        let trace = TraceParent.forEmitting(after: traceparent)
        let event =
            emitVersion == 1
            ? try OutgoingEvent(
                created.v1, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
            : try OutgoingEvent(
                created, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
        // The deadline: one due time (milliseconds, as the header carries it) for the order and saga_deadlines.
        let timeoutMs: Int64? =
            request.deadlineSeconds.map { Int64($0) * 1000 } ?? deadline.map { Int64($0.milliseconds) }
        var deadlineRow: Deadline.Row? = nil
        var outboxRow = try Outbox.Row(event, codec: codec)
        if let timeoutMs {
            let now = (Date().timeIntervalSince1970 * 1000).rounded()
            let due = Date(timeIntervalSince1970: (now + Double(timeoutMs)) / 1000)
            let expired = try OutgoingEvent(
                OrderExpired(
                    orderId: sagaId, customerId: request.customerId, dueAt: Timestamp.format(due),
                    timeoutSeconds: max(1, Int((timeoutMs + 999) / 1000))),
                sagaId: sagaId, producer: OrdersService.name, causedBy: event.envelope)
            let row = try Deadline.Row(name: OrdersService.deadlineName, due: due, event: expired, codec: codec)
            outboxRow.message.headers.append(row.scheduledMark(participant: OrdersService.name).header)
            deadlineRow = row
        }
        let outbox = Outbox.insert(outboxRow, firstParameter: 13, where: "EXISTS (SELECT 1 FROM placed)")
        let deadlineMember = deadlineRow.map {
            Deadline.insert($0, firstParameter: 13 + outbox.binds.count, where: "EXISTS (SELECT 1 FROM placed)")
        }
        // A concurrent request with the same key may have inserted it since the read above: then this statement
        // writes nothing (every member depends on `placed`) and the first order is the answer.
        let inserted: [PostgresRow]
        var backend: Int32?
        do {
            inserted = try await pool.withConnection { connection in
                backend = connection.backendPID
                let rows = try await connection.query(
                    """
                    WITH placed AS (
                        INSERT INTO orders (id, customer_id, currency, total_amount, status, idempotency_key,
                            request_fingerprint, deadline_at)
                        VALUES ($1, $2, $3, $4, 'PENDING', $5, $11, $12::timestamptz)
                        ON CONFLICT (customer_id, idempotency_key) DO NOTHING
                        RETURNING id
                    ), lines AS (
                        INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
                        SELECT placed.id, line.n - 1, line.sku, line.quantity, line.unit_price
                        FROM placed, unnest($6::text[], $7::int[], $8::bigint[]) WITH ORDINALITY
                            AS line (sku, quantity, unit_price, n)
                    ), history AS (
                        INSERT INTO order_history (order_id, status, event_type, event_id)
                        SELECT placed.id, 'PENDING', $9, $10 FROM placed
                    ), event AS (
                        \(outbox.sql)
                    )\(deadlineMember.map { ", deadline AS (\n\($0.sql)\n)" } ?? "")
                    SELECT count(*) AS n FROM placed
                    """,
                    [
                        id, request.customerId, request.currency, total, idempotencyKey,
                        PostgresArray(lines.map(\.sku)), PostgresArray(lines.map(\.quantity)),
                        PostgresArray(lines.map { $0.unitPrice?.amount ?? 0 }), event.envelope.type, event.envelope.id,
                        fingerprint, deadlineRow?.due,
                    ] + outbox.binds + (deadlineMember?.binds ?? []))
                if failpoint == .sessionLostAfterCommit {
                    throw PostgresError(kind: .connection, message: "failpoint: the session was lost after the commit")
                }
                return rows
            }
        } catch let error as PostgresError where Self.sessionLost(error) {
            // No session was had: nothing was sent.
            guard let backend else { throw OrderNotStored(reason: "\(error)") }
            // The statement is its own transaction: it committed or not, and the answer was lost. Find out which.
            guard try await stored(id, lostSession: backend) else { throw OrderNotStored(reason: "\(error)") }
            if deadlineRow != nil { DeadlineMetrics.recordScheduled(service: OrdersService.name) }
            return Placed(orderId: id, created: true, event: event.envelope, deadline: deadlineRow?.due)
        }
        if try inserted.first?.decode("n", as: Int.self) != 1, let idempotencyKey {
            let first = try await pool.query(
                "SELECT id, request_fingerprint FROM orders WHERE customer_id = $1 AND idempotency_key = $2",
                [request.customerId, idempotencyKey])
            try Self.checkSameRequest(try first[0].decode("request_fingerprint"), fingerprint)
            return Placed(orderId: try first[0].decode("id"), created: false)
        }
        if deadlineRow != nil { DeadlineMetrics.recordScheduled(service: OrdersService.name) }
        relayDatabase?.outboxCommitted()
        return Placed(orderId: id, created: true, event: event.envelope, deadline: deadlineRow?.due)
    }

    /// The database session broke (or the database is unreachable), as opposed to a statement it refused.
    static func sessionLost(_ error: PostgresError) -> Bool {
        guard error.kind != .connection else { return true }
        guard let state = error.sqlState else { return false }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }

    /// Whether order `id` was stored, after the session that inserted it broke. The lost session may still be
    /// running on the server (a network failure, not a crash), so it is ended first: then what the order table
    /// shows is final. Tries for a few seconds; throws ``OrderOutcomeUnknown`` when the database stays
    /// unreachable.
    private func stored(_ id: UUID, lostSession backend: Int32) async throws -> Bool {
        var lastError: any Error = OrderOutcomeUnknown(orderId: id, reason: "not checked")
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
                    return !(try await c.query("SELECT 1 FROM orders WHERE id = $1", [id])).isEmpty
                }
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(250 * attempt))
            }
        }
        throw OrderOutcomeUnknown(orderId: id, reason: "\(lastError)")
    }

    /// A key's order answers a retry only when the retry is the same request. Orders placed before fingerprints
    /// were stored (nil) answer as before.
    private static func checkSameRequest(_ stored: String?, _ fingerprint: String?) throws(IdempotencyKeyConflict) {
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
