import Metrics

/// The worker's metrics (swift-metrics; the CLI exports them for Prometheus on /metrics).
struct WorkerMetrics: Sendable {
    let handled: Counter
    let duplicates: Counter
    let deadLettered: Counter
    let retries: Counter
    let batchDuration: Metrics.Timer

    init(service: String) {
        let d = [("service", service)]
        handled = Counter(label: "saga_worker_events_total", dimensions: d + [("result", "handled")])
        duplicates = Counter(label: "saga_worker_events_total", dimensions: d + [("result", "duplicate")])
        deadLettered = Counter(label: "saga_worker_events_total", dimensions: d + [("result", "dead_lettered")])
        retries = Counter(label: "saga_worker_batch_retries_total", dimensions: d)
        batchDuration = Metrics.Timer(
            label: "saga_worker_batch_duration_seconds", dimensions: d, preferredDisplayUnit: .seconds)
    }
}

/// The relay's metrics.
struct RelayMetrics: Sendable {
    let published: Counter
    let failed: Counter
    let parked: Counter
    let lag: Metrics.Timer
    let ownedShards: Gauge

    init(service: String) {
        let d = [("service", service)]
        published = Counter(label: "saga_relay_published_total", dimensions: d)
        failed = Counter(label: "saga_relay_publish_failures_total", dimensions: d)
        parked = Counter(label: "saga_relay_parked_total", dimensions: d)
        lag = Metrics.Timer(label: "saga_relay_outbox_lag_seconds", dimensions: d, preferredDisplayUnit: .seconds)
        ownedShards = Gauge(label: "saga_relay_owned_shards", dimensions: d)
    }
}
