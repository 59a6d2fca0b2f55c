-- Learning from every attempt and every review.
--
-- Each attempt records the value of every learned parameter it ran with (`knobs`: {"cfg": "8.5", "sampler":
-- "euler", "fix:low identity": "rung 2"}), what the learner chose and the statistics behind the choice
-- (`learned`), and its outcome: the status its own verdicts gave the shot, which a person's review replaces.
-- A failure counts against the knobs its reasons point at (`blamed`: blurry -> steps and sampler ...), every
-- knob when they point nowhere known; a fix always counts.
-- learner_outcomes counts them per character x decision x arm: the Beta-Bernoulli posteriors the chooser samples.

ALTER TABLE attempts
    ADD COLUMN outcome text CHECK (outcome IN ('approved', 'needs_review', 'rejected', 'failed')),
    ADD COLUMN knobs jsonb,
    ADD COLUMN blamed jsonb,   -- the knobs its failure counts against (from its reasons); NULL: all of them
    ADD COLUMN learned jsonb;

-- a shot with no character learns under '' (the shots of no character share one set of statistics)
CREATE VIEW learner_outcomes AS
SELECT ch.name AS character_name, k.key AS decision, k.value #>> '{}' AS arm,
       count(*) FILTER (WHERE a.outcome = 'approved') AS successes,
       count(*) FILTER (WHERE a.outcome IN ('rejected', 'failed')
                        AND (a.blamed IS NULL OR a.blamed ? k.key OR k.key LIKE 'fix:%')) AS failures,
       max(a.finished_at) AS last_seen
FROM attempts a
JOIN shots s ON s.id = a.shot_id
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(s.params->'characters') = 'array' AND jsonb_array_length(s.params->'characters') > 0
         THEN s.params->'characters' ELSE '[""]'::jsonb END) AS ch(name)
CROSS JOIN LATERAL jsonb_each(a.knobs) AS k
WHERE a.knobs IS NOT NULL AND a.outcome IN ('approved', 'rejected', 'failed')
GROUP BY 1, 2, 3;

-- A person's decisions, with why: the category teaches (rejections add learned negatives), the note is kept.
CREATE TABLE reviews (
    id          bigserial PRIMARY KEY,
    shot_id     uuid NOT NULL REFERENCES shots (id) ON DELETE CASCADE,
    attempt_id  uuid REFERENCES attempts (id) ON DELETE SET NULL,   -- the attempt decided on (the shot's last)
    decision    text NOT NULL CHECK (decision IN ('approve', 'reject')),
    category    text CHECK (category IN ('wrong_face', 'extra_people', 'hands', 'outfit', 'blur', 'style', 'other')),
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_shot_idx ON reviews (shot_id);

-- Negative prompt terms learned per character from rejections; a removed one stays removed (removed_at) until a
-- new rejection teaches it again.
CREATE TABLE learned_negatives (
    character_name  text NOT NULL,
    term            text NOT NULL,
    category        text NOT NULL,
    times           integer NOT NULL DEFAULT 1,                     -- rejections that taught it
    last_shot_id    uuid REFERENCES shots (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    removed_at      timestamptz,
    PRIMARY KEY (character_name, term)
);
