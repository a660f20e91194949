-- EGA over the SDA (Federated EGA) protocol: the accession id arrives after verification, so an
-- upload row exists without a stable_id until then; sda_file_id is the node's own id for the upload
-- (the archive path and the file_id of ingestion-verification). A cancel that arrives before any
-- row exists for its upload is kept in ega_sda_cancels: it calls off every ingest of that upload whose
-- trigger was received before it (and none received after).
ALTER TABLE ega_files ALTER COLUMN stable_id DROP NOT NULL;
ALTER TABLE ega_files ADD COLUMN IF NOT EXISTS protocol text NOT NULL DEFAULT 'legacy';
ALTER TABLE ega_files ADD COLUMN IF NOT EXISTS sda_file_id text;
ALTER TABLE ega_files ADD COLUMN IF NOT EXISTS accession_requested_at timestamptz;
CREATE UNIQUE INDEX IF NOT EXISTS ega_files_sda_file_id_idx ON ega_files (sda_file_id) WHERE sda_file_id IS NOT NULL;
-- One accession names one SDA upload.
CREATE UNIQUE INDEX IF NOT EXISTS ega_files_sda_accession_idx ON ega_files (stable_id)
    WHERE protocol = 'sda' AND stable_id IS NOT NULL AND status <> 'disabled';

CREATE TABLE IF NOT EXISTS ega_sda_cancels (
    id                  bigserial PRIMARY KEY,
    user_name           text        NOT NULL,
    filepath            text        NOT NULL,
    encrypted_checksum  text,
    correlation_id      text,
    received_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_name, filepath, received_at)
);
-- When the trigger behind the current ingest of a row was received: a cancel received later calls it off.
ALTER TABLE ega_files ADD COLUMN IF NOT EXISTS triggered_at timestamptz;
