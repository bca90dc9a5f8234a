/// Exponential backoff with jitter for retriable failures (database unreachable, serialization failure,
/// broker down). Attempts are unbounded: the event waits, it is never dropped.
public struct RetryPolicy: Sendable, Hashable {
    /// The delay before the first retry.
    public var initialDelay: Duration = .milliseconds(100)
    /// The longest delay between two attempts.
    public var maxDelay: Duration = .seconds(10)
    /// How much the delay grows from one attempt to the next.
    public var multiplier: Double = 2

    /// A policy whose delays grow from `initialDelay` by ``multiplier`` up to `maxDelay`.
    public init(initialDelay: Duration = .milliseconds(100), maxDelay: Duration = .seconds(10)) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    /// The delay before attempt `attempt` (1 = first retry), with ±20 % jitter.
    public func delay(attempt: Int) -> Duration {
        let base = initialDelay.milliseconds * pow2(multiplier, max(0, attempt - 1))
        let capped = min(base, maxDelay.milliseconds)
        return .milliseconds(Int64(capped * Double.random(in: 0.8...1.2)))
    }

    private func pow2(_ m: Double, _ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<min(n, 60) { r *= m }
        return r
    }
}
