-- Shared registry tables: one row per ingest, PREMIS-style events, stored files.
-- Every write is an upsert on the natural key, so a retried step duplicates nothing.

CREATE TABLE IF NOT EXISTS ingests (
    id            bigserial PRIMARY KEY,
    domain        text        NOT NULL,
    natural_key   text        NOT NULL,
    state         text        NOT NULL DEFAULT 'received',
    attempts      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    last_error    text,
    flow_run_id   uuid,
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (domain, natural_key)
);
CREATE INDEX IF NOT EXISTS ingests_state_idx ON ingests (state, updated_at);

CREATE TABLE IF NOT EXISTS events (
    id              bigserial PRIMARY KEY,
    event_uuid      uuid        NOT NULL UNIQUE,  -- deterministic per (ingest, subject, type, discriminator)
    ingest_id       bigint      REFERENCES ingests (id) ON DELETE CASCADE,
    subject         text        NOT NULL,          -- the object or file the event is about
    event_type      text        NOT NULL,          -- PREMIS: ingestion, fixity check, message digest calculation, ...
    outcome         text        NOT NULL,          -- success | failure | skipped
    detail          text,
    outcome_detail  text,
    agent           text        NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_ingest_idx ON events (ingest_id);

CREATE TABLE IF NOT EXISTS files (
    id          bigserial PRIMARY KEY,
    domain      text        NOT NULL,
    file_key    text        NOT NULL,   -- the domain's stable name for the stored file
    ingest_id   bigint      REFERENCES ingests (id) ON DELETE SET NULL,
    vault_uri   text        NOT NULL,
    size        bigint      NOT NULL,
    checksums   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain, file_key)
);
