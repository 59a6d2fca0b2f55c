-- Assembly as a durable job: the API queues a request here and a service's worker claims it under a lease
-- (FOR UPDATE SKIP LOCKED), renews the lease while it runs, and records the outcome. A job whose lease lapsed
-- (its controller died) is claimed again, up to max_attempts claims; `shotline assemble` runs its own job in
-- place with max_attempts 1.

CREATE TABLE assembly_jobs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id      uuid NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    request       jsonb NOT NULL,                  -- the parsed request in its JSON form (AssemblyRequest)
    scenes_dir    text NOT NULL,                   -- where its scene MP4s go, absolute
    library_dir   text NOT NULL,                   -- the media library its episode goes under, absolute
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error         jsonb,                           -- {message, field, status}: the last failure (HTTP-like status)
    claimed_by    text,                            -- the controller running it (kept after it ends)
    lease_until   timestamptz,                     -- the claim lapses after this unless renewed
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),        -- claims so far
    max_attempts  integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 20),
    assembly_ids  uuid[] NOT NULL DEFAULT '{}',    -- when done: the assemblies written, scenes then the episode
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,                     -- the latest claim
    finished_at   timestamptz,
    CHECK (status <> 'running' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL))
);
CREATE INDEX assembly_jobs_queued_idx ON assembly_jobs (created_at) WHERE status = 'queued';
CREATE INDEX assembly_jobs_leased_idx ON assembly_jobs (lease_until) WHERE status = 'running';
CREATE INDEX assembly_jobs_batch_idx ON assembly_jobs (batch_id, created_at);
