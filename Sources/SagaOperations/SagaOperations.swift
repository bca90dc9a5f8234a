// The operator tools over the runtime (SagaEngine): the saga tracker and its read model (``SagaTracker``), the
// inspector over that read model (``SagaInspector``), and the replayer (``Replayer``: replay, dead-letter
// redrive, consumer group reset).
