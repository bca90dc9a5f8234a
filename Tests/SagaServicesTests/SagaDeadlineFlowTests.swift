import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import Testing

/// Order deadlines end to end (issue 13), across real workers and relays: an order that gets no outcome in time is
/// cancelled with reason timeout, and whatever inventory and billing did for it is undone, whichever of them was
/// down; a deadline fires once, never after the saga ended normally, also across a stopped orders worker.
@Suite(.serialized) struct SagaDeadlineFlowTests {
    /// Places `count` orders of one widget for alice, each with a deadline of `seconds`.
    static func place(_ stack: TestStack, _ count: Int, deadlineSeconds seconds: Int) async throws -> [String] {
        var ids: [String] = []
        for _ in 0..<count {
            let placed = try await stack.book.place(
                OrderRequest(
                    customerId: "alice", currency: "EUR", lines: [OrderLine(sku: "widget", quantity: 1)],
                    deadlineSeconds: seconds))
            ids.append(placed.orderId.uuidString.lowercased())
        }
        return ids
    }

    static func view(_ stack: TestStack, _ id: String) async throws -> OrderBook.View {
        let uuid = try #require(UUID(uuidString: id))
        return try #require(try await stack.book.view(uuid))
    }

    static func int(_ stack: TestStack, _ service: String, _ sql: String, _ ids: [String]) async throws -> Int {
        try await stack.query(service, sql, [PostgresArray(ids)]).first?.decode("n", as: Int.self) ?? -1
    }

    static func statuses(_ stack: TestStack, _ service: String, _ table: String, _ ids: [String]) async throws
        -> [String: String]
    {
        var out: [String: String] = [:]
        for row in try await stack.query(
            service, "SELECT order_id::text AS id, status FROM \(table) WHERE order_id::text = ANY($1::text[])",
            [PostgresArray(ids)])
        {
            out[try row.decode("id")] = try row.decode("status")
        }
        return out
    }

    /// After a saga cancelled by its deadline: stock conserved and nothing left reserved or sold, no charge left
    /// CHARGED, credit used = Σ CHARGED, every outbox row of these sagas published.
    static func expectNothingStays(_ stack: TestStack, _ ids: [String]) async throws {
        try await stack.eventually("every outbox row of these sagas published") {
            var pending = 0
            for service in TestStack.services {
                pending += try await int(
                    stack, service, "SELECT count(*) AS n FROM saga_outbox WHERE saga_id = ANY($1::text[])", ids)
            }
            return pending == 0
        }
        let widget = try #require(
            try await stack.query("inventory", "SELECT available, reserved, sold FROM stock WHERE sku = 'widget'").first
        )
        #expect(try widget.decode("available", as: Int.self) == 1000)
        #expect(try widget.decode("reserved", as: Int.self) == 0)
        #expect(try widget.decode("sold", as: Int.self) == 0)
        #expect(
            try await int(
                stack, "billing",
                "SELECT count(*) AS n FROM charges WHERE status = 'CHARGED' AND order_id::text = ANY($1::text[])", ids)
                == 0)
        let balance = try #require(
            try await stack.query(
                "billing",
                """
                SELECT a.used, coalesce(sum(c.amount) FILTER (WHERE c.status = 'CHARGED'), 0) AS charged
                FROM accounts a LEFT JOIN charges c ON c.customer_id = a.customer_id
                WHERE a.customer_id = 'alice' GROUP BY a.used
                """
            ).first)
        #expect(try balance.decode("used", as: Int64.self) == (try balance.decode("charged", as: Int64.self)))
        for id in ids {
            let view = try await Self.view(stack, id)
            #expect(view.status == "CANCELLED", "no resurrection: \(id)")
        }
    }

    /// The issue's test: billing is down while the deadlines pass; the orders are cancelled with reason timeout and
    /// their stock released; billing, started, never leaves a charge of them.
    @Test func billingStoppedTheDeadlinePassesAndNoChargeStays() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("inventory")
        let ids = try await Self.place(stack, 6, deadlineSeconds: 2)
        for id in ids {
            let view = try await stack.waitForTerminal(id, timeout: .seconds(30))
            #expect(view.status == "CANCELLED")
            #expect(view.reason?.hasPrefix("timeout") == true, "\(view.reason ?? "")")
            #expect(view.history.map(\.event) == ["order.created", "order.expired"])
        }
        try await stack.eventually("inventory released every reservation") {
            let reservations = try await Self.statuses(stack, "inventory", "reservations", ids)
            return reservations.count == ids.count
                && reservations.values.allSatisfy { $0 == "RELEASED" || $0 == "CANCELLED" }
        }
        #expect(stack.worker("orders")?.stats.deadlinesFired == 6)

        try stack.startWorker("billing")
        try await stack.eventually("billing handled every cancellation and voided or refunded every charge") {
            let cancellations = try await Self.int(
                stack, "billing",
                "SELECT count(*) AS n FROM saga_inbox WHERE event_type = 'order.cancelled' AND saga_id = ANY($1::text[])",
                ids)
            let reserved = try await Self.int(
                stack, "billing",
                "SELECT count(*) AS n FROM saga_inbox WHERE event_type = 'inventory.reserved' AND saga_id = ANY($1::text[])",
                ids)
            let charges = try await Self.statuses(stack, "billing", "charges", ids)
            let released = try await Self.statuses(stack, "inventory", "reservations", ids).values.filter {
                $0 == "RELEASED"
            }.count
            return cancellations == ids.count && reserved == released && charges.count == released
                && charges.values.allSatisfy { $0 == "VOIDED" || $0 == "REFUNDED" }
        }
        try await Self.expectNothingStays(stack, ids)
        await stack.stop()
    }

    /// Inventory is down past the deadline: when it starts it finds order.created and order.cancelled in either
    /// order, and either never reserves (a tombstone) or reserves and releases; billing voids or refunds.
    @Test func inventoryStoppedTheOrderTimesOutAndTheLateReservationIsUndone() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("billing")
        let ids = try await Self.place(stack, 4, deadlineSeconds: 2)
        for id in ids {
            let view = try await stack.waitForTerminal(id, timeout: .seconds(30))
            #expect(view.status == "CANCELLED" && view.reason?.hasPrefix("timeout") == true)
        }
        #expect(try await Self.statuses(stack, "inventory", "reservations", ids).isEmpty)

        try stack.startWorker("inventory")
        try await stack.eventually("inventory settled every order as cancelled") {
            let reservations = try await Self.statuses(stack, "inventory", "reservations", ids)
            return reservations.count == ids.count
                && reservations.values.allSatisfy { $0 == "RELEASED" || $0 == "CANCELLED" }
        }
        try await stack.eventually("billing voided or refunded what inventory reserved") {
            let released = try await Self.statuses(stack, "inventory", "reservations", ids).values.filter {
                $0 == "RELEASED"
            }.count
            let charges = try await Self.statuses(stack, "billing", "charges", ids)
            return charges.count == released && charges.values.allSatisfy { $0 == "VOIDED" || $0 == "REFUNDED" }
        }
        try await Self.expectNothingStays(stack, ids)
        await stack.stop()
    }

    /// A saga that ends normally cancels its deadline: it never fires, later either.
    @Test func aDeadlineCancelledByTheNormalEndNeverFires() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        // Every consumer has its partitions first (the first group join takes seconds on the mock cluster).
        let warm = try #require(try await Self.place(stack, 1, deadlineSeconds: 60).first)
        #expect(try await stack.waitForTerminal(warm).status == "CONFIRMED")
        let id = try #require(try await Self.place(stack, 1, deadlineSeconds: 3).first)
        #expect(try await stack.waitForTerminal(id).status == "CONFIRMED")
        try await Task.sleep(for: .seconds(4))  // past the deadline
        let orders = try #require(stack.worker("orders"))
        #expect(orders.stats.deadlinesFired == 0)
        #expect(orders.stats.deadlinesCancelled == 2)
        #expect(
            try await Self.int(
                stack, "orders", "SELECT count(*) AS n FROM saga_deadlines WHERE saga_id = ANY($1::text[])", [id]) == 0)
        let view = try await Self.view(stack, id)
        #expect(view.status == "CONFIRMED")
        #expect(view.history.map(\.event) == ["order.created", "payment.completed"])
        await stack.stop()
    }

    /// The orders worker is stopped before the deadline falls and started after: the deadline fires once.
    @Test func aDeadlineFiresOnceAcrossAKilledOrdersWorker() async throws {
        let stack = try await TestStack()
        for service in TestStack.services { stack.startRelay(service) }
        try stack.startWorker("orders")
        try stack.startWorker("inventory")  // billing is not running: no outcome comes
        let id = try #require(try await Self.place(stack, 1, deadlineSeconds: 2).first)
        await stack.stopWorker("orders")
        try await Task.sleep(for: .seconds(3))
        #expect(try await Self.view(stack, id).status == "PENDING")

        let orders = try stack.startWorker("orders")
        let view = try await stack.waitForTerminal(id, timeout: .seconds(30))
        #expect(view.status == "CANCELLED" && view.reason?.hasPrefix("timeout") == true)
        try await stack.eventually("inventory settled the reservation as cancelled") {
            let status = try await Self.statuses(stack, "inventory", "reservations", [id])[id]
            return status == "RELEASED" || status == "CANCELLED"  // reserved then released, or a tombstone
        }
        try await Task.sleep(for: .seconds(1))
        #expect(orders.stats.deadlinesFired == 1)
        #expect(
            try await Self.int(
                stack, "orders",
                "SELECT count(*) AS n FROM saga_inbox WHERE event_type = 'order.expired' AND saga_id = ANY($1::text[])",
                [id]) == 1)
        #expect(
            try await Self.int(
                stack, "inventory",
                "SELECT count(*) AS n FROM saga_inbox WHERE event_type = 'order.cancelled' AND saga_id = ANY($1::text[])",
                [id]) == 1)
        #expect(
            try await Self.int(
                stack, "orders", "SELECT count(*) AS n FROM saga_deadlines WHERE saga_id = ANY($1::text[])", [id]) == 0)
        #expect(view.history.map(\.event) == ["order.created", "order.expired"])
        await stack.stop()
    }
}
