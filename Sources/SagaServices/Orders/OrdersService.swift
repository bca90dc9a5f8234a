import Foundation
import SagaEngine

/// Orders: accepts orders (HTTP), owns their status, and closes each saga with
/// `order.confirmed` or `order.cancelled`.
public enum OrdersService {
    public static let name = "orders"

    public enum Status: String, Sendable, Codable {
        case pending = "PENDING"
        case confirmed = "CONFIRMED"
        case cancelled = "CANCELLED"
    }

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
                """)
    ]

    public static func definition() -> SagaServiceDefinition {
        SagaServiceDefinition(
            name: name, migrations: migrations,
            handlers: [
                .on(PaymentCompleted.self) { event, context in
                    try await finish(
                        orderId: event.orderId, status: .confirmed, reason: nil, context: context
                    ) { row in
                        [
                            try context.emit(
                                OrderConfirmed(orderId: event.orderId, customerId: row.customerId, total: row.total))
                        ]
                    }
                },
                .on(InventoryRejected.self) { event, context in
                    try await cancel(
                        orderId: event.orderId, reason: .outOfStock, detail: event.reason, context: context)
                },
                .on(InventoryReleased.self) { event, context in
                    try await cancel(
                        orderId: event.orderId, reason: .paymentDeclined, detail: event.reason, context: context)
                },
            ])
    }

    /// Cancels a PENDING order and emits `order.cancelled` with `reason`.
    private static func cancel(
        orderId: String, reason: OrderCancelled.Reason, detail: String, context: HandlerContext
    ) async throws -> [OutgoingEvent] {
        let label = reason == .outOfStock ? "out of stock" : "payment declined"
        return try await finish(orderId: orderId, status: .cancelled, reason: "\(label): \(detail)", context: context) {
            [
                try context.emit(
                    OrderCancelled(orderId: orderId, customerId: $0.customerId, reason: reason, detail: detail))
            ]
        }
    }

    struct OrderRow {
        var customerId: String
        var total: Money
    }

    /// Moves a PENDING order to a terminal status, records it in the history and emits what `emit` returns.
    /// An order already terminal is left as it is (nothing emitted); an unknown order is rejected.
    private static func finish(
        orderId: String, status: Status, reason: String?, context: HandlerContext,
        emit: (OrderRow) throws -> [OutgoingEvent]
    ) async throws -> [OutgoingEvent] {
        guard let id = UUID(uuidString: orderId) else { throw HandlerRejection("order id \(orderId) is not a UUID") }
        let rows = try await context.connection.query(
            """
            UPDATE orders SET status = $2, reason = $3, updated_at = now()
            WHERE id = $1 AND status = 'PENDING'
            RETURNING customer_id, total_amount, currency
            """, [id, status.rawValue, reason])
        guard let row = rows.first else {
            let existing = try await context.connection.query("SELECT status FROM orders WHERE id = $1", [id])
            guard let current = existing.first else { throw HandlerRejection("unknown order \(orderId)") }
            context.logger.info(
                "order already terminal",
                metadata: ["order": .string(orderId), "status": .string(current["status"] ?? "")])
            return []
        }
        try await context.connection.execute(
            "INSERT INTO order_history (order_id, status, event_type, event_id, detail) VALUES ($1, $2, $3, $4, $5)",
            [id, status.rawValue, context.event.type, context.event.id, reason])
        return try emit(
            OrderRow(
                customerId: try row.decode("customer_id"),
                total: Money(amount: try row.decode("total_amount"), currency: try row.decode("currency"))))
    }
}
