import Metrics
import SagaKafka
import Synchronization

/// The worker's metrics (swift-metrics; the CLI exports them for Prometheus on /metrics). Per event type:
/// consumed, handled / duplicate / dead-lettered, handler latency; per partition: consumer lag.
final class WorkerMetrics: Sendable {
    /// Metrics of one event type (the topic's type; the topic itself when it names none).
    struct PerType: Sendable {
        let consumed: Counter
        let handled: Counter
        let duplicates: Counter
        let deadLettered: Counter
        let handlerDuration: Metrics.Timer
    }

    let service: String
    let retries: Counter
    let batchDuration: Metrics.Timer
    private let types = Mutex<[String: PerType]>([:])
    private let lagGauges = Mutex<[KafkaTopicPartition: Gauge]>([:])

    init(service: String) {
        self.service = service
        let d = [("service", service)]
        retries = Counter(label: "saga_worker_batch_retries_total", dimensions: d)
        batchDuration = Metrics.Timer(
            label: "saga_worker_batch_duration_seconds", dimensions: d, preferredDisplayUnit: .seconds)
    }

    func type(_ type: String) -> PerType {
        types.withLock { types in
            if let known = types[type] { return known }
            let d = [("service", service), ("type", type)]
            let made = PerType(
                consumed: Counter(label: "saga_worker_events_consumed_total", dimensions: d),
                handled: Counter(label: "saga_worker_events_total", dimensions: d + [("result", "handled")]),
                duplicates: Counter(label: "saga_worker_events_total", dimensions: d + [("result", "duplicate")]),
                deadLettered: Counter(
                    label: "saga_worker_events_total", dimensions: d + [("result", "dead_lettered")]),
                handlerDuration: Metrics.Timer(
                    label: "saga_worker_handler_duration_seconds", dimensions: d, preferredDisplayUnit: .seconds))
            types[type] = made
            return made
        }
    }

    /// Sets `saga_worker_consumer_lag` per assigned partition; partitions no longer assigned drop to 0.
    func recordLag(_ lags: [(partition: KafkaTopicPartition, lag: Int64)]) {
        lagGauges.withLock { gauges in
            let current = Set(lags.map(\.partition))
            for (partition, gauge) in gauges where !current.contains(partition) { gauge.record(0) }
            for (partition, lag) in lags {
                let gauge =
                    gauges[partition]
                    ?? Gauge(
                        label: "saga_worker_consumer_lag",
                        dimensions: [
                            ("service", service), ("topic", partition.topic),
                            ("partition", String(partition.partition)),
                        ])
                gauges[partition] = gauge
                gauge.record(lag)
            }
        }
    }
}

/// The relay's metrics: what it published, how long the broker took, and the outbox it drains.
struct RelayMetrics: Sendable {
    let published: Counter
    let failed: Counter
    let parked: Counter
    /// From the row's commit to the broker's acknowledgement.
    let lag: Metrics.Timer
    /// From handing a batch to the producer to the last acknowledgement.
    let publishDuration: Metrics.Timer
    let ownedShards: Gauge
    let backlog: Gauge
    let oldestAge: Gauge
    let parkedRows: Gauge
    /// Unpublished rows waiting behind a parked row of their saga.
    let heldRows: Gauge
    /// Sagas held back because a row of theirs failed recently (backing off) or is still unacknowledged
    /// after `settleTimeout`.
    let heldSagas: Gauge

    init(service: String) {
        let d = [("service", service)]
        published = Counter(label: "saga_relay_published_total", dimensions: d)
        failed = Counter(label: "saga_relay_publish_failures_total", dimensions: d)
        parked = Counter(label: "saga_relay_parked_total", dimensions: d)
        lag = Metrics.Timer(label: "saga_relay_outbox_lag_seconds", dimensions: d, preferredDisplayUnit: .seconds)
        publishDuration = Metrics.Timer(
            label: "saga_relay_publish_duration_seconds", dimensions: d, preferredDisplayUnit: .seconds)
        ownedShards = Gauge(label: "saga_relay_owned_shards", dimensions: d)
        backlog = Gauge(label: "saga_outbox_backlog", dimensions: d)
        oldestAge = Gauge(label: "saga_outbox_oldest_age_seconds", dimensions: d)
        parkedRows = Gauge(label: "saga_outbox_parked", dimensions: d)
        heldRows = Gauge(label: "saga_outbox_held", dimensions: d)
        heldSagas = Gauge(label: "saga_relay_held_sagas", dimensions: d)
    }
}
