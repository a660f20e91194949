-- When an unfinished NRAO ingest first staged its product. A re-run stages with the same time, so
-- its timestamped artifact names, its manifest and its ingestion artifacts tar come out identical,
-- and the copies an earlier attempt put in NGAS are reused instead of archived again. Removed with
-- the attempt's other rows (041) when the product is recorded.
CREATE TABLE IF NOT EXISTS nrao_attempt_stagings (
    product_group  text        PRIMARY KEY,   -- the ingest's natural key (<kind>:<source>)
    staged_at      timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
