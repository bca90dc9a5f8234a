import Foundation
import SagaEngine
import SagaPostgres
import SagaServices
import Testing

/// An order's and a reservation's status change is a HOT update (the new row version stays on its page and no
/// index gets an entry for it): the workers change hundreds of statuses a second, and an index on status made
/// each change write into every index of the table (and led the planner to walk that index for a batch).
struct StatusUpdateTests {
    /// Rows inserted one after the other fill their pages as far as the table lets them; then all their statuses
    /// change in the same transaction, where no old version can be pruned yet to make room: only the room the
    /// table leaves free takes new versions on the same page, a fifth of each page (fillfactor 80) for a quarter of
    /// its rows. (In a running service the versions a status change leaves behind are pruned as the next
    /// transactions come by, and more changes find room.) With full pages, or with an index on status, hardly any
    /// change would be HOT. Counted by the server for this transaction.
    static func hotUpdates(_ definition: ParticipantDefinition, table: String, insert: String, update: String)
        async throws -> (updated: Int, hot: Int)
    {
        let harness = try await ServiceHarness(definition)
        do {
            let counts = try await harness.pool.withTransaction { c in
                for _ in 0..<400 { try await c.execute(insert, [UUID()]) }
                let updated = try await c.execute(update)
                let hot: Int = try await c.query(
                    "SELECT pg_stat_get_xact_tuples_hot_updated($1::regclass)::int AS n", [table]
                ).first!.decode("n")
                return (updated, hot)
            }
            await harness.tearDown()
            return counts
        } catch {
            await harness.tearDown()
            throw error
        }
    }

    @Test func anOrdersStatusChangeIsAHOTUpdate() async throws {
        let (updated, hot) = try await Self.hotUpdates(
            OrdersService.definition(), table: "orders",
            insert: """
                INSERT INTO orders (id, customer_id, currency, total_amount, status, deadline_at)
                VALUES ($1, 'c-1', 'EUR', 1000, 'PENDING', now() + interval '1 minute')
                """,
            update: "UPDATE orders SET status = 'CONFIRMED', updated_at = now() WHERE status = 'PENDING'")
        #expect(updated == 400)
        #expect(hot * 5 >= updated, "\(hot) of \(updated) status changes were HOT updates")
    }

    @Test func aReservationsStatusChangeIsAHOTUpdate() async throws {
        let (updated, hot) = try await Self.hotUpdates(
            InventoryService.definition(), table: "reservations",
            insert: """
                INSERT INTO reservations (order_id, customer_id, status, total_amount, currency)
                VALUES ($1, 'c-1', 'RESERVED', 1000, 'EUR')
                """,
            update: "UPDATE reservations SET status = 'SOLD', updated_at = now() WHERE status = 'RESERVED'")
        #expect(updated == 400)
        #expect(hot * 5 >= updated, "\(hot) of \(updated) status changes were HOT updates")
    }
}
