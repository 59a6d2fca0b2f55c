-- The LoRA registry: every version of a character's LoRA, which one is active, and the validation that decided it.
--
-- file_name is relative to ComfyUI's models/loras (shotline/<character folder>/v<N>.safetensors). validation keeps
-- the seeds, the per-seed identity scores of the candidate and of the version it was measured against, their
-- means, the decision and why; NULL when the version was activated without one.

CREATE TABLE character_loras (
    id              bigserial PRIMARY KEY,
    character_name  text NOT NULL,                -- the character's folder in the library
    version         integer NOT NULL CHECK (version >= 1),
    file_name       text NOT NULL,
    sha256          text NOT NULL,
    size_bytes      bigint NOT NULL CHECK (size_bytes > 0),
    strength        double precision NOT NULL DEFAULT 1.0,
    status          text NOT NULL CHECK (status IN ('candidate', 'active', 'retired', 'rejected')),
    validation      jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    UNIQUE (character_name, version)
);
CREATE UNIQUE INDEX character_loras_one_active ON character_loras (character_name) WHERE status = 'active';
