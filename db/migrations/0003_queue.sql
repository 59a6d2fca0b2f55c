-- Postgres as the durable job queue: leases on claimed shots, corrections between attempts, batch webhooks.

ALTER TABLE batches
    ADD COLUMN webhook_url   text,
    ADD COLUMN notified_at   timestamptz,          -- when the completion webhook was delivered
    ADD COLUMN finished_at   timestamptz;

ALTER TABLE shots
    ADD COLUMN priority      integer NOT NULL DEFAULT 0,
    ADD COLUMN max_attempts  integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 20),
    ADD COLUMN claimed_by    text,                 -- controller process holding the shot
    ADD COLUMN lease_until   timestamptz,          -- the claim lapses after this unless renewed
    ADD COLUMN next_params   jsonb,                -- corrected values for the next attempt (NULL: the shot's own)
    ADD COLUMN next_correction jsonb;              -- what the correction changed and why

CREATE INDEX shots_queued_idx ON shots (priority DESC, created_at, position) WHERE status = 'queued';
CREATE INDEX shots_leased_idx ON shots (lease_until) WHERE status = 'running';

ALTER TABLE attempts
    ADD COLUMN correction jsonb,                   -- {"changes": {...}, "reason": "..."} or NULL for the first try
    DROP CONSTRAINT attempts_status_check,
    ADD CONSTRAINT attempts_status_check CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'lost'));
