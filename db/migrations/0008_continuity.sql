-- Continuity: a shot may continue the shot before it in its scene (`after_shot`). It waits until that shot is
-- approved, then is queued and starts from its last frame; while that shot is rejected, failed or cancelled it is
-- blocked, until that shot is retried (waiting again) or approved by a person (queued). The trigger below moves
-- dependants in the same transaction as the shot they follow, so a crash can never leave one stranded.

ALTER TABLE shots
    DROP CONSTRAINT shots_status_check,
    ADD CONSTRAINT shots_status_check
        CHECK (status IN ('queued', 'running', 'approved', 'needs_review', 'rejected', 'failed', 'cancelled',
                          'waiting', 'blocked')),
    ADD COLUMN after_shot uuid REFERENCES shots (id) ON DELETE SET NULL;

CREATE INDEX shots_after_shot_idx ON shots (after_shot) WHERE after_shot IS NOT NULL;

CREATE FUNCTION shotline_move_dependants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'approved' THEN
        UPDATE shots SET status = 'queued', updated_at = now()
        WHERE after_shot = NEW.id AND status IN ('waiting', 'blocked');
        IF FOUND THEN
            PERFORM pg_notify('shotline_events', 'queued ' || NEW.batch_id::text);
        END IF;
    ELSIF NEW.status IN ('rejected', 'failed', 'cancelled') THEN
        UPDATE shots SET status = 'blocked', updated_at = now() WHERE after_shot = NEW.id AND status = 'waiting';
    ELSIF NEW.status IN ('queued', 'running', 'needs_review', 'waiting') THEN
        UPDATE shots SET status = 'waiting', updated_at = now() WHERE after_shot = NEW.id AND status = 'blocked';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER shots_move_dependants AFTER UPDATE OF status ON shots
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION shotline_move_dependants();

-- Each character's best approved frame per scene (highest identity score), with the shot it came from: the next
-- shot's gallery and reference read the freshest first (its scene's, then earlier scenes', then the library's).
CREATE TABLE continuity_frames (
    batch_id        uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    scene           text NOT NULL,
    character_name  text NOT NULL,
    shot_id         uuid NOT NULL REFERENCES shots (id) ON DELETE CASCADE,
    attempt_id      uuid NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
    score           double precision NOT NULL,
    frame_ref       text NOT NULL,      -- an upload (sha256:...): the approved frame
    face_ref        text,               -- an upload: the character's face crop, when its box was found
    box             jsonb,
    scene_position  integer NOT NULL,   -- the scene's place in the shot list (earlier scenes come after its own)
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, scene, character_name)
);

-- Character state along the story: each entry applies from one shot of the batch on (its list position), until a
-- later entry for the same field replaces it. A field set to "" ends it.
CREATE TABLE character_states (
    id              bigserial PRIMARY KEY,
    batch_id        uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    character_name  text NOT NULL,
    from_position   integer NOT NULL CHECK (from_position >= 0),
    fields          jsonb NOT NULL,
    source          text NOT NULL,      -- 'shot list', 'api' or 'cli'
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX character_states_idx ON character_states (batch_id, character_name, from_position);
