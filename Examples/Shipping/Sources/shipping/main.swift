// The shipping daemon: reads its configuration from the environment (SAGA_KAFKA_BOOTSTRAP, SAGA_DATABASE_URL,
// …), migrates its schema, registers its part of the saga, creates its missing topics, and runs its outbox
// relay, its worker and the ops server (health, readiness, metrics) until SIGTERM or SIGINT.
import SagaDaemon
import Shipping

try await ParticipantDaemon(ShippingService.definition).run()
