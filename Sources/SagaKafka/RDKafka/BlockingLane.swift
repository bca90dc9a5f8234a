import Foundation
import Synchronization

/// A dedicated OS thread that runs blocking C calls one at a time, so that a poll with a
/// timeout, a flush or a synchronous commit never occupies a thread of Swift's cooperative pool.
/// The thread ends when the lane is deinitialized, after finishing the jobs already queued.
final class BlockingLane: Sendable {
    private final class Jobs: Sendable {
        struct State {
            var jobs: [@Sendable () -> Void] = []
            var stopped = false
        }
        let state = Mutex(State())
        /// Signalled once per queued job and once for the stop request.
        let wakeups = DispatchSemaphore(value: 0)

        func runLoop() {
            while true {
                wakeups.wait()
                let job = state.withLock { state -> (@Sendable () -> Void)? in
                    state.jobs.isEmpty ? nil : state.jobs.removeFirst()
                }
                guard let job else { return }  // only the stop request wakes us with no job queued
                job()
            }
        }
    }

    private let jobs = Jobs()

    init(name: String) {
        let jobs = self.jobs
        let thread = Thread { jobs.runLoop() }
        thread.name = name
        thread.start()
    }

    deinit {
        jobs.state.withLock { $0.stopped = true }
        jobs.wakeups.signal()
    }

    /// Runs `body` on the lane's thread after the jobs queued before it, and returns its result.
    func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            let job: @Sendable () -> Void = { continuation.resume(returning: body()) }
            let queued = jobs.state.withLock { state -> Bool in
                guard !state.stopped else { return false }
                state.jobs.append(job)
                return true
            }
            if queued {
                jobs.wakeups.signal()
            } else {
                // Unreachable while the lane is alive (deinit is the only stop); stay correct anyway.
                Thread.detachNewThread(job)
            }
        }
    }

    /// Like `run`, for a body that reports a ``KafkaError``.
    func run<T: Sendable>(
        _ body: @escaping @Sendable () -> Result<T, KafkaError>
    ) async throws(KafkaError) -> T {
        let result: Result<T, KafkaError> = await run(body)
        return try result.get()
    }
}

extension Duration {
    /// Whole milliseconds, clamped to `0...Int32.max`, as librdkafka timeouts expect.
    var kafkaMilliseconds: Int32 {
        let (seconds, attoseconds) = components
        let milliseconds = seconds.multipliedReportingOverflow(by: 1000)
        if milliseconds.overflow { return seconds < 0 ? 0 : Int32.max }
        let total = milliseconds.partialValue.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        if total.overflow { return Int32.max }
        return Int32(clamping: max(total.partialValue, 0))
    }
}
