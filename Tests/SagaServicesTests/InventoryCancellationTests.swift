import Foundation
import SagaKafka
import SagaServices
import Testing

@testable import SagaEngine

/// Inventory on `order.cancelled` (real PostgreSQL, a worker fed crafted messages in a chosen order): it releases
/// what it reserved or sold for the order, leaves a tombstone when the cancellation comes first, and does nothing
/// twice.
@Suite(.serialized) struct InventoryCancellationTests {
    struct Fixture {
        let harness: ServiceHarness
        let worker: Worker

        init() async throws {
            harness = try await ServiceHarness(InventoryService.definition())
            try await harness.execute(
                "INSERT INTO stock (sku, available) VALUES ('widget', 100), ('gadget', 50), ('gizmo', 1)")
            worker = try harness.worker()
        }

        func created(_ id: String, _ lines: [(String, Int)], customer: String = "alice") throws -> KafkaMessage {
            let total = Int64(lines.reduce(0) { $0 + $1.1 }) * 1000
            return try harness.message(
                OrderCreatedV2(
                    orderId: id, customerId: customer, total: Money(amount: total, currency: "EUR"),
                    lines: lines.map {
                        .init(sku: $0.0, quantity: $0.1, unitPrice: Money(amount: 1000, currency: "EUR"))
                    }),
                saga: id, producer: "orders")
        }

        func cancelled(_ id: String, _ reason: OrderCancelled.Reason = .timeout) throws -> KafkaMessage {
            try harness.message(
                OrderCancelled(orderId: id, customerId: "alice", reason: reason, detail: "no outcome in time"),
                saga: id, producer: "orders")
        }

        func completed(_ id: String) throws -> KafkaMessage {
            try harness.message(
                PaymentCompleted(
                    orderId: id, customerId: "alice", paymentId: UUID().uuidString.lowercased(),
                    amount: Money(amount: 2000, currency: "EUR")),
                saga: id, producer: "billing")
        }

        func failed(_ id: String) throws -> KafkaMessage {
            try harness.message(
                PaymentFailed(
                    orderId: id, customerId: "alice", reason: .insufficientCredit,
                    amount: Money(amount: 2000, currency: "EUR")),
                saga: id, producer: "billing")
        }

        /// Processes `batch` as one consumed batch and checks it committed.
        func process(_ batch: [KafkaMessage], by worker: Worker? = nil, pool: PostgresPool? = nil) async {
            #expect(await (worker ?? self.worker).process(batch, pool: pool ?? harness.pool))
        }

        func status(_ id: String) async throws -> String? {
            try await harness.query("SELECT status FROM reservations WHERE order_id = $1::uuid", [id]).first?.decode(
                "status")
        }

        /// `available/reserved/sold` of a SKU.
        func stock(_ sku: String) async throws -> String {
            let row = try #require(
                try await harness.query("SELECT available, reserved, sold FROM stock WHERE sku = $1", [sku]).first)
            return "\(try row.decode("available", as: Int.self))/\(try row.decode("reserved", as: Int.self))/"
                + "\(try row.decode("sold", as: Int.self))"
        }

        /// The types the worker emitted for order `id`, in order.
        func emitted(_ id: String) async throws -> [String] {
            try await harness.outbox().filter { $0.sagaId == id }.map(\.type)
        }
    }

    static func newId() -> String { UUID().uuidString.lowercased() }

    @Test func cancelledBeforeCreatedLeavesATombstoneAndReservesNothing() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.cancelled(id)])
        #expect(try await f.status(id) == "CANCELLED")
        let tombstone = try #require(
            try await f.harness.query(
                """
                SELECT customer_id, total_amount, currency,
                       (SELECT count(*) FROM reservation_lines l WHERE l.order_id = r.order_id)::int AS lines
                FROM reservations r WHERE order_id = $1::uuid
                """, [id]
            ).first)
        #expect(try tombstone.decode("customer_id", as: String.self) == "alice")
        #expect(try tombstone.decode("total_amount", as: Int64?.self) == nil)
        #expect(try tombstone.decode("currency", as: String?.self) == nil)
        #expect(try tombstone.decode("lines", as: Int.self) == 0)
        // The late order: already decided, nothing reserved, nothing emitted.
        await f.process([try f.created(id, [("widget", 2)])])
        #expect(try await f.status(id) == "CANCELLED")
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.emitted(id) == [])
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func cancelledWhileReservedReleasesTheStock() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.created(id, [("widget", 2), ("gadget", 1)])])
        #expect(try await f.status(id) == "RESERVED")
        #expect(try await f.stock("widget") == "98/2/0")
        let cancel = try f.cancelled(id)
        await f.process([cancel])
        #expect(try await f.status(id) == "RELEASED")
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.stock("gadget") == "50/0/0")
        #expect(try await f.emitted(id) == ["inventory.reserved", "inventory.released"])
        let released = try #require(try await f.harness.outbox(InventoryReleased.eventType).first)
        let data = try released.data.decode(InventoryReleased.self)
        #expect(data.reason == "order cancelled: timeout")
        #expect(data.lines == [OrderLine(sku: "gadget", quantity: 1), OrderLine(sku: "widget", quantity: 2)])
        #expect(released.causationId.map { $0.uuidString.lowercased() } == cancel.header(SagaHeader.eventId))
        await f.harness.tearDown()
    }

    @Test func cancelledAfterTheSaleReleasesIt() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.created(id, [("widget", 3)])])
        await f.process([try f.completed(id)])
        #expect(try await f.status(id) == "SOLD")
        #expect(try await f.stock("widget") == "97/0/3")
        await f.process([try f.cancelled(id)])
        #expect(try await f.status(id) == "RELEASED")
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.emitted(id) == ["inventory.reserved", "inventory.released"])
        await f.harness.tearDown()
    }

    @Test func paymentEventsAfterTheCancellationChangeNothing() async throws {
        let f = try await Fixture()
        let (released, tombstone) = (Self.newId(), Self.newId())
        await f.process([try f.created(released, [("widget", 2)])])
        await f.process([try f.cancelled(released)])
        await f.process([try f.completed(released)])
        await f.process([try f.failed(released)])
        #expect(try await f.status(released) == "RELEASED")
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.emitted(released) == ["inventory.reserved", "inventory.released"])
        await f.process([try f.cancelled(tombstone)])
        await f.process([try f.completed(tombstone), try f.failed(tombstone)])
        #expect(try await f.status(tombstone) == "CANCELLED")
        #expect(try await f.emitted(tombstone) == [])
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func cancelledAfterRejectedOrDeclinedEmitsNothing() async throws {
        let f = try await Fixture()
        let (rejected, declined) = (Self.newId(), Self.newId())
        await f.process([try f.created(rejected, [("gizmo", 2)])])
        #expect(try await f.status(rejected) == "REJECTED")
        await f.process([try f.cancelled(rejected, .outOfStock)])
        #expect(try await f.status(rejected) == "REJECTED")
        #expect(try await f.emitted(rejected) == ["inventory.rejected"])
        #expect(try await f.stock("gizmo") == "1/0/0")

        await f.process([try f.created(declined, [("widget", 1)])])
        await f.process([try f.failed(declined)])
        #expect(try await f.status(declined) == "RELEASED")
        // An order.cancelled v1 (written before v2): upcast, and handled as v2.
        let v1 = try f.harness.message(
            OrderCancelledV1(orderId: declined, customerId: "alice", reason: .paymentDeclined, detail: ""),
            saga: declined, producer: "orders")
        #expect(v1.header(SagaHeader.eventVersion) == "1")
        await f.process([v1])
        #expect(try await f.status(declined) == "RELEASED")
        #expect(try await f.emitted(declined) == ["inventory.reserved", "inventory.released"])
        #expect(try await f.stock("widget") == "100/0/0")
        let inbox = try await f.harness.query(
            "SELECT count(*)::int AS n FROM saga_inbox WHERE event_type = 'order.cancelled'")
        #expect(try inbox.first?.decode("n", as: Int.self) == 2)
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func createdAndCancelledInOneBatchInEitherOrder() async throws {
        let f = try await Fixture()
        let (createdFirst, cancelledFirst) = (Self.newId(), Self.newId())
        await f.process([
            try f.created(createdFirst, [("widget", 4)]), try f.cancelled(cancelledFirst),
            try f.cancelled(createdFirst), try f.created(cancelledFirst, [("widget", 5)]),
        ])
        #expect(try await f.status(createdFirst) == "RELEASED")
        #expect(try await f.emitted(createdFirst) == ["inventory.reserved", "inventory.released"])
        #expect(try await f.status(cancelledFirst) == "CANCELLED")
        #expect(try await f.emitted(cancelledFirst) == [])
        #expect(try await f.stock("widget") == "100/0/0")
        // The released reservation keeps its lines (what was released).
        let lines = try await f.harness.query(
            "SELECT sku, quantity FROM reservation_lines WHERE order_id = $1::uuid", [createdFirst])
        #expect(lines.count == 1)
        #expect(try lines.first?.decode("quantity", as: Int.self) == 4)
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func aDuplicateOrRepublishedCancellationIsANoOp() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.created(id, [("widget", 2)])])
        let cancel = try f.cancelled(id)
        await f.process([cancel])
        await f.process([cancel])  // redelivered: the inbox skips it
        #expect(f.worker.stats.duplicates == 1)
        await f.process([try f.cancelled(id)])  // re-published under a new id: nothing left to release
        #expect(try await f.status(id) == "RELEASED")
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.emitted(id) == ["inventory.reserved", "inventory.released"])
        await f.harness.tearDown()
    }

    /// The per-order lock is the batch's first statement: while another session holds `inventory:<order id>`, the
    /// batch reads and writes nothing of the order.
    @Test func aBatchWaitsForItsOrdersAdvisoryLock() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        let (holder, workerPool) = (f.harness.newPool(), f.harness.newPool())
        let key: [PostgresBind] = ["inventory:\(id)"]
        try await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        let batch = [try f.cancelled(id)]
        let processing = Task { await f.worker.process(batch, pool: workerPool) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await f.status(id) == nil)
        try await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        #expect(await processing.value)
        #expect(try await f.status(id) == "CANCELLED")
        await holder.close()
        await workerPool.close()
        await f.harness.tearDown()
    }

    @Test func createdAndCancelledOnTwoInstancesAtOnce() async throws {
        let f = try await Fixture()
        let ids = (0..<30).map { _ in Self.newId() }
        let creations = try ids.map { try f.created($0, [("widget", 1), ("gadget", 1)]) }
        let cancellations = try ids.shuffled().map { try f.cancelled($0) }
        let instances = try (0..<2).map { _ in (worker: try f.harness.worker(), pool: f.harness.newPool()) }
        await withTaskGroup(of: Void.self) { group in
            for (instance, messages) in zip(instances, [creations, cancellations]) {
                group.addTask {
                    for start in stride(from: 0, to: messages.count, by: 5) {
                        let batch = Array(messages[start..<min(start + 5, messages.count)])
                        #expect(await instance.worker.process(batch, pool: instance.pool))
                    }
                }
            }
        }
        for instance in instances { await instance.pool.close() }
        #expect(instances.map(\.worker.stats.deadLettered) == [0, 0])
        // Whichever came first, nothing stays reserved and stock is conserved.
        #expect(try await f.stock("widget") == "100/0/0")
        #expect(try await f.stock("gadget") == "50/0/0")
        for id in ids {
            let status = try await f.status(id)
            let emitted = try await f.emitted(id)
            if status == "CANCELLED" {
                #expect(emitted == [], "\(id)")
            } else {
                #expect(status == "RELEASED", "\(id)")
                #expect(emitted == ["inventory.reserved", "inventory.released"], "\(id)")
            }
        }
        await f.harness.tearDown()
    }
}
