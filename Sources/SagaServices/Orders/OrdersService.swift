import Foundation
import SagaEngine

/// Orders: accepts orders (HTTP), owns their status, and closes each saga with
/// `order.confirmed` or `order.cancelled`.
public enum OrdersService {
    /// The participant's name: its schema, consumer group and producer name.
    public static let name = "orders"

    /// An order's status, as stored and as the HTTP API shows it.
    public enum Status: String, Sendable, Codable {
        /// Placed; the saga is under way.
        case pending = "PENDING"
        /// Reserved and paid.
        case confirmed = "CONFIRMED"
        /// Rejected by inventory, declined by billing, or not confirmed by its deadline.
        case cancelled = "CANCELLED"
    }

    /// Orders' tables: orders, their lines and status history, and the price list.
    public static let migrations = [
        PostgresMigration(
            version: 100, name: "orders: orders, lines, history, prices",
            sql: """
                CREATE TABLE prices (
                    sku        text   NOT NULL,
                    currency   text   NOT NULL,
                    unit_price bigint NOT NULL CHECK (unit_price >= 0),
                    PRIMARY KEY (sku, currency)
                );
                CREATE TABLE orders (
                    id              uuid PRIMARY KEY,
                    customer_id     text        NOT NULL,
                    currency        text        NOT NULL,
                    total_amount    bigint      NOT NULL CHECK (total_amount >= 0),
                    status          text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
                    reason          text,
                    idempotency_key text UNIQUE,
                    created_at      timestamptz NOT NULL DEFAULT now(),
                    updated_at      timestamptz NOT NULL DEFAULT now()
                );
                CREATE INDEX orders_status_created ON orders (status, created_at);
                CREATE TABLE order_lines (
                    order_id   uuid   NOT NULL REFERENCES orders (id),
                    line_no    int    NOT NULL,
                    sku        text   NOT NULL,
                    quantity   int    NOT NULL CHECK (quantity > 0),
                    unit_price bigint NOT NULL CHECK (unit_price >= 0),
                    PRIMARY KEY (order_id, line_no)
                );
                CREATE TABLE order_history (
                    order_id   uuid        NOT NULL REFERENCES orders (id),
                    seq        bigserial,
                    status     text        NOT NULL,
                    event_type text        NOT NULL,
                    event_id   uuid,
                    detail     text,
                    at         timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (order_id, seq)
                );
                """),
        // Idempotency keys belong to a customer (one customer's key never answers with another's order), and
        // a key remembers its request's fingerprint (SHA-256 of `OrderRequest.canonical`, hex), so a reuse for
        // a different request is refused. Orders placed before this have no fingerprint.
        PostgresMigration(
            version: 101, name: "orders: idempotency keys per customer, with the request's fingerprint",
            sql: """
                ALTER TABLE orders ADD COLUMN request_fingerprint text;
                ALTER TABLE orders DROP CONSTRAINT orders_idempotency_key_key;
                CREATE UNIQUE INDEX orders_customer_idempotency_key ON orders (customer_id, idempotency_key);
                """),
        // When a PENDING order times out (the due time of its deadline "order" in saga_deadlines, the same value);
        // NULL for orders placed without a deadline or before this.
        PostgresMigration(
            version: 102, name: "orders: deadlines",
            sql: """
                ALTER TABLE orders ADD COLUMN deadline_at timestamptz;
                """),
        // An order's status changes once (PENDING to CONFIRMED or CANCELLED): with no index on status and room
        // left in each page, that update is a HOT update (the new row version on the same page, no index entry
        // anywhere). The index on (status, created_at), which nothing of the engine reads, made every status
        // change write an entry into each of the table's three indexes; worse, the worker's batched status
        // update was planned on it (a generic plan expects one PENDING order) and walked every PENDING entry
        // not yet vacuumed, ~420 pages for a batch of 20 and 5 ms a batch under the closed loop, instead of
        // one primary-key probe per order.
        PostgresMigration(
            version: 103, name: "orders: status changes as HOT updates",
            sql: """
                DROP INDEX orders_status_created;
                ALTER TABLE orders SET (fillfactor = 80);
                """),
    ]

    /// The name of an order's deadline (one per saga): when it falls on a PENDING order, `order.expired` is
    /// delivered to orders' handler, which cancels the order with reason `timeout`.
    public static let deadlineName = "order"

    /// Orders' part of the saga: it starts it and decides its outcome. What it consumes it waits on only until
    /// the saga has an outcome (after a timeout, a late answer is a compensation's business, not orders'); its
    /// deadline "order" delivers `order.expired` (never on Kafka).
    public static let declaration = SagaDeclaration(
        emits: [
            .step(OrderCreatedV2.self), .outcome(OrderConfirmed.self, "confirmed"),
            .outcome(OrderCancelled.self, "cancelled", detail: "reason"),
        ],
        consumes: [
            .handles(PaymentCompleted.self, waitingOn: "confirm the order", untilOutcome: true),
            .handles(InventoryRejected.self, waitingOn: "cancel the order", untilOutcome: true),
            .handles(InventoryReleased.self, waitingOn: "cancel the order", untilOutcome: true),
        ],
        deadlines: [.deadline(OrderExpired.self, name: deadlineName)])

    /// Orders as a participant: its tables, its handler, its part of the saga and the schemas of its events
    /// (those of its deadline's `order.expired` included).
    public static func definition() -> ParticipantDefinition {
        var definition = ParticipantDefinition.orderSaga(
            name: name, migrations: migrations, handlers: handler.eventHandlers, declaration: declaration)
        definition.schemas += EventSchema.embedded(types: declaration.deadlines.map(\.type))
        return definition
    }

    /// Orders' handler: it takes a whole batch of `payment.completed`, `inventory.rejected` and
    /// `inventory.released` events at once, and the `order.expired` events of its fired deadlines.
    public static let handler = BatchHandler(
        versions: [
            PaymentCompleted.eventType: PaymentCompleted.eventVersion,
            InventoryRejected.eventType: InventoryRejected.eventVersion,
            InventoryReleased.eventType: InventoryReleased.eventVersion,
            OrderExpired.eventType: OrderExpired.eventVersion,
        ]
    ) { events, context in try await finish(events, context: context) }

    struct OrderRow {
        var customerId: String
        var total: Money
    }

    /// What one event asks for: a terminal status for its order.
    private struct Finish {
        var event: IncomingEvent
        var orderId: UUID
        var status: Status
        /// The order's reason column and the history's detail.
        var reason: String?
        /// An `order.expired`: it cancels only an order whose deadline has passed.
        var timeout = false
        /// The event to emit once the order is finished.
        var emit: (OrderRow) throws -> OutgoingEvent
    }

    /// Moves each event's PENDING order to its terminal status, records it in the history and emits
    /// `order.confirmed` / `order.cancelled`, in a constant number of statements. Per order, the first
    /// event of the batch decides; an order already terminal is left as it is (nothing emitted); an unknown
    /// order is rejected. An `order.expired` (its deadline fired) cancels a PENDING order whose deadline has
    /// passed with reason `timeout`.
    ///
    /// Lock order: the orders' deadlines are deleted before the orders are updated, as the firing transaction
    /// holds the deadline row before it updates the order. So an answer racing the firing waits for it, finds the
    /// deadline gone and the order cancelled, and changes nothing. A `saga_deadlines` row "order" exists only
    /// while its order is PENDING.
    static func finish(_ events: [IncomingEvent], context: BatchHandlerContext) async throws -> [OutgoingEvent] {
        var finishes: [Finish] = []
        finishes.reserveCapacity(events.count)
        for event in events {
            switch event.type {
            case PaymentCompleted.eventType:
                let payment = try event.decode(PaymentCompleted.self)
                finishes.append(
                    Finish(
                        event: event, orderId: try uuid(payment.orderId), status: .confirmed, reason: nil,
                        emit: { row in
                            try context.emit(
                                OrderConfirmed(orderId: payment.orderId, customerId: row.customerId, total: row.total),
                                causedBy: event)
                        }))
            case InventoryRejected.eventType:
                let rejected = try event.decode(InventoryRejected.self)
                finishes.append(
                    try cancel(event, orderId: rejected.orderId, reason: .outOfStock, detail: rejected.reason, context))
            case InventoryReleased.eventType:
                let released = try event.decode(InventoryReleased.self)
                finishes.append(
                    try cancel(
                        event, orderId: released.orderId, reason: .paymentDeclined, detail: released.reason, context))
            case OrderExpired.eventType:
                let expired = try event.decode(OrderExpired.self)
                var finish = try cancel(
                    event, orderId: expired.orderId, reason: .timeout, detail: "no outcome by \(expired.dueAt)",
                    context)
                finish.reason = "timeout: not confirmed within \(expired.timeoutSeconds) s"
                finish.timeout = true
                finishes.append(finish)
            default:
                throw HandlerRejection("orders does not handle \(event.type)")
            }
        }
        // Per order, the first event decides: the later ones find it terminal.
        var first: [Finish] = []
        var seen = Set<UUID>()
        for f in finishes where seen.insert(f.orderId).inserted { first.append(f) }
        let db = context.connection
        // The answers' orders are decided now: their deadlines go first (lock order, see above), in the round
        // trip of the orders' update. A fired deadline's row is deleted by the worker in the firing transaction.
        let answers = events.filter { $0.type != OrderExpired.eventType }
        let update = PostgresStatement(
            """
            UPDATE orders o SET status = u.status, reason = NULLIF(u.reason, ''), updated_at = now()
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[]) AS u(id, status, reason, timeout)
            WHERE o.id = u.id AND o.status = 'PENDING'
                AND (u.timeout = 0 OR o.deadline_at <= clock_timestamp())
            RETURNING o.id, o.customer_id, o.total_amount, o.currency
            """,
            [
                PostgresArray(first.map(\.orderId)), PostgresArray(first.map(\.status.rawValue)),
                PostgresArray(first.map { $0.reason ?? "" }), PostgresArray(first.map { $0.timeout ? 1 : 0 }),
            ])
        var finished: [UUID: OrderRow] = [:]
        for row in try await context.cancelDeadlines(name: deadlineName, for: answers, then: update) {
            finished[try row.decode("id")] = OrderRow(
                customerId: try row.decode("customer_id"),
                total: Money(amount: try row.decode("total_amount"), currency: try row.decode("currency")))
        }
        // Orders not finished now are terminal already, or unknown: tell which (rare: one more statement).
        var current: [UUID: String] = [:]
        let others = first.filter { finished[$0.orderId] == nil }
        if !others.isEmpty {
            for row in try await db.query(
                "SELECT id, status FROM orders WHERE id = ANY($1::uuid[])", [PostgresArray(others.map(\.orderId))])
            {
                current[try row.decode("id")] = try row.decode("status")
            }
        }
        let decidingStatus = Dictionary(first.map { ($0.orderId, $0.status.rawValue) }, uniquingKeysWith: { a, _ in a })
        var out: [OutgoingEvent] = []
        var history: [Finish] = []
        var decided = Set<UUID>()
        for f in finishes {
            if let row = finished[f.orderId], decided.insert(f.orderId).inserted {
                history.append(f)
                out.append(try f.emit(row))
                continue
            }
            guard finished[f.orderId] != nil || current[f.orderId] != nil else {
                throw HandlerRejection("unknown order \(f.orderId.lowercasedString)")
            }
            context.logger(for: f.event).info(
                f.timeout && current[f.orderId] == Status.pending.rawValue
                    ? "order deadline not due: ignored" : "order already terminal",
                metadata: [
                    "order": .string(f.orderId.lowercasedString),
                    "status": .string(
                        finished[f.orderId] != nil ? decidingStatus[f.orderId] ?? "" : current[f.orderId] ?? ""),
                ])
        }
        // Deferred: it goes with the worker's next statement (its COMMIT), in one round trip.
        if !history.isEmpty {
            try await db.executeDeferred(
                """
                INSERT INTO order_history (order_id, status, event_type, event_id, detail)
                SELECT h.order_id, h.status, h.event_type, h.event_id, NULLIF(h.detail, '')
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[]) WITH ORDINALITY
                     AS h(order_id, status, event_type, event_id, detail, n)
                ORDER BY h.n
                """,
                [
                    PostgresArray(history.map(\.orderId)), PostgresArray(history.map(\.status.rawValue)),
                    PostgresArray(history.map(\.event.type)), PostgresArray(history.map(\.event.id)),
                    PostgresArray(history.map { $0.reason ?? "" }),
                ])
        }
        return out
    }

    private static func uuid(_ orderId: String) throws -> UUID {
        guard let id = UUID(parsing: orderId) else { throw HandlerRejection("order id \(orderId) is not a UUID") }
        return id
    }

    /// Cancelling the event's order with `reason`, emitting `order.cancelled`.
    private static func cancel(
        _ event: IncomingEvent, orderId: String, reason: OrderCancelled.Reason, detail: String,
        _ context: BatchHandlerContext
    ) throws -> Finish {
        let label =
            switch reason {
            case .outOfStock: "out of stock"
            case .paymentDeclined: "payment declined"
            case .timeout: "timeout"
            }
        return Finish(
            event: event, orderId: try uuid(orderId), status: .cancelled, reason: "\(label): \(detail)",
            emit: { row in
                try context.emit(
                    OrderCancelled(orderId: orderId, customerId: row.customerId, reason: reason, detail: detail),
                    causedBy: event)
            })
    }
}
