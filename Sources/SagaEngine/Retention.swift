import Logging
import SagaPostgres

/// Bounded clean-up of old inbox rows: deletes in chunks so a large backlog never becomes one long
/// transaction. (The outbox needs none: the relay deletes rows once the broker acknowledged them.)
public enum Retention {
    /// Rows one inbox clean-up statement deletes at most: each chunk is its own short transaction.
    static let inboxChunk = 10_000

    /// Deletes inbox rows handled more than `olderThan` ago, chunk by chunk, until none is left (or the
    /// task is cancelled): a run keeps up with any rate the worker records rows at, without one long
    /// transaction. Run it off the worker's loop, on a connection of its own. Returns how many were deleted.
    @discardableResult
    public static func cleanInbox(pool: PostgresPool, olderThan: Duration, logger: Logger) async -> Int {
        let interval = "\(olderThan.components.seconds) seconds"
        let started = ContinuousClock.now
        var total = 0
        do {
            while !Task.isCancelled {
                let n = try await pool.execute(
                    """
                    DELETE FROM saga_inbox WHERE event_id IN (
                        SELECT event_id FROM saga_inbox WHERE handled_at < now() - $1::interval
                        ORDER BY handled_at LIMIT \(inboxChunk))
                    """, [interval])
                total += n
                if n < inboxChunk { break }
            }
        } catch {
            logger.warning("inbox clean-up failed", metadata: ["error": "\(error)"])
        }
        if total > 0 {
            logger.info(
                "inbox clean-up",
                metadata: ["deleted": "\(total)", "ms": "\(Int((ContinuousClock.now - started).milliseconds))"])
        }
        return total
    }
}
