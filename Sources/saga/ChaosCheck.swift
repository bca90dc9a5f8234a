import ArgumentParser
import Foundation
import SagaEngine
import SagaServices

struct ChaosCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Wait for every accepted saga of a chaos run, then check every invariant; exit 1 on a violation.",
        discussion: """
            Reads the orders (--ledger) and poison records (--poison) of the run and the whole database of the \
            run's schemas (SAGA_TOPIC_PREFIX): every order there must be the run's. Checks, again and again until \
            all hold or --timeout: every accepted order terminal and as expected; no refused order stored and no \
            order the clients did not place; every reservation settled as its saga ended; stock conserved and \
            units sold = units confirmed; each confirmed order charged once and no other; credit used = charges; \
            one payment.completed per confirmed order; every outbox drained, nothing parked; the tracker agrees \
            with the orders table; every poison record dead-lettered once by each consumer, nothing else \
            dead-lettered; every order answered, no ambiguous 5xx.
            """)

    @Option(help: "The orders ledger (saga chaos load / probe).") var ledger: String
    @Option(help: "The poison records (saga chaos poison).") var poison: String?
    @Option(help: "Seconds to wait for the invariants to hold.") var timeout = 180

    struct Check {
        var name: String
        var ok: Bool
        var detail: String
        /// Which point of issue 10 a failure of this check points to, when one does.
        var hint: String = ""
        /// Whether waiting can make it hold (false: it judges only what the clients saw).
        var settles = true
    }

    func run() async throws {
        let runtime = try Runtime.start("saga.chaos")
        let env = runtime.env
        let entries = try ChaosLedger.read(ledger)
        let letters: [PoisonRecord] = try poison.map { try readLines($0) } ?? []
        let pools = (Stack.services + ["tracker"]).map {
            PostgresPool(configuration: env.database($0).configuration, size: 1, logger: runtime.logger)
        }
        let snapshot = Snapshot(entries: entries, letters: letters)
        let deadline = ContinuousClock.now + .seconds(timeout)
        var checks: [Check] = []
        let started = ContinuousClock.now
        while true {
            do {
                checks = try await snapshot.evaluate(
                    orders: pools[0], inventory: pools[1], billing: pools[2], tracker: pools[3])
            } catch {
                // PostgreSQL may still be recovering from the last crash: try again until the deadline.
                checks = [Check(name: "the databases answer", ok: false, detail: "\(error)")]
            }
            if checks.allSatisfy({ $0.ok || !$0.settles }) || ContinuousClock.now >= deadline { break }
            try await Task.sleep(for: .seconds(1))
        }
        for p in pools { await p.close() }
        let waited = (ContinuousClock.now - started).components.seconds
        print(snapshot.summary)
        print("checked after \(waited) s of waiting:")
        for c in checks {
            print("\(c.ok ? "✓" : "✗") \(c.name)\(c.detail.isEmpty ? "" : ": \(c.detail)")")
            if !c.ok && !c.hint.isEmpty { print("    \(c.hint)") }
        }
        let failed = checks.filter { !$0.ok }.count
        guard failed == 0 else {
            print("\(failed) of \(checks.count) invariants violated")
            throw ExitCode(1)
        }
        print("all \(checks.count) invariants hold")
    }

    /// What the run placed and sent, and the checks against the databases.
    struct Snapshot: Sendable {
        let accepted: [ChaosLedger]
        let refused: [ChaosLedger]
        let unanswered: [ChaosLedger]
        /// Bare 5xx answers for orders one of those requests had stored, and the orders they were for.
        let ambiguous: Int
        let ambiguousOrders: Int
        let letters: [PoisonRecord]
        let summary: String

        init(entries: [ChaosLedger], letters: [PoisonRecord]) {
            accepted = entries.filter { $0.answer == "accepted" }
            refused = entries.filter { $0.answer == "refused" }
            unanswered = entries.filter { $0.answer == "unanswered" }
            ambiguous = entries.reduce(0) { $0 + $1.ambiguous }
            ambiguousOrders = entries.filter { $0.ambiguous > 0 }.count
            self.letters = letters
            var byOutcome: [String: Int] = [:]
            for e in accepted { byOutcome[e.expected, default: 0] += 1 }
            let retried = entries.filter { $0.attempts > 1 }.count
            let serverErrors = entries.reduce(0) { $0 + $1.serverErrors }
            let transportErrors = entries.reduce(0) { $0 + $1.transportErrors }
            let kinds = Set(letters.map(\.kind)).count
            summary = """
                orders: \(entries.count) placed (\(entries.filter(\.probe).count) probes): \(accepted.count) accepted \
                (\(byOutcome.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))), \
                \(refused.count) refused, \(unanswered.count) unanswered
                API: \(retried) orders needed retries (\(serverErrors) 5xx answers, \(transportErrors) refused or \
                dropped connections), all with one Idempotency-Key each
                poison: \(letters.count) records of \(kinds) kinds, \
                \(letters.reduce(0) { $0 + $1.consumers.count }) dead letters expected
                """
        }

        func evaluate(orders: PostgresPool, inventory: PostgresPool, billing: PostgresPool, tracker: PostgresPool)
            async throws -> [Check]
        {
            var checks: [Check] = []
            let ids = accepted.compactMap(\.orderId)
            let expected = Dictionary(
                accepted.compactMap { e in e.orderId.map { ($0, e) } }, uniquingKeysWith: { a, _ in a })

            // Every order in the table, as it stands.
            var stored: [String: (status: String, reason: String?, key: String?)] = [:]
            for r in try await orders.query("SELECT id::text AS id, status, reason, idempotency_key FROM orders") {
                stored[try r.decode("id")] = (
                    try r.decode("status"), try r.decode("reason", as: String?.self),
                    try r.decode("idempotency_key", as: String?.self)
                )
            }
            let running = ids.filter { stored[$0].map { !SagaChecks.isTerminal(status: $0.status) } ?? true }
            checks.append(
                Check(
                    name: "every accepted order reached a terminal state (\(ids.count))", ok: running.isEmpty,
                    detail: running.isEmpty
                        ? ""
                        : "\(running.count) not: \(running.prefix(3).map { "\($0) \(stored[$0]?.status ?? "missing")" })",
                    hint: "a stalled worker (a poison message retried forever: issue 10 point 1) or relay (point 2)? "
                        + "see the daemons' logs"))
            let wrong = ids.filter { id in
                guard let s = stored[id], SagaChecks.isTerminal(status: s.status) else { return false }
                return SagaChecks.outcome(status: s.status, reason: s.reason) != expected[id]?.expected
            }
            checks.append(
                Check(
                    name: "every finished order ended as expected", ok: wrong.isEmpty,
                    detail: wrong.prefix(3).map {
                        "\($0): \(SagaChecks.outcome(status: stored[$0]!.status, reason: stored[$0]!.reason)), "
                            + "expected \(expected[$0]!.expected)"
                    }.joined(separator: "; ")))
            let refusedKeys = Set(refused.map(\.key))
            let unansweredKeys = Set(unanswered.map(\.key))
            let known = Set(ids)
            let foreign = stored.filter { !known.contains($0.key) }
            let refusedStored = foreign.filter { $0.value.key.map(refusedKeys.contains) ?? false }
            let unansweredStored = foreign.filter { $0.value.key.map(unansweredKeys.contains) ?? false }
            let phantoms = foreign.count - refusedStored.count - unansweredStored.count
            checks.append(
                Check(
                    name: "no refused order stored (\(refused.count) refused), no order nobody placed",
                    ok: refusedStored.isEmpty && phantoms == 0,
                    detail: refusedStored.isEmpty && phantoms == 0
                        ? "" : "\(refusedStored.count) refused orders stored, \(phantoms) orders nobody placed"))
            checks.append(
                Check(
                    name: "every order answered: accepted or refused, no ambiguous 5xx",
                    ok: unanswered.isEmpty && ambiguous == 0,
                    detail: unanswered.isEmpty && ambiguous == 0
                        ? ""
                        : "\(unanswered.count) never answered (\(unansweredStored.count) of them stored), "
                            + "\(ambiguousOrders) orders answered a bare 5xx (\(ambiguous) times) by requests of which "
                            + "one had stored them",
                    hint: "the API answered 5xx for an order it stored: issue 10 point 6", settles: false))

            // Inventory: every reservation settled, stock conserved, units sold = units confirmed.
            let reservations = try await SagaChecks.reservations(inventory, ids: ids)
            let unsettled = ids.filter { id in
                !SagaChecks.isSettled(reservation: reservations[id], outcome: expected[id]?.expected ?? "")
            }
            checks.append(
                Check(
                    name: "every reservation settled as its saga ended (sold, rejected or released)",
                    ok: unsettled.isEmpty,
                    detail: unsettled.prefix(3).map { "\($0): \(reservations[$0] ?? "none")" }.joined(separator: "; ")))
            let stock = try await SagaChecks.stock(inventory)
            let seeded = ChaosPlan.seeded
            let unconserved = SagaChecks.unconserved(stock, seeded: seeded)
            let missing = seeded.keys.filter { stock[$0] == nil }
            var soldExpected: [String: Int] = [:]
            for e in accepted where e.expected == "CONFIRMED" {
                for l in e.lines { soldExpected[l.sku, default: 0] += l.quantity }
            }
            let soldWrong = seeded.keys.sorted().filter { (stock[$0]?.sold ?? -1) != (soldExpected[$0] ?? 0) }
            let reservedLeft = stock.filter { $0.value.reserved != 0 }.keys.sorted()
            checks.append(
                Check(
                    name: "stock conserved (available + reserved + sold = seeded), nothing left reserved",
                    ok: unconserved.isEmpty && missing.isEmpty && reservedLeft.isEmpty,
                    detail: unconserved.isEmpty && missing.isEmpty && reservedLeft.isEmpty
                        ? "" : "unconserved \(unconserved), missing \(missing.sorted()), reserved \(reservedLeft)"))
            checks.append(
                Check(
                    name: "units sold = units in confirmed orders (\(soldExpected.values.reduce(0, +)))",
                    ok: soldWrong.isEmpty,
                    detail: soldWrong.map { "\($0): sold \(stock[$0]?.sold ?? -1), expected \(soldExpected[$0] ?? 0)" }
                        .joined(separator: "; ")))

            // Billing: charged once, credit = charges.
            let charged = try await SagaChecks.charged(billing, ids: ids)
            let badCharges = ids.filter { (charged[$0] ?? 0) != (expected[$0]?.expected == "CONFIRMED" ? 1 : 0) }
            let allCharges: Int =
                try await billing.query("SELECT count(*) AS n FROM charges WHERE status = 'CHARGED'").first?.decode("n")
                ?? -1
            let confirmed = ids.filter { expected[$0]?.expected == "CONFIRMED" }.count
            checks.append(
                Check(
                    name: "each confirmed order charged exactly once, no other order charged",
                    ok: badCharges.isEmpty && allCharges == confirmed,
                    detail: badCharges.isEmpty && allCharges == confirmed
                        ? ""
                        : "\(badCharges.count) orders charged wrongly (e.g. \(badCharges.prefix(3))), "
                            + "\(allCharges) charges for \(confirmed) confirmed orders"))
            let customers = ChaosPlan.catalogue.customers.map(\.id)
            let balances = try await SagaChecks.balances(billing, customers: customers)
            let unbalanced = balances.filter { $0.used != $0.charged }
            checks.append(
                Check(
                    name: "credit used = sum of charges, per customer",
                    ok: unbalanced.isEmpty && balances.count == customers.count,
                    detail: unbalanced.map { "\($0.customer): used \($0.used), charged \($0.charged)" }
                        .joined(separator: "; ")))
            let completions = try await SagaChecks.handled(orders, type: PaymentCompleted.eventType, ids: ids)
            checks.append(
                Check(
                    name: "one payment.completed handled per confirmed order", ok: completions == confirmed,
                    detail: completions == confirmed ? "" : "\(completions) for \(confirmed)"))

            // Outboxes: drained, nothing parked.
            var pending = 0
            var parked = 0
            for pool in [orders, inventory, billing] {
                let r = try await pool.query(
                    "SELECT count(*) AS n, count(*) FILTER (WHERE failed_at IS NOT NULL) AS parked FROM saga_outbox")
                pending += try r.first?.decode("n", as: Int.self) ?? 0
                parked += try r.first?.decode("parked", as: Int.self) ?? 0
            }
            checks.append(
                Check(
                    name: "every outbox drained", ok: pending == 0, detail: pending == 0 ? "" : "\(pending) rows left",
                    hint: "a relay stalled behind failing rows? issue 10 point 2"))
            checks.append(
                Check(
                    name: "no outbox row parked", ok: parked == 0, detail: parked == 0 ? "" : "\(parked) rows parked",
                    hint: "the broker refused rows for good: see the relays' logs (issue 10 points 2, 3)"))

            // The tracker agrees with the orders table.
            var tracked: [String: (status: String, outcome: String?)] = [:]
            for r in try await tracker.query(
                "SELECT saga_id, status, outcome FROM tracker_sagas WHERE saga_id = ANY($1::text[])",
                [PostgresArray(ids)])
            {
                tracked[try r.decode("saga_id")] = (try r.decode("status"), try r.decode("outcome", as: String?.self))
            }
            let disagree = ids.filter { id in
                guard let s = stored[id] else { return true }
                let want =
                    SagaChecks.isTerminal(status: s.status)
                    ? SagaChecks.trackerOutcome(SagaChecks.outcome(status: s.status, reason: s.reason)) : nil
                return tracked[id]?.outcome != want
            }
            checks.append(
                Check(
                    name: "the tracker agrees with the orders table", ok: disagree.isEmpty,
                    detail: disagree.isEmpty
                        ? ""
                        : "\(disagree.count) sagas differ, e.g. "
                            + disagree.prefix(3).map {
                                "\($0): tracker \(tracked[$0].map { "\($0.status) \($0.outcome ?? "-")" } ?? "none"), "
                                    + "orders \(stored[$0]?.status ?? "none")"
                            }.joined(separator: "; "),
                    hint: "the tracker stalled or stopped? see its log (issue 10 points 1, 4)"))

            // Poison: dead-lettered once by each consumer, and nothing else dead-lettered.
            struct Position: Hashable {
                var consumer: String
                var topic: String
                var partition: Int
                var offset: Int64
            }
            var kinds: [String: String] = [:]
            for l in letters { kinds["\(l.topic)|\(l.partition)|\(l.offset)"] = l.kind }
            var wanted = Set<Position>()
            for l in letters {
                for c in l.consumers {
                    wanted.insert(Position(consumer: c, topic: l.topic, partition: Int(l.partition), offset: l.offset))
                }
            }
            var lettered: [Position: Int] = [:]
            for (service, pool) in zip(Stack.services, [orders, inventory, billing]) {
                for r in try await pool.query(
                    "SELECT source_topic, source_partition, source_offset FROM saga_dead_letters")
                {
                    lettered[
                        Position(
                            consumer: service, topic: try r.decode("source_topic"),
                            partition: try r.decode("source_partition"), offset: try r.decode("source_offset")),
                        default: 0] += 1
                }
            }
            let notLettered = wanted.filter { lettered[$0] == nil }
            let twice = lettered.filter { $0.value > 1 }.count
            let unexpected = lettered.keys.filter { !wanted.contains($0) }
            checks.append(
                Check(
                    name: "every poison record dead-lettered once by each consumer (\(wanted.count))",
                    ok: notLettered.isEmpty && twice == 0,
                    detail: notLettered.isEmpty && twice == 0
                        ? ""
                        : "\(notLettered.count) not dead-lettered (kinds: "
                            + Set(
                                notLettered.compactMap { p in
                                    kinds["\(p.topic)|\(p.partition)|\(p.offset)"]
                                }
                            ).sorted().joined(separator: ", ") + "), \(twice) twice",
                    hint: "a poison message that cannot be dead-lettered stalls its worker: issue 10 point 1"))
            checks.append(
                Check(
                    name: "nothing dead-lettered that is not poison", ok: unexpected.isEmpty,
                    detail: unexpected.prefix(3).map { "\($0.consumer): \($0.topic)[\($0.partition)]@\($0.offset)" }
                        .joined(separator: "; ")))
            var tracked2 = Set<Position>()
            for r in try await tracker.query(
                """
                SELECT consumer, source_topic, source_partition, source_offset FROM tracker_dead_letters
                WHERE consumer IS NOT NULL AND source_topic IS NOT NULL AND source_partition IS NOT NULL
                    AND source_offset IS NOT NULL
                """)
            {
                tracked2.insert(
                    Position(
                        consumer: try r.decode("consumer"), topic: try r.decode("source_topic"),
                        partition: try r.decode("source_partition"), offset: try r.decode("source_offset")))
            }
            let untracked = wanted.filter { !tracked2.contains($0) }
            checks.append(
                Check(
                    name: "the tracker recorded every dead letter", ok: untracked.isEmpty,
                    detail: untracked.isEmpty
                        ? ""
                        : "\(untracked.count) of \(wanted.count) missing (kinds: "
                            + Set(untracked.compactMap { p in kinds["\(p.topic)|\(p.partition)|\(p.offset)"] })
                            .sorted().joined(separator: ", ") + ")",
                    hint: "the tracker skipped or stalls on dead letters it cannot store: issue 10 point 1"))
            return checks
        }
    }
}
