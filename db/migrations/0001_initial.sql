-- Shotline's first schema: batches of shots, one attempt per ComfyUI prompt, its outputs and verdicts.

CREATE TABLE batches (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source      text NOT NULL,                    -- the shot list it came from (file path or "api")
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shots (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id    uuid NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    shot_key    text NOT NULL,                    -- the id the user gave the shot in the list
    position    integer NOT NULL,                 -- order in the list
    workflow    text NOT NULL,                    -- preset name
    params      jsonb NOT NULL,                   -- prompt, seed, size, ... as given
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'approved', 'needs_review', 'rejected', 'failed', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch_id, shot_key)
);
CREATE INDEX shots_status_idx ON shots (status, batch_id, position);

CREATE TABLE attempts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    shot_id      uuid NOT NULL REFERENCES shots(id) ON DELETE CASCADE,
    attempt_no   integer NOT NULL,
    prompt_id    uuid NOT NULL UNIQUE,            -- chosen by us: the idempotency key on the ComfyUI side
    backend      text NOT NULL,                   -- ComfyUI base URL
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    inputs       jsonb NOT NULL,                  -- the values filled into the preset for this attempt
    error        jsonb,                           -- ComfyUI's validation or execution error, as it sent it
    queued_at    timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    UNIQUE (shot_id, attempt_no)
);

CREATE TABLE outputs (
    id          bigserial PRIMARY KEY,
    attempt_id  uuid NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    node_id     text NOT NULL,
    kind        text NOT NULL,                    -- images, gifs, audio, ...: the key ComfyUI reports them under
    filename    text NOT NULL,
    subfolder   text NOT NULL DEFAULT '',
    folder_type text NOT NULL DEFAULT 'output',   -- ComfyUI's "type": output, temp or input
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outputs_attempt_idx ON outputs (attempt_id);

CREATE TABLE verdicts (
    id          bigserial PRIMARY KEY,
    attempt_id  uuid NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    node_id     text NOT NULL,
    check_name  text NOT NULL,                    -- quality, identity, ...
    score       double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    passed      boolean NOT NULL,
    details     jsonb NOT NULL,                   -- every measurement and reason the node reported
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verdicts_attempt_idx ON verdicts (attempt_id);
