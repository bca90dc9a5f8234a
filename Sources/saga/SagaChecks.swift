import Foundation
import SagaEngine

/// The queries behind the saga's invariants, shared by `saga demo` (the orders it placed) and `saga chaos check`
/// (every order of a chaos run). Each reads one service's own database.
enum SagaChecks {
    struct Stock: Sendable, Equatable {
        var available: Int
        var reserved: Int
        var sold: Int
    }

    /// Every SKU's stock row (inventory).
    static func stock(_ inventory: PostgresPool) async throws -> [String: Stock] {
        var out: [String: Stock] = [:]
        for r in try await inventory.query("SELECT sku, available, reserved, sold FROM stock") {
            out[try r.decode("sku")] = Stock(
                available: try r.decode("available"), reserved: try r.decode("reserved"), sold: try r.decode("sold"))
        }
        return out
    }

    /// The SKUs whose available + reserved + sold differs from what was seeded.
    static func unconserved(_ stock: [String: Stock], seeded: [String: Int]) -> [String] {
        stock.filter { sku, s in seeded[sku].map { s.available + s.reserved + s.sold != $0 } ?? false }.keys.sorted()
    }

    /// The reservation status of each of `ids` that has one (inventory).
    static func reservations(_ inventory: PostgresPool, ids: [String]) async throws -> [String: String] {
        var out: [String: String] = [:]
        for r in try await inventory.query(
            "SELECT order_id::text AS id, status FROM reservations WHERE order_id::text = ANY($1::text[])",
            [PostgresArray(ids)])
        {
            out[try r.decode("id")] = try r.decode("status")
        }
        return out
    }

    /// The reservation status an order's saga must leave behind, by the order's outcome (after a timeout:
    /// RELEASED when inventory had reserved the stock; see ``isSettled(reservation:outcome:)``).
    static func settledReservation(outcome: String) -> String {
        ["CONFIRMED": "SOLD", "out_of_stock": "REJECTED"][outcome] ?? "RELEASED"
    }

    /// Whether `reservation` (nil: no row) is what an order's saga with `outcome` leaves behind. A saga cancelled by
    /// its deadline leaves RELEASED (stock reserved, then given back), CANCELLED (inventory saw the cancellation
    /// first: a tombstone) or REJECTED (out of stock anyway); any other outcome exactly ``settledReservation(outcome:)``.
    static func isSettled(reservation: String?, outcome: String) -> Bool {
        guard let reservation else { return false }
        if outcome == "timeout" { return ["RELEASED", "CANCELLED", "REJECTED"].contains(reservation) }
        return reservation == settledReservation(outcome: outcome)
    }

    /// How many CHARGED rows each of `ids` has (billing); orders without a charge are absent.
    static func charged(_ billing: PostgresPool, ids: [String]) async throws -> [String: Int] {
        var out: [String: Int] = [:]
        for r in try await billing.query(
            """
            SELECT order_id::text AS id, count(*) FILTER (WHERE status = 'CHARGED') AS charged FROM charges
            WHERE order_id::text = ANY($1::text[]) GROUP BY order_id
            """, [PostgresArray(ids)])
        {
            out[try r.decode("id")] = try r.decode("charged")
        }
        return out
    }

    /// The status of every charges row (CHARGED, DECLINED, VOIDED, REFUNDED) of each of `ids` (billing); orders
    /// without a row are absent.
    static func charges(_ billing: PostgresPool, ids: [String]) async throws -> [String: [String]] {
        var out: [String: [String]] = [:]
        for r in try await billing.query(
            "SELECT order_id::text AS id, status FROM charges WHERE order_id::text = ANY($1::text[]) ORDER BY status",
            [PostgresArray(ids)])
        {
            out[try r.decode("id"), default: []].append(try r.decode("status"))
        }
        return out
    }

    struct Balance: Sendable {
        var customer: String
        var used: Int64
        var charged: Int64
    }

    /// Each of `customers`' credit used and the sum of their CHARGED charges (billing).
    static func balances(_ billing: PostgresPool, customers: [String]) async throws -> [Balance] {
        try await billing.query(
            """
            SELECT a.customer_id, a.used, coalesce(sum(c.amount) FILTER (WHERE c.status = 'CHARGED'), 0) AS charged
            FROM accounts a LEFT JOIN charges c ON c.customer_id = a.customer_id
            WHERE a.customer_id = ANY($1::text[]) GROUP BY a.customer_id, a.used
            """, [PostgresArray(customers)]
        ).map {
            Balance(
                customer: try $0.decode("customer_id"), used: try $0.decode("used"), charged: try $0.decode("charged"))
        }
    }

    /// Outbox rows of `ids` still waiting in any of the services' databases (published rows are deleted).
    static func pendingOutbox(_ pools: [PostgresPool], ids: [String]) async throws -> Int {
        var pending = 0
        for pool in pools {
            pending +=
                try await pool.query(
                    "SELECT count(*) AS n FROM saga_outbox WHERE saga_id = ANY($1::text[])", [PostgresArray(ids)]
                ).first?.decode("n", as: Int.self) ?? 0
        }
        return pending
    }

    /// How many distinct events of `type` for `ids` a service handled (its inbox).
    static func handled(_ pool: PostgresPool, type: String, ids: [String]) async throws -> Int {
        try await pool.query(
            "SELECT count(*) AS n FROM saga_inbox WHERE event_type = $1 AND saga_id = ANY($2::text[])",
            [type, PostgresArray(ids)]
        ).first?.decode("n") ?? -1
    }

    /// CONFIRMED, or the cancellation reason (`out_of_stock`, `payment_declined`, `timeout`) from the orders
    /// table's status and reason (`out of stock: ...`, `payment declined: ...`, `timeout: ...`); PENDING while
    /// running.
    static func outcome(status: String, reason: String?) -> String {
        guard status == "CANCELLED" else { return status }
        guard let reason else { return "cancelled" }
        if reason.hasPrefix("out of stock") { return "out_of_stock" }
        if reason.hasPrefix("timeout") { return "timeout" }
        return "payment_declined"
    }

    /// The same for `GET /orders/{id}`'s JSON.
    static func outcome(_ view: JSONValue) -> String {
        guard case .string(let status)? = view["status"] else { return "unknown" }
        let reason: String? = if case .string(let r)? = view["reason"] { r } else { nil }
        return outcome(status: status, reason: reason)
    }

    static func isTerminal(status: String) -> Bool { status == "CONFIRMED" || status == "CANCELLED" }

    static func isTerminal(_ view: JSONValue) -> Bool {
        if case .string(let s)? = view["status"] { return isTerminal(status: s) }
        return false
    }

    /// The tracker's outcome (`confirmed`, `cancelled: out_of_stock`, ...) for an order's outcome.
    static func trackerOutcome(_ outcome: String) -> String {
        outcome == "CONFIRMED" ? "confirmed" : "cancelled: \(outcome)"
    }
}
