import ArgumentParser
import Foundation
import Logging
import SagaEngine
import SagaServices

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Place a mix of orders on the running stack and check the saga's invariants.",
        discussion: """
            Needs a running stack (saga dev, or the daemons with the same configuration). Places orders that end
            confirmed, cancelled for lack of stock, and cancelled after a declined payment (reservation
            released), waits until every saga is finished, prints the outcomes and checks: every saga terminal
            with the expected outcome, stock conserved, no order charged twice, balances match the charges,
            outbox drained. Exits non-zero when a check fails.
            """)

    @Option(help: "Seconds to wait for the sagas to finish.") var timeout = 120

    struct Scenario {
        var customer: String
        var lines: [(String, Int)]
        var expected: String
        var why: String
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.demo")
        let env = runtime.env
        let client = try await OrdersClient.runningStack(env)
        let run = String(UUID().uuidString.prefix(6)).lowercased()
        let (alice, bob, carol, dave) = ("alice-\(run)", "bob-\(run)", "carol-\(run)", "dave-\(run)")
        let catalogue = DemoCatalogue(
            products: DemoCatalogue.standard.products,
            customers: [
                .init(id: alice, creditLimit: Money(amount: 1_000_000, currency: "EUR")),
                .init(id: bob, creditLimit: Money(amount: 5_000, currency: "EUR")),
                .init(id: carol, creditLimit: Money(amount: 0, currency: "EUR")),
            ])
        let pools = Stack.services.map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: runtime.logger)
        }
        defer { Task { for p in pools { await p.close() } } }
        let (orders, inventory, billing) = (pools[0], pools[1], pools[2])
        try await catalogue.seed(orders: orders, inventory: inventory, billing: billing)

        let scenarios = [
            Scenario(customer: alice, lines: [("widget", 2)], expected: "CONFIRMED", why: "in stock, within credit"),
            Scenario(customer: alice, lines: [("gadget", 1), ("widget", 3)], expected: "CONFIRMED", why: "two lines"),
            Scenario(customer: bob, lines: [("widget", 1)], expected: "CONFIRMED", why: "12.50 within bob's 50.00"),
            Scenario(customer: alice, lines: [("doohickey", 1)], expected: "out_of_stock", why: "never in stock"),
            Scenario(
                customer: alice, lines: [("widget", 1), ("gizmo", 50)], expected: "out_of_stock", why: "all or nothing"),
            Scenario(customer: carol, lines: [("widget", 1)], expected: "payment_declined", why: "no credit"),
            Scenario(
                customer: bob, lines: [("gadget", 2)], expected: "payment_declined", why: "60.00 over bob's limit"),
            Scenario(customer: dave, lines: [("gadget", 1)], expected: "payment_declined", why: "unknown customer"),
        ]
        let stockBefore = try await SagaChecks.stock(inventory)
        print("placing \(scenarios.count) orders on \(client.base) ...")
        var placed: [(Scenario, String)] = []
        for s in scenarios { placed.append((s, try await client.place(customerId: s.customer, lines: s.lines))) }

        let deadline = ContinuousClock.now + .seconds(timeout)
        var views: [String: JSONValue] = [:]
        while ContinuousClock.now < deadline {
            for (_, id) in placed where views[id].map(SagaChecks.isTerminal) != true {
                views[id] = try await client.order(id)
            }
            if views.values.allSatisfy(SagaChecks.isTerminal) && views.count == placed.count { break }
            try await Task.sleep(for: .milliseconds(200))
        }

        var rows: [[String]] = []
        var checks: [(String, Bool)] = []
        var allAsExpected = true
        for (s, id) in placed {
            let v = views[id] ?? .null
            let status = v["status"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "?"
            let outcome = SagaChecks.outcome(v)
            allAsExpected = allAsExpected && outcome == s.expected
            let steps: [String] =
                if case .array(let h)? = v["history"] {
                    h.compactMap { if case .string(let e)? = $0["event"] { e } else { nil } }
                } else { [] }
            rows.append([
                String(id.prefix(8)), s.customer.split(separator: "-").first.map(String.init) ?? s.customer,
                s.lines.map { "\($0.1)×\($0.0)" }.joined(separator: " "), Self.money(v["total"]), status,
                outcome == "CONFIRMED" ? "" : outcome, steps.joined(separator: " → "),
                outcome == s.expected ? "✓" : "✗ expected \(s.expected)",
            ])
        }
        print(
            Table.render(["order", "customer", "lines", "total", "status", "reason", "order history", "check"], rows))

        let terminal = views.count == placed.count && views.values.allSatisfy(SagaChecks.isTerminal)
        checks.append(("every saga reached a terminal state", terminal))
        checks.append(("every saga ended as expected", allAsExpected))
        // Orders ends a saga; inventory settles the reservation on the same payment event, in parallel.
        // Wait for it: every reservation of these orders must end as its saga did.
        let wanted = Dictionary(
            uniqueKeysWithValues: placed.map { s, id in (id, SagaChecks.settledReservation(outcome: s.expected)) })
        var reservations: [String: String] = [:]
        while ContinuousClock.now < deadline {
            reservations = try await SagaChecks.reservations(inventory, ids: placed.map(\.1))
            if reservations == wanted { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let stockAfter = try await SagaChecks.stock(inventory)
        let seeded = Dictionary(uniqueKeysWithValues: DemoCatalogue.standard.products.map { ($0.sku, $0.stock) })
        let conserved = SagaChecks.unconserved(stockAfter, seeded: seeded).isEmpty
        checks.append(("stock conserved (available + reserved + sold = seeded, per SKU)", conserved))
        checks.append(
            ("every reservation settled as its saga ended (sold, rejected or released)", reservations == wanted))
        let soldDelta = stockAfter.reduce(0) { $0 + $1.value.sold - (stockBefore[$1.key]?.sold ?? 0) }
        let soldExpected = placed.filter { $0.0.expected == "CONFIRMED" }.reduce(0) {
            $0 + $1.0.lines.reduce(0) { $0 + $1.1 }
        }
        checks.append(("units sold = units in confirmed orders (\(soldExpected))", soldDelta == soldExpected))
        let ids = placed.map(\.1)
        let charged = try await SagaChecks.charged(billing, ids: ids)
        let chargedOnce = placed.allSatisfy { s, id in (charged[id] ?? 0) == (s.expected == "CONFIRMED" ? 1 : 0) }
        checks.append(("each confirmed order charged exactly once, no other order charged", chargedOnce))
        // Billing's outbox rows are deleted once published: count the distinct events orders received.
        let completionEvents = try await SagaChecks.handled(orders, type: PaymentCompleted.eventType, ids: ids)
        checks.append(
            (
                "one payment.completed per confirmed order",
                completionEvents == placed.filter { $0.0.expected == "CONFIRMED" }.count
            ))
        let balances = try await SagaChecks.balances(billing, customers: [alice, bob, carol])
        let balanced = balances.allSatisfy { $0.used == $0.charged }
        checks.append(("credit used = sum of charges, per customer", balanced && balances.count == 3))
        // The last events (order.confirmed / order.cancelled) are published just after orders committed them.
        var pending = -1
        while pending != 0 && ContinuousClock.now < deadline {
            if pending > 0 { try await Task.sleep(for: .milliseconds(200)) }
            pending = try await SagaChecks.pendingOutbox(pools, ids: ids)
        }
        checks.append(("every outbox row of these sagas published", pending == 0))

        print("")
        for (name, ok) in checks { print("\(ok ? "✓" : "✗") \(name)") }
        guard checks.allSatisfy(\.1) else { throw ExitCode(1) }
        print("\nall \(checks.count) invariants hold")
    }

    static func money(_ v: JSONValue?) -> String {
        guard case .integer(let a)? = v?["amount"], case .string(let c)? = v?["currency"] else { return "?" }
        return Money(amount: a, currency: c).description
    }
}
