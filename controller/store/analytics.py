"""What a farm's dashboards read: identity pass rates per character, how corrections fare, verdict pass rates,
shots per status. All aggregate SQL lives here."""
from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shotline_controller.store.status import AttemptStatus, ShotStatus

LOST = AttemptStatus.LOST.value

# Per character: attempts that scored it (lost ones excluded), how many passed (every identity check of the
# attempt passed it) and its mean score where it was on screen (a NULL score means it was not).
CHARACTER_ANALYTICS_SQL = f"""
WITH per_attempt AS (
    SELECT cs.character_name, cs.attempt_id, bool_and(cs.passed) AS passed, avg(cs.score) AS score
    FROM character_scores cs JOIN attempts a ON a.id = cs.attempt_id
    WHERE a.status <> '{LOST}'
    GROUP BY cs.character_name, cs.attempt_id)
SELECT character_name AS character, count(*) AS attempts, count(*) FILTER (WHERE passed) AS passed,
       avg(passed::int)::float8 AS pass_rate, avg(score)::float8 AS mean_score,
       count(*) FILTER (WHERE score IS NULL) AS not_on_screen
FROM per_attempt GROUP BY character_name ORDER BY character_name
"""

# Per correction reason: attempts made with a correction, and how many of them led to an approved shot, i.e.
# were the shot's last attempt (lost ones aside) and the shot ended approved.
CORRECTION_ANALYTICS_SQL = f"""
SELECT coalesce(a.correction->>'reason', '(no reason)') AS reason, count(*) AS corrected_attempts,
       count(*) FILTER (WHERE s.status = '{ShotStatus.APPROVED}' AND NOT EXISTS (
           SELECT 1 FROM attempts later WHERE later.shot_id = a.shot_id AND later.attempt_no > a.attempt_no
             AND later.status <> '{LOST}')) AS led_to_approval
FROM attempts a JOIN shots s ON s.id = a.shot_id
WHERE a.correction IS NOT NULL AND a.status <> '{LOST}'
GROUP BY 1 ORDER BY 2 DESC, 1
"""


class AnalyticsStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def summary(self) -> dict:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(CHARACTER_ANALYTICS_SQL)
            characters = await cursor.fetchall()
            await cursor.execute(CORRECTION_ANALYTICS_SQL)
            corrections = await cursor.fetchall()
        for row in corrections:
            row["approval_rate"] = row["led_to_approval"] / row["corrected_attempts"]
        return {"characters": characters, "corrections": corrections}

    async def gauges(self) -> dict:
        """For /metrics: shots per status, verdicts per check (total and passed), attempts per status."""
        async with self.pool.connection() as conn:
            shots = await (await conn.execute("SELECT status, count(*) FROM shots GROUP BY status")).fetchall()
            verdicts = await (await conn.execute(
                "SELECT check_name, count(*), count(*) FILTER (WHERE passed) FROM verdicts GROUP BY check_name"
            )).fetchall()
            queued = await (await conn.execute(
                f"SELECT count(*) FROM shots WHERE status = '{ShotStatus.QUEUED}'")).fetchone()
        return {"shots": dict(shots), "verdicts": {name: (total, passed) for name, total, passed in verdicts},
                "queued": queued[0]}
