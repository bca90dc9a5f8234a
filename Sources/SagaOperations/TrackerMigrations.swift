import SagaEngine
import SagaPostgres

/// The tracker's read model, in a schema of its own.
enum TrackerMigrations {
    static let all = [
        PostgresMigration(
            version: 1, name: "tracker: events, dead letters, sagas",
            sql: """
                CREATE TABLE tracker_state (
                    id             int PRIMARY KEY CHECK (id = 1),
                    consumer_group text        NOT NULL,
                    rebuilt_at     timestamptz
                );
                CREATE TABLE tracker_events (
                    event_id     uuid PRIMARY KEY,
                    saga_id      text        NOT NULL,
                    event_type   text        NOT NULL,
                    version      int         NOT NULL,
                    producer     text        NOT NULL,
                    occurred_at  timestamptz NOT NULL,
                    causation_id uuid,
                    traceparent  text,
                    data         jsonb       NOT NULL,
                    topic        text        NOT NULL,
                    partition    int         NOT NULL,
                    "offset"     bigint      NOT NULL
                );
                CREATE INDEX tracker_events_saga ON tracker_events (saga_id, occurred_at);
                CREATE TABLE tracker_dead_letters (
                    topic            text   NOT NULL,
                    partition        int    NOT NULL,
                    "offset"         bigint NOT NULL,
                    saga_id          text   NOT NULL,
                    event_id         uuid,
                    event_type       text,
                    consumer         text,
                    reason           text   NOT NULL,
                    source_topic     text,
                    source_partition int,
                    source_offset    bigint,
                    dead_lettered_at timestamptz NOT NULL,
                    PRIMARY KEY (topic, partition, "offset")
                );
                CREATE INDEX tracker_dead_letters_saga ON tracker_dead_letters (saga_id);
                CREATE TABLE tracker_sagas (
                    saga_id         text PRIMARY KEY,
                    status          text        NOT NULL,
                    outcome         text,
                    started_at      timestamptz NOT NULL,
                    updated_at      timestamptz NOT NULL,
                    finished_at     timestamptz,
                    last_event_type text        NOT NULL,
                    events          int         NOT NULL,
                    compensations   int         NOT NULL,
                    dead_letters    int         NOT NULL
                );
                CREATE INDEX tracker_sagas_status ON tracker_sagas (status, started_at);
                """),
        PostgresMigration(
            version: 2, name: "tracker: deadlines",
            sql: """
                -- Each saga's deadlines as the `saga-deadline` headers of its events tell them: the latest state of
                -- one (participant, name) wins, whatever order the headers were read in (see SagaTracker).
                CREATE TABLE tracker_deadlines (
                    saga_id             text        NOT NULL,
                    participant         text        NOT NULL,
                    name                text        NOT NULL,
                    due_at              timestamptz NOT NULL,
                    state               text        NOT NULL CHECK (state IN ('scheduled', 'cancelled', 'fired')),
                    deadline_event_id   uuid,
                    deadline_event_type text,
                    settled_at          timestamptz,
                    late_ms             bigint,
                    observed_at         timestamptz NOT NULL,
                    PRIMARY KEY (saga_id, participant, name)
                );
                CREATE INDEX tracker_deadlines_overdue ON tracker_deadlines (due_at) WHERE state = 'scheduled';
                """),
        PostgresMigration(
            version: 3, name: "tracker: sagas merged from their new events",
            sql: """
                -- The tracker merges a batch's new events into each saga's row instead of reading all its events
                -- again: the latest event and the deciding outcome are kept by (time, event id), as the events sort.
                ALTER TABLE tracker_sagas ADD COLUMN last_event_id uuid, ADD COLUMN outcome_event_id uuid;
                UPDATE tracker_sagas s SET
                    last_event_id = (SELECT e.event_id FROM tracker_events e WHERE e.saga_id = s.saga_id
                                     ORDER BY e.occurred_at DESC, e.event_id DESC LIMIT 1),
                    outcome_event_id = (SELECT e.event_id FROM tracker_events e
                                        WHERE e.saga_id = s.saga_id AND e.occurred_at = s.finished_at
                                        ORDER BY e.event_id LIMIT 1);
                """),
        PostgresMigration(
            version: 4, name: "tracker: fewer index entries per event",
            sql: """
                -- One index serves both the key and every read of the events (all by saga: an inspection, the
                -- stats' steps); each recorded event wrote two before. A saga's few events are sorted when read.
                -- A tracker of an earlier version cannot record into this table (its ON CONFLICT names the old key:
                -- it retries until stopped); the new one, once it holds the lock, goes on from the committed offsets.
                ALTER TABLE tracker_events DROP CONSTRAINT tracker_events_pkey;
                DROP INDEX tracker_events_saga;
                ALTER TABLE tracker_events ADD PRIMARY KEY (saga_id, event_id);
                -- A saga's row is updated by most batches that carry its events. Only running sagas are listed by
                -- status (`--stuck`), so only they are indexed by it, and a finished saga leaves that index; room
                -- left in each page lets the updates that keep the status stay on the page (HOT: no index entry),
                -- where full pages made nearly all of them write an entry into every index.
                DROP INDEX tracker_sagas_status;
                CREATE INDEX tracker_sagas_running ON tracker_sagas (started_at) WHERE status = 'running';
                ALTER TABLE tracker_sagas SET (fillfactor = 70);
                """),
    ]
}
