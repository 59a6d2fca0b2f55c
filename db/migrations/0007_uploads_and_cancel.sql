-- Media a shot or an assembly names, stored by content (any controller on any machine can upload it to the
-- backend that runs the shot), and attempts whose shot was cancelled while they ran (their prompt interrupted).

CREATE TABLE uploads (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    media_type  text NOT NULL,                     -- sniffed from the bytes: image/png, audio/wav, ...
    size_bytes  integer NOT NULL CHECK (size_bytes > 0),
    content     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE attempts
    DROP CONSTRAINT attempts_status_check,
    ADD CONSTRAINT attempts_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'lost', 'cancelled')),
    ALTER COLUMN inputs SET DEFAULT '{}';
