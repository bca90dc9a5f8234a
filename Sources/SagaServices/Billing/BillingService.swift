import Foundation
import SagaEngine

/// Billing: customer accounts with a credit limit. Charges each order at most once on `inventory.reserved`
/// (`payment.completed`) or declines it (`payment.failed`: unknown customer, other currency, over the limit).
public enum BillingService {
    public static let name = "billing"

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

    public static func definition() -> SagaServiceDefinition {
        SagaServiceDefinition(
            name: name, migrations: migrations,
            handlers: [
                .on(InventoryReserved.self) { reserved, context in try await charge(reserved, context: context) }
            ])
    }

    static func charge(_ reserved: InventoryReserved, context: HandlerContext) async throws -> [OutgoingEvent] {
        guard let orderId = UUID(uuidString: reserved.orderId) else {
            throw HandlerRejection("order id \(reserved.orderId) is not a UUID")
        }
        let db = context.connection
        if try await !db.query("SELECT 1 FROM charges WHERE order_id = $1", [orderId]).isEmpty {
            return []  // charged (or declined) before: at most one charge per order
        }
        let amount = reserved.total
        let account = try await db.query(
            "SELECT currency, credit_limit, used FROM accounts WHERE customer_id = $1 FOR UPDATE", [reserved.customerId]
        ).first
        var decline: PaymentFailed.Reason? = nil
        if let account {
            let currency: String = try account.decode("currency")
            let limit: Int64 = try account.decode("credit_limit")
            let used: Int64 = try account.decode("used")
            if currency != amount.currency {
                decline = .currencyMismatch
            } else if amount.amount > limit - used {
                decline = .insufficientCredit
            }
        } else {
            decline = .unknownCustomer
        }
        let paymentId = UUID()
        try await db.execute(
            """
            INSERT INTO charges (order_id, customer_id, payment_id, amount, currency, status, reason)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            [
                orderId, reserved.customerId, paymentId, amount.amount, amount.currency,
                decline == nil ? "CHARGED" : "DECLINED", decline?.rawValue,
            ])
        if let decline {
            return [
                try context.emit(
                    PaymentFailed(
                        orderId: reserved.orderId, customerId: reserved.customerId, reason: decline, amount: amount))
            ]
        }
        try await db.execute(
            "UPDATE accounts SET used = used + $2 WHERE customer_id = $1", [reserved.customerId, amount.amount])
        return [
            try context.emit(
                PaymentCompleted(
                    orderId: reserved.orderId, customerId: reserved.customerId,
                    paymentId: paymentId.uuidString.lowercased(), amount: amount))
        ]
    }
}
