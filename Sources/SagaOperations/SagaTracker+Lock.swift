import SagaEngine
import SagaPostgres

/// The session holding the tracker's lock ended under it (the database restarted, or the process was frozen or
/// cut off for longer than ``TrackerConfiguration/lockSessionIdleTimeout``): a standby may be active now.
/// ``SagaTracker/run()`` then stops recording and waits for the lock again.
public struct TrackerLockLost: Error, Sendable, CustomStringConvertible {
    public var description: String { "the tracker lost the session holding its lock" }
}

extension SagaTracker {
    /// Keeps the lock session busy while the tracker is active (a `SELECT 1` every third of the idle timeout),
    /// so the server ends it only when this process stops running; nil without a timeout. A failed heartbeat
    /// leaves the connection unhealthy, which the loop checks before recording.
    func keepAlive(_ lock: PostgresConnection) -> Task<Void, Never>? {
        guard let timeout = configuration.lockSessionIdleTimeout else { return nil }
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: timeout / 3)
                if Task.isCancelled { return }
                do { try await lock.execute("SELECT 1") } catch { return }
            }
        }
    }
}
