-- NRAO products archived in NGAS. One row per science product (its locator is the
-- archive's identifier; product_key, "<science type>:<file name>", is how a second
-- ingest of the same product is recognised), one row per archived NGAS file version,
-- and the FITS header metadata of every image. Rows are written only after NGAS
-- confirmed every file's CRC, in one transaction; every write is an upsert.

CREATE TABLE IF NOT EXISTS nrao_products (
    id              bigserial PRIMARY KEY,
    locator         text        NOT NULL UNIQUE,   -- uid://evla/calibration/<uuid>, ...
    product_key     text        NOT NULL UNIQUE,   -- science type + file name: reingest detection
    ingestion_type  text        NOT NULL,          -- calibration | image | observation | seci
    product_type    text        NOT NULL,          -- execution_block | calibration | image
    filename        text        NOT NULL,          -- the science product's staged name
    telescope       text        NOT NULL,
    input_locator   text,                          -- the EB of a calibration, the calibration of an image
    product_group   text        NOT NULL,          -- the ingest's natural key (one request's products)
    ingest_id       bigint REFERENCES ingests (id) ON DELETE SET NULL,
    ingest_count    integer     NOT NULL DEFAULT 1, -- 1 + number of reingests
    manifest        jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- aux metadata, image header summary
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS nrao_products_group_idx ON nrao_products (product_group);
CREATE INDEX IF NOT EXISTS nrao_products_input_idx ON nrao_products (input_locator);

CREATE TABLE IF NOT EXISTS nrao_product_files (
    id                    bigserial PRIMARY KEY,
    product_id            bigint REFERENCES nrao_products (id) ON DELETE CASCADE,  -- NULL: group-level ancillary
    product_group         text        NOT NULL,
    ingest_id             bigint REFERENCES ingests (id) ON DELETE SET NULL,
    filename              text        NOT NULL,   -- name relative to the staging directory
    locator               text        NOT NULL,   -- the science or ancillary product the file belongs to
    role                  text        NOT NULL,   -- ScienceProductType / AncillaryProductType value
    ngas_file_id          text        NOT NULL,
    file_version          integer     NOT NULL,
    size                  bigint      NOT NULL,
    mime_type             text        NOT NULL,
    checksums             jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- ours, hex, computed while streaming
    ngas_checksum         text        NOT NULL,   -- as NGAS reported it (decimal string)
    ngas_checksum_plugin  text        NOT NULL,
    ngas_disk_id          text,
    ngas_url              text        NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ngas_file_id, file_version)
);
CREATE INDEX IF NOT EXISTS nrao_product_files_product_idx ON nrao_product_files (product_id);
CREATE INDEX IF NOT EXISTS nrao_product_files_group_idx ON nrao_product_files (product_group);

CREATE TABLE IF NOT EXISTS nrao_images (
    product_id         bigint PRIMARY KEY REFERENCES nrao_products (id) ON DELETE CASCADE,
    filename           text NOT NULL,
    ra_deg             double precision,   -- world position of the central pixel
    dec_deg            double precision,
    naxis1             integer,
    naxis2             integer,
    bmaj_deg           double precision,
    bmin_deg           double precision,
    bpa_deg            double precision,
    resolution_arcsec  double precision,   -- sqrt(BMAJ * BMIN) * 3600
    beam_axial_ratio   double precision,
    date_obs           text,
    date_end           text,
    freq_min_hz        double precision,
    freq_max_hz        double precision,
    channel_width_hz   double precision,
    n_channels         integer,
    project            text,
    polarizations      text[] NOT NULL DEFAULT '{}',
    telescope          text,
    object             text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS nrao_images_position_idx ON nrao_images (ra_deg, dec_deg);
