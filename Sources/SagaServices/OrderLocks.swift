import Foundation
import SagaEngine

/// Per-order transaction-scoped advisory locks of one service: `pg_advisory_xact_lock` on
/// `hashtextextended('<service>:<order id>', 0)`, released at commit or rollback.
///
/// The events of one saga reach a service on different topics (no order between topics) and possibly on
/// different instances at once; taking the locks of a batch's orders as its first statement serializes the
/// transactions that touch the same order, including before the order has any row to lock.
enum OrderLocks {
    /// Takes the locks of `orderIds` in one statement, in order id order (the array's, which `unnest` keeps), so
    /// two batches cannot deadlock on them. The statement is deferred: it runs just before the handler's next
    /// statement, in its round trip, so the locks are held before that statement reads anything.
    static func lock(_ orderIds: Set<UUID>, service: String, on db: PostgresTransaction) async throws {
        guard !orderIds.isEmpty else { return }
        let sorted = orderIds.map { $0.lowercasedString }.sorted()
        try await db.executeDeferred(
            """
            SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || o.id, 0)) FROM unnest($2::text[]) AS o(id)
            """, [service, PostgresArray(sorted)])
    }
}
