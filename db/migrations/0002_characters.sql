-- Characters in the library, their reference images, and identity scores per character per attempt.

CREATE TABLE characters (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    folder      text NOT NULL UNIQUE,             -- folder name in models/shotline_characters
    name        text NOT NULL,
    style       text NOT NULL CHECK (style IN ('anime', 'photo')),
    sheet       jsonb NOT NULL,                   -- the whole character.yaml as parsed
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE character_references (
    id            bigserial PRIMARY KEY,
    character_id  uuid NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
    file_name     text NOT NULL,
    sha256        text NOT NULL,                  -- what the embedding cache is keyed by
    size_bytes    integer NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (character_id, file_name)
);

CREATE TABLE character_scores (
    id              bigserial PRIMARY KEY,
    verdict_id      bigint NOT NULL REFERENCES verdicts(id) ON DELETE CASCADE,
    attempt_id      uuid NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    character_name  text NOT NULL,
    score           double precision CHECK (score IS NULL OR (score >= 0 AND score <= 1)),  -- NULL: not on screen
    threshold       double precision,
    passed          boolean NOT NULL,
    details         jsonb NOT NULL
);
CREATE INDEX character_scores_name_idx ON character_scores (character_name);
