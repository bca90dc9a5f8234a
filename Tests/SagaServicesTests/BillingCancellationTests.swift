import Foundation
import SagaKafka
import SagaServices
import Testing

@testable import SagaEngine

/// Billing on `order.cancelled` (real PostgreSQL, a worker fed crafted messages in a chosen order): a charged
/// order is refunded once (`payment.refunded`), a reservation that arrives after the cancellation is never
/// charged (`VOIDED`), and no charge stays for a cancelled order whatever the order of arrival.
@Suite(.serialized) struct BillingCancellationTests {
    struct Fixture {
        let harness: ServiceHarness
        let worker: Worker

        init() async throws {
            harness = try await ServiceHarness(BillingService.definition())
            try await harness.execute(
                """
                INSERT INTO accounts (customer_id, currency, credit_limit) VALUES
                    ('alice', 'EUR', 1000000), ('carol', 'EUR', 0)
                """)
            worker = try harness.worker()
        }

        func reserved(_ id: String, amount: Int64 = 2500, customer: String = "alice") throws -> KafkaMessage {
            try harness.message(
                InventoryReserved(
                    orderId: id, customerId: customer, total: Money(amount: amount, currency: "EUR"),
                    lines: [OrderLine(sku: "widget", quantity: 2)]),
                saga: id, producer: "inventory")
        }

        func cancelled(_ id: String, _ reason: OrderCancelled.Reason = .timeout, customer: String = "alice") throws
            -> KafkaMessage
        {
            try harness.message(
                OrderCancelled(orderId: id, customerId: customer, reason: reason, detail: ""), saga: id,
                producer: "orders")
        }

        func process(_ batch: [KafkaMessage], by worker: Worker? = nil, pool: PostgresPool? = nil) async {
            #expect(await (worker ?? self.worker).process(batch, pool: pool ?? harness.pool))
        }

        func status(_ id: String) async throws -> String? {
            try await harness.query("SELECT status FROM charges WHERE order_id = $1::uuid", [id]).first?.decode(
                "status")
        }

        func used(_ customer: String = "alice") async throws -> Int64 {
            try await harness.query("SELECT used FROM accounts WHERE customer_id = $1", [customer]).first!.decode(
                "used")
        }

        func cancellationRecorded(_ id: String) async throws -> Bool {
            try await !harness.query("SELECT 1 FROM order_cancellations WHERE order_id = $1::uuid", [id]).isEmpty
        }

        /// The types the worker emitted for order `id`, in order.
        func emitted(_ id: String) async throws -> [String] {
            try await harness.outbox().filter { $0.sagaId == id }.map(\.type)
        }
    }

    static func newId() -> String { UUID().uuidString.lowercased() }

    @Test func cancelledBeforeReservedIsNeverCharged() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.cancelled(id)])
        #expect(try await f.status(id) == nil)
        #expect(try await f.cancellationRecorded(id))
        await f.process([try f.reserved(id)])
        #expect(try await f.status(id) == "VOIDED")
        let charge = try #require(
            try await f.harness.query(
                "SELECT reason, amount, refund_id::text AS refund FROM charges WHERE order_id = $1::uuid", [id]
            ).first)
        #expect(try charge.decode("reason", as: String?.self) == "order_cancelled")
        #expect(try charge.decode("amount", as: Int64.self) == 2500)
        #expect(try charge.decode("refund", as: String?.self) == nil)
        #expect(try await f.used() == 0)
        #expect(try await f.emitted(id) == [])
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func cancelledAfterTheChargeIsRefunded() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.reserved(id, amount: 4200)])
        #expect(try await f.status(id) == "CHARGED")
        #expect(try await f.used() == 4200)
        let cancel = try f.cancelled(id)
        await f.process([cancel])
        #expect(try await f.status(id) == "REFUNDED")
        #expect(try await f.used() == 0)
        #expect(try await f.emitted(id) == ["payment.completed", "payment.refunded"])
        let completed = try #require(try await f.harness.emitted(PaymentCompleted.self).first)
        let envelope = try #require(try await f.harness.outbox(PaymentRefunded.eventType).first)
        #expect(SchemaRegistry.shared.validate(type: "payment.refunded", version: 1, data: envelope.data) == [])
        #expect(envelope.causationId.map { $0.uuidString.lowercased() } == cancel.header(SagaHeader.eventId))
        #expect(envelope.producer == "billing")
        let refund = try envelope.data.decode(PaymentRefunded.self)
        let row = try #require(
            try await f.harness.query(
                """
                SELECT payment_id::text AS payment, refund_id::text AS refund, refunded_at IS NOT NULL AS dated, reason
                FROM charges WHERE order_id = $1::uuid
                """, [id]
            ).first)
        #expect(refund.orderId == id)
        #expect(refund.customerId == "alice")
        #expect(refund.paymentId == completed.paymentId)
        #expect(refund.paymentId == (try row.decode("payment", as: String.self)))
        #expect(refund.refundId == (try row.decode("refund", as: String.self)))
        #expect(refund.refundId != refund.paymentId)
        #expect(refund.amount == Money(amount: 4200, currency: "EUR"))
        #expect(refund.reason == "order cancelled: timeout")
        #expect(try row.decode("dated", as: Bool.self))
        #expect(try await f.cancellationRecorded(id))
        await f.harness.tearDown()
    }

    @Test func cancelledAfterADeclineEmitsNothing() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.reserved(id, customer: "carol")])
        #expect(try await f.status(id) == "DECLINED")
        await f.process([try f.cancelled(id, .paymentDeclined, customer: "carol")])
        #expect(try await f.status(id) == "DECLINED")
        #expect(try await f.emitted(id) == ["payment.failed"])
        #expect(try await f.used("carol") == 0)
        #expect(try await f.cancellationRecorded(id))
        await f.harness.tearDown()
    }

    @Test func aDuplicateCancellationRefundsOnce() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        await f.process([try f.reserved(id)])
        let cancel = try f.cancelled(id)
        await f.process([cancel])
        await f.process([cancel])  // redelivered: the inbox skips it
        #expect(f.worker.stats.duplicates == 1)
        await f.process([try f.cancelled(id)])  // re-published under a new id: already refunded
        await f.process([try f.cancelled(id), try f.cancelled(id)])
        #expect(try await f.status(id) == "REFUNDED")
        #expect(try await f.used() == 0)
        #expect(try await f.emitted(id) == ["payment.completed", "payment.refunded"])
        #expect(f.worker.stats.deadLettered == 0)
        await f.harness.tearDown()
    }

    @Test func aRedeliveredReservationAfterTheRefundChargesNothing() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        let reserved = try f.reserved(id)
        await f.process([reserved])
        await f.process([try f.cancelled(id)])
        await f.process([reserved])  // redelivered
        await f.process([try f.reserved(id)])  // re-published under a new id
        #expect(try await f.status(id) == "REFUNDED")
        #expect(try await f.used() == 0)
        #expect(try await f.emitted(id) == ["payment.completed", "payment.refunded"])
        await f.harness.tearDown()
    }

    @Test func reservedAndCancelledInOneBatchInEitherOrder() async throws {
        let f = try await Fixture()
        let (reservedFirst, cancelledFirst) = (Self.newId(), Self.newId())
        await f.process([
            try f.reserved(reservedFirst), try f.cancelled(cancelledFirst), try f.cancelled(reservedFirst),
            try f.reserved(cancelledFirst),
        ])
        // In the order consumed: charged then refunded; cancelled then never charged.
        #expect(try await f.status(reservedFirst) == "REFUNDED")
        #expect(try await f.emitted(reservedFirst) == ["payment.completed", "payment.refunded"])
        #expect(try await f.status(cancelledFirst) == "VOIDED")
        #expect(try await f.emitted(cancelledFirst) == [])
        #expect(try await f.used() == 0)
        let refund = try #require(try await f.harness.emitted(PaymentRefunded.self).first)
        let completed = try #require(try await f.harness.emitted(PaymentCompleted.self).first)
        #expect(refund.paymentId == completed.paymentId)
        let refunded = try await f.harness.query(
            "SELECT refund_id::text AS r FROM charges WHERE order_id = $1::uuid AND refunded_at IS NOT NULL",
            [reservedFirst])
        #expect(try refunded.first?.decode("r", as: String.self) == refund.refundId)
        await f.harness.tearDown()
    }

    /// The per-order lock is the batch's first statement: while another session holds `billing:<order id>`, the
    /// batch reads and writes nothing of the order.
    @Test func aBatchWaitsForItsOrdersAdvisoryLock() async throws {
        let f = try await Fixture()
        let id = Self.newId()
        let (holder, workerPool) = (f.harness.newPool(), f.harness.newPool())
        let key: [PostgresBind] = ["billing:\(id)"]
        try await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        let batch = [try f.reserved(id)]
        let processing = Task { await f.worker.process(batch, pool: workerPool) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await f.status(id) == nil)
        #expect(try await f.used() == 0)
        try await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        #expect(await processing.value)
        #expect(try await f.status(id) == "CHARGED")
        await holder.close()
        await workerPool.close()
        await f.harness.tearDown()
    }

    @Test func reservedAndCancelledOnTwoInstancesAtOnce() async throws {
        let f = try await Fixture()
        let ids = (0..<30).map { _ in Self.newId() }
        let reservations = try ids.map { try f.reserved($0, amount: 1000) }
        let cancellations = try ids.shuffled().map { try f.cancelled($0) }
        let instances = try (0..<2).map { _ in (worker: try f.harness.worker(), pool: f.harness.newPool()) }
        await withTaskGroup(of: Void.self) { group in
            for (instance, messages) in zip(instances, [reservations, cancellations]) {
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
        // Whichever came first: never CHARGED at the end, and the credit is all back.
        for id in ids {
            let status = try await f.status(id)
            let emitted = try await f.emitted(id)
            if status == "VOIDED" {
                #expect(emitted == [], "\(id)")
            } else {
                #expect(status == "REFUNDED", "\(id)")
                #expect(emitted == ["payment.completed", "payment.refunded"], "\(id)")
            }
            #expect(try await f.cancellationRecorded(id))
        }
        #expect(try await f.used() == 0)
        await f.harness.tearDown()
    }
}
