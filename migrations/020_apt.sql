-- APTrust: work items (what the scanner found and how far ingest got), intellectual
-- objects, generic files with stable UUIDs, their checksums and storage records.
-- PREMIS events go to the shared events table (subject = object or file identifier).

CREATE TABLE IF NOT EXISTS apt_work_items (
    id                  bigserial PRIMARY KEY,
    institution         text        NOT NULL,
    bag_name            text        NOT NULL,      -- tar name without .tar
    etag                text        NOT NULL,
    bucket              text        NOT NULL,      -- receiving bucket (or local directory)
    object_key          text        NOT NULL,      -- key of the tar in the receiving bucket
    size                bigint      NOT NULL DEFAULT 0,
    object_identifier   text        NOT NULL,      -- institution/bag_name
    ingest_id           bigint REFERENCES ingests (id) ON DELETE SET NULL,
    stage               text        NOT NULL DEFAULT 'Receive',
    status              text        NOT NULL DEFAULT 'Pending',
    note                text,
    attempt             integer     NOT NULL DEFAULT 0,
    needs_admin_review  boolean     NOT NULL DEFAULT false,
    delete_from_receiving boolean   NOT NULL DEFAULT false,
    reached_store       boolean     NOT NULL DEFAULT false,
    node                text,
    pid                 integer,
    flow_run_id         uuid,
    queued_at           timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (institution, bag_name, etag)
);
CREATE INDEX IF NOT EXISTS apt_work_items_bag_idx ON apt_work_items (institution, bag_name, id DESC);

CREATE TABLE IF NOT EXISTS apt_objects (
    id                  bigserial PRIMARY KEY,
    identifier          text        NOT NULL UNIQUE,   -- institution/bag_name
    institution         text        NOT NULL,
    bag_name            text        NOT NULL,
    title               text,
    description         text,
    access              text,
    storage_option      text        NOT NULL DEFAULT 'Standard',
    bagit_profile       text,
    source_organization text,
    alt_identifier      text,
    bag_group_identifier text,
    state               text        NOT NULL DEFAULT 'A',  -- A active, D deleted
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS apt_files (
    id                  bigserial PRIMARY KEY,
    uuid                uuid        NOT NULL UNIQUE,
    object_id           bigint      NOT NULL REFERENCES apt_objects (id) ON DELETE CASCADE,
    identifier          text        NOT NULL UNIQUE,   -- institution/bag_name/path
    path                text        NOT NULL,
    size                bigint      NOT NULL,
    file_format         text,
    puid                text,
    format_basis        text,
    storage_option      text        NOT NULL,
    state               text        NOT NULL DEFAULT 'A',
    last_work_item_id   bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS apt_checksums (
    id          bigserial PRIMARY KEY,
    file_id     bigint      NOT NULL REFERENCES apt_files (id) ON DELETE CASCADE,
    algorithm   text        NOT NULL,
    digest      text        NOT NULL,
    work_item_id bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (file_id, algorithm, digest)
);

CREATE TABLE IF NOT EXISTS apt_storage_records (
    id          bigserial PRIMARY KEY,
    file_id     bigint      NOT NULL REFERENCES apt_files (id) ON DELETE CASCADE,
    target      text        NOT NULL,
    url         text        NOT NULL,
    size        bigint,
    sha256      text,
    verified_at timestamptz,
    UNIQUE (file_id, url)
);
