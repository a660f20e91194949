-- What an NRAO ingest that has not completed yet already holds: the locators it gave its products
-- (so a re-run after a failure or a crash archives under the same NGAS file ids, instead of minting
-- new ones and orphaning what the first attempt stored) and every file version NGAS confirmed for
-- it (so a re-run does not push an identical file again). NGAS cannot delete, so these rows are the
-- only record of those versions until the product is recorded; then, in the same transaction, the
-- rows are removed and any confirmed version the product does not use goes to `orphans`.

CREATE TABLE IF NOT EXISTS nrao_attempt_locators (
    product_group  text        NOT NULL,   -- the ingest's natural key (<kind>:<source>)
    slot           text        NOT NULL,   -- a staged file name, or role:<type> for timestamped group artifacts
    locator        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_group, slot)
);

CREATE TABLE IF NOT EXISTS nrao_attempt_files (
    ngas_file_id          text        NOT NULL,
    file_version          integer     NOT NULL,
    product_group         text        NOT NULL,
    ingest_id             bigint REFERENCES ingests (id) ON DELETE SET NULL,
    filename              text        NOT NULL,   -- staged name
    locator               text        NOT NULL,
    role                  text        NOT NULL,
    size                  bigint      NOT NULL,
    mime_type             text        NOT NULL,
    checksums             jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- ours, hex (sha256 among them)
    ngas_checksum         text        NOT NULL,
    ngas_checksum_plugin  text        NOT NULL,
    ngas_disk_id          text,
    ngas_url              text        NOT NULL,
    uri                   text        NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ngas_file_id, file_version)
);
CREATE INDEX IF NOT EXISTS nrao_attempt_files_group_idx ON nrao_attempt_files (product_group);
