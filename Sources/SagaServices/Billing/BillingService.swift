import Foundation
import SagaEngine

/// Billing: customer accounts with a credit limit. Charges each order at most once on `inventory.reserved`
/// (`payment.completed`) or declines it (`payment.failed`: unknown customer, other currency, over the limit).
public enum BillingService {
    /// The participant's name: its schema, consumer group and producer name.
    public static let name = "billing"

    /// Billing's tables: customer accounts and their charges.
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
                """)
    ]

    /// Billing's part of the saga: the payment.
    public static let declaration = SagaDeclaration(
        emits: [.step(PaymentCompleted.self), .failure(PaymentFailed.self)],
        consumes: [.handles(InventoryReserved.self, waitingOn: "charge the customer")])

    /// Billing as a participant: its tables, its handler, its part of the saga and the schemas of its events.
    public static func definition() -> ParticipantDefinition {
        .orderSaga(name: name, migrations: migrations, handlers: handler.eventHandlers, declaration: declaration)
    }

    /// Billing's handler: it takes a whole batch of `inventory.reserved` events at once.
    public static let handler = BatchHandler(versions: [InventoryReserved.eventType: InventoryReserved.eventVersion]) {
        events, context in try await charge(events, context: context)
    }

    /// Charges a batch in a constant number of statements: it reads which orders were charged before, locks
    /// the batch's accounts (in customer order, so concurrent batches cannot deadlock), decides each charge
    /// in the order given against the accounts' running totals, then writes the charges and the accounts'
    /// new totals with one statement each.
    static func charge(_ events: [IncomingEvent], context: BatchHandlerContext) async throws -> [OutgoingEvent] {
        var charges: [(event: IncomingEvent, reserved: InventoryReserved, orderId: UUID)] = []
        charges.reserveCapacity(events.count)
        for event in events {
            let reserved = try event.decode(InventoryReserved.self)
            guard let orderId = UUID(uuidString: reserved.orderId) else {
                throw HandlerRejection("order id \(reserved.orderId) is not a UUID")
            }
            charges.append((event, reserved, orderId))
        }
        let db = context.connection
        var decided = Set<UUID>()
        for row in try await db.query(
            "SELECT order_id FROM charges WHERE order_id = ANY($1::uuid[])",
            [PostgresArray(charges.map(\.orderId))])
        {
            decided.insert(try row.decode("order_id"))
        }
        struct Account {
            var currency: String
            var limit: Int64
            var used: Int64
            var charged: Int64 = 0
        }
        var accounts: [String: Account] = [:]
        for row in try await db.query(
            """
            SELECT customer_id, currency, credit_limit, used FROM accounts
            WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE
            """, [PostgresArray(Set(charges.map(\.reserved.customerId)).sorted())])
        {
            accounts[try row.decode("customer_id")] = Account(
                currency: try row.decode("currency"), limit: try row.decode("credit_limit"),
                used: try row.decode("used"))
        }

        var out: [OutgoingEvent] = []
        var rows:
            [(orderId: UUID, customerId: String, paymentId: UUID, amount: Money, decline: PaymentFailed.Reason?)] =
                []
        for (event, reserved, orderId) in charges {
            // Charged (or declined) before: at most one charge per order.
            guard decided.insert(orderId).inserted else { continue }
            let amount = reserved.total
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
            let paymentId = UUID()
            rows.append((orderId, reserved.customerId, paymentId, amount, decline))
            if let decline {
                out.append(
                    try context.emit(
                        PaymentFailed(
                            orderId: reserved.orderId, customerId: reserved.customerId, reason: decline, amount: amount),
                        causedBy: event))
                continue
            }
            accounts[reserved.customerId]!.used += amount.amount
            accounts[reserved.customerId]!.charged += amount.amount
            out.append(
                try context.emit(
                    PaymentCompleted(
                        orderId: reserved.orderId, customerId: reserved.customerId,
                        paymentId: paymentId.uuidString.lowercased(), amount: amount),
                    causedBy: event))
        }
        guard !rows.isEmpty else { return out }
        try await db.execute(
            """
            INSERT INTO charges (order_id, customer_id, payment_id, amount, currency, status, reason)
            SELECT c.order_id, c.customer_id, c.payment_id, c.amount, c.currency,
                   CASE WHEN c.reason = '' THEN 'CHARGED' ELSE 'DECLINED' END, NULLIF(c.reason, '')
            FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::text[])
                 AS c(order_id, customer_id, payment_id, amount, currency, reason)
            """,
            [
                PostgresArray(rows.map(\.orderId)), PostgresArray(rows.map(\.customerId)),
                PostgresArray(rows.map(\.paymentId)), PostgresArray(rows.map(\.amount.amount)),
                PostgresArray(rows.map(\.amount.currency)), PostgresArray(rows.map { $0.decline?.rawValue ?? "" }),
            ])
        let charged = accounts.filter { $0.value.charged != 0 }.sorted { $0.key < $1.key }
        if !charged.isEmpty {
            try await db.execute(
                """
                UPDATE accounts a SET used = a.used + d.charged
                FROM unnest($1::text[], $2::bigint[]) AS d(customer_id, charged)
                WHERE a.customer_id = d.customer_id
                """, [PostgresArray(charged.map(\.key)), PostgresArray(charged.map(\.value.charged))])
        }
        return out
    }
}
