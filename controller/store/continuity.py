"""What carries over from shot to shot, in PostgreSQL: the approved shot a shot continues, its scene's colour
anchor, each character's best approved frame per scene, and each character's state along the story.

    shots.after_shot     the shot a `continuity: previous` shot continues (its status follows that shot's through
                         the trigger in db/migrations/0008_continuity.sql)
    continuity_frames    (batch, scene, character) -> the highest-scoring approved frame and face crop
    character_states     (batch, character, from position) -> fields; a shot's state is every entry at or before
                         its position, later ones winning field by field ('' clears a field)
"""
from __future__ import annotations

import uuid

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline.core.characters import STATE_FIELDS

from shotline_controller.store.shots import ATTEMPT_OUTPUTS
from shotline_controller.store.status import AttemptStatus, ShotStatus


# where a scene first appears in its batch's list (scenes are ordered by it): of %(batch)s and %(scene)s
_SCENE_POSITION = ("(SELECT coalesce(min(position), 0) FROM shots WHERE batch_id = %(batch)s "
                   "AND params->>'scene' = %(scene)s)")


def merged_state(entries) -> dict:
    """The state the entries (in story order) leave: later entries win field by field; '' clears a field."""
    state: dict[str, str] = {}
    for fields in entries:
        for field, value in fields.items():
            if value == "":
                state.pop(field, None)
            else:
                state[field] = value
    return {field: state[field] for field in STATE_FIELDS if field in state}


class ContinuityStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def approved_attempt(self, shot_id: uuid.UUID) -> dict | None:
        """An approved shot's latest succeeded attempt: {shot_key, workflow, attempt_id, backend, outputs}."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT s.shot_key, s.workflow, a.id AS attempt_id, a.backend, {ATTEMPT_OUTPUTS} AS outputs "
                "FROM shots s JOIN attempts a ON a.shot_id = s.id "
                f"WHERE s.id = %s AND s.status = '{ShotStatus.APPROVED}' AND a.status = '{AttemptStatus.SUCCEEDED}' "
                "ORDER BY a.attempt_no DESC LIMIT 1", (shot_id,))
            return await cursor.fetchone()

    async def scene_anchor(self, batch_id: uuid.UUID, scene: str, before: int) -> uuid.UUID | None:
        """The first approved shot of the scene, in list order, before position `before`."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT id FROM shots WHERE batch_id = %s AND params->>'scene' = %s AND position < %s "
                f"AND status = '{ShotStatus.APPROVED}' ORDER BY position LIMIT 1", (batch_id, scene, before))).fetchone()
        return row[0] if row else None

    # --- continuity frames ----------------------------------------------------------------------------------

    async def keep_frame(self, batch_id: uuid.UUID, scene: str, character: str, shot_id: uuid.UUID,
                         attempt_id: uuid.UUID, score: float, frame_ref: str, face_ref: str | None,
                         box: list | None) -> bool:
        """Keep this frame as the character's in the scene if it scores higher than the one kept (an upsert);
        True when it was kept."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO continuity_frames (batch_id, scene, character_name, shot_id, attempt_id, score, "
                "  frame_ref, face_ref, box, scene_position) VALUES (%(batch)s, %(scene)s, %(character)s, "
                f"  %(shot)s, %(attempt)s, %(score)s, %(frame)s, %(face)s, %(box)s, {_SCENE_POSITION}) "
                "ON CONFLICT (batch_id, scene, character_name) DO UPDATE SET shot_id = excluded.shot_id, "
                "  attempt_id = excluded.attempt_id, score = excluded.score, frame_ref = excluded.frame_ref, "
                "  face_ref = excluded.face_ref, box = excluded.box, updated_at = now() "
                "WHERE continuity_frames.score < excluded.score RETURNING 1",
                {"batch": batch_id, "scene": scene, "character": character, "shot": shot_id, "attempt": attempt_id,
                 "score": score, "frame": frame_ref, "face": face_ref,
                 "box": Jsonb(box) if box is not None else None})
            return await cursor.fetchone() is not None

    async def freshest_frame(self, batch_id: uuid.UUID, scene: str, character: str) -> dict | None:
        """The character's kept frame: its own scene's, else the latest earlier scene's; None: the library."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT f.scene, f.score, f.frame_ref, f.face_ref, f.box, s.shot_key FROM continuity_frames f "
                "JOIN shots s ON s.id = f.shot_id WHERE f.batch_id = %(batch)s AND f.character_name = %(character)s "
                f"AND (f.scene = %(scene)s OR f.scene_position < {_SCENE_POSITION}) "
                "ORDER BY (f.scene = %(scene)s) DESC, f.scene_position DESC LIMIT 1",
                {"batch": batch_id, "scene": scene, "character": character})
            return await cursor.fetchone()

    async def frames(self, batch_id: uuid.UUID) -> list[dict]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT f.scene, f.character_name AS character, f.score, f.frame_ref, f.face_ref, f.box, "
                "  s.shot_key AS shot, f.updated_at FROM continuity_frames f JOIN shots s ON s.id = f.shot_id "
                "WHERE f.batch_id = %s ORDER BY f.scene_position, f.character_name", (batch_id,))
            return await cursor.fetchall()

    # --- character state ------------------------------------------------------------------------------------

    async def add_state(self, batch_id: uuid.UUID, character: str, from_position: int, fields: dict,
                        source: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("INSERT INTO character_states (batch_id, character_name, from_position, fields, "
                               "source) VALUES (%s, %s, %s, %s, %s)",
                               (batch_id, character, from_position, Jsonb(fields), source))

    async def states_at(self, batch_id: uuid.UUID, characters, position: int) -> dict[str, dict]:
        """Each character's state at list position `position` (only characters with some state)."""
        if not characters:
            return {}
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT character_name, fields FROM character_states WHERE batch_id = %s "
                "AND character_name = ANY(%s) AND from_position <= %s ORDER BY from_position, id",
                (batch_id, list(characters), position))).fetchall()
        entries: dict[str, list[dict]] = {}
        for name, fields in rows:
            entries.setdefault(name, []).append(fields)
        states = {name: merged_state(found) for name, found in entries.items()}
        return {name: state for name, state in states.items() if state}

    async def timeline(self, batch_id: uuid.UUID) -> list[dict]:
        """Every state entry of the batch, in story order, with the shot it applies from."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT c.character_name AS character, c.from_position, s.shot_key AS from_shot, c.fields, c.source, "
                "  c.created_at FROM character_states c LEFT JOIN shots s ON s.batch_id = c.batch_id "
                "  AND s.position = c.from_position WHERE c.batch_id = %s ORDER BY c.from_position, c.id",
                (batch_id,))
            return await cursor.fetchall()

    async def shot_position(self, batch_id: uuid.UUID, shot_key: str) -> int | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT position FROM shots WHERE batch_id = %s AND shot_key = %s",
                                            (batch_id, shot_key))).fetchone()
        return row[0] if row else None
