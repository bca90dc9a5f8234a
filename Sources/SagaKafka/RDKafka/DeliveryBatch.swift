import Synchronization

/// Collects the delivery results of one `send` call, in input order, and wakes the sender
/// when every slot is filled.
final class DeliveryBatch: Sendable {
    private struct State {
        var results: [Result<KafkaDeliveryReport, KafkaError>?]
        var remaining: Int
        var waiter: CheckedContinuation<[Result<KafkaDeliveryReport, KafkaError>], Never>?
    }

    private let state: Mutex<State>

    init(count: Int) {
        state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count, waiter: nil))
    }

    /// Fills slot `index`; each slot is filled exactly once.
    func complete(_ index: Int, with result: Result<KafkaDeliveryReport, KafkaError>) {
        let finished = state.withLock {
            state -> (
                CheckedContinuation<[Result<KafkaDeliveryReport, KafkaError>], Never>,
                [Result<KafkaDeliveryReport, KafkaError>]
            )? in
            precondition(state.results[index] == nil, "delivery slot \(index) completed twice")
            state.results[index] = result
            state.remaining -= 1
            guard state.remaining == 0, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return (waiter, state.results.map { $0! })
        }
        if let (waiter, results) = finished { waiter.resume(returning: results) }
    }

    /// The slots filled so far (nil: pending).
    func snapshot() -> [Result<KafkaDeliveryReport, KafkaError>?] { state.withLock { $0.results } }

    /// Returns when every slot is filled.
    func results() async -> [Result<KafkaDeliveryReport, KafkaError>] {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> [Result<KafkaDeliveryReport, KafkaError>]? in
                guard state.remaining > 0 else { return state.results.map { $0! } }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}

/// The delivery reports of messages handed to ``KafkaProducer/enqueue(_:)``, in input order.
public struct KafkaDeliveries: Sendable {
    let batch: DeliveryBatch

    /// The reports that arrived so far, by message (nil: still pending).
    public var reported: [Result<KafkaDeliveryReport, KafkaError>?] { batch.snapshot() }

    /// Waits for every report (within about `message.timeout.ms`).
    public func results() async -> [Result<KafkaDeliveryReport, KafkaError>] { await batch.results() }
}
