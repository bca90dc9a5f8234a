import CRdKafka
import Foundation
import Logging
import Synchronization

/// The producer's dedicated poll thread: it loops on `rd_kafka_poll(rk, 100)`, which runs the
/// delivery-report callbacks, until asked to stop. Stopping drains first: the loop goes on
/// until no message is outstanding, purges what is left at the drain deadline (so every sender
/// still gets a report), then ends.
final class ProducerPollLoop: Sendable {
    private struct State {
        var drainDeadline: ContinuousClock.Instant?
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    static func start(client: RDKafkaClient, logger: Logger) -> ProducerPollLoop {
        let loop = ProducerPollLoop()
        let thread = Thread { loop.run(client: client, logger: logger) }
        thread.name = "kafka-producer-poll"
        thread.start()
        return loop
    }

    /// Asks the loop to end once every outstanding message has a delivery report, or at
    /// `drainTimeout` from now, whichever comes first. A later call cannot extend an earlier deadline.
    func requestStop(drainTimeout: Duration) {
        let deadline = ContinuousClock.now + drainTimeout
        state.withLock { state in
            if let existing = state.drainDeadline, existing <= deadline { return }
            state.drainDeadline = deadline
        }
    }

    /// Runs `body` (a non-blocking enqueue) unless a stop was requested. The loop cannot
    /// decide to end while `body` runs, so a message enqueued here always gets its report.
    /// - Returns: `nil` when a stop was requested and `body` did not run.
    func ifAcceptingSends<T: Sendable>(_ body: () -> T) -> T? {
        state.withLock { state in
            guard state.drainDeadline == nil else { return nil }
            return body()
        }
    }

    /// Returns once the thread has left its loop.
    func waitUntilFinished() async {
        await withCheckedContinuation { continuation in
            let finished = state.withLock { state -> Bool in
                if state.finished { return true }
                state.waiters.append(continuation)
                return false
            }
            if finished { continuation.resume() }
        }
    }

    private func run(client: RDKafkaClient, logger: Logger) {
        let handle = client.handle
        var purgedAt: ContinuousClock.Instant? = nil
        while true {
            rd_kafka_poll(handle, 100)
            let (deadline, outstanding) = state.withLock { state in
                (state.drainDeadline, state.drainDeadline == nil ? 0 : rd_kafka_outq_len(handle))
            }
            guard let deadline else { continue }
            if outstanding == 0 { break }
            let now = ContinuousClock.now
            if let purgedAt {
                if now - purgedAt > .seconds(5) {
                    logger.error(
                        "producer stopped with messages still outstanding", metadata: ["count": "\(outstanding)"])
                    break
                }
            } else if now >= deadline {
                logger.warning("producer drain timed out; purging", metadata: ["count": "\(outstanding)"])
                _ = rd_kafka_purge(handle, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT)
                purgedAt = now
            }
        }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
