"""The statuses a shot, an attempt and an assembly job can have, and the one notification channel.

These enums are the only spelling of a status in the controller: SQL is written with them (as literals, so the
planner still sees the partial indexes' predicates), the contract's answers are typed with them, and a test
checks them against the CHECK constraints of the migrations.

    shot:     queued -> running -> approved | needs_review | rejected | failed      (or cancelled at any time)
              running -> queued again (a correction, a lost backend, a lapsed lease)
              waiting -> queued when the shot it continues is approved; waiting -> blocked when that shot ends
              otherwise (rejected, failed, cancelled); blocked -> waiting when it is retried (a trigger in
              db/migrations/0008_continuity.sql moves them, in the transaction that moves the shot before)
    attempt:  queued -> running -> succeeded | failed | lost | cancelled
    job:      queued -> running -> done | failed;  running -> queued (a lapsed lease)
"""
from __future__ import annotations

from enum import StrEnum


class ShotStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    APPROVED = "approved"
    NEEDS_REVIEW = "needs_review"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    WAITING = "waiting"    # continues a shot not approved yet
    BLOCKED = "blocked"    # continues a shot that ended without approval: waits for a person to retry or approve it


OPEN_SHOT_STATUSES = (ShotStatus.QUEUED, ShotStatus.RUNNING, ShotStatus.WAITING, ShotStatus.BLOCKED)
# a batch with none of these is settled: a waiting shot then waits on a chain that a person must move on (a
# blocked shot or one in needs_review at its head), since the trigger queues dependants as their shot is approved
RUNNABLE_SHOT_STATUSES = (ShotStatus.QUEUED, ShotStatus.RUNNING)
FINAL_SHOT_STATUSES = (ShotStatus.APPROVED, ShotStatus.NEEDS_REVIEW, ShotStatus.REJECTED, ShotStatus.FAILED,
                       ShotStatus.CANCELLED)
RETRYABLE_SHOT_STATUSES = (ShotStatus.FAILED, ShotStatus.REJECTED, ShotStatus.CANCELLED, ShotStatus.NEEDS_REVIEW)


class AttemptStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"             # its backend forgot the prompt (a restart): run again under a new prompt_id
    CANCELLED = "cancelled"   # the shot was cancelled while it ran; its prompt was interrupted


OPEN_ATTEMPT_STATUSES = (AttemptStatus.QUEUED, AttemptStatus.RUNNING)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def sql_in(statuses) -> str:
    """`('queued', 'running')`: statuses as an SQL list of literals (they are enum members, never user input)."""
    return "(" + ", ".join(f"'{StrEnum.__str__(status)}'" for status in statuses) + ")"


# Every change to a batch's shots NOTIFYs this channel with "<kind> <id>": `queued <batch>`, `changed <batch>`,
# `cancelled <batch>`, `job <assembly job>`. One LISTEN connection per controller process serves every waiter.
EVENTS_CHANNEL = "shotline_events"
