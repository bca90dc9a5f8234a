import Logging
import SagaPostgres

/// Bounded clean-up of old inbox rows: deletes in chunks so a large backlog never becomes one long
/// transaction. (Outbox rows need none: the relay deletes each row once the broker acknowledged it, and
/// parked rows stay for the operator.)
public enum Retention {
    static let chunk = 5000
    static let maxChunksPerRun = 20

    /// Deletes inbox rows handled more than `olderThan` ago. Returns how many were deleted.
    @discardableResult
    public static func cleanInbox(pool: PostgresPool, olderThan: Duration, logger: Logger) async -> Int {
        await clean(
            pool: pool, olderThan: olderThan, logger: logger, what: "inbox",
            sql: """
                DELETE FROM saga_inbox WHERE event_id IN (
                    SELECT event_id FROM saga_inbox WHERE handled_at < now() - $1::interval LIMIT \(chunk))
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
