-- APTrust multipart bags and the terminal status a work item sent.
--
-- A multipart bag (<name>.b01.of03.tar, ...) is one intellectual object; each part is its own
-- work item and its own valid bag, ingested when it arrives, in any order. One row per part
-- received records which parts the object holds, so a missing part is visible (never fatal).
CREATE TABLE IF NOT EXISTS apt_object_parts (
    object_id       bigint      NOT NULL REFERENCES apt_objects (id) ON DELETE CASCADE,
    part            integer     NOT NULL,          -- N of .bN.ofM
    parts           integer     NOT NULL,          -- M of .bN.ofM, as that part's name states it
    tar_name        text        NOT NULL,
    etag            text        NOT NULL,
    work_item_id    bigint      NOT NULL,
    file_count      integer     NOT NULL DEFAULT 0, -- files this part stored (new or changed)
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_id, part)
);

-- "Every message gets exactly one terminal answer per attempt": what was sent, so a re-run that
-- finds the work done sends it only if it never went out (message ids are stable per attempt).
ALTER TABLE apt_work_items ADD COLUMN IF NOT EXISTS status_sent text;
ALTER TABLE apt_work_items ADD COLUMN IF NOT EXISTS status_sent_attempt integer;
ALTER TABLE apt_work_items ADD COLUMN IF NOT EXISTS status_sent_at timestamptz;
-- Items that finished before this column existed sent their status as they finished.
UPDATE apt_work_items SET status_sent = lower(status), status_sent_attempt = attempt, status_sent_at = finished_at
 WHERE status_sent IS NULL AND status IN ('Success', 'Failed', 'Cancelled') AND attempt > 0;
