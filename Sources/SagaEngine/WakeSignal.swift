import Synchronization

/// A one-slot wake-up: `signal()` wakes the current `wait` or, if nobody waits, the next one.
/// Signals while nobody waits collapse into one, numbered like the last of them (``count``).
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        var generation = 0
        /// Signals so far: the number of the last one.
        var signals: UInt64 = 0
    }
    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.signals += 1
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// How many signals there were so far.
    var count: UInt64 { state.withLock { $0.signals } }

    /// Returns on a signal, after `timeout`, or on cancellation, whichever is first. With `seen` (a ``count``
    /// taken earlier), a pending signal numbered `seen` or lower is dropped instead: the caller has acted on
    /// everything signalled before it took `seen`.
    func wait(timeout: Duration, ignoringUpTo seen: UInt64? = nil) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let generation = state.withLock { s -> Int? in
                    if s.pending, let seen, s.signals <= seen { s.pending = false }
                    if s.pending || Task.isCancelled {
                        s.pending = false
                        return nil
                    }
                    s.waiter = continuation
                    s.generation += 1
                    return s.generation
                }
                guard let generation else { return continuation.resume() }
                Task {
                    try? await Task.sleep(for: timeout)
                    self.expire(generation)
                }
            }
        } onCancel: {
            signal()
        }
    }

    private func expire(_ generation: Int) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard s.generation == generation, let w = s.waiter else { return nil }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }
}
