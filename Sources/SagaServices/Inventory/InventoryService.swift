import Foundation
import SagaEngine

/// Inventory: stock per SKU. Reserves every line of an order atomically or none (`inventory.reserved` /
/// `inventory.rejected`), releases the reservation when the payment fails (`inventory.released`, the
/// compensation) and turns it into a sale when the payment completes.
///
/// Stock is conserved: for every SKU, `available + reserved + sold` only changes by restocking.
/// An order naming a SKU inventory does not know is dead-lettered (catalogues out of sync), not rejected.
public enum InventoryService {
    public static let name = "inventory"

    public static let migrations = [
        PostgresMigration(
            version: 100, name: "inventory: stock and reservations",
            sql: """
                CREATE TABLE stock (
                    sku       text PRIMARY KEY,
                    available int  NOT NULL CHECK (available >= 0),
                    reserved  int  NOT NULL DEFAULT 0 CHECK (reserved >= 0),
                    sold      int  NOT NULL DEFAULT 0 CHECK (sold >= 0)
                );
                CREATE TABLE reservations (
                    order_id     uuid PRIMARY KEY,
                    customer_id  text        NOT NULL,
                    status       text        NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'SOLD')),
                    total_amount bigint      NOT NULL,
                    currency     text        NOT NULL,
                    created_at   timestamptz NOT NULL DEFAULT now(),
                    updated_at   timestamptz NOT NULL DEFAULT now()
                );
                CREATE TABLE reservation_lines (
                    order_id uuid NOT NULL REFERENCES reservations (order_id),
                    sku      text NOT NULL,
                    quantity int  NOT NULL CHECK (quantity > 0),
                    PRIMARY KEY (order_id, sku)
                );
                """)
    ]

    public static func definition() -> SagaServiceDefinition {
        SagaServiceDefinition(
            name: name, migrations: migrations,
            handlers: [
                .on(OrderCreatedV2.self) { order, context in try await reserve(order, context: context) },
                .on(PaymentFailed.self) { payment, context in
                    try await settle(orderId: payment.orderId, to: "RELEASED", context: context) { lines in
                        [
                            try context.emit(
                                InventoryReleased(
                                    orderId: payment.orderId, customerId: payment.customerId,
                                    reason: "payment failed: \(payment.reason.rawValue)", lines: lines))
                        ]
                    }
                },
                .on(PaymentCompleted.self) { payment, context in
                    try await settle(orderId: payment.orderId, to: "SOLD", context: context) { _ in [] }
                },
            ])
    }

    static func reserve(_ order: OrderCreatedV2, context: HandlerContext) async throws -> [OutgoingEvent] {
        guard let orderId = UUID(uuidString: order.orderId) else {
            throw HandlerRejection("order id \(order.orderId) is not a UUID")
        }
        let db = context.connection
        if try await !db.query("SELECT 1 FROM reservations WHERE order_id = $1", [orderId]).isEmpty {
            return []  // decided before (e.g. the same order re-published under a new event id)
        }
        // Several lines may name one SKU; lock the rows in SKU order so concurrent reservations cannot deadlock.
        var wanted: [String: Int] = [:]
        for line in order.lines {
            let (sum, overflow) = wanted[line.sku, default: 0].addingReportingOverflow(line.quantity)
            guard !overflow, sum <= Int32.max else {
                throw HandlerRejection("quantity of \(line.sku) out of range")
            }
            wanted[line.sku] = sum
        }
        let skus = wanted.keys.sorted()
        var available: [String: Int] = [:]
        for row in try await db.query(
            "SELECT sku, available FROM stock WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
            [PostgresArray(skus)])
        {
            available[try row.decode("sku")] = try row.decode("available")
        }
        // A SKU that orders priced but inventory does not know means the two catalogues are out of sync:
        // an operator's problem, not the customer's. Dead-letter the event (to be redriven once the SKU
        // exists) rather than cancelling the order as out of stock.
        if let unknown = skus.first(where: { available[$0] == nil }) {
            throw HandlerRejection("unknown SKU '\(unknown)': not in the inventory catalogue")
        }
        let shortages = skus.compactMap { sku -> InventoryRejected.Shortage? in
            let have = available[sku] ?? 0
            return have < wanted[sku]! ? .init(sku: sku, requested: wanted[sku]!, available: have) : nil
        }
        try await db.execute(
            """
            INSERT INTO reservations (order_id, customer_id, status, total_amount, currency)
            VALUES ($1, $2, $3, $4, $5)
            """,
            [
                orderId, order.customerId, shortages.isEmpty ? "RESERVED" : "REJECTED", order.total.amount,
                order.total.currency,
            ])
        guard shortages.isEmpty else {
            let reason = shortages.map { "\($0.sku): \($0.requested) requested, \($0.available) available" }
                .joined(separator: "; ")
            return [
                try context.emit(
                    InventoryRejected(
                        orderId: order.orderId, customerId: order.customerId, reason: "insufficient stock (\(reason))",
                        shortages: shortages))
            ]
        }
        for sku in skus {
            try await db.execute(
                "UPDATE stock SET available = available - $2, reserved = reserved + $2 WHERE sku = $1",
                [sku, wanted[sku]!])
            try await db.execute(
                "INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
                [orderId, sku, wanted[sku]!])
        }
        return [
            try context.emit(
                InventoryReserved(
                    orderId: order.orderId, customerId: order.customerId, total: order.total,
                    lines: skus.map { OrderLine(sku: $0, quantity: wanted[$0]!) }))
        ]
    }

    /// Moves a RESERVED reservation to RELEASED (stock back to available) or SOLD (stock leaves).
    /// Anything else (rejected, already settled) is left alone and emits nothing.
    static func settle(
        orderId: String, to status: String, context: HandlerContext, emit: ([OrderLine]) throws -> [OutgoingEvent]
    ) async throws -> [OutgoingEvent] {
        guard let id = UUID(uuidString: orderId) else { throw HandlerRejection("order id \(orderId) is not a UUID") }
        let db = context.connection
        let updated = try await db.execute(
            "UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1 AND status = 'RESERVED'",
            [id, status])
        guard updated == 1 else {
            if try await db.query("SELECT 1 FROM reservations WHERE order_id = $1", [id]).isEmpty {
                throw HandlerRejection("no reservation for order \(orderId)")
            }
            return []
        }
        let lines = try await db.query(
            "SELECT sku, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY sku", [id]
        ).map { OrderLine(sku: try $0.decode("sku"), quantity: try $0.decode("quantity")) }
        for line in lines {
            try await db.execute(
                status == "RELEASED"
                    ? "UPDATE stock SET available = available + $2, reserved = reserved - $2 WHERE sku = $1"
                    : "UPDATE stock SET sold = sold + $2, reserved = reserved - $2 WHERE sku = $1",
                [line.sku, line.quantity])
        }
        return try emit(lines)
    }
}
