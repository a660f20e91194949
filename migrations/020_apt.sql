-- APTrust: work items (what the scanner found and how far ingest got), the interim
-- per-file state of an ingest in progress, intellectual objects, generic files with
-- stable UUIDs, their checksums and storage records. PREMIS events go to the shared
-- events table (subject = object or file identifier; one shared `ingests` row per
-- work item, so event UUIDs are stable across retries of one work item).

CREATE TABLE IF NOT EXISTS apt_work_items (
    id                  bigserial PRIMARY KEY,
    institution         text        NOT NULL,
    bag_name            text        NOT NULL,      -- clean bag name (tar name minus .tar / .bNN.ofNN)
    tar_name            text        NOT NULL,      -- the key's basename, as received
    etag                text        NOT NULL,
    bucket              text        NOT NULL,      -- receiving bucket (or local directory)
    object_key          text        NOT NULL,      -- key of the tar in the receiving bucket
    size                bigint      NOT NULL DEFAULT 0,
    object_identifier   text        NOT NULL,      -- institution/bag_name
    ingest_id           bigint REFERENCES ingests (id) ON DELETE SET NULL,
    stage               text        NOT NULL DEFAULT 'Receive',
    status              text        NOT NULL DEFAULT 'Pending',  -- Pending Started Success Failed Cancelled Suspended
    note                text,
    errors              jsonb       NOT NULL DEFAULT '[]'::jsonb, -- validation errors, verbatim
    error_kind          text,                      -- user | system (NULL while not failed)
    attempt             integer     NOT NULL DEFAULT 0,
    needs_admin_review  boolean     NOT NULL DEFAULT false,
    delete_from_receiving boolean   NOT NULL DEFAULT false,
    deleted_from_receiving_at timestamptz,
    reached_store       boolean     NOT NULL DEFAULT false,
    metadata            jsonb       NOT NULL DEFAULT '{}'::jsonb, -- interim: scan, validation, reingest results
    node                text,
    pid                 integer,
    flow_run_id         uuid,
    queued_at           timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- No UNIQUE (institution, bag_name, etag): a bag whose object was deleted is ingested
-- again under the same etag. The scanner decides under an advisory lock instead.
CREATE INDEX IF NOT EXISTS apt_work_items_bag_idx ON apt_work_items (institution, bag_name, id DESC);
CREATE INDEX IF NOT EXISTS apt_work_items_status_idx ON apt_work_items (status, updated_at);

-- One row per file of a bag while its work item is in progress (APTrust kept these in
-- Redis). Deleted at cleanup; kept after a system failure so a re-run resumes.
CREATE TABLE IF NOT EXISTS apt_ingest_files (
    work_item_id    bigint      NOT NULL REFERENCES apt_work_items (id) ON DELETE CASCADE,
    path            text        NOT NULL,          -- relative to the bag directory
    file_type       text        NOT NULL,          -- payload_file | tag_file | manifest | tag_manifest | fetch.txt
    size            bigint      NOT NULL,
    checksums       jsonb       NOT NULL,          -- md5 sha1 sha256 sha512 computed at ingest
    manifest_digests jsonb      NOT NULL DEFAULT '{}'::jsonb,  -- algorithm → digest the bag's (tag) manifests list
    modified_at     timestamptz,
    uuid            uuid,                          -- set by the reingest check
    preserve        boolean     NOT NULL DEFAULT false,  -- false: bagit.txt, fetch.txt, manifests
    needs_save      boolean     NOT NULL DEFAULT false,  -- new or changed (reingest check)
    existing_file_id bigint,                       -- apt_files.id of an earlier version
    staged          boolean     NOT NULL DEFAULT false,
    puid            text,
    mime            text,
    format_name     text,
    format_basis    text,
    identified_by   text,
    stored          jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- target → {url, size, sha256}
    verified        jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- target → {url, size, sha256, at}
    PRIMARY KEY (work_item_id, path)
);

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
    created_by_work_item bigint,
    last_work_item_id   bigint,
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
    file_format         text,                          -- MIME type
    puid                text,                          -- PRONOM id
    format_name         text,
    format_basis        text,                          -- Siegfried's match basis, or the fallback used
    storage_option      text        NOT NULL,
    state               text        NOT NULL DEFAULT 'A',
    file_modified       timestamptz,
    missing_since_work_item bigint,                    -- absent from a later version of the bag (kept, as APTrust does)
    created_by_work_item bigint,
    last_work_item_id   bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS apt_files_object_idx ON apt_files (object_id);

-- One row per (file, algorithm, work item): the newest row per algorithm is the
-- file's current digest, and a digest that changes back (A → B → A) is still new.
CREATE TABLE IF NOT EXISTS apt_checksums (
    id          bigserial PRIMARY KEY,
    file_id     bigint      NOT NULL REFERENCES apt_files (id) ON DELETE CASCADE,
    algorithm   text        NOT NULL,
    digest      text        NOT NULL,
    work_item_id bigint     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (file_id, algorithm, work_item_id)
);

CREATE TABLE IF NOT EXISTS apt_storage_records (
    id          bigserial PRIMARY KEY,
    file_id     bigint      NOT NULL REFERENCES apt_files (id) ON DELETE CASCADE,
    target      text        NOT NULL,
    url         text        NOT NULL,
    size        bigint,
    sha256      text,
    work_item_id bigint,
    verified_at timestamptz,
    UNIQUE (file_id, url)
);
