// The daemon kit: configuration from the environment, logging, metrics, tracing, health and the ops server,
// graceful lifecycle, and ``ParticipantDaemon``, which runs a participant in one call. A participant's `main`
// imports only this module: the runtime (and with it the Postgres layer and JSON values) comes along.
@_exported import SagaEngine
