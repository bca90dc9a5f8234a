import ArgumentParser
import Foundation
import Logging
import SagaDaemon
import SagaEngine
import SagaServices

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Place a mix of orders on the running stack and check the saga's invariants.",
        discussion: """
            Needs a running stack (saga dev, or the daemons with the same configuration). Places orders that end \
            confirmed, cancelled for lack of stock, and cancelled after a declined payment (reservation \
            released), waits until every saga is finished. Then, through the ops server of the process running \
            billing's worker, pauses billing, places an order with a 3 s deadline, waits until it is cancelled by \
            its timeout and its stock released, resumes billing and waits until its charge is voided or refunded \
            (skipped, not failed, when that ops server does not answer). Prints the outcomes and checks: every saga \
            terminal with the expected outcome, stock conserved, no order charged twice and no cancelled order \
            charged, balances match the charges, outbox drained. Exits non-zero when a check fails.
            """)

    @Option(help: "Seconds to wait for the sagas to finish.") var timeout = 120

    @Option(
        help: ArgumentHelp(
            "The ops server of the process running billing's worker, e.g. http://127.0.0.1:9090.",
            discussion:
                "Default: saga dev's (the `ops` of .saga/dev.json). Unreachable: the timeout scenario is skipped."))
    var billingOps: String?

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
        let erin = "erin-\(run)"
        let catalogue = DemoCatalogue(
            products: DemoCatalogue.standard.products,
            customers: [
                .init(id: alice, creditLimit: Money(amount: 1_000_000, currency: "EUR")),
                .init(id: bob, creditLimit: Money(amount: 5_000, currency: "EUR")),
                .init(id: carol, creditLimit: Money(amount: 0, currency: "EUR")),
                .init(id: erin, creditLimit: Money(amount: 1_000_000, currency: "EUR")),
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

        // Scenario 9: an order times out while billing is paused; billing, resumed, undoes what it did for it.
        let timeoutScenario = Scenario(
            customer: erin, lines: [("widget", 1)], expected: "timeout", why: "billing paused past a 3 s deadline")
        var compensation: String? = nil
        var undone = true
        switch try await runTimeoutScenario(timeoutScenario, client: client, pools: pools, until: deadline) {
        case .skipped(let why):
            print("scenario 9 (order deadline, billing paused) skipped: \(why)")
        case .ran(let id, let view, let done, let billingUndid):
            placed.append((timeoutScenario, id))
            views[id] = view
            compensation = done
            undone = billingUndid
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
        if let compensation { print("compensation (\(erin.split(separator: "-")[0])): \(compensation)") }

        let terminal = views.count == placed.count && views.values.allSatisfy(SagaChecks.isTerminal)
        checks.append(("every saga reached a terminal state", terminal))
        checks.append(("every saga ended as expected", allAsExpected))
        if compensation != nil {
            checks.append(("billing, resumed, voided or refunded the timed-out order's charge", undone))
        }
        // Orders ends a saga; inventory settles the reservation on the same payment event, in parallel.
        // Wait for it: every reservation of these orders must end as its saga did.
        func settled(_ reservations: [String: String]) -> Bool {
            placed.allSatisfy { s, id in SagaChecks.isSettled(reservation: reservations[id], outcome: s.expected) }
        }
        var reservations: [String: String] = [:]
        while ContinuousClock.now < deadline {
            reservations = try await SagaChecks.reservations(inventory, ids: placed.map(\.1))
            if settled(reservations) { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let stockAfter = try await SagaChecks.stock(inventory)
        let seeded = Dictionary(uniqueKeysWithValues: DemoCatalogue.standard.products.map { ($0.sku, $0.stock) })
        let conserved = SagaChecks.unconserved(stockAfter, seeded: seeded).isEmpty
        checks.append(("stock conserved (available + reserved + sold = seeded, per SKU)", conserved))
        checks.append(
            ("every reservation settled as its saga ended (sold, rejected or released)", settled(reservations)))
        let soldDelta = stockAfter.reduce(0) { $0 + $1.value.sold - (stockBefore[$1.key]?.sold ?? 0) }
        let soldExpected = placed.filter { $0.0.expected == "CONFIRMED" }.reduce(0) {
            $0 + $1.0.lines.reduce(0) { $0 + $1.1 }
        }
        checks.append(("units sold = units in confirmed orders (\(soldExpected))", soldDelta == soldExpected))
        let ids = placed.map(\.1)
        let charged = try await SagaChecks.charged(billing, ids: ids)
        let chargedOnce = placed.allSatisfy { s, id in (charged[id] ?? 0) == (s.expected == "CONFIRMED" ? 1 : 0) }
        checks.append(
            ("each confirmed order charged exactly once, no other order charged (none left CHARGED)", chargedOnce))
        // Billing's outbox rows are deleted once published: count the distinct events orders received.
        let confirmedIds = placed.filter { $0.0.expected == "CONFIRMED" }.map(\.1)
        let completionEvents = try await SagaChecks.handled(
            orders, type: PaymentCompleted.eventType, ids: confirmedIds)
        checks.append(("one payment.completed per confirmed order", completionEvents == confirmedIds.count))
        // A cancelled order may have been charged before billing learnt of the cancellation: then it was refunded.
        let cancelledIds = placed.filter { $0.0.expected != "CONFIRMED" }.map(\.1)
        let lateCompletions = try await SagaChecks.handled(
            orders, type: PaymentCompleted.eventType, ids: cancelledIds)
        let refunded = try await SagaChecks.charges(billing, ids: cancelledIds).values.reduce(0) {
            $0 + $1.filter { $0 == "REFUNDED" }.count
        }
        checks.append(
            ("each payment.completed of a cancelled order refunded (\(lateCompletions))", lateCompletions == refunded))
        let customers = [alice, bob, carol] + (compensation == nil ? [] : [erin])
        let balances = try await SagaChecks.balances(billing, customers: customers)
        let balanced = balances.allSatisfy { $0.used == $0.charged }
        checks.append(("credit used = sum of charges, per customer", balanced && balances.count == customers.count))
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

    enum TimeoutRun {
        case skipped(String)
        /// The order's id, its final view, and what billing and inventory did to undo their part.
        case ran(String, JSONValue, String, undone: Bool)
    }

    /// Scenario 9: pauses billing (`POST {ops}/participants/billing/pause`), places `scenario`'s order with a 3 s
    /// deadline, waits until orders cancels it by its timeout and inventory gives its stock back, resumes billing and
    /// waits until billing has handled the cancellation and its charge, if any, is VOIDED or REFUNDED. Billing is
    /// resumed whatever happens. Skipped when billing's ops server does not answer.
    func runTimeoutScenario(
        _ scenario: Scenario, client: OrdersClient, pools: [PostgresPool], until deadline: ContinuousClock.Instant
    ) async throws -> TimeoutRun {
        guard let ops = billingOps ?? DevStackFile.read()?.ops else {
            return .skipped("no ops server for billing (pass --billing-ops, or run saga dev with SAGA_OPS_PORT set)")
        }
        let (inventory, billing) = (pools[1], pools[2])
        func control(_ action: String) async throws -> Int {
            try await LocalHTTP.send(.POST, "\(ops)/participants/billing/\(action)", timeout: .seconds(20)).status
        }
        let paused: Int
        do { paused = try await control("pause") } catch { return .skipped("\(ops) does not answer (\(error))") }
        guard paused == 204 || paused == 202 else {
            return .skipped("POST \(ops)/participants/billing/pause answered \(paused)")
        }
        print("billing paused; placing an order with deadlineSeconds 3 ...")
        do {
            let id = try await client.place(customerId: scenario.customer, lines: scenario.lines, deadlineSeconds: 3)
            let limit = min(deadline, ContinuousClock.now + .seconds(30))
            var view = JSONValue.null
            var reservation: String? = nil
            while ContinuousClock.now < limit {
                view = try await client.order(id)
                if SagaChecks.isTerminal(view) {
                    reservation = try await SagaChecks.reservations(inventory, ids: [id])[id]
                    if SagaChecks.isSettled(reservation: reservation, outcome: scenario.expected) { break }
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            let resumed = try await control("resume")
            guard resumed == 204 else {
                throw OrdersClient.Failure(description: "resuming billing answered \(resumed)")
            }
            print(
                "order \(id.prefix(8)) is \(SagaChecks.outcome(view)), reservation \(reservation ?? "none"); billing resumed"
            )
            var charges: [String] = []
            var undone = false
            while ContinuousClock.now < deadline {
                let seen = try await SagaChecks.handled(billing, type: "order.cancelled", ids: [id])
                charges = try await SagaChecks.charges(billing, ids: [id])[id] ?? []
                undone = seen == 1 && !charges.isEmpty && charges.allSatisfy { $0 == "VOIDED" || $0 == "REFUNDED" }
                if undone { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            let stock =
                reservation == "RELEASED" ? "inventory.released (stock back)" : "reservation \(reservation ?? "none")"
            return .ran(
                id, view, "\(stock); charge \(charges.isEmpty ? "none" : charges.joined(separator: ", "))",
                undone: undone)
        } catch {
            _ = try? await control("resume")
            throw error
        }
    }

    static func money(_ v: JSONValue?) -> String {
        guard case .integer(let a)? = v?["amount"], case .string(let c)? = v?["currency"] else { return "?" }
        return Money(amount: a, currency: c).description
    }
}
