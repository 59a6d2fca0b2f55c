"""What a golden dataset is made of, in PostgreSQL: a character's approved pictures and their identity verdicts.

An approved shot's picture is its last succeeded attempt's (as continuity reads it, store/continuity.py); its score
for the character is that attempt's last identity verdict naming the character (character_scores, one row per
character per identity verdict, written with the verdict by store/shots.py).
"""
from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shotline_controller.store.shots import ATTEMPT_OUTPUTS
from shotline_controller.store.status import AttemptStatus, ShotStatus

# each approved shot's last succeeded attempt (a), and on it the character's score of its last identity verdict
_SCORED = f"""
WITH approved AS (
    SELECT DISTINCT ON (s.id) s.id AS shot_id, s.shot_key, s.batch_id, s.params, a.id AS attempt_id, a.backend
    FROM shots s JOIN attempts a ON a.shot_id = s.id
    WHERE s.status = '{ShotStatus.APPROVED}' AND a.status = '{AttemptStatus.SUCCEEDED}'
    ORDER BY s.id, a.attempt_no DESC),
scored AS (
    SELECT DISTINCT ON (p.attempt_id) p.*, c.score, c.verdict_id
    FROM approved p JOIN character_scores c ON c.attempt_id = p.attempt_id
    WHERE c.character_name = %(character)s AND c.score IS NOT NULL
    ORDER BY p.attempt_id, c.verdict_id DESC)"""


class GoldenStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def approved_pictures(self, character: str, min_score: float) -> list[dict]:
        """Approved attempts scoring `character` at or above `min_score`, best first: {shot_id, shot_key,
        batch_id, params, attempt_id, backend, score, outputs, verdict} (verdict: the identity verdict's details,
        with its per-frame faces)."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                _SCORED + " SELECT a.shot_id, a.shot_key, a.batch_id, a.params, a.attempt_id, a.backend, a.score, "
                f"{ATTEMPT_OUTPUTS} AS outputs, v.details AS verdict "
                "FROM (SELECT *, attempt_id AS id FROM scored) a JOIN verdicts v ON v.id = a.verdict_id "
                "WHERE a.score >= %(min)s ORDER BY a.score DESC, a.shot_key",
                {"character": character, "min": min_score})
            return await cursor.fetchall()

    async def below_threshold(self, character: str, min_score: float) -> list[dict]:
        """The approved attempts scoring `character` under `min_score`: {shot_id, shot_key, batch_id, attempt_id,
        backend, score}, for the manifest's dropped list."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                _SCORED + " SELECT shot_id, shot_key, batch_id, attempt_id, backend, score FROM scored "
                "WHERE score < %(min)s ORDER BY score DESC, shot_key", {"character": character, "min": min_score})
            return await cursor.fetchall()
