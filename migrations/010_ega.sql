-- EGA: one row per upload (user, filepath, encrypted checksum). A re-upload of the
-- same path with new content disables the older row; session keys are kept only as
-- their sha256, to refuse a key reused for a different file.

CREATE TABLE IF NOT EXISTS ega_files (
    id                       bigserial PRIMARY KEY,
    ingest_id                bigint REFERENCES ingests (id) ON DELETE SET NULL,
    stable_id                text        NOT NULL,
    user_name                text        NOT NULL,
    filepath                 text        NOT NULL,
    upload_checksum          text        NOT NULL,
    upload_checksum_type     text        NOT NULL,
    upload_md5               text,
    upload_sha256            text,
    upload_size              bigint,
    decrypted_checksum       text,
    decrypted_checksum_type  text,
    decrypted_md5            text,
    decrypted_sha256         text,
    decrypted_size           bigint,
    archive_checksum         text,
    archive_checksum_type    text,
    archive_size             bigint,
    archive_uri              text,
    archive_key              text,
    status                   text        NOT NULL DEFAULT 'received',
    error                    text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_name, filepath, upload_checksum)
);
CREATE INDEX IF NOT EXISTS ega_files_path_idx ON ega_files (user_name, filepath);
CREATE INDEX IF NOT EXISTS ega_files_stable_idx ON ega_files (stable_id);

CREATE TABLE IF NOT EXISTS ega_session_keys (
    key_sha256  text PRIMARY KEY,
    user_name   text        NOT NULL,
    filepath    text        NOT NULL,
    file_id     bigint REFERENCES ega_files (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
