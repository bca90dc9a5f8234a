import Foundation
import SagaEngine
import SagaKafka
import SagaServices
import Testing

/// The three outcomes end to end, across real workers and relays, plus the stopped-service case.
@Suite(.serialized) struct SagaFlowTests {
    @Test func anOrderInStockAndWithinCreditIsConfirmed() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let id = try await stack.place("alice", [("widget", 2), ("gadget", 1)])
        let view = try await stack.waitForTerminal(id)
        await stack.stop()

        #expect(view.status == "CONFIRMED")
        #expect(view.total == Money(amount: 2 * 1250 + 3000, currency: "EUR"))
        #expect(view.history.map(\.status) == ["PENDING", "CONFIRMED"])
        #expect(view.history.map(\.event) == ["order.created", "payment.completed"])
    }

    @Test func anOrderOutOfStockIsCancelledAndReservesNothing() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        // widget is in stock, gizmo is not (5 left): all or nothing, so the widgets stay available too.
        let id = try await stack.place("alice", [("widget", 1), ("gizmo", 6)])
        let view = try await stack.waitForTerminal(id)
        let stock = try await stack.query("inventory", "SELECT sku, available, reserved FROM stock ORDER BY sku")
        let charges = try await stack.query("billing", "SELECT count(*) AS n FROM charges")
        await stack.stop()

        #expect(view.status == "CANCELLED")
        #expect(view.reason?.hasPrefix("out of stock") == true)
        let bySku = try Dictionary(
            uniqueKeysWithValues: stock.map {
                (try $0.decode("sku", as: String.self), try $0.decode("available", as: Int.self))
            })
        #expect(bySku["widget"] == 1000)
        #expect(bySku["gizmo"] == 5)
        #expect(try stock.allSatisfy { try $0.decode("reserved", as: Int.self) == 0 })
        #expect(try charges.first?.decode("n", as: Int.self) == 0)
    }

    @Test func aDeclinedPaymentReleasesTheReservationAndCancels() async throws {
        let stack = try await TestStack()
        try stack.startAll()
        let id = try await stack.place("carol", [("gadget", 3)])
        let view = try await stack.waitForTerminal(id)
        let reservation = try await stack.query(
            "inventory", "SELECT status FROM reservations WHERE order_id = $1", [UUID(uuidString: id)])
        let gadget = try await stack.query("inventory", "SELECT available, reserved FROM stock WHERE sku = 'gadget'")
        let charge = try await stack.query(
            "billing", "SELECT status, reason FROM charges WHERE order_id = $1", [UUID(uuidString: id)])
        await stack.stop()

        #expect(view.status == "CANCELLED")
        #expect(view.reason?.hasPrefix("payment declined") == true)
        #expect(try reservation.first?.decode("status", as: String.self) == "RELEASED")
        #expect(try gadget.first?.decode("available", as: Int.self) == 500)
        #expect(try gadget.first?.decode("reserved", as: Int.self) == 0)
        #expect(try charge.first?.decode("status", as: String.self) == "DECLINED")
        #expect(try charge.first?.decode("reason", as: String.self) == "insufficient_credit")
    }

    @Test func ordersAcceptedWhileInventoryIsStoppedCompleteOnceItIsBack() async throws {
        let stack = try await TestStack()
        for s in TestStack.services { stack.startRelay(s) }
        try stack.startWorker("orders")
        try stack.startWorker("billing")
        var ids: [String] = []
        for _ in 0..<3 { ids.append(try await stack.place("alice", [("widget", 1)])) }
        // Without inventory nothing moves: the orders are accepted and wait.
        try await Task.sleep(for: .seconds(2))
        for id in ids {
            let v = try await stack.book.view(UUID(uuidString: id)!)
            #expect(v?.status == "PENDING")
        }
        try stack.startWorker("inventory")
        var statuses: [String] = []
        for id in ids { statuses.append(try await stack.waitForTerminal(id).status) }
        await stack.stop()
        #expect(statuses == ["CONFIRMED", "CONFIRMED", "CONFIRMED"])
    }

    @Test func orderCreatedV1IsUpcastAndHandled() async throws {
        let stack = try await TestStack(orderCreatedVersion: 1)
        try stack.startAll()
        let id = try await stack.place("alice", [("widget", 1)])
        let view = try await stack.waitForTerminal(id)
        let created = try await stack.consumeAll([stack.topics.topic(for: "order.created")], atLeast: 1)
        await stack.stop()

        #expect(view.status == "CONFIRMED")
        #expect(created.count == 1)
        #expect(created.first?.header(SagaHeader.eventVersion) == "1")
    }
}
