import Foundation
import SagaEngine

/// Inventory: stock per SKU. Reserves every line of an order atomically or none (`inventory.reserved` /
/// `inventory.rejected`), releases the reservation when the payment fails (`inventory.released`, the
/// compensation) and turns it into a sale when the payment completes. When the order is cancelled
/// (`order.cancelled`, e.g. on timeout) it releases what it reserved or sold for it (`inventory.released`),
/// and a cancellation that arrives before the order leaves a tombstone (status `CANCELLED`), so the late order
/// reserves nothing.
///
/// Stock is conserved: for every SKU, `available + reserved + sold` only changes by restocking.
/// An order naming a SKU inventory does not know is dead-lettered (catalogues out of sync), not rejected.
public enum InventoryService {
    /// The participant's name: its schema, consumer group and producer name.
    public static let name = "inventory"

    /// Inventory's tables: stock per SKU and the reservations of orders (an order cancelled before inventory saw
    /// it is a reservation `CANCELLED` without lines or total: its tombstone).
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
                """),
        PostgresMigration(
            version: 101, name: "inventory: tombstones of orders cancelled before they arrived",
            sql: """
                ALTER TABLE reservations
                    DROP CONSTRAINT reservations_status_check,
                    ADD CONSTRAINT reservations_status_check
                        CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'SOLD', 'CANCELLED')),
                    ALTER COLUMN total_amount DROP NOT NULL,
                    ALTER COLUMN currency DROP NOT NULL;
                """),
        // A reservation's status changes once or twice (RESERVED, then SOLD or RELEASED): with room left in each
        // page, those are HOT updates (no new primary-key entry); full pages made three of four of them not.
        PostgresMigration(
            version: 102, name: "inventory: status changes as HOT updates",
            sql: """
                ALTER TABLE reservations SET (fillfactor = 80);
                """),
    ]

    /// Inventory's part of the saga: the reservation, and its release (the compensation). A completed payment
    /// turns the reservation into a sale, which emits nothing the saga waits for; a cancelled order may have
    /// nothing to release, so the saga does not wait on inventory after `order.cancelled`.
    public static let declaration = SagaDeclaration(
        emits: [
            .step(InventoryReserved.self), .failure(InventoryRejected.self), .compensation(InventoryReleased.self),
        ],
        consumes: [
            .handles(OrderCreatedV2.self, waitingOn: "reserve the stock"),
            .handles(PaymentFailed.self, waitingOn: "release the reservation"), .handles(PaymentCompleted.self),
            .handles(OrderCancelled.self),
        ])

    /// Inventory as a participant: its tables, its handler, its part of the saga and the schemas of its events.
    public static func definition() -> ParticipantDefinition {
        // Generic plans: its statements look up reservations and stock by key.
        .orderSaga(
            name: name, migrations: migrations, handlers: handler.eventHandlers, declaration: declaration,
            genericPlans: true)
    }

    /// Inventory's handler: it takes a whole batch of `order.created`, `payment.failed`, `payment.completed`
    /// and `order.cancelled` events at once.
    public static let handler = BatchHandler(
        versions: [
            OrderCreatedV2.eventType: OrderCreatedV2.eventVersion, PaymentFailed.eventType: PaymentFailed.eventVersion,
            PaymentCompleted.eventType: PaymentCompleted.eventVersion,
            OrderCancelled.eventType: OrderCancelled.eventVersion,
        ]
    ) { events, context in try await handle(events, context: context) }

    /// What one event asks for.
    private enum Step {
        /// Reserve every line (quantities summed per SKU) or reject the order.
        case reserve(OrderCreatedV2, orderId: UUID, wanted: [String: Int])
        /// Release (payment failed) or sell (payment completed) a RESERVED reservation.
        case settle(orderId: UUID, to: String, failed: PaymentFailed?)
        /// The order is cancelled: release a RESERVED or SOLD reservation, or leave a tombstone if there is none.
        case cancel(orderId: UUID, OrderCancelled)
    }

    /// A reservation as the batch sees it: read (locked) from the table or made earlier in the batch.
    private struct Reservation {
        var status: String
        var lines: [OrderLine]
        /// Made in this batch (inserted at the end, with its final status).
        var isNew: Bool
        var customerId = ""
        /// Nil on a tombstone.
        var total: Money? = nil
    }

    /// Stock of one SKU (locked), and how the batch changes it.
    private struct Stock {
        var available: Int
        var delta = (available: 0, reserved: 0, sold: 0)
    }

    /// Handles a batch in a constant number of statements: it takes the batch's per-order advisory locks, locks
    /// the batch's reservations (in order id order), then every SKU they and the new orders name (in SKU order),
    /// decides each event in the order given against that state, and writes the new reservations, their lines,
    /// the status changes and the stock changes with one statement each.
    ///
    /// The advisory locks (`inventory:<order id>`, in order id order, held until commit) serialize the
    /// transactions of one order across instances: its events come from different topics, in no order between
    /// them, possibly to two instances at once, and row locks cannot serialize an order that has no reservation
    /// row yet (its `order.cancelled` and its `order.created` handled at the same time).
    static func handle(_ events: [IncomingEvent], context: BatchHandlerContext) async throws -> [OutgoingEvent] {
        var steps: [(event: IncomingEvent, step: Step)] = []
        steps.reserveCapacity(events.count)
        for event in events {
            switch event.type {
            case OrderCreatedV2.eventType:
                let order = try event.decode(OrderCreatedV2.self)
                guard let orderId = UUID(parsing: order.orderId) else {
                    throw HandlerRejection("order id \(order.orderId) is not a UUID")
                }
                // Several lines may name one SKU.
                var wanted: [String: Int] = [:]
                for line in order.lines {
                    let (sum, overflow) = wanted[line.sku, default: 0].addingReportingOverflow(line.quantity)
                    guard !overflow, sum <= Int32.max else {
                        throw HandlerRejection("quantity of \(line.sku) out of range")
                    }
                    wanted[line.sku] = sum
                }
                steps.append((event, .reserve(order, orderId: orderId, wanted: wanted)))
            case PaymentFailed.eventType:
                let payment = try event.decode(PaymentFailed.self)
                steps.append((event, .settle(orderId: try uuid(payment.orderId), to: "RELEASED", failed: payment)))
            case PaymentCompleted.eventType:
                let payment = try event.decode(PaymentCompleted.self)
                steps.append((event, .settle(orderId: try uuid(payment.orderId), to: "SOLD", failed: nil)))
            case OrderCancelled.eventType:
                let cancelled = try event.decode(OrderCancelled.self)
                steps.append((event, .cancel(orderId: try uuid(cancelled.orderId), cancelled)))
            default:
                throw HandlerRejection("inventory does not handle \(event.type)")
            }
        }
        let db = context.connection

        // The orders' advisory locks, then the reservations the batch names, locked in order id order, with
        // their lines.
        var orderIds = Set<UUID>()
        for (_, step) in steps {
            switch step {
            case .reserve(_, let id, _), .settle(let id, _, _), .cancel(let id, _): orderIds.insert(id)
            }
        }
        try await OrderLocks.lock(orderIds, service: name, on: db)
        let reservationsRead = PostgresStatement(
            """
            SELECT r.order_id, r.status, l.sku, l.quantity
            FROM reservations r LEFT JOIN reservation_lines l ON l.order_id = r.order_id
            WHERE r.order_id = ANY($1::uuid[])
            ORDER BY r.order_id, l.sku
            FOR UPDATE OF r
            """, [PostgresArray(Array(orderIds))])
        // Every SKU the batch may touch, locked in SKU order so concurrent batches cannot deadlock on them.
        func stockRead(_ skus: Set<String>) -> PostgresStatement {
            PostgresStatement(
                "SELECT sku, available FROM stock WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
                [PostgresArray(skus.sorted())])
        }
        // New orders name their SKUs themselves; a settlement or a cancellation finds them in its reservation's
        // lines. A batch of new orders only reads both in one round trip, any other reads the reservations first.
        var skus = Set<String>()
        var settles = false
        for (_, step) in steps {
            switch step {
            case .reserve(_, _, let wanted): skus.formUnion(wanted.keys)
            case .settle, .cancel: settles = true
            }
        }
        let (reservationRows, pipelinedStock) = try await db.query(
            reservationsRead, pipelinedWith: !settles && !skus.isEmpty ? stockRead(skus) : nil)
        var stockRows = pipelinedStock
        var reservations: [UUID: Reservation] = [:]
        for row in reservationRows {
            let id: UUID = try row.decode("order_id")
            var reservation = try reservations[id] ?? Reservation(status: row.decode("status"), lines: [], isNew: false)
            if let sku = try row.decode("sku", as: String?.self) {
                reservation.lines.append(OrderLine(sku: sku, quantity: try row.decode("quantity")))
            }
            reservations[id] = reservation
        }
        if settles {
            for (_, step) in steps {
                switch step {
                case .reserve: break
                case .settle(let id, _, _), .cancel(let id, _):
                    for line in reservations[id]?.lines ?? [] { skus.insert(line.sku) }
                }
            }
            if !skus.isEmpty {
                stockRows = try await db.query(stockRead(skus))
            }
        }
        var stock: [String: Stock] = [:]
        for row in stockRows { stock[try row.decode("sku")] = Stock(available: try row.decode("available")) }

        // Decide each event in order.
        var out: [OutgoingEvent] = []
        var created: [UUID] = []
        var settled: [UUID: String] = [:]
        for (event, step) in steps {
            switch step {
            case .reserve(let order, let orderId, let wanted):
                guard reservations[orderId] == nil else {
                    // Decided before (e.g. the same order re-published under a new event id).
                    context.logger(for: event).debug("order already decided")
                    continue
                }
                let lineSkus = wanted.keys.sorted()
                // A SKU that orders priced but inventory does not know means the two catalogues are out of
                // sync: an operator's problem, not the customer's. Dead-letter the event (to be redriven once
                // the SKU exists) rather than cancelling the order as out of stock.
                if let unknown = lineSkus.first(where: { stock[$0] == nil }) {
                    throw HandlerRejection("unknown SKU '\(unknown)': not in the inventory catalogue")
                }
                let shortages = lineSkus.compactMap { sku -> InventoryRejected.Shortage? in
                    let have = stock[sku]!.available
                    return have < wanted[sku]! ? .init(sku: sku, requested: wanted[sku]!, available: have) : nil
                }
                created.append(orderId)
                guard shortages.isEmpty else {
                    reservations[orderId] = Reservation(
                        status: "REJECTED", lines: [], isNew: true, customerId: order.customerId, total: order.total)
                    let reason = shortages.map { "\($0.sku): \($0.requested) requested, \($0.available) available" }
                        .joined(separator: "; ")
                    out.append(
                        try context.emit(
                            InventoryRejected(
                                orderId: order.orderId, customerId: order.customerId,
                                reason: "insufficient stock (\(reason))", shortages: shortages),
                            causedBy: event))
                    continue
                }
                let lines = lineSkus.map { OrderLine(sku: $0, quantity: wanted[$0]!) }
                for line in lines {
                    stock[line.sku]!.available -= line.quantity
                    stock[line.sku]!.delta.available -= line.quantity
                    stock[line.sku]!.delta.reserved += line.quantity
                }
                reservations[orderId] = Reservation(
                    status: "RESERVED", lines: lines, isNew: true, customerId: order.customerId, total: order.total)
                out.append(
                    try context.emit(
                        InventoryReserved(
                            orderId: order.orderId, customerId: order.customerId, total: order.total, lines: lines),
                        causedBy: event))
            case .settle(let orderId, let status, let failed):
                guard var reservation = reservations[orderId] else {
                    throw HandlerRejection("no reservation for order \(orderId.lowercasedString)")
                }
                // Anything but RESERVED (rejected, already settled) is left alone and emits nothing.
                guard reservation.status == "RESERVED" else { continue }
                reservation.status = status
                reservations[orderId] = reservation
                if !reservation.isNew { settled[orderId] = status }
                // Stock goes back to available (released) or leaves (sold); a SKU no longer stocked is skipped.
                for line in reservation.lines where stock[line.sku] != nil {
                    stock[line.sku]!.delta.reserved -= line.quantity
                    if status == "RELEASED" {
                        stock[line.sku]!.available += line.quantity
                        stock[line.sku]!.delta.available += line.quantity
                    } else {
                        stock[line.sku]!.delta.sold += line.quantity
                    }
                }
                if let failed {
                    out.append(
                        try context.emit(
                            InventoryReleased(
                                orderId: failed.orderId, customerId: failed.customerId,
                                reason: "payment failed: \(failed.reason.rawValue)", lines: reservation.lines),
                            causedBy: event))
                }
            case .cancel(let orderId, let cancelled):
                guard var reservation = reservations[orderId] else {
                    // Cancelled before inventory saw the order: a tombstone, so the late order.created reserves
                    // nothing ("already decided").
                    created.append(orderId)
                    reservations[orderId] = Reservation(
                        status: "CANCELLED", lines: [], isNew: true, customerId: cancelled.customerId, total: nil)
                    continue
                }
                // Reserved, or sold (the payment completed before the order was cancelled; billing refunds it):
                // the stock goes back to available. Anything else (rejected, released, a tombstone) holds nothing.
                let wasSold = reservation.status == "SOLD"
                guard wasSold || reservation.status == "RESERVED" else { continue }
                reservation.status = "RELEASED"
                reservations[orderId] = reservation
                if !reservation.isNew { settled[orderId] = "RELEASED" }
                for line in reservation.lines where stock[line.sku] != nil {
                    if wasSold {
                        stock[line.sku]!.delta.sold -= line.quantity
                    } else {
                        stock[line.sku]!.delta.reserved -= line.quantity
                    }
                    stock[line.sku]!.available += line.quantity
                    stock[line.sku]!.delta.available += line.quantity
                }
                out.append(
                    try context.emit(
                        InventoryReleased(
                            orderId: cancelled.orderId, customerId: cancelled.customerId,
                            reason: "order cancelled: \(cancelled.reason.rawValue)", lines: reservation.lines),
                        causedBy: event))
            }
        }

        // Write what was decided: one statement per kind of change, deferred to go with the worker's next
        // statement (its COMMIT) in one round trip.
        if !created.isEmpty {
            let rows = created.map { ($0, reservations[$0]!) }
            try await db.executeDeferred(
                """
                INSERT INTO reservations (order_id, customer_id, status, total_amount, currency)
                SELECT r.order_id, r.customer_id, r.status,
                       CASE WHEN r.status = 'CANCELLED' THEN NULL ELSE r.total_amount END, NULLIF(r.currency, '')
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                     AS r(order_id, customer_id, status, total_amount, currency)
                """,
                [
                    PostgresArray(rows.map { $0.0 }), PostgresArray(rows.map { $0.1.customerId }),
                    PostgresArray(rows.map { $0.1.status }), PostgresArray(rows.map { $0.1.total?.amount ?? 0 }),
                    PostgresArray(rows.map { $0.1.total?.currency ?? "" }),
                ])
            let lines = rows.flatMap { id, r in r.lines.map { (id, $0) } }
            if !lines.isEmpty {
                try await db.executeDeferred(
                    """
                    INSERT INTO reservation_lines (order_id, sku, quantity)
                    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])
                    """,
                    [
                        PostgresArray(lines.map { $0.0 }), PostgresArray(lines.map { $0.1.sku }),
                        PostgresArray(lines.map { $0.1.quantity }),
                    ])
            }
        }
        if !settled.isEmpty {
            let changes = settled.sorted { $0.key.lowercasedString < $1.key.lowercasedString }
            try await db.executeDeferred(
                """
                UPDATE reservations r SET status = u.status, updated_at = now()
                FROM unnest($1::uuid[], $2::text[]) AS u(order_id, status)
                WHERE r.order_id = u.order_id
                """, [PostgresArray(changes.map(\.key)), PostgresArray(changes.map(\.value))])
        }
        let changed = stock.filter { $0.value.delta != (0, 0, 0) }.sorted { $0.key < $1.key }
        if !changed.isEmpty {
            try await db.executeDeferred(
                """
                UPDATE stock s SET available = s.available + d.available, reserved = s.reserved + d.reserved,
                    sold = s.sold + d.sold
                FROM unnest($1::text[], $2::int[], $3::int[], $4::int[]) AS d(sku, available, reserved, sold)
                WHERE s.sku = d.sku
                """,
                [
                    PostgresArray(changed.map(\.key)), PostgresArray(changed.map(\.value.delta.available)),
                    PostgresArray(changed.map(\.value.delta.reserved)), PostgresArray(changed.map(\.value.delta.sold)),
                ])
        }
        return out
    }

    private static func uuid(_ orderId: String) throws -> UUID {
        guard let id = UUID(parsing: orderId) else { throw HandlerRejection("order id \(orderId) is not a UUID") }
        return id
    }
}
