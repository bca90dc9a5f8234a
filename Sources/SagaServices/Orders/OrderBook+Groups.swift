import Foundation
import SagaEngine
import Synchronization

/// The placements that arrived while a group was being stored: the next group takes them all (group commit).
final class PlacementQueue: Sendable {
    /// A placement waiting for its group.
    struct Waiting: Sendable {
        var placement: OrderBook.Placement
        var continuation: CheckedContinuation<OrderBook.Placed, any Error>
    }
    private struct State {
        var waiting: [Waiting] = []
        var storing = false
        var stats = Stats()
    }
    /// How many groups were stored, of how many placements in all.
    struct Stats: Sendable, Hashable {
        var groups = 0
        var placements = 0
    }
    /// The groups stored so far (tests).
    var stats: Stats { state.withLock { $0.stats } }
    private let state = Mutex(State())
    /// Most placements in one group.
    let maxGroup: Int

    init(maxGroup: Int) { self.maxGroup = maxGroup }

    /// Claims the right to store a group when none is being stored (the caller stores its own placement at once,
    /// then calls ``handOff()``); false when one is: then the caller ``wait(_:)``s.
    func claim() -> Bool {
        state.withLock { s in
            guard !s.storing else { return false }
            s.storing = true
            s.stats.groups += 1
            s.stats.placements += 1
            return true
        }
    }

    /// Queues `waiting` for the next group; true when no group is being stored any more and the caller must
    /// start storing them (``next()``) itself.
    func wait(_ waiting: Waiting) -> Bool {
        state.withLock { s in
            s.waiting.append(waiting)
            guard !s.storing else { return false }
            s.storing = true
            return true
        }
    }

    /// After a group was stored: true when placements are waiting and the caller must store them (``next()``);
    /// false when none is: the queue is idle again.
    func handOff() -> Bool {
        state.withLock { s in
            s.storing = !s.waiting.isEmpty
            return s.storing
        }
    }

    /// The next group: the waiting placements in their order, up to ``maxGroup``, never two keyed ones of one
    /// customer and key (the later one waits for the next group, whose read then finds the first one's order).
    /// Empty when none waits: the queue is idle again.
    func next() -> [Waiting] {
        state.withLock { s in
            var group: [Waiting] = []
            var rest: [Waiting] = []
            var keys = Set<[String]>()
            for w in s.waiting {
                if group.count < maxGroup, w.placement.keyScope.map({ keys.insert($0).inserted }) ?? true {
                    group.append(w)
                } else {
                    rest.append(w)
                }
            }
            s.waiting = rest
            s.storing = !group.isEmpty
            if !group.isEmpty {
                s.stats.groups += 1
                s.stats.placements += group.count
            }
            return group
        }
    }
}

extension OrderBook {
    /// One request to place an order.
    struct Placement: Sendable {
        var request: OrderRequest
        var idempotencyKey: String?
        var traceparent: String?
        /// The current span's traceparent in the request's task (nil without a tracer), taken there: the group may be
        /// stored in another task, and the order's events continue the request's span.
        var currentSpan: String? = TraceParent.current()

        /// The customer and the key, for a keyed request: two of them must not share a group.
        var keyScope: [String]? { idempotencyKey.map { [request.customerId, $0] } }
    }

    /// Stores `placement` now when no group is being stored, else with the next group, which holds every placement
    /// that arrived meanwhile (see ``place(_:idempotencyKey:traceparent:)``).
    func enqueue(_ placement: Placement) async throws -> Placed {
        if queue.claim() {
            let result = await store([placement])[0]
            if queue.handOff() { startStoringWaiting() }
            return try result.get()
        }
        return try await withCheckedThrowingContinuation { continuation in
            if queue.wait(.init(placement: placement, continuation: continuation)) { startStoringWaiting() }
        }
    }

    /// Stores the waiting placements group after group, in a task of its own, until none waits.
    private func startStoringWaiting() {
        Task {
            while true {
                let group = queue.next()
                if group.isEmpty { return }
                for (waiting, result) in zip(group, await store(group.map(\.placement))) {
                    waiting.continuation.resume(with: result)
                }
            }
        }
    }

    /// Stores a group: one read for all (prices and keys), then one statement writing every order that is new.
    /// When the database refuses the group, each placement is stored alone, so that only the refused ones fail.
    func store(_ group: [Placement]) async -> [Result<Placed, any Error>] {
        do {
            return try await storeTogether(group)
        } catch let error as PostgresError where group.count > 1 && !Self.sessionLost(error) {
            var results: [Result<Placed, any Error>] = []
            for placement in group { results += await store([placement]) }
            return results
        } catch {
            return group.map { _ in .failure(error) }
        }
    }

    /// A placement ready to be written: the new order and its rows.
    private struct Prepared {
        var placement: Placement
        var index: Int
        var id: UUID
        var total: Int64
        var lines: [OrderCreatedV2.Line]
        var fingerprint: String?
        var event: OutgoingEvent
        var outbox: Outbox.Row
        var deadline: Deadline.Row?
    }

    private func storeTogether(_ group: [Placement]) async throws -> [Result<Placed, any Error>] {
        let read = try await readPricesAndKeys(group)
        var results = [Result<Placed, any Error>?](repeating: nil, count: group.count)
        var prepared: [Prepared] = []
        for (i, placement) in group.enumerated() {
            do {
                let key = read.keys[i]
                if let existing = key?.existing {
                    try Self.checkSameRequest(key?.existingFingerprint, key?.fingerprint)
                    results[i] = .success(Placed(orderId: existing, created: false))
                } else {
                    prepared.append(
                        try prepare(placement, index: i, prices: read.prices, fingerprint: key?.fingerprint))
                }
            } catch {
                results[i] = .failure(error)
            }
        }
        guard !prepared.isEmpty else { return results.map { $0! } }
        let inserted: Set<UUID>
        do {
            inserted = try await write(prepared)
        } catch let error as PostgresError {
            throw error  // the database refused the group: `store(_:)` stores each alone
        } catch {
            // Not stored, or not known whether: each prepared placement says so of its own order.
            for p in prepared {
                let unknown = (error as? OrderOutcomeUnknown).map {
                    OrderOutcomeUnknown(orderId: p.id, reason: $0.reason)
                }
                results[p.index] = .failure(unknown ?? error)
            }
            return results.map { $0! }
        }
        for p in prepared {
            do {
                results[p.index] =
                    inserted.contains(p.id)
                    ? .success(Placed(orderId: p.id, created: true, event: p.event.envelope, deadline: p.deadline?.due))
                    : .success(try await firstOrder(of: p.placement, p.fingerprint))
            } catch {
                results[p.index] = .failure(error)
            }
        }
        let scheduled = prepared.filter { $0.deadline != nil && inserted.contains($0.id) }.count
        DeadlineMetrics.recordScheduled(service: OrdersService.name, count: scheduled)
        if !inserted.isEmpty { relayDatabase?.outboxCommitted() }
        return results.map { $0! }
    }

    /// What a keyed placement's read found: the key's order, if any, and the request's fingerprint.
    private struct KeyRead {
        var existing: UUID?
        var existingFingerprint: String?
        var fingerprint: String?
    }

    /// One read for the group: the unit price of each (currency, SKU) it names, and for each keyed placement the
    /// key's order and fingerprint (if any) and the fingerprint of the request (its canonical form's SHA-256).
    private func readPricesAndKeys(_ group: [Placement]) async throws -> (
        prices: [[String]: Int64], keys: [KeyRead?]
    ) {
        var pairs = Set<[String]>()
        for p in group { for line in p.request.lines { pairs.insert([p.request.currency, line.sku]) } }
        let pairList = Array(pairs)
        let keyed = group.indices.filter { group[$0].idempotencyKey != nil }
        let rows: [PostgresRow]
        do {
            rows = try await pool.query(
                """
                SELECT NULL::bigint AS i, p.currency, p.sku, p.unit_price, NULL::uuid AS existing,
                    NULL::text AS existing_fingerprint, NULL::text AS fingerprint
                FROM unnest($1::text[], $2::text[]) AS w(currency, sku)
                JOIN prices p ON p.currency = w.currency AND p.sku = w.sku
                UNION ALL
                SELECT r.i, NULL, NULL, NULL, k.id, k.request_fingerprint,
                    encode(sha256(convert_to(r.canonical, 'UTF8')), 'hex')
                FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS r(customer_id, key, canonical, i)
                LEFT JOIN orders k ON k.customer_id = r.customer_id AND k.idempotency_key = r.key
                """,
                [
                    PostgresArray(pairList.map { $0[0] }), PostgresArray(pairList.map { $0[1] }),
                    PostgresArray(keyed.map { group[$0].request.customerId }),
                    PostgresArray(keyed.map { group[$0].idempotencyKey ?? "" }),
                    PostgresArray(keyed.map { group[$0].request.canonical }),
                ])
        } catch let error as PostgresError where Self.sessionLost(error) {
            throw OrderNotStored(reason: "\(error)")  // only read so far
        }
        var prices: [[String]: Int64] = [:]
        var keys = [KeyRead?](repeating: nil, count: group.count)
        for row in rows {
            if let i = try row.decode("i", as: Int?.self) {
                keys[keyed[i - 1]] = KeyRead(
                    existing: try row.decode("existing", as: UUID?.self),
                    existingFingerprint: try row.decode("existing_fingerprint", as: String?.self),
                    fingerprint: try row.decode("fingerprint", as: String?.self))
            } else {
                prices[[try row.decode("currency"), try row.decode("sku")]] = try row.decode("unit_price")
            }
        }
        return (prices, keys)
    }

    /// Prices `placement`'s lines and builds its order's event, outbox row and deadline.
    /// - Throws: `OrderRequestError` for an unknown SKU or an overflowing total; `EventEncodingError`.
    private func prepare(_ placement: Placement, index: Int, prices: [[String]: Int64], fingerprint: String?) throws
        -> Prepared
    {
        let request = placement.request
        var total: Int64 = 0
        var lines: [OrderCreatedV2.Line] = []
        for (i, line) in request.lines.enumerated() {
            guard let price = prices[[request.currency, line.sku]] else {
                throw OrderRequestError("lines[\(i)].sku: unknown SKU '\(line.sku)' (no price in \(request.currency))")
            }
            let (lineTotal, o1) = price.multipliedReportingOverflow(by: Int64(line.quantity))
            let (sum, o2) = total.addingReportingOverflow(lineTotal)
            guard !o1, !o2 else { throw OrderRequestError("the order total is too large") }
            total = sum
            lines.append(
                .init(
                    sku: line.sku, quantity: line.quantity, unitPrice: Money(amount: price, currency: request.currency))
            )
        }
        let id = UUID.timeOrdered()
        let created = OrderCreatedV2(
            orderId: id.lowercasedString, customerId: request.customerId,
            total: Money(amount: total, currency: request.currency), lines: lines)
        let sagaId = created.orderId
        // As `TraceParent.forEmitting(after:)` would give in the request's task (this may be another).
        let trace = placement.currentSpan ?? TraceParent.child(of: placement.traceparent)
        let event =
            emitVersion == 1
            ? try OutgoingEvent(
                created.v1, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
            : try OutgoingEvent(
                created, sagaId: sagaId, producer: OrdersService.name, causedBy: nil, traceparent: trace)
        // The deadline: one due time (milliseconds, as the header carries it) for the order and saga_deadlines.
        let timeoutMs: Int64? =
            request.deadlineSeconds.map { Int64($0) * 1000 } ?? deadline.map { Int64($0.milliseconds) }
        var deadlineRow: Deadline.Row? = nil
        var outboxRow = try Outbox.Row(event, codec: codec)
        if let timeoutMs {
            let now = (Date().timeIntervalSince1970 * 1000).rounded()
            let due = Date(timeIntervalSince1970: (now + Double(timeoutMs)) / 1000)
            let expired = try OutgoingEvent(
                OrderExpired(
                    orderId: sagaId, customerId: request.customerId, dueAt: Timestamp.format(due),
                    timeoutSeconds: max(1, Int((timeoutMs + 999) / 1000))),
                sagaId: sagaId, producer: OrdersService.name, causedBy: event.envelope,
                traceparent: placement.currentSpan ?? TraceParent.child(of: trace))
            let row = try Deadline.Row(name: OrdersService.deadlineName, due: due, event: expired, codec: codec)
            outboxRow.message.headers.append(row.scheduledMark(participant: OrdersService.name).header)
            deadlineRow = row
        }
        return Prepared(
            placement: placement, index: index, id: id, total: total, lines: lines, fingerprint: fingerprint,
            event: event, outbox: outboxRow, deadline: deadlineRow)
    }

    /// Writes the prepared orders, their lines, history, events and deadlines in one statement (a data-modifying
    /// `WITH`, which commits as one transaction); returns the ids of the orders it inserted. A keyed order whose key
    /// a concurrent request used meanwhile is not inserted, and nothing of it is written (every member joins
    /// `placed`).
    private func write(_ prepared: [Prepared]) async throws -> Set<UUID> {
        let lines = prepared.flatMap { p in
            p.lines.enumerated().map { (order: p.id, number: $0.offset, line: $0.element) }
        }
        let outbox = Outbox.insert(
            rows: prepared.map(\.outbox), firstParameter: 15, where: "m.saga_id IN (SELECT id::text FROM placed)")
        let deadlines = prepared.compactMap(\.deadline)
        let deadlineMember =
            deadlines.isEmpty
            ? nil
            : Deadline.insert(
                rows: deadlines, firstParameter: 15 + outbox.binds.count,
                where: "d.saga_id IN (SELECT id::text FROM placed)")
        let requests = prepared.map(\.placement)
        var backend: Int32?
        do {
            let rows = try await pool.withConnection { connection in
                backend = connection.backendPID
                let rows = try await connection.query(
                    """
                    WITH placed AS (
                        INSERT INTO orders (id, customer_id, currency, total_amount, status, idempotency_key,
                            request_fingerprint, deadline_at)
                        SELECT o.id, o.customer_id, o.currency, o.total_amount, 'PENDING', NULLIF(o.key, ''),
                            NULLIF(o.fingerprint, ''), NULLIF(o.deadline_at, '')::timestamptz
                        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                    $7::text[]) AS o(id, customer_id, currency, total_amount, key, fingerprint,
                                                     deadline_at)
                        ON CONFLICT (customer_id, idempotency_key) DO NOTHING
                        RETURNING id
                    ), lines AS (
                        INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
                        SELECT l.order_id, l.line_no, l.sku, l.quantity, l.unit_price
                        FROM unnest($8::uuid[], $9::int[], $10::text[], $11::int[], $12::bigint[])
                            AS l(order_id, line_no, sku, quantity, unit_price)
                        JOIN placed ON placed.id = l.order_id
                    ), history AS (
                        INSERT INTO order_history (order_id, status, event_type, event_id)
                        SELECT h.order_id, 'PENDING', h.event_type, h.event_id
                        FROM unnest($1::uuid[], $13::text[], $14::uuid[]) AS h(order_id, event_type, event_id)
                        JOIN placed ON placed.id = h.order_id
                    ), event AS (
                        \(outbox.sql)
                    )\(deadlineMember.map { ", deadline AS (\n\($0.sql)\n)" } ?? "")
                    SELECT id FROM placed
                    """,
                    [
                        PostgresArray(prepared.map(\.id)), PostgresArray(requests.map(\.request.customerId)),
                        PostgresArray(requests.map(\.request.currency)), PostgresArray(prepared.map(\.total)),
                        PostgresArray(requests.map { $0.idempotencyKey ?? "" }),
                        PostgresArray(prepared.map { $0.fingerprint ?? "" }),
                        PostgresArray(prepared.map { $0.deadline?.due.postgresText ?? "" }),
                        PostgresArray(lines.map { $0.order }), PostgresArray(lines.map { $0.number }),
                        PostgresArray(lines.map { $0.line.sku }), PostgresArray(lines.map { $0.line.quantity }),
                        PostgresArray(lines.map { $0.line.unitPrice?.amount ?? 0 }),
                        PostgresArray(prepared.map(\.event.envelope.type)),
                        PostgresArray(prepared.map(\.event.envelope.id)),
                    ] + outbox.binds + (deadlineMember?.binds ?? []))
                if failpoint == .sessionLostAfterCommit {
                    throw PostgresError(kind: .connection, message: "failpoint: the session was lost after the commit")
                }
                return rows
            }
            return Set(try rows.map { try $0.decode("id", as: UUID.self) })
        } catch let error as PostgresError where Self.sessionLost(error) {
            // No session was had: nothing was sent.
            guard let backend else { throw OrderNotStored(reason: "\(error)") }
            // The statement is its own transaction: it committed or not, and the answer was lost. Find out which.
            let stored = try await stored(prepared.map(\.id), lostSession: backend)
            guard !stored.isEmpty else { throw OrderNotStored(reason: "\(error)") }
            return stored
        }
    }

    /// The order a concurrent request with the same key placed, when it is the same request.
    private func firstOrder(of placement: Placement, _ fingerprint: String?) async throws -> Placed {
        let first = try await pool.query(
            "SELECT id, request_fingerprint FROM orders WHERE customer_id = $1 AND idempotency_key = $2",
            [placement.request.customerId, placement.idempotencyKey])
        guard let row = first.first else {
            throw OrderNotStored(reason: "the order was not inserted, and its idempotency key has no order")
        }
        try Self.checkSameRequest(try row.decode("request_fingerprint"), fingerprint)
        return Placed(orderId: try row.decode("id"), created: false)
    }
}
