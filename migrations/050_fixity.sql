-- Fixity audit: when each stored object was last re-verified and how it went, and one row
-- per audit run (its budget, and whether it stopped early). The audit picks the oldest
-- check first (never checked before all), so a run stopped by its byte budget resumes
-- where it left off. Objects are keyed per domain by what locates their bytes:
-- EGA vault key, APT file UUID, FITS OID, NRAO "<ngas file id>#<version>".

CREATE TABLE IF NOT EXISTS fixity_checks (
    domain           text        NOT NULL,
    item_key         text        NOT NULL,
    subject          text        NOT NULL,        -- the PREMIS event's subject (stable id, file identifier, OID)
    ingest_id        bigint REFERENCES ingests (id) ON DELETE SET NULL,
    size             bigint      NOT NULL DEFAULT 0,   -- bytes one check reads (all copies)
    last_checked_at  timestamptz NOT NULL,
    last_outcome     text        NOT NULL,        -- success | failure
    last_problem     text,                        -- mismatch | missing (NULL on success)
    last_detail      text,
    last_run         text,                        -- the audit run that checked it last
    checks           integer     NOT NULL DEFAULT 1,
    failures         integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (domain, item_key)
);
CREATE INDEX IF NOT EXISTS fixity_checks_due_idx ON fixity_checks (domain, last_checked_at);
CREATE INDEX IF NOT EXISTS fixity_checks_failed_idx ON fixity_checks (domain) WHERE last_outcome <> 'success';

CREATE TABLE IF NOT EXISTS fixity_runs (
    run_key       text        PRIMARY KEY,        -- the flow run id (or a uuid outside Prefect)
    domains       text[]      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    budget_bytes  bigint,
    planned       integer     NOT NULL DEFAULT 0,
    checked       integer     NOT NULL DEFAULT 0,
    failed        integer     NOT NULL DEFAULT 0,
    bytes         bigint      NOT NULL DEFAULT 0,
    remaining     integer     NOT NULL DEFAULT 0,  -- due objects the budget left for the next run
    state         text        NOT NULL DEFAULT 'running'  -- running | completed | failed
);
CREATE INDEX IF NOT EXISTS fixity_runs_started_idx ON fixity_runs (started_at DESC);
