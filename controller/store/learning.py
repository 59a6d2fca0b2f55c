"""What the studio has learned, in PostgreSQL: outcomes per character x decision x arm (the learner_outcomes
view over every attempt's `knobs` and `outcome`, db/migrations/0009_learning.sql), the negative prompt terms a
person's rejections taught each character, and what analytics show of it.

    a rejection's category   teaches each character of the shot (each term a row, removable)
    wrong_face               different face, off-model face
    extra_people             extra people, crowd, multiple people
    hands                    bad hands, extra fingers, missing fingers
    outfit                   wrong outfit, different clothes
    blur                     blurry, out of focus
    style                    inconsistent style, off-model
    other                    nothing (the note is kept with the review)

The review itself (status, outcome, the lessons) is one transaction in store/shots.py review_shot, which uses
LESSONS_SQL from here.
"""
from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shotline_controller.learner import Counts
from shotline_controller.store.status import AttemptStatus, ShotStatus

NO_CHARACTER = ""  # the shots that name no character learn under this name
REVIEW_LESSONS: dict[str, tuple[str, ...]] = {
    "wrong_face": ("different face", "off-model face"),
    "extra_people": ("extra people", "crowd", "multiple people"),
    "hands": ("bad hands", "extra fingers", "missing fingers"),
    "outfit": ("wrong outfit", "different clothes"),
    "blur": ("blurry", "out of focus"),
    "style": ("inconsistent style", "off-model"),
    "other": (),
}

# A review's lessons: for each character of the shot, each term of the category (a removed term is taught again)
LESSONS_SQL = """
INSERT INTO learned_negatives (character_name, term, category, last_shot_id)
SELECT ch.name, t.term, %(category)s, %(shot)s
FROM jsonb_array_elements_text(%(characters)s) AS ch(name), unnest(%(terms)s::text[]) AS t(term)
ON CONFLICT (character_name, term) DO UPDATE SET
    times = learned_negatives.times + 1, category = excluded.category, last_shot_id = excluded.last_shot_id,
    updated_at = now(), removed_at = NULL
"""

# Per character and batch, in batch order: how the character's shots went. A shot counts where it is final
# (approved, rejected, failed); its attempts are those that ran to an outcome (lost ones aside).
HISTORY_SQL = f"""
WITH per_shot AS (
    SELECT ch.name AS character, s.batch_id, s.status,
           count(a.id) FILTER (WHERE a.outcome IS NOT NULL) AS attempts,
           bool_or(a.attempt_no = first.no AND a.outcome = '{ShotStatus.APPROVED}') AS first_passed
    FROM shots s
    CROSS JOIN LATERAL jsonb_array_elements_text(s.params->'characters') AS ch(name)
    JOIN attempts a ON a.shot_id = s.id AND a.status <> '{AttemptStatus.LOST}'
    CROSS JOIN LATERAL (SELECT min(attempt_no) AS no FROM attempts f
                        WHERE f.shot_id = s.id AND f.status <> '{AttemptStatus.LOST}') AS first
    WHERE jsonb_typeof(s.params->'characters') = 'array' AND (%(character)s::text IS NULL OR ch.name = %(character)s)
      AND s.status IN ('{ShotStatus.APPROVED}', '{ShotStatus.REJECTED}', '{ShotStatus.FAILED}')
    GROUP BY 1, 2, 3, s.id)
SELECT p.character, p.batch_id, b.created_at, count(*) AS shots,
       count(*) FILTER (WHERE p.status = '{ShotStatus.APPROVED}') AS approved,
       avg(coalesce(p.first_passed, false)::int)::float8 AS first_attempt_pass_rate,
       (sum(p.attempts) / nullif(count(*) FILTER (WHERE p.status = '{ShotStatus.APPROVED}'), 0))::float8
           AS attempts_per_approved
FROM per_shot p JOIN batches b ON b.id = p.batch_id
GROUP BY p.character, p.batch_id, b.created_at ORDER BY p.character, b.created_at
"""


def lesson_terms(category: str | None) -> list[str]:
    return list(REVIEW_LESSONS.get(category or "other", ()))


class LearningStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def counts(self, characters, decisions) -> dict[str, dict[str, Counts]]:
        """decision -> arm -> outcomes so far, summed over `characters` (the shot's; NO_CHARACTER for none)."""
        names = list(characters) or [NO_CHARACTER]
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT decision, arm, sum(successes)::int, sum(failures)::int FROM learner_outcomes "
                "WHERE character_name = ANY(%s) AND decision = ANY(%s) GROUP BY decision, arm",
                (names, list(decisions)))).fetchall()
        found: dict[str, dict[str, Counts]] = {}
        for decision, arm, successes, failures in rows:
            found.setdefault(decision, {})[arm] = Counts(successes, failures)
        return found

    async def all_counts(self, character: str) -> dict[str, dict[str, Counts]]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT decision, arm, successes::int, failures::int FROM learner_outcomes WHERE character_name = %s",
                (character,))).fetchall()
        found: dict[str, dict[str, Counts]] = {}
        for decision, arm, successes, failures in rows:
            found.setdefault(decision, {})[arm] = Counts(successes, failures)
        return found

    async def active_negatives(self, characters) -> list[str]:
        """The terms the shot's characters learned, oldest first, each once."""
        if not characters:
            return []
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT term FROM learned_negatives WHERE character_name = ANY(%s) AND removed_at IS NULL "
                "GROUP BY term ORDER BY min(created_at), term", (list(characters),))).fetchall()
        return [row[0] for row in rows]

    async def negatives(self, character: str) -> list[dict]:
        """Every term the character learned, removed ones too (with when)."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT n.term, n.category, n.times, s.shot_key AS last_shot, n.created_at, "
                "n.removed_at FROM learned_negatives n LEFT JOIN shots s ON s.id = n.last_shot_id "
                "WHERE n.character_name = %s ORDER BY n.created_at, n.term", (character,))
            return await cursor.fetchall()

    async def remove_negative(self, character: str, term: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE learned_negatives SET removed_at = now(), updated_at = now() "
                "WHERE character_name = %s AND term = %s AND removed_at IS NULL", (character, term))
            return cursor.rowcount > 0

    async def history(self, character: str | None = None) -> list[dict]:
        """Per character and batch (oldest first): shots, approved, first-attempt pass rate, attempts per
        approved shot."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(HISTORY_SQL, {"character": character})
            return await cursor.fetchall()

    async def characters(self) -> list[str]:
        """The characters (and NO_CHARACTER) anything was learned for."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT DISTINCT character_name FROM learner_outcomes UNION "
                "SELECT DISTINCT character_name FROM learned_negatives ORDER BY 1")).fetchall()
        return [row[0] for row in rows]
