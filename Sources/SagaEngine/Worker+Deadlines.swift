import Foundation
import Logging
import SagaPostgres

extension Worker {
    /// How soon the deadline task looks again at a due deadline it could not claim (another instance is
    /// firing it).
    static let busyDeadlineRetryMs: Int64 = 50

    /// The deadline task: fires due deadlines, then sleeps until the earliest one falls, at most
    /// ``WorkerConfiguration/deadlinePollInterval`` (so it sees deadlines other instances schedule), and less
    /// when this worker commits one that falls sooner. Idles while the worker is paused. Runs until cancelled.
    func runDeadlines(pool: PostgresPool) async {
        var failures = 0
        while !Task.isCancelled {
            // Idle while the worker is paused (`pause()`): the deadlines wait in their table.
            guard pauseControl.startFiring() else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            let fired = await fireDueDeadlines(pool: pool)
            pauseControl.finished()
            if Task.isCancelled { break }
            if fired == configuration.deadlineBatchSize { continue }  // more may be due
            var wait = configuration.deadlinePollInterval
            do {
                if let seconds = try await Deadlines.secondsUntilNext(on: pool) {
                    // Due but not fired: another instance holds it (or it fell just now). Look again soon.
                    let next = seconds > 0 ? Int64((seconds * 1000).rounded(.up)) : Self.busyDeadlineRetryMs
                    wait = min(wait, .milliseconds(next))
                }
                failures = 0
            } catch {
                if Task.isCancelled { break }
                failures += 1
                logger.warning("reading the next deadline failed", metadata: ["error": "\(error)"])
                wait = configuration.retry.delay(attempt: failures)
            }
            await deadlineAlarm.sleep(for: wait)
        }
    }

    /// Fires up to ``WorkerConfiguration/deadlineBatchSize`` due deadlines in one transaction: claims them
    /// (`FOR UPDATE SKIP LOCKED`: a deadline another instance is firing is skipped), hands their events to the
    /// handlers exactly like consumed events (validated and upcast, recorded in the inbox with source partition
    /// -1, poison dead-lettered), writes the outbox rows, and deletes the deadlines; all or nothing. Retries
    /// retriable failures with backoff. Returns how many deadlines it fired (0 if cancelled first).
    func fireDueDeadlines(pool: PostgresPool) async -> Int {
        var attempt = 0
        var isolate = false
        // As for a batch of consumed events: a failure neither the event's nor transient that repeats
        // dead-letters the deadline events that still fail with it (see `process`).
        var failures = RepeatedFailures(limit: configuration.deadLetterAfterAttempts)
        while !Task.isCancelled {
            let ledger = deadlineLedger()
            do {
                let (claimed, outcome) = try await pool.withCancellableTransaction {
                    [isolate, exhausted = failures.exhausted, configuration] connection in
                    let claimed = try await Deadlines.claimDue(
                        limit: configuration.deadlineBatchSize, service: configuration.name,
                        topics: configuration.topics, on: connection)
                    guard !claimed.isEmpty else { return (claimed, Outcome()) }
                    ledger.fired(claimed)
                    let messages = claimed.map(\.message)
                    let outcome =
                        isolate
                        ? try await self.handleIsolated(messages, exhausted: exhausted, ledger: ledger, on: connection)
                        : try await self.handle(messages, optimistic: false, ledger: ledger, on: connection)
                    try await Deadlines.delete(claimed, on: connection)
                    return (claimed, outcome)
                }
                guard !claimed.isEmpty else { return 0 }
                record(outcome, isolated: isolate, ledger: ledger, deadlinesFired: claimed.count)
                var latest = 0.0
                for deadline in claimed {
                    let lateness = max(0, deadline.lateness)
                    latest = max(latest, lateness)
                    deadlineMetrics.lag.record(duration: .milliseconds(Int64(lateness * 1000)))
                    logger.debug(
                        "deadline fired",
                        metadata: [
                            EventLog.sagaId: .string(deadline.sagaId), "deadline": .string(deadline.name),
                            "late_ms": .stringConvertible(Int(lateness * 1000)),
                        ])
                }
                logger.info(
                    "deadlines fired",
                    metadata: [
                        "count": .stringConvertible(claimed.count),
                        "max_late_ms": .stringConvertible(Int(latest * 1000)),
                        "dead_lettered": .stringConvertible(outcome.total(\.deadLettered)),
                    ])
                return claimed.count
            } catch is NeedsIsolation {
                isolate = true
            } catch {
                if Task.isCancelled { return 0 }
                attempt += 1
                if failures.record(error) { isolate = true }
                logger.warning(
                    "firing deadlines failed, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: configuration.retry.delay(attempt: attempt))
            }
        }
        return 0
    }
}
