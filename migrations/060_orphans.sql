-- Things stored somewhere that belong to no recorded object, and cannot be deleted by us
-- (NGAS has no delete): recorded once per location, reported by reconcile until a person
-- resolves them. Removable temporaries are not listed here: reconcile removes them and
-- records a PREMIS deletion event instead.
CREATE TABLE IF NOT EXISTS orphans (
    id           bigserial PRIMARY KEY,
    domain       text        NOT NULL,
    location     text        NOT NULL,   -- e.g. ngas://host/file_id?version=2, s3://bucket/key
    size         bigint,
    detail       text,                   -- why it is an orphan, and which ingest left it
    ingest_id    bigint REFERENCES ingests (id) ON DELETE SET NULL,
    found_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolution   text,
    UNIQUE (domain, location)
);
CREATE INDEX IF NOT EXISTS orphans_open_idx ON orphans (domain) WHERE resolved_at IS NULL;
