import Foundation
import SagaEngine

/// Billing: customer accounts with a credit limit. Charges each order at most once on `inventory.reserved`
/// (`payment.completed`) or declines it (`payment.failed`: unknown customer, other currency, over the limit).
/// When the order is cancelled (`order.cancelled`, e.g. on timeout) it refunds the charge (`payment.refunded`,
/// the compensation), and a reservation that arrives after the cancellation is never charged (its charge is
/// `VOIDED`): whichever comes first, no charge stays for a cancelled order.
public enum BillingService {
    /// The participant's name: its schema, consumer group and producer name.
    public static let name = "billing"

    /// Billing's tables: customer accounts, their charges, and the cancelled orders billing has seen.
    public static let migrations = [
        PostgresMigration(
            version: 100, name: "billing: accounts and charges",
            sql: """
                CREATE TABLE accounts (
                    customer_id  text PRIMARY KEY,
                    currency     text   NOT NULL,
                    credit_limit bigint NOT NULL CHECK (credit_limit >= 0),
                    used         bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
                    CHECK (used <= credit_limit)
                );
                CREATE TABLE charges (
                    order_id    uuid PRIMARY KEY,
                    customer_id text        NOT NULL,
                    payment_id  uuid        NOT NULL,
                    amount      bigint      NOT NULL,
                    currency    text        NOT NULL,
                    status      text        NOT NULL CHECK (status IN ('CHARGED', 'DECLINED')),
                    reason      text,
                    at          timestamptz NOT NULL DEFAULT now()
                );
                """),
        PostgresMigration(
            version: 101, name: "billing: refunds, voided charges and cancelled orders",
            sql: """
                ALTER TABLE charges
                    DROP CONSTRAINT charges_status_check,
                    ADD CONSTRAINT charges_status_check CHECK (status IN ('CHARGED', 'DECLINED', 'REFUNDED', 'VOIDED')),
                    ADD COLUMN refund_id uuid,
                    ADD COLUMN refunded_at timestamptz;
                CREATE TABLE order_cancellations (
                    order_id    uuid PRIMARY KEY,
                    customer_id text        NOT NULL,
                    reason      text        NOT NULL,
                    event_id    uuid        NOT NULL,
                    at          timestamptz NOT NULL DEFAULT now()
                );
                """),
    ]

    /// Billing's part of the saga: the payment, and its refund when the order is cancelled (the compensation).
    /// The saga does not wait on billing after `order.cancelled`: most cancelled orders were never charged.
    public static let declaration = SagaDeclaration(
        emits: [.step(PaymentCompleted.self), .failure(PaymentFailed.self), .compensation(PaymentRefunded.self)],
        consumes: [.handles(InventoryReserved.self, waitingOn: "charge the customer"), .handles(OrderCancelled.self)])

    /// Billing as a participant: its tables, its handler, its part of the saga and the schemas of its events.
    public static func definition() -> ParticipantDefinition {
        // Generic plans: its statements look up charges and accounts by key.
        .orderSaga(
            name: name, migrations: migrations, handlers: handler.eventHandlers, declaration: declaration,
            genericPlans: true)
    }

    /// Billing's handler: it takes a whole batch of `inventory.reserved` and `order.cancelled` events at once.
    public static let handler = BatchHandler(
        versions: [
            InventoryReserved.eventType: InventoryReserved.eventVersion,
            OrderCancelled.eventType: OrderCancelled.eventVersion,
        ]
    ) { events, context in try await handle(events, context: context) }

    /// What one event asks for.
    private enum Step {
        /// Charge the order (or decline it), unless billing decided it before or knows it is cancelled.
        case charge(InventoryReserved)
        /// Refund the order's charge, if it was charged; remember the cancellation either way.
        case cancel(OrderCancelled)
    }

    /// An order's charge as the batch sees it: read from the table or made earlier in the batch.
    private struct Charge {
        var customerId: String
        var paymentId: UUID
        var amount: Money
        /// CHARGED, DECLINED, VOIDED or REFUNDED.
        var status: String
        var reason: String?
        var refundId: UUID?
        /// Made in this batch (inserted at the end, with its final status).
        var isNew: Bool
    }

    /// Handles a batch in a constant number of statements: it takes the batch's per-order advisory locks (in
    /// order id order), reads the orders' charges and cancellations in one statement, locks the accounts
    /// concerned (in customer order, so concurrent batches cannot deadlock), decides each event in the order
    /// given against that state and the accounts' running totals, then writes the new charges, the refunds, the
    /// cancellations and the accounts' new totals with one statement each.
    ///
    /// The advisory locks (`billing:<order id>`, held until commit) serialize the transactions of one order
    /// across instances: its `inventory.reserved` and its `order.cancelled` come from different topics, in no
    /// order between them, possibly to two instances at once, and there may be no charge row to lock yet.
    static func handle(_ events: [IncomingEvent], context: BatchHandlerContext) async throws -> [OutgoingEvent] {
        var steps: [(event: IncomingEvent, orderId: UUID, step: Step)] = []
        steps.reserveCapacity(events.count)
        for event in events {
            switch event.type {
            case InventoryReserved.eventType:
                let reserved = try event.decode(InventoryReserved.self)
                steps.append((event, try uuid(reserved.orderId), .charge(reserved)))
            case OrderCancelled.eventType:
                let cancelled = try event.decode(OrderCancelled.self)
                steps.append((event, try uuid(cancelled.orderId), .cancel(cancelled)))
            default:
                throw HandlerRejection("billing does not handle \(event.type)")
            }
        }
        let db = context.connection
        let orderIds = Set(steps.map(\.orderId))
        try await OrderLocks.lock(orderIds, service: name, on: db)

        // What billing knows of the batch's orders: their charges, and the cancellations it has seen.
        let chargesRead = PostgresStatement(
            """
            SELECT order_id, status, payment_id, amount, currency, customer_id, reason FROM charges
            WHERE order_id = ANY($1::uuid[])
            UNION ALL
            SELECT order_id, 'CANCELLED', NULL, NULL, NULL, customer_id, NULL FROM order_cancellations
            WHERE order_id = ANY($1::uuid[])
            """, [PostgresArray(Array(orderIds))])
        // The accounts the batch may charge or refund, locked in customer order: the reserved orders' customers
        // and the customers of the charges a cancellation may refund.
        func accountsRead(_ customers: Set<String>) -> PostgresStatement {
            PostgresStatement(
                """
                SELECT customer_id, currency, credit_limit, used FROM accounts
                WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE
                """, [PostgresArray(customers.sorted())])
        }
        var customers = Set<String>()
        var cancels = false
        for (_, _, step) in steps {
            switch step {
            case .charge(let reserved): customers.insert(reserved.customerId)
            case .cancel: cancels = true
            }
        }
        // A batch without cancellations knows its customers from its events: both reads in one round trip.
        let (chargeRows, pipelinedAccounts) = try await db.query(
            chargesRead, pipelinedWith: cancels ? nil : accountsRead(customers))
        var accountRows = pipelinedAccounts
        var charges: [UUID: Charge] = [:]
        var cancelled = Set<UUID>()
        for row in chargeRows {
            let orderId: UUID = try row.decode("order_id")
            let status: String = try row.decode("status")
            if status == "CANCELLED" {
                cancelled.insert(orderId)
                continue
            }
            charges[orderId] = Charge(
                customerId: try row.decode("customer_id"), paymentId: try row.decode("payment_id"),
                amount: Money(amount: try row.decode("amount"), currency: try row.decode("currency")),
                status: status, reason: try row.decode("reason", as: String?.self), isNew: false)
        }
        if cancels {
            for (_, orderId, step) in steps {
                if case .cancel = step, let charge = charges[orderId], charge.status == "CHARGED" {
                    customers.insert(charge.customerId)
                }
            }
            accountRows = try await db.query(accountsRead(customers))
        }

        struct Account {
            var currency: String
            var limit: Int64
            var used: Int64
            /// What the batch adds to `used` (negative when it refunds more than it charges).
            var delta: Int64 = 0
        }
        var accounts: [String: Account] = [:]
        for row in accountRows {
            accounts[try row.decode("customer_id")] = Account(
                currency: try row.decode("currency"), limit: try row.decode("credit_limit"),
                used: try row.decode("used"))
        }

        // Decide each event in order.
        var out: [OutgoingEvent] = []
        var created: [UUID] = []
        var refunded: [UUID] = []
        var cancellations: [(orderId: UUID, customerId: String, reason: String, eventId: UUID)] = []
        for (event, orderId, step) in steps {
            switch step {
            case .charge(let reserved):
                // Charged, declined, voided or refunded before: at most one charge per order.
                guard charges[orderId] == nil else { continue }
                let amount = reserved.total
                created.append(orderId)
                guard !cancelled.contains(orderId) else {
                    // The order was cancelled before its reservation reached billing: never charged. Nothing is
                    // emitted (inventory releases the reservation on order.cancelled, and the saga has ended).
                    charges[orderId] = Charge(
                        customerId: reserved.customerId, paymentId: UUID.timeOrdered(), amount: amount,
                        status: "VOIDED", reason: "order_cancelled", isNew: true)
                    continue
                }
                var decline: PaymentFailed.Reason? = nil
                if let account = accounts[reserved.customerId] {
                    if account.currency != amount.currency {
                        decline = .currencyMismatch
                    } else if amount.amount > account.limit - account.used {
                        decline = .insufficientCredit
                    }
                } else {
                    decline = .unknownCustomer
                }
                let paymentId = UUID.timeOrdered()
                charges[orderId] = Charge(
                    customerId: reserved.customerId, paymentId: paymentId, amount: amount,
                    status: decline == nil ? "CHARGED" : "DECLINED", reason: decline?.rawValue, isNew: true)
                if let decline {
                    out.append(
                        try context.emit(
                            PaymentFailed(
                                orderId: reserved.orderId, customerId: reserved.customerId, reason: decline,
                                amount: amount),
                            causedBy: event))
                    continue
                }
                accounts[reserved.customerId]!.used += amount.amount
                accounts[reserved.customerId]!.delta += amount.amount
                out.append(
                    try context.emit(
                        PaymentCompleted(
                            orderId: reserved.orderId, customerId: reserved.customerId,
                            paymentId: paymentId.lowercasedString, amount: amount),
                        causedBy: event))
            case .cancel(let cancellation):
                let reason = "order cancelled: \(cancellation.reason.rawValue)"
                if cancelled.insert(orderId).inserted {
                    cancellations.append((orderId, cancellation.customerId, cancellation.reason.rawValue, event.id))
                }
                // Only a standing charge is refunded (declined, voided and refunded ones hold nothing), once.
                guard var charge = charges[orderId], charge.status == "CHARGED" else { continue }
                let refundId = UUID.timeOrdered()
                charge.status = "REFUNDED"
                charge.reason = reason
                charge.refundId = refundId
                charges[orderId] = charge
                if !charge.isNew { refunded.append(orderId) }
                accounts[charge.customerId]!.used -= charge.amount.amount
                accounts[charge.customerId]!.delta -= charge.amount.amount
                out.append(
                    try context.emit(
                        PaymentRefunded(
                            orderId: cancellation.orderId, customerId: charge.customerId,
                            paymentId: charge.paymentId.lowercasedString,
                            refundId: refundId.lowercasedString, amount: charge.amount, reason: reason),
                        causedBy: event))
            }
        }

        // Write what was decided: one statement per kind of change, deferred to go with the worker's next
        // statement (its COMMIT) in one round trip.
        if !created.isEmpty {
            let rows = created.map { ($0, charges[$0]!) }
            try await db.executeDeferred(
                """
                INSERT INTO charges
                    (order_id, customer_id, payment_id, amount, currency, status, reason, refund_id, refunded_at)
                SELECT c.order_id, c.customer_id, c.payment_id, c.amount, c.currency, c.status, NULLIF(c.reason, ''),
                       NULLIF(c.refund_id, '')::uuid, CASE WHEN c.status = 'REFUNDED' THEN now() END
                FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                            $8::text[])
                     AS c(order_id, customer_id, payment_id, amount, currency, status, reason, refund_id)
                """,
                [
                    PostgresArray(rows.map(\.0)), PostgresArray(rows.map(\.1.customerId)),
                    PostgresArray(rows.map(\.1.paymentId)), PostgresArray(rows.map(\.1.amount.amount)),
                    PostgresArray(rows.map(\.1.amount.currency)), PostgresArray(rows.map(\.1.status)),
                    PostgresArray(rows.map { $0.1.reason ?? "" }),
                    PostgresArray(rows.map { $0.1.refundId?.lowercasedString ?? "" }),
                ])
        }
        if !refunded.isEmpty {
            let rows = refunded.map { ($0, charges[$0]!) }
            try await db.executeDeferred(
                """
                UPDATE charges c SET status = 'REFUNDED', reason = u.reason, refund_id = u.refund_id, refunded_at = now()
                FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(order_id, refund_id, reason)
                WHERE c.order_id = u.order_id
                """,
                [
                    PostgresArray(rows.map(\.0)), PostgresArray(rows.map { $0.1.refundId! }),
                    PostgresArray(rows.map { $0.1.reason ?? "" }),
                ])
        }
        if !cancellations.isEmpty {
            try await db.executeDeferred(
                """
                INSERT INTO order_cancellations (order_id, customer_id, reason, event_id)
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[])
                ON CONFLICT (order_id) DO NOTHING
                """,
                [
                    PostgresArray(cancellations.map(\.orderId)), PostgresArray(cancellations.map(\.customerId)),
                    PostgresArray(cancellations.map(\.reason)), PostgresArray(cancellations.map(\.eventId)),
                ])
        }
        let changed = accounts.filter { $0.value.delta != 0 }.sorted { $0.key < $1.key }
        if !changed.isEmpty {
            try await db.executeDeferred(
                """
                UPDATE accounts a SET used = a.used + d.delta
                FROM unnest($1::text[], $2::bigint[]) AS d(customer_id, delta)
                WHERE a.customer_id = d.customer_id
                """, [PostgresArray(changed.map(\.key)), PostgresArray(changed.map(\.value.delta))])
        }
        return out
    }

    private static func uuid(_ orderId: String) throws -> UUID {
        guard let id = UUID(parsing: orderId) else { throw HandlerRejection("order id \(orderId) is not a UUID") }
        return id
    }
}
