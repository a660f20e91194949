-- What notify_inbox has already announced, so a scan reports only new or changed uploads.
CREATE TABLE IF NOT EXISTS ega_inbox_seen (
    user_name   text        NOT NULL,
    filepath    text        NOT NULL,
    size        bigint      NOT NULL,
    mtime_ns    bigint      NOT NULL,
    checksum    text,
    notified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, filepath)
);
