import Logging
import SagaPostgres
import Synchronization

/// Signals a ``WakeSignal`` on every notification of a PostgreSQL channel, and keeps listening: when the
/// listening session is lost (a restarted server, a terminated backend, a dead connection noticed by the
/// keepalives), it signals once (notifications sent meanwhile are lost, so the waiter looks again) and
/// listens again on a new session, retrying with backoff, until closed. Without it a relay would fall back
/// to its poll interval for the rest of its session.
final class WakeListener: Sendable {
    /// The session listening now; replaced on every reconnect.
    private final class Current: Sendable {
        let listener: Mutex<PostgresListener?>
        init(_ listener: PostgresListener) { self.listener = Mutex(listener) }
    }
    private let current: Current
    private let task: Task<Void, Never>

    private init(current: Current, task: Task<Void, Never>) {
        self.current = current
        self.task = task
    }

    /// Listens on `channel` before returning, so a notification committed after `start` returns wakes `wake`.
    /// - Throws: when the first session cannot connect or listen (as ``PostgresListener/start(_:channels:logger:)``);
    ///   later losses are retried, not thrown.
    static func start(
        _ configuration: PostgresConfiguration, channel: String, wake: WakeSignal, retry: RetryPolicy, logger: Logger
    ) async throws(PostgresError) -> WakeListener {
        let first = try await PostgresListener.start(configuration, channels: [channel], logger: logger)
        let current = Current(first)
        let task = Task {
            var listener = first
            while !Task.isCancelled {
                for await _ in listener.notifications { wake.signal() }
                if Task.isCancelled { return }
                logger.warning(
                    "the outbox listener lost its session: listening again", metadata: ["channel": .string(channel)])
                wake.signal()
                var attempt = 0
                while !Task.isCancelled {
                    attempt += 1
                    try? await Task.sleep(for: retry.delay(attempt: attempt))
                    if Task.isCancelled { return }
                    do {
                        listener = try await PostgresListener.start(configuration, channels: [channel], logger: logger)
                    } catch {
                        logger.warning(
                            "the outbox listener could not listen again, retrying",
                            metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                        continue
                    }
                    current.listener.withLock { $0 = listener }
                    logger.info("the outbox listener listens again", metadata: ["channel": .string(channel)])
                    wake.signal()  // whatever was committed while nobody listened
                    break
                }
            }
        }
        return WakeListener(current: current, task: task)
    }

    /// Stops listening and ends the session. Returns once it is closed.
    func close() async {
        task.cancel()
        await current.listener.withLock { $0 }?.close()
        await task.value
        // A session the task opened after the first close call.
        await current.listener.withLock { $0 }?.close()
    }
}
