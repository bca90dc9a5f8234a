import Foundation
import Logging
import Metrics
import SagaKafka
import Synchronization

extension Worker {
    /// Whether an operator paused this worker (``pause(waitingAtMost:)``) and did not resume it since.
    public var isPaused: Bool { pauseControl.isPaused }

    /// When the worker was paused, while it is.
    public var pausedSince: Date? { pauseControl.pausedSince }

    /// Stops handling events until ``resume()``: the consumer stops fetching from its partitions (and from those a
    /// rebalance assigns meanwhile) and the deadline task stops firing. The worker keeps polling, so it stays in its
    /// consumer group and does not exceed `max.poll.interval.ms`; events wait in Kafka (consumer lag grows) and
    /// deadlines wait in their table. Nothing is lost: what was fetched but not handled is fetched again on resume.
    ///
    /// Returns once the pause holds: the batch or deadline firing in flight, if any, committed (or rolled back) and
    /// no other will start; or after `limit` (e.g. a batch retrying while its database is down), with the pause in
    /// force all the same. On a worker that is not running it only records the wish: the worker starts paused.
    /// Idempotent; ``resume()`` ends it.
    /// - Returns: true when the pause holds, false when something was still in flight after `limit`.
    @discardableResult
    public func pause(waitingAtMost limit: Duration = .seconds(30)) async -> Bool {
        await pauseControl.pause(waitingAtMost: limit, logger: logger)
    }

    /// Handles events and fires deadlines again after ``pause(waitingAtMost:)``, from where it stopped. Idempotent.
    public func resume() async {
        await pauseControl.resume(logger: logger)
    }

    /// The main loop's poll: a poll that started after the pause held and found nothing tells
    /// ``pause(waitingAtMost:)`` so.
    func pollUnlessPaused(_ consumer: KafkaConsumer, maxMessages: Int, timeout: Duration) async -> Result<
        [KafkaMessage], KafkaError
    > {
        let pausedEpoch = pauseControl.heldEpoch
        let result: Result<[KafkaMessage], KafkaError>
        do throws(KafkaError) {
            result = .success(try await consumer.poll(maxMessages: maxMessages, timeout: timeout))
        } catch {
            result = .failure(error)
        }
        if let pausedEpoch, (try? result.get())?.isEmpty ?? true { pauseControl.quietPoll(pausedEpoch) }
        return result
    }
}

/// The pause state of a worker (``Worker/pause()``): what the operator asked for, the consumer it applies to while
/// the worker runs, and who waits for the pause to hold.
///
/// A pause holds once it was applied to the consumer (epoch `applied`), a poll started after that returned nothing
/// (`quiet`), and neither a batch nor a deadline firing is in flight (`busy`). Polls run one at a time on the
/// consumer's poll lane, after the pause was applied there, so they return nothing until ``resume(logger:)``.
final class PauseControl: Sendable {
    private struct State {
        var paused = false
        var since: Date? = nil
        var consumer: KafkaConsumer? = nil
        /// Bumped each time a pause was applied to the running consumer.
        var applied = 0
        /// The highest epoch whose pause a poll that came back empty started after.
        var quiet = 0
        /// Batches and deadline firings in flight.
        var busy = 0
        var waiters: [Waiter] = []
        var nextWaiter = 0

        func holds(_ epoch: Int) -> Bool { paused && quiet >= epoch && busy == 0 }

        /// The waiters to resume now (the pause holds for them, or there is nothing to wait for any more).
        mutating func released(all: Bool = false) -> [Waiter] {
            var ready: [Waiter] = []
            var rest: [Waiter] = []
            for waiter in waiters {
                if all || !paused || consumer == nil || holds(waiter.epoch) {
                    ready.append(waiter)
                } else {
                    rest.append(waiter)
                }
            }
            waiters = rest
            return ready
        }
    }

    /// A ``pause(waitingAtMost:logger:)`` waiting for the pause of `epoch` to hold.
    private struct Waiter {
        let id: Int
        let epoch: Int
        let continuation: CheckedContinuation<Bool, Never>
    }

    private let state = Mutex(State())
    private let gauge: Gauge

    init(service: String) {
        gauge = Gauge(label: "saga_worker_paused", dimensions: [("service", service)])
        gauge.record(0)
    }

    var isPaused: Bool { state.withLock { $0.paused } }
    var pausedSince: Date? { state.withLock { $0.since } }

    /// The epoch of the pause in force, once applied to the consumer; nil while not paused.
    var heldEpoch: Int? { state.withLock { $0.paused && $0.applied > 0 ? $0.applied : nil } }

    func pause(waitingAtMost limit: Duration, logger: Logger) async -> Bool {
        let consumer = state.withLock { state -> KafkaConsumer? in
            if !state.paused { state.since = Date() }
            state.paused = true
            return state.consumer
        }
        gauge.record(1)
        logger.notice("worker paused: no event is handled and no deadline fired until it is resumed")
        guard let consumer else { return true }
        await apply(to: consumer, logger: logger)
        let epoch = state.withLock { state -> Int? in
            guard state.paused, state.consumer === consumer else { return nil }
            state.applied += 1
            return state.applied
        }
        guard let epoch else { return true }  // resumed, or the worker stopped, meanwhile
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        let timer = Task { [self] in
            try? await Task.sleep(for: limit)
            expire(id)
        }
        defer { timer.cancel() }
        let held = await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> [Waiter] in
                state.waiters.append(Waiter(id: id, epoch: epoch, continuation: continuation))
                return state.released()
            }
            Self.wake(ready)
        }
        if !held {
            logger.warning(
                "worker paused, but a batch or a deadline firing is still in flight", metadata: ["waited": "\(limit)"])
        }
        return held
    }

    /// The waiter `id` gave up waiting (``pause(waitingAtMost:logger:)``'s limit passed): it gets false.
    private func expire(_ id: Int) {
        let expired = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index)
        }
        expired?.continuation.resume(returning: false)
    }

    /// Resumes `waiters`: true when the pause holds for them (false only from the timer).
    private static func wake(_ waiters: [Waiter]) {
        for waiter in waiters { waiter.continuation.resume(returning: true) }
    }

    func resume(logger: Logger) async {
        let (consumer, waiting) = state.withLock { state -> (KafkaConsumer?, [Waiter]) in
            state.paused = false
            state.since = nil
            return (state.consumer, state.released(all: true))
        }
        Self.wake(waiting)
        gauge.record(0)
        logger.notice("worker resumed")
        if let consumer { await apply(to: consumer, logger: logger) }
    }

    /// Applies the wanted state to `consumer` until it matches (a pause and a resume may cross).
    private func apply(to consumer: KafkaConsumer, logger: Logger) async {
        while true {
            let wanted = state.withLock { $0.paused }
            do throws(KafkaError) {
                if wanted { try await consumer.pause() } else { try await consumer.resume() }
            } catch {
                // Only a closed consumer (the worker stopping) or a partition librdkafka no longer has.
                logger.warning(
                    wanted ? "pausing the consumer failed" : "resuming the consumer failed",
                    metadata: ["error": "\(error)"])
                return
            }
            if state.withLock({ $0.paused }) == wanted { return }
        }
    }

    /// The worker's loop starts with `consumer` (paused already if the operator asked before it ran).
    func attach(_ consumer: KafkaConsumer, logger: Logger) async {
        let paused = state.withLock { state -> Bool in
            state.consumer = consumer
            return state.paused
        }
        if paused { await apply(to: consumer, logger: logger) }
        if paused { state.withLock { $0.applied += 1 } }
    }

    /// The worker's loop ended: nobody waits for it any more.
    func detach() {
        let waiting = state.withLock { state -> [Waiter] in
            state.consumer = nil
            return state.released(all: true)
        }
        Self.wake(waiting)
    }

    /// A poll started under the pause of `epoch` came back with nothing.
    func quietPoll(_ epoch: Int) {
        let ready = state.withLock { state -> [Waiter] in
            state.quiet = max(state.quiet, epoch)
            return state.released()
        }
        Self.wake(ready)
    }

    /// A batch of consumed events is about to be handled (it was polled before the pause held).
    func batchStarted() { state.withLock { $0.busy += 1 } }

    /// A batch or deadline firing committed or gave up.
    func finished() {
        let ready = state.withLock { state -> [Waiter] in
            state.busy -= 1
            return state.released()
        }
        Self.wake(ready)
    }

    /// The deadline task may fire now: false while paused; else it counts as busy until ``finished()``.
    func startFiring() -> Bool {
        state.withLock { state in
            guard !state.paused else { return false }
            state.busy += 1
            return true
        }
    }
}
