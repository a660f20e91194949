-- An ingest that needs a person: a fixity mismatch, a missing object, or an ingest whose
-- automatic re-runs ran out. Set by mark_for_review, cleared by clear_review; the ingest's
-- own state is left as it was, so the record of what happened is not rewritten.
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS review_reason text;
ALTER TABLE ingests ADD COLUMN IF NOT EXISTS review_at timestamptz;
CREATE INDEX IF NOT EXISTS ingests_review_idx ON ingests (domain) WHERE review_reason IS NOT NULL;
