import Logging
import SagaPostgres

/// Bounded clean-up of published outbox rows and old inbox rows: deletes in chunks so a large
/// backlog never becomes one long transaction.
public enum Retention {
    static let chunk = 5000
    static let maxChunksPerRun = 20

    /// Deletes outbox rows published more than `olderThan` ago. Returns how many were deleted.
    @discardableResult
    public static func cleanOutbox(pool: PostgresPool, olderThan: Duration, logger: Logger) async -> Int {
        await clean(
            pool: pool, olderThan: olderThan, logger: logger, what: "outbox",
            sql: """
                DELETE FROM saga_outbox WHERE id IN (
                    SELECT id FROM saga_outbox WHERE published_at < now() - $1::interval LIMIT \(chunk))
                """)
    }

    private static func clean(pool: PostgresPool, olderThan: Duration, logger: Logger, what: String, sql: String)
        async -> Int
    {
        let interval = "\(olderThan.components.seconds) seconds"
        var total = 0
        do {
            for _ in 0..<maxChunksPerRun {
                let n = try await pool.execute(sql, [interval])
                total += n
                if n < chunk { break }
            }
        } catch {
            logger.warning("\(what) clean-up failed", metadata: ["error": "\(error)"])
        }
        if total > 0 { logger.info("\(what) clean-up", metadata: ["deleted": "\(total)"]) }
        return total
    }
}
