-- Assemblies: a scene cut from a batch's approved shots, or an episode cut from scenes; each file written is a row.

CREATE TABLE assemblies (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id       uuid NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('scene', 'episode')),
    scene_key      text,                           -- scenes: the shots' `scene`
    season         integer CHECK (season BETWEEN 1 AND 99),      -- episodes only
    episode        integer CHECK (episode BETWEEN 1 AND 99),
    title          text,                           -- as given (the file name holds it sanitised)
    output_path    text NOT NULL,                  -- the MP4 (H.264 + AAC), absolute
    thumbnail_path text NOT NULL,                  -- a JPEG of its middle frame, beside it
    duration_s     double precision NOT NULL CHECK (duration_s > 0),
    frame_count    integer NOT NULL CHECK (frame_count > 0),
    fps            double precision NOT NULL CHECK (fps > 0),
    width          integer NOT NULL CHECK (width > 0),
    height         integer NOT NULL CHECK (height > 0),
    crossfade_s    double precision NOT NULL CHECK (crossfade_s >= 0),  -- as applied: whole frames
    music_path     text,                           -- ducked under the dialogue, when given
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'scene') = (scene_key IS NOT NULL)),
    CHECK ((kind = 'episode') = (season IS NOT NULL AND episode IS NOT NULL AND title IS NOT NULL))
);
CREATE INDEX assemblies_batch_idx ON assemblies (batch_id, created_at);

-- What an assembly is made of, in cut order: a scene's shots (and the output file used), an episode's scenes.
CREATE TABLE assembly_parts (
    assembly_id        uuid NOT NULL REFERENCES assemblies(id) ON DELETE CASCADE,
    position           integer NOT NULL,
    shot_id            uuid REFERENCES shots(id) ON DELETE CASCADE,
    output_id          bigint REFERENCES outputs(id) ON DELETE SET NULL,   -- the file of the shot that was cut in
    scene_assembly_id  uuid REFERENCES assemblies(id) ON DELETE CASCADE,
    start_s            double precision NOT NULL CHECK (start_s >= 0),      -- where it starts in the cut
    duration_s         double precision NOT NULL CHECK (duration_s > 0),    -- how long it lasts, crossfades included
    PRIMARY KEY (assembly_id, position),
    CHECK ((shot_id IS NULL) <> (scene_assembly_id IS NULL))
);
CREATE INDEX assembly_parts_shot_idx ON assembly_parts (shot_id);
CREATE INDEX assembly_parts_scene_idx ON assembly_parts (scene_assembly_id);
