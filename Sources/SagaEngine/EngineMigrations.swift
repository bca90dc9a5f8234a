import SagaPostgres

/// The engine's own tables, created in every service's schema next to the service's tables:
/// the outbox (what to publish), the inbox (what was handled), the dead-letter log and the deadlines.
public enum EngineMigrations {
    /// Outbox shards: relays own shards through advisory locks; a saga's rows are all in one shard.
    public static let shardCount = 16

    /// Migration versions 1–99 are the engine's; services number theirs from 100.
    public static let all: [PostgresMigration] = [
        PostgresMigration(
            version: 1, name: "engine: outbox, inbox, dead letters",
            sql: """
                CREATE TABLE saga_outbox (
                    id           bigserial PRIMARY KEY,
                    shard        int         NOT NULL,
                    saga_id      text        NOT NULL,
                    event_id     uuid,
                    event_type   text,
                    topic        text        NOT NULL,
                    key          bytea,
                    headers      jsonb       NOT NULL DEFAULT '[]',
                    payload      bytea       NOT NULL,
                    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
                    published_at timestamptz,
                    attempts     int         NOT NULL DEFAULT 0,
                    last_error   text
                );
                CREATE INDEX saga_outbox_pending ON saga_outbox (shard, id) WHERE published_at IS NULL;
                CREATE INDEX saga_outbox_published ON saga_outbox (published_at) WHERE published_at IS NOT NULL;
                CREATE INDEX saga_outbox_saga ON saga_outbox (saga_id);

                -- Wake the relay of this schema when a transaction that wrote outbox rows commits.
                CREATE FUNCTION saga_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_notify('saga_outbox_' || TG_TABLE_SCHEMA, '');
                    RETURN NULL;
                END $$;
                CREATE TRIGGER saga_outbox_notify AFTER INSERT ON saga_outbox
                    FOR EACH STATEMENT EXECUTE FUNCTION saga_outbox_notify();

                CREATE TABLE saga_inbox (
                    event_id         uuid PRIMARY KEY,
                    event_type       text        NOT NULL,
                    saga_id          text        NOT NULL,
                    source_topic     text        NOT NULL,
                    source_partition int         NOT NULL,
                    source_offset    bigint      NOT NULL,
                    handled_at       timestamptz NOT NULL DEFAULT clock_timestamp()
                );
                CREATE INDEX saga_inbox_handled_at ON saga_inbox (handled_at);

                CREATE TABLE saga_dead_letters (
                    source_topic     text        NOT NULL,
                    source_partition int         NOT NULL,
                    source_offset    bigint      NOT NULL,
                    saga_id          text,
                    event_id         uuid,
                    reason           text        NOT NULL,
                    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (source_topic, source_partition, source_offset)
                );
                """),
        PostgresMigration(
            version: 2, name: "engine: park outbox rows the broker refuses for good",
            sql: """
                ALTER TABLE saga_outbox ADD COLUMN failed_at timestamptz;
                DROP INDEX saga_outbox_pending;
                CREATE INDEX saga_outbox_pending ON saga_outbox (shard, id) WHERE published_at IS NULL AND failed_at IS NULL;
                CREATE INDEX saga_outbox_failed ON saga_outbox (failed_at) WHERE failed_at IS NOT NULL;
                """),
        PostgresMigration(
            version: 3, name: "engine: delete outbox rows once acknowledged; wake only an idle relay",
            sql: """
                -- The relay deletes a row once the broker acknowledged it: nothing is kept as "published".
                DELETE FROM saga_outbox WHERE published_at IS NOT NULL;
                DROP INDEX saga_outbox_published;
                DROP INDEX saga_outbox_pending;
                ALTER TABLE saga_outbox DROP COLUMN published_at;
                CREATE INDEX saga_outbox_pending ON saga_outbox (shard, id) WHERE failed_at IS NULL;

                -- One flag per shard, raised by the relay owning the shard when it finds nothing to publish and
                -- lowered when it works again. A committing insert notifies only while its shard's flag is up,
                -- so a busy relay costs the writers no NOTIFY (PostgreSQL serialises notifying commits).
                CREATE TABLE saga_outbox_wake (
                    shard int     PRIMARY KEY,
                    idle  boolean NOT NULL DEFAULT false
                );
                INSERT INTO saga_outbox_wake (shard) SELECT generate_series(0, \(shardCount - 1));

                DROP TRIGGER saga_outbox_notify ON saga_outbox;
                DROP FUNCTION saga_outbox_notify();
                -- Once per inserting statement. The shared advisory lock is held until the transaction ends: a
                -- relay going idle raises its flag, then waits until it can take this lock exclusively (no
                -- inserting transaction in flight) before its last look at the outbox. So every insert either
                -- committed before that look or reads the raised flag and notifies (READ COMMITTED writers; a
                -- REPEATABLE READ writer may read an older flag and leave its row to the fallback poll, and a
                -- SERIALIZABLE writer's read of the flag can conflict with the relay flipping it).
                CREATE FUNCTION saga_outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock_shared(hashtext('saga_outbox_wake:' || TG_TABLE_SCHEMA), 0);
                    IF EXISTS (
                        SELECT 1 FROM saga_outbox_wake w WHERE w.idle AND w.shard IN (SELECT shard FROM new_rows)
                    ) THEN
                        PERFORM pg_notify('saga_outbox_' || TG_TABLE_SCHEMA, '');
                    END IF;
                    RETURN NULL;
                END $$;
                CREATE TRIGGER saga_outbox_wake AFTER INSERT ON saga_outbox
                    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION saga_outbox_wake();
                """),
        PostgresMigration(
            version: 4, name: "engine: a parked outbox row holds back the later rows of its saga",
            sql: """
                -- The relay reads no row of a saga that has a parked row: one probe of this (normally empty)
                -- index per row read.
                CREATE INDEX saga_outbox_parked_saga ON saga_outbox (saga_id) WHERE failed_at IS NOT NULL;
                """),
        PostgresMigration(
            version: 5, name: "engine: deadlines",
            sql: """
                -- A saga's deadlines (one per name): the event to deliver to this service's handler when it falls.
                -- The worker fires due rows and deletes them in the transaction that handles their events.
                CREATE TABLE saga_deadlines (
                    id            bigserial   NOT NULL UNIQUE,
                    saga_id       text        NOT NULL,
                    name          text        NOT NULL,
                    due_at        timestamptz NOT NULL,
                    event_id      uuid        NOT NULL,
                    event_type    text        NOT NULL,
                    event_version int         NOT NULL,
                    data          jsonb       NOT NULL,
                    causation_id  uuid,
                    traceparent   text,
                    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
                    PRIMARY KEY (saga_id, name)
                );
                CREATE INDEX saga_deadlines_due ON saga_deadlines (due_at);
                """),
        PostgresMigration(
            version: 6, name: "engine: vacuum never truncates the outbox",
            sql: """
                -- Truncating the empty pages at the end of the table takes an ACCESS EXCLUSIVE lock, which blocks
                -- every writer's outbox insert and the relay's reads meanwhile, and a vacuum that cannot get it at
                -- once retries every 50 ms. A queue table fills those pages again within seconds anyway.
                ALTER TABLE saga_outbox SET (vacuum_truncate = false);
                """),
        PostgresMigration(
            version: 7, name: "engine: no index of every outbox row by saga",
            sql: """
                -- Every outbox row paid an entry in it (written with the row, cleaned up by vacuum after its
                -- deletion), for lookups nobody makes on the hot path: the relay asks only whether a saga has a
                -- parked row (saga_outbox_parked_saga), and the outbox holds only what is not yet published, so
                -- listing one saga's rows (`saga inspect`, the chaos checks) scans that.
                DROP INDEX saga_outbox_saga;
                """),
    ]
}
