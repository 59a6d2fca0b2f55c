"""What the studio learned, per character, over HTTP: its history batch by batch, what the learner prefers now,
the negative terms its rejections taught (and removing one)."""
from __future__ import annotations

import random

from aiohttp import web

from shotline_controller.api.keys import POOL
from shotline_controller.api.requests import ApiError, answer, path_key
from shotline_controller.contract import CharacterLearning
from shotline_controller.learner import preferences
from shotline_controller.store.learning import LearningStore

MAX_TERM = 200


async def character_learning(store: LearningStore, character: str) -> dict:
    """CharacterLearning's data for one character: history, preferences (a fixed Monte-Carlo seed, so the same
    outcomes answer the same), negatives."""
    counts = await store.all_counts(character)
    rng = random.Random(0)
    prefs = []
    for decision in sorted(counts):
        found = preferences(counts[decision], default=None, rng=rng)
        if found:
            prefs.append({"decision": decision, **found})
    history = [{key: value for key, value in row.items() if key != "character"}
               for row in await store.history(character)]
    return {"character": character, "history": history, "preferences": prefs,
            "negatives": await store.negatives(character)}


async def learning_summary(pool) -> list[dict]:
    store = LearningStore(pool)
    return [await character_learning(store, name) for name in await store.characters()]


async def get_learning(request: web.Request) -> web.Response:
    character = path_key(request, "character")
    return await answer(CharacterLearning, await character_learning(LearningStore(request.app[POOL]), character))


async def remove_negative(request: web.Request) -> web.Response:
    character = path_key(request, "character")
    term = request.match_info["term"]
    if not term or len(term) > MAX_TERM or any(ord(c) < 32 or ord(c) == 127 for c in term):
        raise ApiError("term", f"a learned term: 1 to {MAX_TERM} characters, no control characters")
    store = LearningStore(request.app[POOL])
    if not await store.remove_negative(character, term):
        raise ApiError("term", f"{character!r} has no learned negative {term!r} in use", 404)
    return await answer(CharacterLearning, await character_learning(store, character))
